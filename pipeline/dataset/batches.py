"""Stage two's batches: a split's captions encoded, planned into epochs, read with their grids."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from pipeline import output
from pipeline.config import TrainConfig
from pipeline.dataset.store import FeatureStore
from pipeline.decoder.vocab import Vocabulary
from pipeline.errors import UserError


@dataclass
class SplitData:
    """One split's images (as feature rows) and its encoded captions."""

    image_names: list[str]  # (n_images,) relative paths, table order
    image_ids: list[str]  # (n_images,) ids for predictions.json
    image_rows: np.ndarray  # (n_images,) int64 row in the feature file
    captions_of_image: list[np.ndarray]  # per image: indices into `tokens`
    caption_image: np.ndarray  # (n_captions,) image position of each caption
    tokens: list[np.ndarray]  # per caption: int64 ids, <sos> ... <eos>
    references: list[list[str]]  # per image: its raw reference captions

    @property
    def num_captions(self) -> int:
        return len(self.tokens)


def filter_to_cache(
    frame: pd.DataFrame, row_of: dict[str, int], failed: dict[str, str]
) -> pd.DataFrame:
    """Drop captions whose image is not in the cache or failed extraction (one warning line)."""
    usable = frame["image"].map(lambda name: name in row_of and name not in failed)
    dropped = int((~usable).sum())
    if dropped:
        images = frame.loc[~usable, "image"].nunique()
        output.warn(
            f"dropped {dropped} captions of {images} images that are missing "
            "from the feature file or failed extraction"
        )
    kept = frame[usable]
    if kept.empty:
        raise UserError(
            "no caption has an image in the feature file: is features.path the "
            "file extracted from these captions (data.captions)?"
        )
    return kept.reset_index(drop=True)


def build_split(
    frame: pd.DataFrame, split: str, vocab: Vocabulary, max_len: int, row_of: dict[str, int]
) -> SplitData:
    """Encode the captions of `split`, grouped by image in first-appearance order."""
    part = frame[frame["split"] == split]
    names = list(dict.fromkeys(part["image"]))
    position = {name: i for i, name in enumerate(names)}
    groups: list[list[int]] = [[] for _ in names]
    references: list[list[str]] = [[] for _ in names]
    image_ids = [""] * len(names)
    tokens, owners = [], []
    for image, caption, image_id in zip(
        part["image"], part["caption"], part["image_id"], strict=True
    ):
        i = position[image]
        groups[i].append(len(tokens))
        references[i].append(caption)
        image_ids[i] = str(image_id)
        owners.append(i)
        tokens.append(np.asarray(vocab.encode(caption, max_len), dtype=np.int64))
    return SplitData(
        image_names=names,
        image_ids=image_ids,
        image_rows=np.asarray([row_of[n] for n in names], dtype=np.int64),
        captions_of_image=[np.asarray(g, dtype=np.int64) for g in groups],
        caption_image=np.asarray(owners, dtype=np.int64),
        tokens=tokens,
        references=references,
    )


