"""JPEG decoding on the model's device (CUDA): workers only read bytes, the GPU decodes.

On a GPU machine, CPU JPEG decoding, not the model, bounds extraction. This path is chosen
automatically when extracting on CUDA (`ExtractJob.device_decode`):

- Decode workers read each file (regular files only, as on the CPU path) and send its bytes
  when it is a plain JPEG the device decoder handles exactly like the policy wants: RGB or
  grayscale, no EXIF rotation, both sides >= 32 px. Anything else (CMYK, rotated, PNG, GIF,
  ...) is decoded on the CPU per `POLICY` in the worker, as before.
- The main process decodes a batch's JPEG bytes with `torchvision.io.decode_jpeg(device=...)`
  in one call, resizes and crops each image on the device (`resize_crop_tensor`), and falls
  back to the CPU path per image for what the device decoder refuses.
- The grids then go through the same fp16 forward; DataLoader batches are pinned.

Pixels differ from the CPU path by a few grey levels (full decode + antialiased resize vs
Pillow's DCT draft scaling), so features match it to the storage dtype's tolerance, not bit
for bit. Runs on any device (tests run it on the CPU); not yet run on a GPU.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import NamedTuple

import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from pipeline.extract.images import (
    IMAGE_SIZE,
    MIN_SIDE,
    NO_STAMP,
    ImageBatch,
    ImageDataset,
    ImageError,
    image_stamp,
    open_regular,
    preprocess_image,
    resize_crop_tensor,
    resolve_image_path,
)

_EXIF_ORIENTATION = 0x0112
_DEVICE_MODES = ("RGB", "L")


class RawItem(NamedTuple):
    """One item: row, a decoded (3, 224, 224) uint8 image or JPEG bytes (L,) uint8, or None."""

    row: int
    data: torch.Tensor | None
    is_jpeg: bool  # True: `data` holds the file's bytes, to decode on the device
    error: str
    stamp: tuple[int, int]


class RawBatch(NamedTuple):
    """A collated batch: decoded images, JPEG bytes, failures and stamps, each with rows."""

    decoded_rows: list[int]
    decoded: list[torch.Tensor]  # (3, 224, 224) uint8 each
    jpeg_rows: list[int]
    jpegs: list[torch.Tensor]  # (L,) uint8 each
    failures: list[tuple[int, str]]
    stamps: dict[int, tuple[int, int]]
    paths: dict[int, Path]  # row -> image path, for the per-image CPU fallback


def read_for_device(path: Path) -> tuple[torch.Tensor, bool]:
    """(the file's bytes, True) for a JPEG the device decodes per policy; else the image
    decoded on the CPU per `POLICY` and False. ImageError if unusable."""
    try:
        with open_regular(path) as handle:
            data = handle.read()
    except ImageError:
        raise
    except OSError:
        return preprocess_image(path), False  # the CPU path words the reason
    if data[:2] == b"\xff\xd8":
        try:
            with Image.open(io.BytesIO(data)) as img:
                plain = (
                    img.format == "JPEG"
                    and img.mode in _DEVICE_MODES
                    and min(img.size) >= MIN_SIDE
                    and img.getexif().get(_EXIF_ORIENTATION, 1) == 1
                )
        except Exception:  # let the CPU path decide and word the failure
            plain = False
        if plain:
            return torch.frombuffer(bytearray(data), dtype=torch.uint8), True  # (L,)
    return preprocess_image(path), False


class RawImageDataset(ImageDataset):
    """Like ImageDataset, but plain JPEGs come as bytes for the device decoder."""

    def __getitem__(self, index: int) -> RawItem:  # type: ignore[override]
        row = self.rows[index]
        stamp = NO_STAMP
        try:
            path = resolve_image_path(self.root, self.names[row])
            stamp = image_stamp(path)
            data, is_jpeg = read_for_device(path)
            return RawItem(row, data, is_jpeg, "", stamp)
        except ImageError as exc:
            return RawItem(row, None, False, str(exc), stamp)


def collate_raw(items: list[RawItem], root: Path, names: list[str]) -> RawBatch:
    """DataLoader collate_fn for RawImageDataset (bind root and names with functools.partial)."""
    ok = [item for item in items if item.data is not None]
    return RawBatch(
        [i.row for i in ok if not i.is_jpeg],
        [i.data for i in ok if not i.is_jpeg],
        [i.row for i in ok if i.is_jpeg],
        [i.data for i in ok if i.is_jpeg],
        [(i.row, i.error) for i in items if i.data is None],
        {i.row: i.stamp for i in items},
        {i.row: Path(root) / names[i.row] for i in ok if i.is_jpeg},
    )


def decode_on_device(batch: RawBatch, device: torch.device) -> ImageBatch:
    """RawBatch -> ImageBatch with uint8 (K, 3, 224, 224) images on `device`, rows ascending."""
    images = {
        row: image.to(device, non_blocking=True)
        for row, image in zip(batch.decoded_rows, batch.decoded, strict=True)
    }
    failures = list(batch.failures)
    for row, image in zip(batch.jpeg_rows, _decode_jpegs(batch.jpegs, device), strict=True):
        if image is None:  # the device decoder refused it: the CPU path, per image
            try:
                image = preprocess_image(batch.paths[row]).to(device)
            except ImageError as exc:
                failures.append((row, str(exc)))
                continue
        else:
            image = resize_crop_tensor(image)  # (3, 224, 224) uint8 on device
        images[row] = image
    rows = sorted(images)
    stacked = (
        torch.stack([images[row] for row in rows])
        if rows
        else torch.empty((0, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8, device=device)
    )
    return ImageBatch(rows, stacked, sorted(failures), batch.stamps)


def _decode_jpegs(jpegs: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """Batched device decode to RGB (3, H, W) uint8; None for each image it cannot decode."""
    if not jpegs:
        return []
    try:
        return list(decode_jpeg(jpegs, mode=ImageReadMode.RGB, device=device))
    except RuntimeError:  # one bad image fails the batched call: retry one by one
        out: list[torch.Tensor | None] = []
        for data in jpegs:
            try:
                out.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
            except RuntimeError:
                out.append(None)
        return out
