"""The device-decode path (JPEG bytes decoded by the chosen decoder, resized on tensors), run
on the CPU: what a CUDA extraction does, minus the device. It must match the Pillow path."""

from __future__ import annotations

import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from pipeline import contract
from pipeline.config import load_config
from pipeline.errors import UserError
from pipeline.extract.backbone import resolve_weights
from pipeline.extract.device_decode import (
    _pillow,
    decode_jpegs,
    jpeg_decoder,
    read_for_device,
)
from pipeline.extract.extractor import ExtractJob, run_extraction
from pipeline.extract.images import crop_tensor, open_rgb, resize_crop_tensor
from pipeline.extract.job import report


def photo(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), np.int16)
    noise = rng.integers(-10, 10, size=base.shape)
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("device-decode")
    photo(320, 240, 0).save(root / "a.jpg", quality=92)
    photo(240, 330, 1).save(root / "b.jpg", quality=92)
    photo(300, 200, 2).convert("L").save(root / "gray.jpg", quality=92)
    Image.new("CMYK", (64, 64), (0, 255, 255, 0)).save(root / "cmyk.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6
    photo(96, 64, 3).save(root / "rotated.jpg", exif=exif)
    photo(80, 60, 4).save(root / "c.png")
    whole = (root / "a.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(whole[: len(whole) // 3])
    return root


def test_tensor_resize_crop_matches_the_pil_path(folder):
    for name in ("a.jpg", "b.jpg"):
        pil = crop_tensor(open_rgb(folder / name)).int()  # (3, 224, 224)
        raw = torch.frombuffer(bytearray((folder / name).read_bytes()), dtype=torch.uint8)
        tensor = resize_crop_tensor(decode_jpegs([raw], torch.device("cpu"))[0]).int()
        assert tensor.shape == pil.shape and tensor.dtype == torch.int32
        diff = (tensor - pil).abs().float()
        assert diff.mean() < 1.0 and diff.max() <= 12


def test_only_plain_jpegs_go_to_the_device_decoder(folder):
    routed = {
        name: read_for_device(folder / name)[1]
        for name in ("a.jpg", "gray.jpg", "cmyk.jpg", "rotated.jpg", "c.png")
    }
    assert routed == {
        "a.jpg": True,
        "gray.jpg": True,
        "cmyk.jpg": False,
        "rotated.jpg": False,
        "c.png": False,
    }


def jpeg_bytes(path: Path) -> torch.Tensor:
    return torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)  # (L,)


def test_the_decoder_is_chosen_lazily_and_warns_of_no_deprecation(folder):
    raws = [jpeg_bytes(folder / "a.jpg"), jpeg_bytes(folder / "truncated.jpg")]
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        images = decode_jpegs(raws, torch.device("cpu"))
    assert jpeg_decoder().name in ("torchcodec", "torchvision", "pillow")
    assert images[0].shape == (3, 240, 320) and images[0].dtype == torch.uint8
    assert images[1] is None  # the CPU path decides (and words) what to do with it


def test_the_pillow_fallback_decodes_like_the_chosen_decoder(folder):
    raws = [jpeg_bytes(folder / name) for name in ("a.jpg", "gray.jpg", "truncated.jpg")]
    chosen, pillow = decode_jpegs(raws, torch.device("cpu")), _pillow(raws, torch.device("cpu"))
    for a, b in zip(chosen[:2], pillow[:2], strict=True):
        assert a.shape == b.shape and b.shape[0] == 3
        assert (a.int() - b.int()).abs().max() <= 2
    assert pillow[2] is None


def test_features_decode_is_checked():
    with pytest.raises(UserError, match="features.decode must be one of auto, device, cpu"):
        load_config(None, ["features.decode=gpu"])


def extract(folder: Path, out: Path, device_decode: bool) -> dict:
    names = sorted(p.name for p in folder.iterdir())
    job = ExtractJob(
        images_root=folder,
        names=names,
        out=out,
        weights=resolve_weights("none"),
        device=torch.device("cpu"),
        precision="fp32",
        dtype="float32",
        batch_size=4,
        workers=0,
        progress=False,
        device_decode=device_decode,
    )
    result = run_extraction(job)
    report(result, job)
    with h5py.File(out) as f:
        return {
            "result": result,
            "status": f["status"][:],
            "features": f["features"][:],
            "failed": contract.read_failed(f),
        }


def test_device_decode_extraction_matches_the_cpu_path(folder, tmp_path, capsys):
    cpu = extract(folder, tmp_path / "cpu.h5", device_decode=False)
    capsys.readouterr()
    dev = extract(folder, tmp_path / "dev.h5", device_decode=True)
    lines = capsys.readouterr().err.splitlines()
    assert dev["result"].decode.fallbacks == 1  # truncated.jpg: refused, then failed on the CPU
    summary = next(line for line in lines if line.startswith("done: "))
    assert f"JPEGs decoded on cpu by {jpeg_decoder().name}, 1 fell back to the CPU" in summary
    np.testing.assert_array_equal(dev["status"], cpu["status"])
    assert set(dev["failed"]) == set(cpu["failed"]) == {"truncated.jpg"}
    ok = cpu["status"] == contract.WRITTEN
    a, b = dev["features"][ok], cpu["features"][ok]
    assert np.abs(a - b).max() < 0.05 * np.abs(b).max()
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.999
