"""`captioner extract` end to end: features, HDF5 contract, resume, bad inputs, CLI errors.

Weights are always `none` (random init, seed 0; no download). Small real images and real
HDF5 files; the command runs through click's CliRunner or in a subprocess.
"""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torchvision
from click.testing import CliRunner
from PIL import Image
from torchvision import transforms

from pipeline import contract
from pipeline.errors import UserError
from pipeline.extract.backbone import (
    GridEncoder,
    build_backbone,
    fold_batch_norms,
    resolve_weights,
)
from pipeline.extract.cli import extract_command
from pipeline.extract.extractor import FeatureEncoder, check_policy, contiguous_runs

REPO = Path(__file__).resolve().parents[1]
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
RUN_CLI = (
    "import sys; from pipeline.extract.cli import extract_command; extract_command(sys.argv[1:])"
)


def run(*args) -> object:
    """Invoke `captioner extract` in-process; returns click's Result."""
    return CliRunner().invoke(extract_command, [str(a) for a in args])


def assert_ok(result) -> None:
    assert result.exit_code == 0, result.output


def assert_user_error(result, *fragments: str) -> None:
    """Exit 2, a one-line `error:` message containing `fragments`, no traceback."""
    assert result.exit_code == 2, result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def smooth_image(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(5, 5, 3), dtype=np.uint8)
    fine = rng.integers(0, 40, size=(height, width, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR))
    return Image.fromarray((base.astype(np.int16) + fine - 20).clip(0, 255).astype(np.uint8))


def reference_features(paths: list[Path], seed: int = 0) -> np.ndarray:
    """torchvision transforms + torchvision resnet50 (seeded init) -> (N, 49, 2048) float32."""
    tf = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    x = torch.stack([tf(Image.open(p).convert("RGB")) for p in paths])  # (N, 3, 224, 224)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = torchvision.models.resnet50()
    body = torch.nn.Sequential(*list(net.children())[:-2]).eval()
    with torch.no_grad():
        grid = body(x)  # (N, 2048, 7, 7)
    return grid.flatten(2).transpose(1, 2).numpy()  # (N, 49, 2048)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Three PNGs of different shapes (landscape, portrait, small square)."""
    root = tmp_path_factory.mktemp("photos")
    for i, size in enumerate([(300, 250), (240, 330), (224, 224)]):
        smooth_image(*size, seed=i).save(root / f"p{i}.png")
    return root


@pytest.fixture(scope="module")
def bf16_file(photos, tmp_path_factory) -> Path:
    """The photos extracted with defaults (bf16 on this CPU, float16 storage), one worker."""
    out = tmp_path_factory.mktemp("bf16") / "features.h5"
    assert_ok(
        run(
            "--images",
            photos,
            "--out",
            out,
            "--weights",
            "none",
            "--device",
            "cpu",
            "--precision",
            "bf16",
            "--batch-size",
            "2",
            "--workers",
            "1",
            "--quiet",
        )
    )
    return out


def read_features(path: Path) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return f["features"][:].astype(np.float32)


def test_fp32_features_equal_torchvision_reference(photos, tmp_path):
    out = tmp_path / "fp32.h5"
    assert_ok(
        run(
            "--images",
            photos,
            "--out",
            out,
            "--weights",
            "none",
            "--precision",
            "fp32",
            "--dtype",
            "float32",
            "--batch-size",
            "2",
            "--workers",
            "0",
            "--quiet",
        )
    )
    ref = reference_features(sorted(photos.glob("*.png")))
    got = read_features(out)
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max())


def test_bf16_float16_features_close_to_reference(photos, bf16_file):
    ref = reference_features(sorted(photos.glob("*.png")))
    got = read_features(bf16_file)
    scale = np.abs(ref).max()
    assert np.abs(got - ref).max() < 0.05 * scale
    assert np.corrcoef(got.ravel(), ref.ravel())[0, 1] > 0.999


