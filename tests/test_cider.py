"""CIDEr-D reward (pipeline.metrics.cider) against pycocoevalcap's Cider on the same captions."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from pycocoevalcap.cider.cider import Cider

from pipeline.captions.demo_data import generate_demo_data
from pipeline.decoder.vocab import build_vocabulary
from pipeline.metrics.cider import CiderD
from pipeline.metrics.coco import simple_tokenize


def pycocoevalcap_cider(references: list[list[str]], candidates: list[str]) -> np.ndarray:
    """Per-image CIDEr as coco-caption computes it (df over these references)."""
    gts = {i: [simple_tokenize(r) for r in refs] for i, refs in enumerate(references)}
    res = {i: [simple_tokenize(c)] for i, c in enumerate(candidates)}
    mean, per_image = Cider().compute_score(gts, res)
    assert mean == pytest.approx(per_image.mean())
    return per_image


@pytest.fixture(scope="module")
def demo_captions(tmp_path_factory) -> list[list[str]]:
    root = tmp_path_factory.mktemp("cider")
    generate_demo_data(root / "data", n_images=60, seed=3, size=64)
    images = json.loads((root / "data" / "dataset.json").read_text())["images"]
    return [[s["raw"] for s in image["sentences"]] for image in images]


def test_equals_pycocoevalcap_on_demo_captions(demo_captions):
    # candidates: another image's reference (partly right), one of its own, and a mangled one
    candidates = [
        demo_captions[(i + 1) % len(demo_captions)][0]
        if i % 3 == 0
        else demo_captions[i][i % 5]
        if i % 3 == 1
        else " ".join(demo_captions[i][0].split()[::-1][:6])
        for i in range(len(demo_captions))
    ]
    expected = pycocoevalcap_cider(demo_captions, candidates)
    ours = CiderD(demo_captions).score_texts(range(len(candidates)), candidates)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-6)
    assert abs(ours.mean() - expected.mean()) < 1e-6
    assert expected.max() > 1.0 and expected.min() < 0.5  # the test spans real differences


def test_equals_pycocoevalcap_on_random_captions():
    rng = random.Random(0)
    words = "a an the red blue dog of with on in left big small runs it's dog's".split()

    def caption(longest: int) -> str:
        return " ".join(rng.choice(words) for _ in range(rng.randint(0, longest)))

    references = [[caption(12) or "x" for _ in range(rng.randint(1, 7))] for _ in range(80)]
    candidates = [caption(15) for _ in range(80)]
    candidates[:3] = ["", "zebra", "zebra qq zebra qq zebra"]  # empty; words no reference has
    expected = pycocoevalcap_cider(references, candidates)
    ours = CiderD(references).score_texts(range(80), candidates)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-6)


def test_fixed_corpus_scores_any_subset_and_vocabulary_ids(demo_captions):
    """df from the whole corpus; a batch of a few images, given as vocabulary ids."""
    cider = CiderD(demo_captions)
    vocab, _ = build_vocabulary([c for refs in demo_captions for c in refs], 1)
    images = np.asarray([5, 5, 17, 2])
    texts = [demo_captions[5][1], demo_captions[9][0], demo_captions[17][3], "a a a the"]
    ids = [[vocab.stoi[w] for w in t.lower().replace(".", "").split()] for t in texts]
    width = max(len(i) for i in ids) + 2
    tokens = np.zeros((4, width), dtype=np.int64)  # vocabulary ids, then <eos>, then <pad>
    for row, seq in enumerate(ids):
        tokens[row, : len(seq) + 1] = [*seq, vocab.eos]
    evaluation = cider.vocab_table(vocab)[tokens].reshape(4, -1)
    by_ids = cider.scores(images, evaluation)
    by_text = cider.score_texts(images, texts)
    np.testing.assert_allclose(by_ids, by_text, rtol=0, atol=1e-12)
    # against pycocoevalcap with all 60 images present (so df is the same), then pick rows
    everything = [demo_captions[i][0] for i in range(len(demo_captions))]
    for row, image in enumerate(images):
        candidates = list(everything)
        candidates[image] = texts[row]
        assert by_text[row] == pytest.approx(
            pycocoevalcap_cider(demo_captions, candidates)[image], abs=1e-6
        )
