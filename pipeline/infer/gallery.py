"""Gallery cards for the HTML reports: an image's caption, references and small JPEGs.

A card is one image: its thumbnail (the crop the model saw, 224 x 224 for every backbone of
the table, ~200 px), its caption, its references and CIDEr when known, and the per-word
attention strip (one small overlay of the grid's cells, 7 x 7 or 14 x 14, per word). Without the image (the cache alone), the attention is drawn on a neutral
background. Pictures are embedded as JPEG data URIs: the report stays one file.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torchvision.transforms.functional as TF
from PIL import Image

from pipeline.extract.images import (
    DEFAULT,
    ImageError,
    Preprocessing,
    preprocess_image,
    resolve_image_path,
)
from pipeline.infer.attention_maps import overlay_tile

THUMBNAIL = 200  # px, square
TILE = 56  # px, one word's attention overlay
JPEG_QUALITY = 78
NEUTRAL = (204, 204, 204)  # background for attention when the image is missing


@dataclass
class Card:
    """One image of a gallery."""

    name: str  # image name (relative path) or file path
    caption: str
    words: list[str]  # the generated words, one per attention row
    attention: np.ndarray  # (T, R) float32
    image: Image.Image | None  # the RGB crop the model saw, None when not found
    references: list[str] | None = None
    cider: float | None = None  # this image's CIDEr (0-1 scale)
    class_token: bool = False  # the attention's last region is a class token, not a cell


def load_crop(
    images_root: str | Path, name: str, pre: Preprocessing = DEFAULT
) -> Image.Image | None:
    """The RGB crop the extractor fed the model (preprocessed per `pre`, the backbone's), or
    None when unreadable/missing."""
    if not images_root or not Path(images_root).is_dir():
        return None
    try:
        return TF.to_pil_image(preprocess_image(resolve_image_path(images_root, name), pre))
    except ImageError:
        return None


def jpeg_data_uri(image: Image.Image, size: int) -> str:
    """`image` resized to size x size as a base64 JPEG data URI."""
    buffer = io.BytesIO()
    image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC).save(
        buffer, format="JPEG", quality=JPEG_QUALITY, optimize=True
    )
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def thumbnail_uri(card: Card) -> str | None:
    """The card's thumbnail as a data URI, None without an image."""
    return jpeg_data_uri(card.image, THUMBNAIL) if card.image is not None else None


def attention_uris(card: Card) -> list[str]:
    """One data URI per word: its attention over the grid's cells on the image (or a neutral
    square)."""
    base = card.image if card.image is not None else Image.new("RGB", (TILE, TILE), NEUTRAL)
    return [
        jpeg_data_uri(overlay_tile(base, row, cell=TILE, class_token=card.class_token), TILE)
        for row in card.attention
    ]