def test_layout_and_attrs_follow_the_contract(photos, bf16_file):
    with h5py.File(bf16_file, "r") as f:
        contract.check_layout(f, bf16_file)
        features = f["features"]
        assert features.shape == (3, 49, 2048) and features.dtype == np.float16
        assert features.chunks == (1, 49, 2048) and features.compression is None
        assert features.id.get_storage_size() == 3 * 49 * 2048 * 2  # allocated up front
        assert contract.read_image_ids(f) == ["p0.png", "p1.png", "p2.png"]
        assert f["status"][:].tolist() == [1, 1, 1] and f["status"].dtype == np.int8
        assert f["failed"].shape == (0, 2)
        attrs = contract.read_attrs(f)
    assert attrs["backbone"] == "resnet50" and attrs["weights"] == "none:seed=0"
    assert attrs["image_size"] == 224 and attrs["grid"] == 7
    assert attrs["dtype"] == "float16" and attrs["precision"] == "bf16"
    assert attrs["mean"] == IMAGENET_MEAN and attrs["std"] == IMAGENET_STD
    assert "centre crop 224" in attrs["resize"] and "exif_transpose" in attrs["resize"]
    assert set(attrs["versions"]) == {"torch", "torchvision", "h5py", "numpy", "pillow"}
    assert attrs["created"].startswith("20") and attrs["images_root"] == str(photos.resolve())
    assert attrs["complete"] is True and attrs["num_images"] == 3
    assert "weights_path" not in attrs


def test_encoder_from_attrs_reproduces_file_features(photos, bf16_file):
    with h5py.File(bf16_file, "r") as f:
        attrs = contract.read_attrs(f)
        stored = f["features"][:]
    encoder = FeatureEncoder.from_attrs(attrs, "cpu")
    paths = [photos / "p2.png", photos / "nope.png", photos / "p0.png"]
    features, errors = encoder.encode_paths(paths)
    assert errors == {1: "missing file"}
    assert features.dtype == np.float16 and features.shape == (2, 49, 2048)
    np.testing.assert_allclose(features, stored[[2, 0]], rtol=0, atol=1e-3 * np.abs(stored).max())


def test_check_policy_refuses_other_preprocessing(bf16_file):
    with h5py.File(bf16_file, "r") as f:
        attrs = contract.read_attrs(f)
    check_policy(attrs)
    with pytest.raises(UserError, match="image_size"):
        check_policy({**attrs, "image_size": 299})


def test_complete_file_is_not_recomputed(photos, bf16_file):
    before = (bf16_file.read_bytes(), bf16_file.stat().st_mtime_ns)
    result = run(
        "--images",
        photos,
        "--out",
        bf16_file,
        "--weights",
        "none",
        "--precision",
        "bf16",
        "--quiet",
    )
    assert_ok(result)
    assert "already complete" in result.output
    assert (bf16_file.read_bytes(), bf16_file.stat().st_mtime_ns) == before


@pytest.mark.parametrize(
    "change, fragment",
    [
        (["--precision", "fp32"], "precision"),
        (["--dtype", "float32"], "dtype"),
        (["--weights", "{weights}"], "weights"),
        (["--images", "{more}"], "another image list"),
    ],
)
def test_other_settings_are_refused_without_touching_the_file(
    photos, bf16_file, tmp_path, change, fragment
):
    weights = tmp_path / "w.pt"
    torch.save({"conv1.weight": torch.zeros(1)}, weights)
    more = tmp_path / "more"
    more.mkdir()
    for path in photos.glob("*.png"):
        (more / path.name).write_bytes(path.read_bytes())
    smooth_image(64, 64, seed=9).save(more / "p3.png")
    change = [c.format(weights=weights, more=more) for c in change]
    args = {"--images": photos, "--precision": "bf16", "--dtype": "float16", "--weights": "none"}
    args.update(dict(zip(change[::2], change[1::2], strict=True)))
    before = (bf16_file.read_bytes(), bf16_file.stat().st_mtime_ns)
    flat = [item for pair in args.items() for item in pair]
    assert_user_error(run(*flat, "--out", bf16_file, "--quiet"), fragment)
    assert (bf16_file.read_bytes(), bf16_file.stat().st_mtime_ns) == before


def test_overwrite_recomputes(photos, bf16_file, tmp_path):
    copy = tmp_path / "copy.h5"
    copy.write_bytes(bf16_file.read_bytes())
    result = run(
        "--images",
        photos,
        "--out",
        copy,
        "--weights",
        "none",
        "--precision",
        "fp32",
        "--dtype",
        "float32",
        "--batch-size",
        "3",
        "--workers",
        "0",
        "--overwrite",
        "--quiet",
    )
    assert_ok(result)
    with h5py.File(copy, "r") as f:
        assert f.attrs["precision"] == "fp32" and f["features"].dtype == np.float32
        assert f.attrs["complete"]


