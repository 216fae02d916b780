"""JPEG decoding on the model's device (CUDA): workers only read bytes, the GPU decodes.

On a GPU machine, CPU JPEG decoding, not the model, bounds extraction. This path is chosen
automatically when extracting on CUDA (`ExtractJob.device_decode`):

- Decode workers read each file (regular files only, as on the CPU path) and send its bytes
  when it is a plain JPEG the device decoder handles exactly like the policy wants: RGB or
  grayscale, no EXIF rotation, a size the policy accepts (`size_problem`). Anything else
  (CMYK, rotated, PNG, GIF, ...) is decoded on the CPU per the policy in the worker, as before.
- The main process decodes a batch's JPEG bytes on the device (`decode_jpegs`), resizes and
  crops each image there (`resize_crop_tensor`), and falls back to the CPU path per image for
  what the device decoder refuses (counted in `DecodeStats`, reported by extract).
- The decoder is chosen at first use (`jpeg_decoder`), never at import: TorchCodec's
  `decode_jpeg` where `torchcodec` is installed; else torchvision's (`torchvision.io`, on CUDA
  nvjpeg in one batched call; deprecated since torchvision 0.29, so its DeprecationWarning is
  silenced where we call it: installing torchcodec is the way off it); else Pillow (a CPU
  decode, then copied to the device) once torchvision has dropped it.
- The grids then go through the same fp16 forward; DataLoader batches are pinned.

Pixels differ from the CPU path by a few grey levels (full decode + antialiased resize vs
Pillow's DCT draft scaling), so features match it to the storage dtype's tolerance, not bit
for bit. Runs on any device (tests run it on the CPU); not yet run on a GPU.
"""

from __future__ import annotations

import functools
import importlib.util
import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from pipeline.extract.images import (
    DEFAULT,
    NO_STAMP,
    ImageBatch,
    ImageDataset,
    ImageError,
    Preprocessing,
    empty_images,
    image_stamp,
    open_regular,
    preprocess_image,
    resize_crop_tensor,
    resolve_image_path,
    size_problem,
)

_EXIF_ORIENTATION = 0x0112
_DEVICE_MODES = ("RGB", "L")
_TORCHVISION_DEPRECATION = "The image decoding and encoding capabilities of TorchVision"

Decode = Callable[[list[torch.Tensor], torch.device], list["torch.Tensor | None"]]


class JpegDecoder(NamedTuple):
    """A JPEG decoder: its name and `decode(jpegs, device)`: (L,) uint8 CPU byte tensors ->
    RGB (3, H, W) uint8 on `device`, None for each image it cannot decode."""

    name: str  # "torchcodec" | "torchvision" | "pillow"
    decode: Decode


@dataclass
class DecodeStats:
    """What device decoding did over a run."""

    fallbacks: int = 0  # JPEGs the device decoder failed on, decoded by the CPU path instead


class RawItem(NamedTuple):
    """One item: row, a decoded (3, S, S) uint8 image or JPEG bytes (L,) uint8, or None."""

    row: int
    data: torch.Tensor | None  # (3, S, S) uint8 decoded, or (L,) uint8 JPEG bytes
    is_jpeg: bool  # True: `data` holds the file's bytes, to decode on the device
    error: str
    stamp: tuple[int, int]


class RawBatch(NamedTuple):
    """A collated batch: decoded images, JPEG bytes, failures and stamps, each with rows."""

    decoded_rows: list[int]
    decoded: list[torch.Tensor]  # (3, S, S) uint8 each
    jpeg_rows: list[int]
    jpegs: list[torch.Tensor]  # (L,) uint8 each
    failures: list[tuple[int, str]]
    stamps: dict[int, tuple[int, int]]
    paths: dict[int, Path]  # row -> image path, for the per-image CPU fallback


def read_for_device(path: Path, pre: Preprocessing = DEFAULT) -> tuple[torch.Tensor, bool]:
    """(the file's bytes, True) for a JPEG the device decodes per policy; else the image
    decoded on the CPU per the policy of `pre` and False. ImageError if unusable."""
    try:
        with open_regular(path) as handle:
            data = handle.read()
    except ImageError:
        raise
    except OSError:
        return preprocess_image(path, pre), False  # the CPU path words the reason
    if data[:2] == b"\xff\xd8":
        try:
            with Image.open(io.BytesIO(data)) as img:
                plain = (
                    img.format == "JPEG"
                    and img.mode in _DEVICE_MODES
                    and not size_problem(img.size, pre.resize)  # else the CPU path words it
                    and img.getexif().get(_EXIF_ORIENTATION, 1) == 1
                )
        except Exception:  # let the CPU path decide and word the failure
            plain = False
        if plain:
            return torch.frombuffer(bytearray(data), dtype=torch.uint8), True  # (L,)
    return preprocess_image(path, pre), False


