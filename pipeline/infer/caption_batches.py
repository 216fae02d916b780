"""Grids for the decoder, batch by batch: image files decoded by DataLoader workers and run
through the checkpoint's CNN, or rows read from a feature file.

Image batches reuse stage one's machinery: workers run `preprocess_image` (the policy; a bad
image is a reason, never a crash), or, when decoding on the device (CUDA by default), send
plain JPEGs as bytes for `decode_on_device` (pipeline/extract/device_decode.py). The
planner's batches are the DataLoader's batch sampler, pulled lazily as workers need work, so
the workers decode the next batches while the main process runs the CNN and the decoder on
this one, and no list of the inputs is ever built.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from pipeline.dataset.store import FeatureStore
from pipeline.extract.device_decode import (
    RawBatch,
    RawItem,
    collate_raw,
    decode_on_device,
    read_for_device,
)
from pipeline.extract.extractor import FeatureEncoder, drop_non_finite
from pipeline.extract.images import (
    DEFAULT,
    NO_STAMP,
    ImageBatch,
    ImageError,
    ImageItem,
    Preprocessing,
    collate_images,
    preprocess_image,
)
from pipeline.infer.caption_sources import Input


class GridBatch(NamedTuple):
    """A batch of inputs: the grids of those that have one, the reasons of the others."""

    inputs: list[Input]
    rows: list[int]  # positions in `inputs` with a grid, ascending
    grids: np.ndarray  # (K, R, C) in the storage dtype, K = len(rows)
    failures: list[tuple[int, str]]  # (position in `inputs`, reason)
    images: torch.Tensor | None  # (K, 3, S, S) uint8 crops the CNN saw (image files only)


class InputImages(Dataset):
    """An `Input`'s image file, decoded per the policy of `pre` (or, for the device, JPEG
    bytes)."""

    def __init__(self, on_device: bool, pre: Preprocessing = DEFAULT) -> None:
        self.on_device = on_device
        self.pre = pre

    def __getitem__(self, item: Input) -> tuple[Input, torch.Tensor | None, bool, str]:
        """(item, uint8 (3, S, S) image or (L,) JPEG bytes or None, is_jpeg, reason)."""
        try:
            if self.on_device:
                return (item, *read_for_device(Path(item.image), self.pre), "")
            return item, preprocess_image(item.image, self.pre), False, ""
        except ImageError as exc:
            return item, None, False, str(exc)


def collate_inputs(
    items: list[tuple[Input, torch.Tensor | None, bool, str]], on_device: bool
) -> tuple[list[Input], ImageBatch | RawBatch]:
    """DataLoader collate_fn: the inputs and stage one's batch, rows = positions in the batch."""
    inputs = [item[0] for item in items]
    if on_device:
        raw = [
            RawItem(i, data, is_jpeg, error, NO_STAMP)
            for i, (_, data, is_jpeg, error) in enumerate(items)
        ]
        return inputs, collate_raw(raw, Path(""), [item.image for item in inputs])
    decoded = [ImageItem(i, data, error) for i, (_, data, _, error) in enumerate(items)]
    return inputs, collate_images(decoded)


def image_grids(
    batches: Iterable[list[Input]],
    encoder: FeatureEncoder,
    workers: int,
    on_device: bool,
) -> Iterator[GridBatch]:
    """Decode each batch's images in `workers` processes and encode them on the CNN."""
    loader = DataLoader(
        InputImages(on_device, encoder.pre),
        batch_sampler=batches,
        num_workers=workers,
        collate_fn=functools.partial(collate_inputs, on_device=on_device),
        pin_memory=encoder.device.type == "cuda",
    )
    for inputs, batch in loader:
        if on_device:
            batch = decode_on_device(batch, encoder.device, pre=encoder.pre)  # (K, 3, S, S)
        grids = encoder.encode(batch.images)  # (K, R, C) storage dtype
        rows, grids, failures = drop_non_finite(batch.rows, grids, batch.failures)
        images = batch.images
        if len(rows) < len(batch.rows):  # a non-finite grid: keep the crops of the others
            keep = [batch.rows.index(row) for row in rows]
            images = images[torch.tensor(keep, dtype=torch.long, device=images.device)]
        yield GridBatch(inputs, rows, grids, failures, images)


def file_grids(batches: Iterable[list[Input]], path: str) -> Iterator[GridBatch]:
    """Read each batch's rows from a feature file (failed rows keep their reason)."""
    store = FeatureStore(path)
    for inputs in batches:
        rows = [i for i, item in enumerate(inputs) if not item.error]
        grids = store.read(np.array([inputs[i].row for i in rows], dtype=np.int64))  # (K, R, C)
        failures = [(i, item.error) for i, item in enumerate(inputs) if item.error]
        yield GridBatch(inputs, rows, grids, failures, None)