@pytest.fixture(scope="module")
def messy(tmp_path_factory) -> tuple[Path, Path]:
    """An images folder with every kind of bad image, and a caption file naming them."""
    root = tmp_path_factory.mktemp("messy")
    images = root / "images"
    images.mkdir()
    smooth_image(80, 60, 1).save(images / "good.png")
    smooth_image(9, 7, 2).save(images / "tiny.png")
    smooth_image(300, 200, 3).save(images / "photo.jpg", quality=90)
    whole = (images / "photo.jpg").read_bytes()
    (images / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (images / "text.jpg").write_text("not an image")
    Image.fromarray(np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)).save(
        images / "gray16.png"
    )
    Image.new("CMYK", (64, 64), (0, 255, 255, 0)).save(images / "cmyk.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6
    smooth_image(64, 48, 4).save(images / "exif.jpg", exif=exif)
    smooth_image(64, 64, 5).convert("P").save(
        images / "anim.gif", save_all=True, append_images=[Image.new("P", (64, 64))]
    )
    rgba = smooth_image(64, 64, 6).convert("RGBA")
    rgba.putalpha(128)
    rgba.save(images / "rgba.png")
    smooth_image(64, 64, 7).save(root / "outside.png")
    captions = root / "captions.txt"
    captions.write_text(
        "image,caption\n"
        + "".join(
            f"{n},a picture of {n}\n"
            for n in [
                "good.png",
                "tiny.png",
                "photo.jpg",
                "truncated.jpg",
                "text.jpg",
                "gray16.png",
                "cmyk.jpg",
                "exif.jpg",
                "anim.gif",
                "rgba.png",
                "missing.jpg",
            ]
        )
        + "../outside.png,escapes the images folder\n"
        + ",no image name\n"
        + "good.png,\n"  # empty caption
        + "malformed row without a caption\n",
        encoding="utf-8",
    )
    return images, captions


EXPECTED_FAILURES = {
    "missing.jpg": "missing file",
    "text.jpg": "not an image",
    "tiny.png": "too small",
    "truncated.jpg": "truncated",
}


def test_bad_inputs_are_listed_and_skipped(messy, tmp_path):
    images, captions = messy
    out = tmp_path / "messy.h5"
    result = run(
        "--images",
        images,
        "--captions",
        captions,
        "--out",
        out,
        "--weights",
        "none",
        "--batch-size",
        "4",
        "--workers",
        "0",
        "--quiet",
    )
    assert_ok(result)
    assert "'../outside.png' skipped" in result.output
    assert "'' skipped: empty name" in result.output
    assert "4 images failed" in result.output and "Traceback" not in result.output
    with h5py.File(out, "r") as f:
        ids = contract.read_image_ids(f)
        failed = contract.read_failed(f)
        status = dict(zip(ids, f["status"][:].tolist(), strict=True))
        features = dict(zip(ids, f["features"][:].astype(np.float32), strict=True))
        assert f.attrs["complete"]
    assert ids == sorted(
        [
            "good.png",
            "tiny.png",
            "photo.jpg",
            "truncated.jpg",
            "text.jpg",
            "gray16.png",
            "cmyk.jpg",
            "exif.jpg",
            "anim.gif",
            "rgba.png",
            "missing.jpg",
        ]
    )
    assert set(failed) == set(EXPECTED_FAILURES)
    for name, reason in EXPECTED_FAILURES.items():
        assert reason in failed[name] and status[name] == 2
        assert name in result.output
    for name in [
        "good.png",
        "photo.jpg",
        "gray16.png",
        "cmyk.jpg",
        "exif.jpg",
        "anim.gif",
        "rgba.png",
    ]:
        assert status[name] == 1 and np.isfinite(features[name]).all()
        assert np.abs(features[name]).max() > 0


def test_strict_exits_1_and_keeps_the_file(messy, tmp_path):
    images, captions = messy
    out = tmp_path / "strict.h5"
    args = [
        "--images",
        images,
        "--captions",
        captions,
        "--out",
        out,
        "--weights",
        "none",
        "--batch-size",
        "6",
        "--workers",
        "0",
        "--quiet",
    ]
    result = run(*args, "--strict")
    assert result.exit_code == 1 and "--strict" in result.output
    assert "Traceback" not in result.output
    again = run(*args)
    assert_ok(again)
    assert "already complete" in again.output


def test_config_file_and_set_and_flags(photos, tmp_path):
    config = tmp_path / "exp.toml"
    config.write_text(
        f'[data]\nimages = "{photos}"\n[features]\npath = "{tmp_path / "c.h5"}"\n'
        'weights = "none"\ndtype = "float32"\nbatch_size = 3\nworkers = 0\n'
    )
    result = run(
        "--config", config, "--set", "features.precision=fp32", "--dtype", "float16", "--quiet"
    )
    assert_ok(result)
    with h5py.File(tmp_path / "c.h5", "r") as f:
        assert f["features"].dtype == np.float16  # the flag beats the config
        assert f.attrs["precision"] == "fp32"  # --set applied
        assert len(f["image_ids"]) == 3  # every image file in the folder


def test_cli_errors_are_one_line(messy, tmp_path):
    images, captions = messy
    base = ["--weights", "none", "--quiet"]
    not_h5 = tmp_path / "notes.h5"
    not_h5.write_text("precious data")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    unknown = tmp_path / "unknown.txt"
    unknown.write_text("hello world\nthis is not a caption file\n")
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = [1, 2, 3]
    foreign_bytes = foreign.read_bytes()
    cases = [
        (["--images", tmp_path / "nowhere", "--out", tmp_path / "o.h5"], "images folder not found"),
        (
            ["--images", images, "--captions", tmp_path / "nope.txt", "--out", tmp_path / "o.h5"],
            "captions file not found",
        ),
        (["--images", images, "--captions", unknown, "--out", tmp_path / "o.h5"], "caption format"),
        (
            [
                "--images",
                images,
                "--captions",
                captions,
                "--format",
                "coco",
                "--out",
                tmp_path / "o.h5",
            ],
            "coco",
        ),
        (["--images", images, "--out", blocker / "sub" / "f.h5"], "cannot create output folder"),
        (["--images", images, "--out", not_h5], "not an HDF5 file"),
        (["--images", images, "--out", not_h5, "--overwrite"], "not an HDF5 file"),
        (["--images", images, "--out", foreign, "--overwrite"], "not a captioner feature file"),
        (
            ["--images", images, "--out", tmp_path / "o.h5", "--weights", tmp_path / "w.pt"],
            "--weights",
        ),
        (
            ["--images", images, "--out", tmp_path / "o.h5", "--set", "features.bogus=1"],
            "features.bogus",
        ),
        (["--out", tmp_path / "o.h5"], "--images"),
    ]
    if not torch.cuda.is_available():
        cases.append((["--images", images, "--out", tmp_path / "o.h5", "--device", "cuda"], "CUDA"))
    for args, fragment in cases:
        assert_user_error(run(*base, *args), fragment)
    assert not_h5.read_text() == "precious data"
    assert foreign.read_bytes() == foreign_bytes
    assert not (tmp_path / "o.h5").exists()


def test_weights_file_is_loaded_and_recorded(photos, tmp_path):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        state = torchvision.models.resnet50().state_dict()  # fc keys included
    weights = tmp_path / "resnet50.pt"
    torch.save(state, weights)
    out = tmp_path / "w.h5"
    assert_ok(
        run(
            "--images",
            photos,
            "--out",
            out,
            "--weights",
            weights,
            "--precision",
            "fp32",
            "--dtype",
            "float32",
            "--workers",
            "0",
            "--quiet",
        )
    )
    with h5py.File(out, "r") as f:
        attrs = contract.read_attrs(f)
    assert attrs["weights"].startswith("file:sha256:") and len(attrs["weights"]) == 12 + 64
    assert attrs["weights_path"] == str(weights.resolve())
    ref = reference_features(sorted(photos.glob("*.png")), seed=1)
    np.testing.assert_allclose(read_features(out), ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max())
    torch.save({k: v for k, v in state.items() if not k.startswith("layer4.")}, weights)
    assert_user_error(
        run("--images", photos, "--out", tmp_path / "x.h5", "--weights", weights, "--quiet"),
        "not a torchvision resnet50",
    )
    weights.write_bytes(b"not a checkpoint")
    assert_user_error(
        run("--images", photos, "--out", tmp_path / "x.h5", "--weights", weights, "--quiet"),
        "cannot read weights file",
    )


def test_failed_imagenet_download_is_one_clear_error(photos, tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "TORCH_HOME": str(tmp_path / "torch"),
        "https_proxy": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "no_proxy": "",
        "NO_PROXY": "",
    }
    out = tmp_path / "f.h5"
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            RUN_CLI,
            "--images",
            str(photos),
            "--out",
            str(out),
            "--weights",
            "imagenet",
            "--quiet",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "--weights none" in done.stderr and "--weights PATH" in done.stderr
    assert not out.exists()


def test_random_weights_are_seeded_and_leave_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first = build_backbone(resolve_weights("none"), "cpu")
    assert torch.equal(torch.rand(3), expected)
    second = build_backbone(resolve_weights("none"), "cpu")
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_folding_batch_norms_keeps_the_function():
    resnet = torchvision.models.resnet50(weights=None).eval()
    generator = torch.Generator().manual_seed(0)
    for norm in resnet.modules():  # non-trivial statistics, as trained weights have
        if isinstance(norm, torch.nn.BatchNorm2d):
            for tensor in (norm.weight.data, norm.bias.data, norm.running_mean):
                tensor.normal_(0.0, 0.3, generator=generator)
            norm.running_var.uniform_(0.5, 2.0, generator=generator)
    images = torch.randn(2, 3, 224, 224, generator=generator)
    with torch.no_grad():
        plain = GridEncoder(resnet)(images)  # (2, 49, 2048)
        folded = GridEncoder(fold_batch_norms(copy.deepcopy(resnet)))(images)

    shipped = build_backbone(resolve_weights("none"), "cpu")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in shipped.modules())
    assert plain.abs().max() > 0.1
    torch.testing.assert_close(folded, plain, rtol=1e-4, atol=1e-4 * float(plain.abs().max()))


