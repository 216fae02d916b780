"""Image files -> uint8 (3, S, S) tensors under one preprocessing policy per backbone.

A backbone's `Preprocessing` (`preprocessing_for`) takes its sizes, interpolation, mean and
std from the transforms its torchvision weights declare (`weights.transforms()`: resize_size,
crop_size, interpolation, mean, std), the same with `weights = "none"`; ResNet50's are 256,
224, bilinear, ImageNet's mean/std (`DEFAULT`). The policy, in order (recorded in every
feature file as the `resize` attr, `Preprocessing.policy`, so stage two and `caption` can
refuse features made another way), with ResNet50's numbers:

1. JPEG draft mode: the decoder is asked for the smallest DCT scale (1/2, 1/4, 1/8) that keeps
   BOTH sides >= 256 px, so the shorter side stays >= 256 and no detail the resize keeps is lost
   (about 1.6x faster decoding of large photos). Other formats decode at full size.
2. EXIF orientation applied (`ImageOps.exif_transpose`): the pixels are turned the way a
   viewer shows the photo.
3. To RGB: grayscale/1-bit/CMYK/YCbCr are converted; images with transparency (RGBA, LA, PA,
   palette with a transparency entry, GIF) are composited on WHITE (dropping alpha would expose
   whatever colour the encoder left under transparent pixels, often black or noise); 16-bit
   (I;16 / I) is scaled to 8 bits as round(v / 257) (65535 -> 255, full range, no clipping);
   animated GIF/PNG/WebP use their first frame.
4. Too small: an image whose shorter side is < 32 px is rejected (upscaling 9x7 px to 224 px
   makes a blur the backbone has never seen: the features would be noise, not a photo).
   Too thin: an image whose aspect ratio is beyond 50:1, or whose resized size (step 5) would
   exceed 4 M px, is rejected from its header, before anything is allocated (a 192 KB
   32 x 2,000,000 PNG would resize to 16 GB). Neither rule changes an accepted image's pixels,
   so the policy text (what a feature file records) does not mention them.
5. Resize so the shorter side is 256 (torchvision `resize` on the PIL image: bilinear,
   antialiased; swin_t's weights declare bicubic), centre crop 224x224, uint8 CHW tensor.
6. Normalisation ((x / 255 - mean) / std, the weights' mean/std) is done later on whole batches
   on the model's device (`normalize_batch`): uint8 crosses the DataLoader, 4x less IPC than
   float.

Pillow's decompression-bomb guard stays on and truncated files are NOT loaded: both, like a
missing file or a file that is not an image (or one that runs out of memory), are per-image
failures with a reason (`ImageError`), never a crash of the run. Only regular files are read: a FIFO, socket or
device named as an image fails that image (checked before opening, and again on the opened
descriptor, which is opened non-blocking so a FIFO can never hang the run). Inside an images
folder, a name whose symlinks resolve outside the folder is refused like `../x.jpg`.
"""

from __future__ import annotations

import errno
import functools
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.models import get_weight
from torchvision.transforms import InterpolationMode

from pipeline.backbones import BACKBONES, DEFAULT_BACKBONE, backbone
from pipeline.captions.readers import unsafe_name_reason

MIN_SIDE = 32
MAX_ASPECT = 50  # longer side / shorter side
MAX_RESIZED_PIXELS = 4_000_000  # pixels of the image after step 5, before the crop


@dataclass(frozen=True)
class Preprocessing:
    """Steps 5 and 6 of the policy for one backbone: shorter side -> `resize`, centre crop
    `crop` x `crop`, then (x / 255 - mean) / std."""

    resize: int
    crop: int
    interpolation: str  # an InterpolationMode value: "bilinear" | "bicubic"
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def mode(self) -> InterpolationMode:
        """The interpolation as torchvision's enum."""
        return InterpolationMode(self.interpolation)

    @property
    def policy(self) -> str:
        """The whole policy as a feature file's `resize` attr records it."""
        return (
            f"captioner-v1: jpeg draft (both sides >= {self.resize}); exif_transpose; RGB "
            "(alpha on white, 16-bit round(v/257), first frame); reject shorter side < 32; "
            f"shorter side -> {self.resize} {self.interpolation} antialias; centre crop "
            f"{self.crop}; uint8; (x/255 - mean)/std on the batch"
        )

    def attrs(self) -> dict:
        """The feature-file attrs that record it: image_size, resize (the policy), mean, std."""
        return {
            "image_size": self.crop,
            "resize": self.policy,
            "mean": list(self.mean),
            "std": list(self.std),
        }


@functools.cache
def preprocessing_for(name: str) -> Preprocessing:
    """Backbone `name`'s preprocessing, as its torchvision weights' transforms() declare it."""
    transforms = get_weight(backbone(name).preprocessing_weights).transforms()
    return Preprocessing(
        resize=int(transforms.resize_size[0]),
        crop=int(transforms.crop_size[0]),
        interpolation=transforms.interpolation.value,
        mean=tuple(float(v) for v in transforms.mean),
        std=tuple(float(v) for v in transforms.std),
    )


