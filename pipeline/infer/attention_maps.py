"""Attention figures ("Show, Attend and Tell" Figure 11), drawn with Pillow only.

`attention_png` encodes one PNG grid: the first tile is the image itself (resized and centre-cropped
to cell x cell), then one tile per generated word, showing that word's attention map over the
grid's cells (7x7 for ResNet50, 14x14 for vit_b_16's patches) upsampled smoothly (bicubic) to
cell x cell, normalised per word (its least-attended point maps to 0, its most
attended to 1) and used to darken the image: a pixel keeps `DARKEST + (1 - DARKEST) * attention` of its
brightness. Every tile has a white label band of LABEL_BAND pixels underneath with the word in it
(the image tile's band is empty).

Output size, deterministic: with n = 1 + len(words) tiles and c = min(columns, n) columns,
    width = c * cell,  height = ceil(n / c) * (cell + LABEL_BAND).
Images of any Pillow mode are accepted and converted as the extractor converts them
(`extract.images.to_rgb`): alpha composited on white, 16-bit modes (I;16, I) divided down to
8 bits, everything else through Image.convert("RGB").

Attention rows have one weight per region, R of them: a g x g grid (R = g * g, row-major),
or with `class_token` a grid plus a kept class token (R = g * g + 1, the token last). The maps
show the cells; the class token's weight is left out of them (and kept in the .npy).
"""

import io
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from pipeline.extract.images import to_rgb

LABEL_BAND = 20  # pixels of label space under each tile
DARKEST = 0.2  # brightness kept where a word's attention is lowest


def overlay_tile(
    image: Image.Image, alpha: np.ndarray, cell: int = 224, class_token: bool = False
) -> Image.Image:
    """One cell x cell RGB tile: the fitted image darkened where `alpha` (R weights, or the
    g x g grid) is low."""
    return _shade(_fit(image, cell), alpha, class_token)


def attention_png(
    image: Image.Image,
    words: list[str],
    alphas: np.ndarray,
    cell: int = 224,
    columns: int = 5,
    class_token: bool = False,
) -> bytes:
    """The PNG grid (image tile, then one attention tile per word), encoded.

    `alphas` is (T, R) with T == len(words). Size: see the module docstring.
    """
    alphas = _check_alphas(alphas, class_token)  # (T, R)
    if alphas.shape[0] != len(words):
        raise ValueError(f"{len(words)} words but {alphas.shape[0]} attention rows")
    if cell < 1 or columns < 1:
        raise ValueError(f"cell and columns must be positive, got cell={cell}, columns={columns}")
    base = _fit(image, cell)  # (cell, cell) RGB
    tiles = [base] + [_shade(base, row, class_token) for row in alphas]
    labels = [""] + list(words)
    sheet = _grid(tiles, labels, cell, min(columns, len(tiles)))
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    return buffer.getvalue()


def attention_npy(alphas: np.ndarray, class_token: bool = False) -> bytes:
    """The raw (T, R) attention weights as the bytes of a float32 .npy file."""
    buffer = io.BytesIO()
    np.save(buffer, _check_alphas(alphas, class_token))  # (T, R)
    return buffer.getvalue()


def grid_side(regions: int, class_token: bool = False) -> int | None:
    """g for R = g * g regions (g * g + 1 with a class token); None for any other R."""
    cells = regions - int(class_token)
    side = math.isqrt(max(cells, 0))
    return side if side >= 1 and side * side == cells else None


def _check_alphas(alphas: np.ndarray, class_token: bool = False) -> np.ndarray:
    """(T, R) finite float32 copy of `alphas` (R a grid's cells, + 1 class token), or
    ValueError."""
    weights = np.asarray(alphas, dtype=np.float32)
    if weights.ndim != 2 or grid_side(weights.shape[1], class_token) is None:
        token = " + 1 class token" if class_token else ""
        raise ValueError(
            f"attention must have shape (T, R), R = g * g regions{token}, got {weights.shape}"
        )
    if not np.isfinite(weights).all():
        raise ValueError("attention weights contain NaN or infinity")
    return weights


def _fit(image: Image.Image, cell: int) -> Image.Image:
    """The image as RGB (the extractor's conversion), resized and centre-cropped to cell x cell."""
    return ImageOps.fit(to_rgb(image), (cell, cell), method=Image.Resampling.BICUBIC)


def _attention_mask(alpha: np.ndarray, cell: int, class_token: bool = False) -> np.ndarray:
    """(cell, cell) float32 in [0, 1]: one word's map over the g x g cells (a class token's
    weight left out), normalised and bicubically upsampled."""
    weights = _check_alphas(np.reshape(alpha, (1, -1)), class_token)[0]  # (R,)
    side = grid_side(len(weights), class_token)
    grid = weights[: side * side].reshape(side, side)  # (g, g)
    grid = grid - grid.min()
    peak = float(grid.max())
    grid = grid / peak if peak > 0 else np.ones_like(grid)  # uniform attention: nothing darkened
    smooth = Image.fromarray(grid, "F").resize((cell, cell), Image.Resampling.BICUBIC)
    return np.clip(np.asarray(smooth, dtype=np.float32), 0.0, 1.0)  # bicubic overshoots a little


def _shade(tile: Image.Image, alpha: np.ndarray, class_token: bool = False) -> Image.Image:
    """Darken an RGB tile where the word's attention is low."""
    mask = _attention_mask(alpha, tile.width, class_token)  # (cell, cell)
    pixels = np.asarray(tile, dtype=np.float32)  # (cell, cell, 3)
    shaded = pixels * (DARKEST + (1.0 - DARKEST) * mask)[..., None]
    return Image.fromarray(shaded.round().astype(np.uint8), "RGB")


def _grid(tiles: list[Image.Image], labels: list[str], cell: int, columns: int) -> Image.Image:
    """Paste tiles row-major on a white sheet, each with its label centred in the band below."""
    rows = math.ceil(len(tiles) / columns)
    sheet = Image.new("RGB", (columns * cell, rows * (cell + LABEL_BAND)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for index, (tile, label) in enumerate(zip(tiles, labels, strict=True)):
        left, top = (index % columns) * cell, (index // columns) * (cell + LABEL_BAND)
        sheet.paste(tile, (left, top))
        text = _fit_label(draw, font, label, cell - 4)
        # Centre by measuring the text: anchors are not supported by Pillow's bitmap fallback font.
        x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
        origin = (left + (cell - x1 - x0) / 2, top + cell + (LABEL_BAND - y1 - y0) / 2)
        draw.text(origin, text, fill="black", font=font)
    return sheet


def _fit_label(draw: ImageDraw.ImageDraw, font, label: str, width: int) -> str:
    """The label, shortened with '..' until it fits `width` pixels."""
    if draw.textlength(label, font=font) <= width:
        return label
    while label and draw.textlength(label + "..", font=font) > width:
        label = label[:-1]
    return label + ".."
