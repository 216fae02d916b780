"""The real-language testbed: Flickr8k's human captions, with grids of "detected" concepts.

Built the way attribute-based captioning feeds detected words to a decoder (You et al. 2016,
Yao et al. 2017), with controlled detection: for each image, every content word of the concept
vocabulary (words outside `STOPWORDS` used by at least `min_count` train references) is seen
with probability 1 - (1 - recall)^c, where c is how many of the image's references use it; a
Poisson(`distractors`) number of words no reference uses is seen too (drawn by train
frequency). Each seen word is written as its fixed random vector into its own region of the
7x7 grid; every channel gets Gaussian noise of standard deviation `noise`. Real vocabulary,
real lengths, real disagreement between references: the regime where SCST's gain and the
decoders' differences show. It measures decoders and objectives, not a vision model.

Splits are Flickr8k's official lists (`read_split_lists`); `train_images` takes a seeded subset
of the official train images so that one run fits a few minutes on a CPU; val and test are the
official 1,000 each. An image's grid depends only on the seed, its name, its references and the
concept vocabulary (which the train subset decides), not on its row.
"""

from __future__ import annotations

import zlib
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pipeline import contract
from pipeline.captions.readers import read_captions, read_split_lists
from pipeline.captions.text import tokenize
from pipeline.checksum import file_sha256
from pipeline.config import SPLITS
from pipeline.errors import UserError
from pipeline.testbed.files import CODE_ENERGY, write_testbed
from pipeline.testbed.knobs import LanguageKnobs

STOPWORDS = frozenset(
    """a an the and or but of in on at to into onto from with without by for over under
    above below near next up down out off through across along around behind beside between
    is are was were be been being am has have had having do does did it its it's this that
    these those there here their them they he she his her him i you we our your my me who
    which what while as than then so very some any each other another one two three four
    five several many few more most all both just also not no s""".split()
)


@dataclass
class LanguageData:
    """The images of the testbed, split, with their references and content words."""

    names: list[str]
    captions: list[list[str]]
    splits: list[str]
    dropped: dict[str, int]  # why -> ids of the caption file left out


def content_words(caption: str) -> set[str]:
    """The caption's words that carry content: alphabetic, not in `STOPWORDS`."""
    return {w for w in tokenize(caption) if w.isalpha() and w not in STOPWORDS}


def select_images(captions: Path, split_lists: Path, train_images: int, seed: int) -> LanguageData:
    """The caption file's images in the official splits (train: a seeded subset), in split
    order; counts what was left out and why."""
    table = read_captions(captions)
    assigned = read_split_lists(split_lists)
    references: dict[str, list[str]] = {}
    for image, caption in zip(table.frame["image"], table.frame["caption"], strict=True):
        references.setdefault(image, []).append(caption)
    dropped = {
        "in no split list": sum(1 for name in references if name not in assigned),
        "listed but without captions": sum(1 for name in assigned if name not in references),
    }
    by_split = {s: [n for n in references if assigned.get(n) == s] for s in SPLITS}
    if not all(by_split.values()):
        raise UserError(f"{captions}: no image of some split list has captions")
    train = by_split["train"]
    if train_images < len(train):
        chosen = np.random.default_rng([seed, 0x7E57]).choice(len(train), train_images, False)
        dropped["train images left out (--train-images)"] = len(train) - train_images
        by_split["train"] = [train[i] for i in sorted(chosen)]
    names = [n for s in SPLITS for n in by_split[s]]
    splits = [s for s in SPLITS for _ in by_split[s]]
    return LanguageData(names, [references[n] for n in names], splits, dropped)


def concept_vocabulary(data: LanguageData, min_count: int) -> Counter:
    """Content word -> how many train references use it, for words used at least `min_count`
    times."""
    counts: Counter = Counter()
    for refs, split in zip(data.captions, data.splits, strict=True):
        if split == "train":
            for caption in refs:
                counts.update(content_words(caption))
    return Counter({w: c for w, c in counts.items() if c >= min_count})