DEFAULT = preprocessing_for(DEFAULT_BACKBONE)  # ResNet50's: 256, 224, bilinear, ImageNet


def preprocessing_of(attrs: dict) -> Preprocessing:
    """The preprocessing of a feature file's (or a fingerprint's) backbone; `DEFAULT` for a
    testbed's file or an unknown backbone (whose crops are then only shown, never encoded)."""
    name = str(attrs.get("backbone", DEFAULT_BACKBONE))
    return preprocessing_for(name) if name in BACKBONES else DEFAULT


NO_STAMP = (-1, -1)  # (size, mtime_ns) of an image that could not be stat'ed
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")
_WHITE = (255, 255, 255)


class ImageError(Exception):
    """An image that cannot be used; the message is the reason shown to the user."""


def resolve_image_path(root: str | Path, name: str) -> Path:
    """`root / name` for a relative POSIX `name` that stays inside `root`, symlinks resolved;
    else ImageError."""
    reason = unsafe_name_reason(name)
    if reason:
        raise ImageError(f"unsafe name ({reason}): not read")
    path = Path(root) / name
    if not path.resolve().is_relative_to(Path(root).resolve()):
        raise ImageError("unsafe name (a symlink resolving outside the images folder): not read")
    return path


def image_stamp(path: str | Path) -> tuple[int, int]:
    """(size in bytes, mtime in ns) of the file `path` points to; NO_STAMP if it cannot be stat'ed."""
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        return NO_STAMP
    return info.st_size, info.st_mtime_ns


def _not_regular(mode: int) -> str:
    """Why a file of this st_mode cannot be an image ("" for a regular file)."""
    if stat.S_ISREG(mode):
        return ""
    if stat.S_ISDIR(mode):
        return "is a directory, not an image file"
    kinds = (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    )
    kind = next((text for test, text in kinds if test(mode)), "a special file")
    return f"not a regular file ({kind})"


def open_regular(path: str | Path):
    """A binary file object for `path`, which must be a regular file; never blocks on a FIFO.

    ImageError for anything else (checked with stat before opening and fstat after).
    """
    reason = _not_regular(os.stat(path).st_mode)
    if reason:
        raise ImageError(reason)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ENXIO, errno.ENODEV):  # a socket, or swapped for a device
            raise ImageError("not a regular file") from None
        raise
    reason = _not_regular(os.fstat(fd).st_mode)
    if reason:
        os.close(fd)
        raise ImageError(reason)
    return os.fdopen(fd, "rb")


def open_rgb(path: str | Path, resize: int = DEFAULT.resize) -> Image.Image:
    """Decode `path` into an RGB PIL image per steps 1-4 of the policy (for a shorter side
    resized to `resize` next); ImageError if unusable."""
    try:
        with open_regular(path) as handle, Image.open(handle) as img:
            _check_size(img.size, resize)
            if img.format == "JPEG":
                img.draft("RGB", (resize, resize))  # DCT-scaled decode, both sides >= resize
            img.load()
            return to_rgb(ImageOps.exif_transpose(img))
    except (ImageError, MemoryError):  # preprocess_image words running out of memory
        raise
    except FileNotFoundError:
        raise ImageError("missing file") from None
    except IsADirectoryError:
        raise ImageError("is a directory, not an image file") from None
    except PermissionError:
        raise ImageError("cannot read the file (permission denied)") from None
    except UnidentifiedImageError:
        raise ImageError("not an image file (Pillow cannot identify it)") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(f"refused as a decompression bomb ({exc})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"truncated or corrupt image ({exc})") from None
    except Exception as exc:  # any other decoder failure is this image's problem, not the run's
        raise ImageError(f"cannot decode ({type(exc).__name__}: {exc})") from None


def size_problem(size: tuple[int, int], resize: int = DEFAULT.resize) -> str:
    """Why an image of `size` (width, height) is refused before decoding ("" when it is not),
    its shorter side to be resized to `resize`."""
    short, long = min(size), max(size)
    if short < MIN_SIDE:
        return f"too small: {size[0]}x{size[1]} px (shorter side must be >= {MIN_SIDE})"
    if long > MAX_ASPECT * short:
        ratio = f"{long / short:.2f}".rstrip("0").rstrip(".")
        return f"aspect ratio {ratio}:1 is beyond {MAX_ASPECT}:1 ({size[0]}x{size[1]} px)"
    resized = resize * round(long * resize / short)
    if resized > MAX_RESIZED_PIXELS:
        return (
            f"too large: {size[0]}x{size[1]} px resizes to {resized:,} px "
            f"(at most {MAX_RESIZED_PIXELS:,})"
        )
    return ""


def _check_size(size: tuple[int, int], resize: int) -> None:
    problem = size_problem(size, resize)
    if problem:
        raise ImageError(problem)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB: alpha composited on white, 16-bit scaled to 8 bits."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        wide = np.asarray(img, dtype=np.float64)  # (H, W), values 0..65535
        eight = np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(eight).convert("RGB")  # (H, W) uint8 -> mode L -> RGB
    try:
        if img.mode == "P" and "transparency" in img.info:
            img = img.convert("RGBA")
        if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, _WHITE + (255,))
            return Image.alpha_composite(background, rgba).convert("RGB")
        return img.convert("RGB")
    except ValueError:
        raise ImageError(f"unsupported image mode {img.mode}") from None


