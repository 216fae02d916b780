"""Real text: Flickr8k's own caption file and split lists (../shared/data/flickr8k), read as a
run reads them, and our CIDEr-D against pycocoevalcap's on real human captions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pycocoevalcap.cider.cider import Cider

from pipeline.captions.readers import read_captions
from pipeline.config import DataConfig
from pipeline.dataset.splits import new_splits, split_counts
from pipeline.metrics.cider import CiderD
from pipeline.metrics.coco import simple_tokenize

FLICKR8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "flickr8k"
CAPTIONS = FLICKR8K / "Flickr8k.token.txt"
pytestmark = pytest.mark.skipif(
    not CAPTIONS.is_file(), reason=f"the real Flickr8k captions are not at {FLICKR8K}"
)
QUIRK = "2258277193_586949ec62.jpg"  # 4 captions; its fifth sits under QUIRK + ".1"


@pytest.fixture(scope="module")
def table():
    return read_captions(CAPTIONS)


def split_list(split_file: str) -> list[str]:
    """One official list, read here on its own (one name per line)."""
    return (FLICKR8K / split_file).read_text().split()


def test_the_split_lists_give_8000_of_the_8093_ids_and_say_what_they_dropped(table):
    frame, origin = new_splits(table.frame, DataConfig(captions=str(CAPTIONS)), table.format)

    assert len(table.images()) == 8093 and len(table.frame) == 40460
    assert split_counts(frame) == {"train": 6000, "val": 1000, "test": 1000}
    by_image = frame.drop_duplicates("image").set_index("image")["split"]
    assert set(by_image[by_image == "test"].index) == set(split_list("Flickr_8k.testImages.txt"))
    assert set(by_image[by_image == "val"].index) == set(split_list("Flickr_8k.devImages.txt"))
    assert (origin.source, origin.lists, len(origin.unlisted)) == ("listed", str(FLICKR8K), 93)
    assert {QUIRK, f"{QUIRK}.1"} <= set(origin.unlisted)
    assert not set(origin.unlisted) & set(by_image.index)
    assert origin.notes() == [
        f"dropped 93 images in no split list (e.g. {', '.join(origin.unlisted[:3])})"
    ]


def fifth_against_four(table, images: list[str]) -> tuple[list[list[str]], list[str]]:
    """Per image: its first four captions (references) and its fifth (the candidate)."""
    captions = table.frame.groupby("image", sort=False)["caption"].apply(list)
    return [captions[i][:4] for i in images], [captions[i][4] for i in images]


def pycocoevalcap_cider(references: list[list[str]], candidates: list[str]) -> np.ndarray:
    """Per-image CIDEr as coco-caption computes it, on the tokens tests/test_cider.py uses."""
    gts = {i: [simple_tokenize(r) for r in refs] for i, refs in enumerate(references)}
    res = {i: [simple_tokenize(c)] for i, c in enumerate(candidates)}
    return Cider().compute_score(gts, res)[1]


def test_cider_d_equals_pycocoevalcap_on_real_captions_of_the_test_split(table):
    images = split_list("Flickr_8k.testImages.txt")
    references, candidates = fifth_against_four(table, images)

    expected = pycocoevalcap_cider(references, candidates)
    ours = CiderD(references).score_texts(range(len(images)), candidates)

    assert len(images) == 1000
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-6)
    assert expected.max() > 2.0 and expected.min() < 0.05  # real spread, not a constant
