"""Stage one preprocessing policy (pipeline.extract.images) on small real image files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.extract.images import (
    ImageDataset,
    ImageError,
    collate_images,
    list_image_files,
    normalize_batch,
    preprocess_image,
)

# A 256x256 image is not resized (shorter side already 256): the output is its centre crop.
CROP = (slice(16, 240), slice(16, 240))


def pixels(path) -> np.ndarray:
    """preprocess_image as (224, 224, 3) uint8."""
    out = preprocess_image(path)
    assert out.dtype == torch.uint8 and out.shape == (3, 224, 224)
    return out.permute(1, 2, 0).numpy()


def smooth_rgb(width: int, height: int, seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8 smooth random content (JPEG-friendly)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR))


def test_rgb_png_is_centre_crop(tmp_path):
    data = smooth_rgb(256, 256)
    Image.fromarray(data).save(tmp_path / "a.png")
    np.testing.assert_array_equal(pixels(tmp_path / "a.png"), data[CROP])


def test_grayscale_becomes_equal_channels(tmp_path):
    gray = smooth_rgb(256, 256)[..., 0]
    Image.fromarray(gray).save(tmp_path / "g.png")
    out = pixels(tmp_path / "g.png")
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray[CROP])


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    wide = np.linspace(0, 65535, 256 * 256).reshape(256, 256).astype(np.uint16)
    Image.fromarray(wide).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    out = pixels(tmp_path / "g16.png")
    expected = np.rint(wide[CROP] / 257.0).astype(np.uint8)
    np.testing.assert_array_equal(out[..., 1], expected)
    assert out.min() < 20 and out.max() > 235  # the full range survives


def test_rgba_is_composited_on_white(tmp_path):
    rgba = np.zeros((256, 256, 4), dtype=np.uint8)
    rgba[:, 128:] = (0, 0, 255, 255)  # right half opaque blue; left half transparent black
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    out = pixels(tmp_path / "t.png")
    assert (out[:, :100] == 255).all()
    assert (out[:, 124:] == (0, 0, 255)).all()


def test_palette_with_transparency_is_composited_on_white(tmp_path):
    img = Image.new("P", (256, 256), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.paste(1, (128, 0, 256, 256))  # right half red, left half index 0 (transparent black)
    img.save(tmp_path / "p.png", transparency=0)
    out = pixels(tmp_path / "p.png")
    assert (out[:, :100] == 255).all()
    assert (out[:, 124:] == (255, 0, 0)).all()


def test_gif_uses_first_frame(tmp_path):
    red = Image.new("RGB", (256, 256), (255, 0, 0))
    blue = Image.new("RGB", (256, 256), (0, 0, 255))
    red.save(tmp_path / "a.gif", save_all=True, append_images=[blue], duration=100)
    out = pixels(tmp_path / "a.gif").astype(int)
    assert np.abs(out - (255, 0, 0)).max() <= 2


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    Image.new("CMYK", (256, 256), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=95)
    out = pixels(tmp_path / "c.jpg").astype(int)
    assert np.abs(out - (255, 0, 0)).max() <= 8


def test_exif_orientation_is_applied(tmp_path):
    upright = np.zeros((256, 320, 3), dtype=np.uint8)  # (H, W): landscape
    upright[:, :160] = (255, 255, 255)  # left half white
    upright[:128, 160:] = (255, 0, 0)  # top-right red, bottom-right black
    Image.fromarray(upright).save(tmp_path / "upright.jpg", quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # portrait on disk
    stored.save(tmp_path / "rotated.jpg", quality=95, exif=exif)
    raw = Image.open(tmp_path / "rotated.jpg")
    assert raw.size == (256, 320)
    got = pixels(tmp_path / "rotated.jpg").astype(int)
    want = pixels(tmp_path / "upright.jpg").astype(int)
    ignored = pixels_without_exif(tmp_path, stored).astype(int)
    assert np.abs(got - want).mean() < 2
    assert np.abs(ignored - want).mean() > 50  # not applying the tag really differs


def pixels_without_exif(tmp_path, stored: Image.Image) -> np.ndarray:
    stored.save(tmp_path / "plain.jpg", quality=95)
    return pixels(tmp_path / "plain.jpg")


def test_large_jpeg_draft_decode_matches_full_decode(tmp_path):
    data = smooth_rgb(2048, 1536, seed=3)
    Image.fromarray(data).save(tmp_path / "big.jpg", quality=95)
    with Image.open(tmp_path / "big.jpg") as img:
        img.draft("RGB", (256, 256))
        assert img.size == (512, 384)  # decoded at 1/4 scale: shorter side still >= 256
    got = pixels(tmp_path / "big.jpg").astype(int)
    full = Image.open(tmp_path / "big.jpg").convert("RGB").resize((341, 256), Image.BILINEAR)
    want = np.asarray(full)[16:240, 58:282].astype(int)
    assert np.abs(got - want).mean() < 2


def test_normalize_batch_is_imagenet_normalisation():
    images = torch.tensor([0, 128, 255], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 2, 2)
    x = normalize_batch(images.contiguous(), "cpu")
    assert x.dtype == torch.float32 and x.shape == (2, 3, 2, 2)
    expected = [(0 - 0.485) / 0.229, (128 / 255 - 0.456) / 0.224, (1 - 0.406) / 0.225]
    np.testing.assert_allclose(x[0, :, 0, 0].numpy(), expected, rtol=1e-6)


@pytest.fixture
def bad_folder(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    Image.fromarray(smooth_rgb(64, 48)).save(root / "good.png")
    Image.fromarray(smooth_rgb(9, 7)).save(root / "tiny.png")
    noise = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    Image.fromarray(noise).save(root / "full.jpg", quality=90)
    whole = (root / "full.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (root / "text.jpg").write_text("this is not an image\n")
    (root / "folder.jpg").mkdir()
    Image.fromarray(smooth_rgb(64, 64)).save(tmp_path / "outside.png")
    return root


@pytest.mark.parametrize(
    "name, reason",
    [
        ("missing.jpg", "missing file"),
        ("truncated.jpg", "truncated"),
        ("text.jpg", "not an image"),
        ("tiny.png", "too small: 9x7"),
        ("folder.jpg", "directory"),
        ("../outside.png", "unsafe name"),
        ("/etc/passwd", "unsafe name"),
    ],
)
def test_bad_images_are_failures_with_reasons(bad_folder, name, reason):
    item = ImageDataset(bad_folder, [name], [0])[0]
    assert item.row == 0 and item.image is None
    assert reason in item.error


def test_decompression_bomb_guard_stays_on(bad_folder, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # good.png has 3072 > 2 * 500 pixels
    with pytest.raises(ImageError, match="decompression bomb"):
        preprocess_image(bad_folder / "good.png")


def test_dataset_and_collate_keep_rows_and_failures(bad_folder):
    names = ["good.png", "text.jpg", "full.jpg", "tiny.png"]
    dataset = ImageDataset(bad_folder, names, [0, 1, 2, 3])
    batch = collate_images([dataset[i] for i in range(len(dataset))])
    assert batch.rows == [0, 2]
    assert batch.images.shape == (2, 3, 224, 224) and batch.images.dtype == torch.uint8
    assert [row for row, _ in batch.failures] == [1, 3]
    empty = collate_images([dataset[1]])
    assert empty.images.shape == (0, 3, 224, 224) and empty.rows == []


def test_list_image_files_recursive_sorted(tmp_path):
    for name in ["b.jpg", "a/c.PNG", "a/b/d.gif", ".hidden/x.jpg", "a/.y.jpg", "notes.txt"]:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    assert list_image_files(tmp_path) == ["a/b/d.gif", "a/c.PNG", "b.jpg"]
