"""Attention figure: grid size, per-word tiles, the image tile, image modes, raw weights."""

import numpy as np
import pytest
from PIL import Image

from pipeline.infer.attention_maps import (
    DARKEST,
    LABEL_BAND,
    attention_npy,
    attention_png,
    overlay_tile,
)

CELL = 32


def _one_hot(location: int) -> np.ndarray:
    """(49,) attention entirely on one grid location."""
    alpha = np.zeros(49, dtype=np.float32)
    alpha[location] = 1.0
    return alpha


def _tile(sheet: np.ndarray, index: int, columns: int, cell: int = CELL) -> np.ndarray:
    """Pixels (cell, cell, 3) of tile `index` of a rendered sheet."""
    left, top = (index % columns) * cell, (index // columns) * (cell + LABEL_BAND)
    return sheet[top : top + cell, left : left + cell]


def _band(sheet: np.ndarray, index: int, columns: int, cell: int = CELL) -> np.ndarray:
    """Pixels of the label band under tile `index`."""
    left, top = (index % columns) * cell, (index // columns) * (cell + LABEL_BAND) + cell
    return sheet[top : top + LABEL_BAND, left : left + cell]


def render_attention(image, words, alphas, path, cell=CELL, columns=5) -> None:
    """Write attention_png's bytes to `path` (as caption --attention-dir does)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(attention_png(image, words, alphas, cell, columns))


def _noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


@pytest.mark.parametrize(
    ("n_words", "columns", "size"),
    [
        (6, 5, (5 * CELL, 2 * (CELL + LABEL_BAND))),  # 7 tiles: 5 + 2
        (2, 5, (3 * CELL, CELL + LABEL_BAND)),  # fewer tiles than columns
        (0, 4, (CELL, CELL + LABEL_BAND)),  # just the image
        (7, 4, (4 * CELL, 2 * (CELL + LABEL_BAND))),  # 8 tiles fill two rows exactly
    ],
)
def test_png_has_the_documented_size(tmp_path, n_words, columns, size):
    alphas = np.random.default_rng(1).random((n_words, 49))
    path = tmp_path / "figs" / "attention.png"

    render_attention(
        _noise_image(50, 40), [f"w{i}" for i in range(n_words)], alphas, path, CELL, columns
    )

    with Image.open(path) as written:
        assert written.format == "PNG"
        assert written.size == size


def test_image_tile_is_the_centre_crop_and_word_tiles_follow_their_attention(tmp_path):
    image = np.zeros((CELL, 3 * CELL, 3), dtype=np.uint8)  # red | white | blue thirds
    image[:, :CELL, 0] = 255
    image[:, CELL : 2 * CELL] = 255
    image[:, 2 * CELL :, 2] = 255
    alphas = np.stack([_one_hot(0), _one_hot(48)])  # top-left, then bottom-right
    path = tmp_path / "attention.png"

    render_attention(Image.fromarray(image), ["dog", "grass"], alphas, path, CELL, columns=5)

    sheet = np.asarray(Image.open(path).convert("RGB"))
    first, dog, grass = (_tile(sheet, i, columns=5) for i in range(3))
    assert (first == 255).all()  # the image tile is the (white) centre of the image
    assert not np.array_equal(dog, grass)
    assert dog[0, 0].min() > 240 and dog[-1, -1].max() < 255 * DARKEST + 2
    assert grass[-1, -1].min() > 240 and grass[0, 0].max() < 255 * DARKEST + 2
    assert (_band(sheet, 0, columns=5) == 255).all()  # the image tile has no label
    assert (_band(sheet, 1, columns=5) < 128).any()  # "dog" is written under its tile


def test_image_tile_equals_a_square_input_exactly(tmp_path):
    image = _noise_image(CELL, CELL, seed=3)
    path = tmp_path / "attention.png"

    render_attention(image, ["a"], np.ones((1, 49)), path, CELL)

    sheet = np.asarray(Image.open(path).convert("RGB"))
    assert np.array_equal(_tile(sheet, 0, columns=2), np.asarray(image))
    assert np.array_equal(_tile(sheet, 1, columns=2), np.asarray(image))  # uniform: not darkened


def test_overlay_is_smooth_and_normalised_per_word():
    white = Image.new("RGB", (64, 64), "white")
    ramp = np.tile(np.arange(7, dtype=np.float32), (7, 1)) * 0.001  # (7, 7), rising to the right
    # tiny weights still use the full range after per-word normalisation

    tile = np.asarray(overlay_tile(white, ramp, cell=64))[..., 0]

    assert tile.shape == (64, 64)
    assert tile[:, 0].max() <= round(255 * DARKEST) + 1 and tile[:, -1].min() >= 254
    assert len(np.unique(tile[32])) > 30  # a smooth ramp, not 7 flat blocks


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "CMYK"])
def test_any_image_mode_is_rendered_as_rgb(tmp_path, mode):
    gradient = np.tile(np.linspace(0, 1, 40), (30, 1))  # (30, 40), dark left to bright right
    if mode == "I;16":
        image = Image.fromarray((gradient * 65535).astype(np.uint16))  # full 16-bit range
        assert image.mode == "I;16"
    else:
        image = Image.fromarray((gradient * 255).astype(np.uint8), "L").convert(mode)
    path = tmp_path / f"{mode.replace(';', '_')}.png"

    render_attention(image, ["a", "cat"], np.random.default_rng(2).random((2, 49)), path, CELL)

    with Image.open(path) as written:
        assert written.mode == "RGB" and written.size == (3 * CELL, CELL + LABEL_BAND)
        first = _tile(np.asarray(written), 0, columns=3)
    assert first.min() < 40 and first.max() > 215  # dark and bright both survive the conversion


def test_attention_npy_round_trip(tmp_path):
    alphas = np.random.default_rng(4).random((5, 49))  # float64 in
    path = tmp_path / "img1.npy"
    path.write_bytes(attention_npy(alphas))

    loaded = np.load(path)
    assert loaded.dtype == np.float32 and loaded.shape == (5, 49)
    assert np.array_equal(loaded, alphas.astype(np.float32))


@pytest.mark.parametrize(
    ("words", "alphas"),
    [
        (["a", "b"], np.ones((3, 49))),  # T != len(words)
        (["a"], np.ones((1, 50))),  # not 49 locations
        (["a"], np.full((1, 49), np.nan)),
    ],
)
def test_bad_attention_raises_value_error(words, alphas):
    with pytest.raises(ValueError):
        attention_png(_noise_image(8, 8), words, alphas, CELL)
    if alphas.shape[0] == len(words):  # the raw weights are refused for the same reasons
        with pytest.raises(ValueError):
            attention_npy(alphas)