class RawImageDataset(ImageDataset):
    """Like ImageDataset, but plain JPEGs come as bytes for the device decoder."""

    def __getitem__(self, index: int) -> RawItem:  # type: ignore[override]
        row = self.rows[index]
        stamp = NO_STAMP
        try:
            path = resolve_image_path(self.root, self.names[row])
            stamp = image_stamp(path)
            data, is_jpeg = read_for_device(path, self.pre)
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


def decode_on_device(
    batch: RawBatch,
    device: torch.device,
    stats: DecodeStats | None = None,
    pre: Preprocessing = DEFAULT,
) -> ImageBatch:
    """RawBatch -> ImageBatch with uint8 (K, 3, S, S) images on `device` (resized and cropped
    per `pre`), rows ascending; `stats` counts the JPEGs that fell back to the CPU path."""
    images = {
        row: image.to(device, non_blocking=True)
        for row, image in zip(batch.decoded_rows, batch.decoded, strict=True)
    }
    failures = list(batch.failures)
    for row, image in zip(batch.jpeg_rows, decode_jpegs(batch.jpegs, device), strict=True):
        if image is None:  # the device decoder refused it: the CPU path, per image
            if stats is not None:
                stats.fallbacks += 1
            try:
                image = preprocess_image(batch.paths[row], pre).to(device)
            except ImageError as exc:
                failures.append((row, str(exc)))
                continue
        else:
            try:
                image = resize_crop_tensor(image, pre)  # (3, S, S) uint8 on device
            except (MemoryError, torch.OutOfMemoryError):
                failures.append((row, "out of memory while resizing it on the device"))
                continue
        images[row] = image
    rows = sorted(images)
    stacked = torch.stack([images[row] for row in rows]) if rows else empty_images(pre, device)
    return ImageBatch(rows, stacked, sorted(failures), batch.stamps)


def decode_jpegs(jpegs: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """JPEG bytes, each (L,) uint8 on the CPU -> RGB (3, H, W) uint8 on `device`, None for
    each image the decoder (`jpeg_decoder`) cannot decode."""
    return jpeg_decoder().decode(jpegs, device) if jpegs else []


@functools.cache
def jpeg_decoder() -> JpegDecoder:
    """The JPEG decoder, chosen once, at first use: TorchCodec where it is installed, else
    torchvision's while it has one, else Pillow's."""
    if importlib.util.find_spec("torchcodec") is not None:
        try:
            from torchcodec.decoders import decode_jpeg as torchcodec_decode
        except ImportError:  # installed but unusable (e.g. built without its image codecs)
            pass
        else:
            return JpegDecoder("torchcodec", functools.partial(_torchcodec, torchcodec_decode))
    import torchvision.io  # (no decoder is imported by name: it may be gone)

    if hasattr(torchvision.io, "decode_jpeg"):
        return JpegDecoder("torchvision", _torchvision)
    return JpegDecoder("pillow", _pillow)


def _torchcodec(decode: Callable, jpegs: list[torch.Tensor], device: torch.device) -> list:
    """TorchCodec's decode_jpeg, one image per call (any failure: None, the CPU path)."""
    out: list[torch.Tensor | None] = []
    for data in jpegs:
        try:
            image = decode(data, device=str(device))  # (C, H, W) uint8, RGB by default
            out.append(_as_rgb(image.to(device)))
        except Exception:  # its error types are not part of its API
            out.append(None)
    return out


def _torchvision(jpegs: list[torch.Tensor], device: torch.device) -> list:
    """torchvision.io.decode_jpeg: the whole batch in one call (nvjpeg on CUDA), one by one
    when an image fails it. Its DeprecationWarning (torchvision >= 0.29) is silenced here."""
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", _TORCHVISION_DEPRECATION, category=DeprecationWarning)
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


def _pillow(jpegs: list[torch.Tensor], device: torch.device) -> list:
    """Pillow's full-size decode on the CPU (no draft scaling), then copied to `device`."""
    out: list[torch.Tensor | None] = []
    for data in jpegs:
        try:
            with Image.open(io.BytesIO(data.numpy().tobytes())) as img:
                pixels = np.asarray(img.convert("RGB"))  # (H, W, 3) uint8
        except (OSError, ValueError, Image.DecompressionBombError):
            out.append(None)
            continue
        image = torch.from_numpy(pixels.copy()).permute(2, 0, 1)  # (3, H, W)
        out.append(image.to(device))
    return out


def _as_rgb(image: torch.Tensor) -> torch.Tensor:
    """(1 or 3, H, W) -> (3, H, W): a grayscale decode repeated over the three channels."""
    return image.repeat(3, 1, 1) if image.shape[0] == 1 else image