def plan_epoch(
    split: SplitData, batch_size: int, mode: str, rng: np.random.Generator | None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Batches of (image positions, caption indices) for one epoch; `rng=None` keeps table order.

    mode (`train.batching`, choices in `pipeline.config.BATCHINGS`):
    "captions": every caption once, shuffled across images, `batch_size` captions per batch
    (so about `batch_size` distinct images: the recipe of Show-Attend-Tell implementations).
    "images": every caption once; a batch holds whole images (all their captions), about
    `batch_size` captions, so each grid is read once per epoch (cheaper reads, worse captions).
    An image with more than `batch_size` captions is cut into pieces of `batch_size`, so a
    batch holds fewer than 2 x `batch_size` captions whatever the captions per image (the
    decoder expands the grid once per caption: 100,000 references would ask for 40 GB).
    "random": one random caption per image (the seed report's epoch), `batch_size` images.
    """
    if mode == "captions":
        return _caption_batches(split, batch_size, rng)
    if mode == "random":
        return _random_caption_batches(split, batch_size, rng)
    if mode == "images":
        return _image_batches(split, batch_size, rng)
    raise ValueError(f"unknown batching {mode!r}")


def _caption_batches(
    split: SplitData, batch_size: int, rng: np.random.Generator | None
) -> list[tuple[np.ndarray, np.ndarray]]:
    count = split.num_captions
    order = np.arange(count) if rng is None else rng.permutation(count)  # (n_captions,)
    batches = []
    for start in range(0, count, batch_size):
        captions = order[start : start + batch_size].astype(np.int64)  # (B,)
        batches.append((np.unique(split.caption_image[captions]), captions))
    return batches


def _random_caption_batches(
    split: SplitData, batch_size: int, rng: np.random.Generator | None
) -> list[tuple[np.ndarray, np.ndarray]]:
    order = _image_order(split, rng)
    batches = []
    for start in range(0, len(order), batch_size):
        images = order[start : start + batch_size]
        picks = [
            split.captions_of_image[i][
                0 if rng is None else rng.integers(len(split.captions_of_image[i]))
            ]
            for i in images
        ]
        batches.append((images, np.asarray(picks, dtype=np.int64)))
    return batches


def _image_batches(
    split: SplitData, batch_size: int, rng: np.random.Generator | None
) -> list[tuple[np.ndarray, np.ndarray]]:
    batches = []
    images: list[int] = []
    captions: list[np.ndarray] = []
    count = 0
    for i in _image_order(split, rng):
        of_image = split.captions_of_image[i]
        for start in range(0, len(of_image), batch_size):
            images.append(int(i))
            captions.append(of_image[start : start + batch_size])
            count += len(captions[-1])
            if count >= batch_size:
                batches.append((np.asarray(images), np.concatenate(captions)))
                images, captions, count = [], [], 0
    if images:
        batches.append((np.asarray(images), np.concatenate(captions)))
    return batches


def _image_order(split: SplitData, rng: np.random.Generator | None) -> np.ndarray:
    count = len(split.image_names)
    return np.arange(count) if rng is None else rng.permutation(count)


class CaptionBatches(torch.utils.data.Dataset):
    """Map-style dataset whose keys are whole batches from `plan_epoch`.

    A batch's captions are padded to a multiple of `length_bucket` tokens (`train.length_bucket`),
    at most the split's longest caption: few distinct widths, so few shapes for a compiled step.
    """

    def __init__(
        self,
        store: FeatureStore,
        split: SplitData,
        pad_index: int = 0,
        length_bucket: int = TrainConfig.length_bucket,
    ):
        self.store = store
        self.split = split
        self.pad_index = pad_index
        self.length_bucket = length_bucket
        self.longest = max((len(t) for t in split.tokens), default=1)

    def __len__(self) -> int:
        return len(self.split.image_names)

    def __getitem__(self, batch: tuple[np.ndarray, np.ndarray]) -> dict:
        images, caption_indices = batch
        features = self.store.gather(self.split.image_rows[images])  # (n_img, 49, 2048)
        position = np.full(len(self.split.image_names), -1, dtype=np.int64)
        position[images] = np.arange(len(images))
        image_of_caption = position[self.split.caption_image[caption_indices]]  # (B,)
        seqs = [self.split.tokens[c] for c in caption_indices]
        lengths = np.asarray([len(s) for s in seqs], dtype=np.int64)
        padded = np.full((len(seqs), self.width(int(lengths.max()))), self.pad_index, np.int64)
        for k, seq in enumerate(seqs):
            padded[k, : len(seq)] = seq
        return {
            "features": features,  # (n_img, 49, 2048), on the GPU for features.cache = "device"
            "image_index": torch.from_numpy(image_of_caption),  # (B,)
            "captions": torch.from_numpy(padded),  # (B, T)
            "lengths": torch.from_numpy(lengths),  # (B,)
            "tokens": int((lengths - 1).sum()),  # target tokens, known on the host
        }

    def width(self, longest: int) -> int:
        """The padded width T of a batch whose longest caption has `longest` tokens."""
        bucket = self.length_bucket
        return min(-(-longest // bucket) * bucket, self.longest)