def test_contiguous_runs():
    assert list(contiguous_runs([])) == []
    assert list(contiguous_runs([3, 4, 5, 9, 11, 12])) == [
        (3, 6, 0, 3),
        (9, 10, 3, 4),
        (11, 13, 4, 6),
    ]


# ---- interruption: kill -9 and Ctrl-C, then the same command finishes the file ----


def rows_done(path: Path) -> int:
    """Rows marked written/failed, read without taking the writer's file lock."""
    if not path.exists():
        return 0
    try:
        with h5py.File(path, "r", locking=False) as f:
            return int((f["status"][:] != 0).sum())
    except OSError:
        return 0


def start_cli(args: list, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", RUN_CLI, *map(str, args)],
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        # A job started in the background by a shell inherits SIGINT ignored; Ctrl-C is tested.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def wait_for_rows(proc: subprocess.Popen, path: Path, at_least: int) -> int:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        done = rows_done(path)
        if done >= at_least:
            return done
        time.sleep(0.02)
    raise AssertionError(f"{path}: never reached {at_least} rows (exit {proc.poll()})")


MANY = 36  # images: enough rows left after the kill that Ctrl-C lands mid-run on a slow machine


@pytest.fixture(scope="module")
def many(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("many")
    for i in range(MANY):
        smooth_image(48, 40, seed=100 + i).save(root / f"img{i:02d}.png")
    (root / "broken.png").write_bytes(b"\x89PNG not really")
    return root


def test_interrupted_runs_resume_to_the_same_file(many, tmp_path):
    args = [
        "--images",
        many,
        "--weights",
        "none",
        "--precision",
        "auto",
        "--batch-size",
        "2",
        "--workers",
        "1",
        "--quiet",
    ]
    straight = tmp_path / "straight.h5"
    assert_ok(run(*args, "--out", straight, "--workers", "0"))  # workers never change features
    out = tmp_path / "resumed.h5"

    proc = start_cli([*args, "--out", out], tmp_path / "killed.log")
    wait_for_rows(proc, out, 4)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = rows_done(out)
    assert 4 <= killed_at < MANY + 1
    with h5py.File(out, "r") as f:
        assert not f.attrs["complete"]

    proc = start_cli([*args, "--out", out], tmp_path / "ctrl-c.log")
    wait_for_rows(proc, out, killed_at + 4)
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    log = (tmp_path / "ctrl-c.log").read_text()
    assert "rerun the same command" in log and "Traceback" not in log
    stopped_at = rows_done(out)
    assert killed_at + 4 <= stopped_at < MANY + 1

    result = run(*args, "--out", out)
    assert_ok(result)
    assert f"{stopped_at - 1} from an earlier run" in result.output  # broken.png is redone
    with h5py.File(out, "r") as a, h5py.File(straight, "r") as b:
        assert a.attrs["complete"] and b.attrs["complete"]
        assert contract.read_image_ids(a) == contract.read_image_ids(b)
        np.testing.assert_array_equal(a["status"][:], b["status"][:])
        assert contract.read_failed(a) == contract.read_failed(b)
        assert list(contract.read_failed(a)) == ["broken.png"]
        fa, fb = a["features"][:].astype(np.float32), b["features"][:].astype(np.float32)
        ok = b["status"][:] == 1
        np.testing.assert_allclose(fa[ok], fb[ok], rtol=0, atol=1e-3 * np.abs(fb).max())