def crop_tensor(img: Image.Image, pre: Preprocessing = DEFAULT) -> torch.Tensor:
    """RGB PIL image -> shorter side `pre.resize` (antialiased) -> centre `pre.crop` -> uint8
    (3, S, S), S = pre.crop (ResNet50: 256 bilinear, 224)."""
    img = TF.resize(img, pre.resize, interpolation=pre.mode, antialias=True)
    img = TF.center_crop(img, [pre.crop, pre.crop])
    return TF.pil_to_tensor(img)  # (3, S, S) uint8


def resize_crop_tensor(image: torch.Tensor, pre: Preprocessing = DEFAULT) -> torch.Tensor:
    """uint8 (3, H, W) on any device -> shorter side `pre.resize` (antialiased) -> centre crop.

    The tensor twin of `crop_tensor` (used where images are decoded on the GPU): equal to it
    within a few grey levels, not bit for bit. Returns uint8 (3, S, S) on the same device.
    """
    resized = TF.resize(image, pre.resize, interpolation=pre.mode, antialias=True)
    return TF.center_crop(resized, [pre.crop, pre.crop])


def preprocess_image(path: str | Path, pre: Preprocessing = DEFAULT) -> torch.Tensor:
    """One image file -> uint8 (3, S, S) under the policy of `pre`; ImageError with a reason if
    unusable.

    Caption-time extraction calls this (then `normalize_batch` and the backbone) to reproduce
    a feature file's features exactly. Running out of memory fails this image, not the run.
    """
    try:
        return crop_tensor(open_rgb(path, pre.resize), pre)
    except MemoryError:
        raise ImageError("out of memory while decoding or resizing it") from None


def normalize_batch(
    images: torch.Tensor, device: torch.device | str, pre: Preprocessing = DEFAULT
) -> torch.Tensor:
    """uint8 (B, 3, S, S) -> float32 (B, 3, S, S) on `device`, normalised with `pre`'s mean and
    std, channels_last (the layout the backbone runs fastest in)."""
    x = images.to(device, non_blocking=True).float().div_(255)  # (B, 3, S, S) in [0, 1]
    mean = torch.tensor(pre.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(pre.std, device=x.device).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std).contiguous(memory_format=torch.channels_last)


def list_image_files(root: str | Path) -> list[str]:
    """Every image file under `root` (recursive, by suffix), as sorted relative POSIX paths.

    Hidden files and folders (name starting with ".") are skipped.
    """
    root = Path(root)
    names = []
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            names.append(rel.as_posix())
    return sorted(names)


class ImageItem(NamedTuple):
    """One dataset item: the feature-file row, the image or None, why it is None, and the
    file's (size, mtime_ns) stamp taken before reading it."""

    row: int
    image: torch.Tensor | None  # (3, S, S) uint8
    error: str
    stamp: tuple[int, int] = NO_STAMP


class ImageBatch(NamedTuple):
    """A collated batch: images that decoded, their rows, and (row, reason) for the others."""

    rows: list[int]  # rows of `images`, ascending
    images: torch.Tensor  # (K, 3, S, S) uint8, K = len(rows)
    failures: list[tuple[int, str]]
    stamps: dict[int, tuple[int, int]]  # every row of the batch -> (size, mtime_ns)


class ImageDataset(Dataset):
    """Rows `rows` of the image list `names` (relative to `root`), decoded per the policy of
    `pre`.

    `__getitem__` never raises for a bad image: it returns ImageItem(row, None, reason).
    """

    def __init__(
        self,
        root: str | Path,
        names: Sequence[str],
        rows: Sequence[int],
        pre: Preprocessing = DEFAULT,
    ) -> None:
        self.root = Path(root)
        self.names = names
        self.rows = list(rows)
        self.pre = pre

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> ImageItem:
        row = self.rows[index]
        stamp = NO_STAMP
        try:
            path = resolve_image_path(self.root, self.names[row])
            stamp = image_stamp(path)
            return ImageItem(row, preprocess_image(path, self.pre), "", stamp)
        except ImageError as exc:
            return ImageItem(row, None, str(exc), stamp)


def collate_images(items: list[ImageItem]) -> ImageBatch:
    """DataLoader collate_fn: stack the decoded images, keep the failures aside."""
    good = [item for item in items if item.image is not None]
    if good:
        images = torch.stack([item.image for item in good])  # (K, 3, S, S) uint8
    else:
        images = empty_images(DEFAULT)
    failures = [(item.row, item.error) for item in items if item.image is None]
    stamps = {item.row: item.stamp for item in items}
    return ImageBatch([item.row for item in good], images, failures, stamps)


def empty_images(pre: Preprocessing, device: torch.device | str = "cpu") -> torch.Tensor:
    """A batch of no images: uint8 (0, 3, S, S)."""
    return torch.empty((0, 3, pre.crop, pre.crop), dtype=torch.uint8, device=device)