def word_vector(word: str, seed: int) -> np.ndarray:
    """(2048,) float32: the word's fixed random direction, energy CODE_ENERGY."""
    rng = np.random.default_rng([seed, zlib.crc32(word.encode("utf-8"))])
    vector = rng.standard_normal(contract.CHANNELS)
    return (vector * np.sqrt(CODE_ENERGY) / np.linalg.norm(vector)).astype(np.float32)


def seen_words(
    references: list[str],
    name: str,
    concepts: Counter,
    knobs: LanguageKnobs,
    distractor_words: list[str],
    distractor_weights: np.ndarray,
) -> list[str]:
    """The words "detected" in one image: its references' concepts, each kept with
    probability 1 - (1 - recall)^uses, plus Poisson(distractors) unrelated ones."""
    rng = np.random.default_rng([knobs.seed, zlib.crc32(name.encode("utf-8"))])
    uses = Counter(w for caption in references for w in content_words(caption) if w in concepts)
    seen = [w for w in sorted(uses) if rng.random() < 1.0 - (1.0 - knobs.recall) ** uses[w]]
    wanted = int(rng.poisson(knobs.distractors))
    unused = len(distractor_words) - len(uses)  # words it may still draw as distractors
    while wanted and unused and len(seen) < contract.REGIONS:
        word = distractor_words[int(rng.choice(len(distractor_words), p=distractor_weights))]
        if word not in uses and word not in seen:
            seen.append(word)
            wanted, unused = wanted - 1, unused - 1
    return seen[: contract.REGIONS]


def write_language_testbed(
    out_dir: str | Path,
    captions: str | Path,
    knobs: LanguageKnobs,
    split_lists: str | Path | None = None,
    overwrite: bool = False,
) -> tuple[bool, dict]:
    """Write the real-language testbed (dataset.json + features.h5) into `out_dir`.

    Returns whether anything was written (False: already there, complete) and what went in:
    images per split, concept vocabulary size, mean words seen per image, what was dropped.
    """
    knobs.check()
    captions = Path(captions)
    data = select_images(
        captions, Path(split_lists or captions.parent), knobs.train_images, knobs.seed
    )
    concepts = concept_vocabulary(data, knobs.min_count)
    if not concepts:
        raise UserError(f"no content word is used {knobs.min_count} times: lower --min-count")
    words = sorted(concepts)
    weights = np.asarray([concepts[w] for w in words], dtype=np.float64)
    vectors = {w: word_vector(w, knobs.seed) for w in words}
    seen_counts: list[int] = []

    def grids(start: int, stop: int) -> np.ndarray:
        out = np.empty((stop - start, contract.REGIONS, contract.CHANNELS), dtype=np.float32)
        for i in range(start, stop):
            seen = seen_words(
                data.captions[i], data.names[i], concepts, knobs, words, weights / weights.sum()
            )
            seen_counts.append(len(seen))
            rng = np.random.default_rng([knobs.seed, zlib.crc32(data.names[i].encode()), 1])
            out[i - start] = knobs.noise * rng.standard_normal(
                (contract.REGIONS, contract.CHANNELS), np.float32
            )
            regions = rng.choice(contract.REGIONS, len(seen), replace=False)
            for region, word in zip(regions, seen, strict=True):
                out[i - start, region] += vectors[word]
        return out  # (n, 49, 2048)

    written = write_testbed(
        Path(out_dir),
        "language",
        asdict(knobs),
        data.names,
        data.captions,
        data.splits,
        grids,
        overwrite,
    )
    stats = {
        "images": {s: data.splits.count(s) for s in SPLITS},
        "concepts": len(concepts),
        "words_seen_per_image": float(np.mean(seen_counts)) if seen_counts else None,
        "dropped": data.dropped,
    }
    return written, stats


def language_knobs(captions: str | Path, **settings) -> LanguageKnobs:
    """Knobs for the caption file `captions` (identified by its content hash)."""
    return LanguageKnobs(captions_sha256=file_sha256(captions), **settings)
