"""Stage one under accidents: special files, symlinks, foreign HDF5 files, changed images,
non-finite grids, --strict on a finished file, feature-file identity, a full disk.

Small real images, real HDF5 files, the real CLI (CliRunner or a subprocess); weights `none`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torchvision
from click.testing import CliRunner
from PIL import Image

from pipeline import contract
from pipeline.config import load_config
from pipeline.errors import UserError
from pipeline.extract.cli import extract_command
from pipeline.extract.extractor import NON_FINITE, drop_non_finite
from pipeline.extract.images import ImageDataset, ImageError, preprocess_image
from pipeline.extract.job import job_from_config
from tests.conftest import error_line

REPO = Path(__file__).resolve().parents[1]
RUN_CLI = (
    "import sys; from pipeline.extract.cli import extract_command; extract_command(sys.argv[1:])"
)


def run(*args) -> object:
    return CliRunner().invoke(extract_command, [str(a) for a in args])


def picture(path: Path, seed: int, size: tuple[int, int] = (64, 48)) -> None:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    Image.fromarray(coarse).resize(size, Image.BILINEAR).save(path)


def caption_file(path: Path, names: list[str]) -> Path:
    path.write_text("image,caption\n" + "".join(f"{n},a picture\n" for n in names))
    return path


BASE = ["--weights", "none", "--workers", "0", "--batch-size", "2", "--quiet"]


class Alarm:
    """Fail (instead of hanging forever) when the block takes more than `seconds`."""

    def __init__(self, seconds: int) -> None:
        self.seconds = seconds

    def __enter__(self) -> None:
        def timeout(*_):
            raise TimeoutError("blocked")

        self.previous = signal.signal(signal.SIGALRM, timeout)
        signal.alarm(self.seconds)

    def __exit__(self, *_) -> None:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, self.previous)


# ---- special files and symlinks ----


def test_fifo_socket_and_device_fail_that_image_only(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    picture(root / "good.png", 0)
    os.mkfifo(root / "fifo.jpg")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(root / "sock.jpg"))
    try:
        with Alarm(20):
            items = [
                ImageDataset(root, ["good.png", "fifo.jpg", "sock.jpg"], [0, 1, 2])[i]
                for i in range(3)
            ]
            with pytest.raises(ImageError, match="character device"):
                preprocess_image("/dev/zero")  # what `caption /dev/zero` reads
            with pytest.raises(ImageError, match="FIFO"):
                preprocess_image(root / "fifo.jpg")
    finally:
        server.close()
    assert items[0].image is not None and items[0].stamp[0] > 0
    assert items[1].image is None and "not a regular file (a FIFO)" in items[1].error
    assert items[2].image is None and "not a regular file (a socket)" in items[2].error


def test_symlinks_inside_the_folder_are_read_outside_are_refused(tmp_path):
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    picture(root / "sub" / "real.png", 1)
    picture(tmp_path / "secret.png", 2)
    (root / "inside.png").symlink_to(root / "sub" / "real.png")
    (root / "outside.png").symlink_to(tmp_path / "secret.png")
    (root / "dir").symlink_to(tmp_path)  # a folder link leading out
    names = ["inside.png", "outside.png", "dir/secret.png"]
    items = [ImageDataset(root, names, [0, 1, 2])[i] for i in range(3)]
    assert items[0].image is not None
    for item in items[1:]:
        assert item.image is None and "symlink resolving outside the images folder" in item.error


# ---- foreign or damaged HDF5 files ----


def _break_status_dtype(f):
    del f["status"]
    f["status"] = np.ones(len(f["image_ids"]), dtype=np.float32)


def _break_status_shape(f):
    del f["status"]
    f["status"] = np.ones((len(f["image_ids"]), 2), dtype=np.int8)


def _break_failed(f):
    del f["failed"]
    f["failed"] = np.zeros(3, dtype=np.int32)


def _duplicate_ids(f):
    ids = contract.read_image_ids(f)
    ids[1] = ids[0]
    del f["image_ids"]
    f.create_dataset("image_ids", data=np.array(ids, dtype=object), dtype=contract.STRING_DTYPE)


def _complete_but_pending(f):
    f["status"][3] = contract.PENDING


@pytest.mark.parametrize(
    "damage, fragment",
    [
        (_break_status_dtype, "dataset 'status'"),
        (_break_status_shape, "dataset 'status'"),
        (_break_failed, "dataset 'failed'"),
        (_duplicate_ids, "image ids are not unique"),
        (_complete_but_pending, "rows are still pending"),
    ],
)
def test_foreign_files_are_refused_in_one_line(demo_cache, tmp_path, damage, fragment):
    path = tmp_path / "foreign.h5"
    shutil.copy(demo_cache["features"], path)
    with h5py.File(path, "r+") as f:
        damage(f)
    with pytest.raises(UserError, match=fragment):  # what every stage-two reader opens with
        contract.open_complete(path).close()
    before = path.read_bytes()
    if damage is not _complete_but_pending:  # extract's resume check reads the same layout
        line = error_line(
            run(
                "--images",
                demo_cache["images"],
                "--captions",
                demo_cache["captions"],
                "--out",
                path,
                *BASE,
            )
        )
        assert fragment in line
        assert path.read_bytes() == before


def test_image_list_sha256_identifies_the_rows(demo_cache, tmp_path):
    with contract.open_complete(demo_cache["features"]) as f:
        ids = contract.read_image_ids(f)
        fingerprint = contract.fingerprint(f)
    expected = hashlib.sha256("".join(f"{i}\n" for i in ids).encode("utf-8")).hexdigest()
    assert fingerprint["image_list_sha256"] == expected
    assert fingerprint["num_images"] == len(ids) and fingerprint["backbone"] == "resnet50"
    moved = tmp_path / "elsewhere" / "same.h5"
    moved.parent.mkdir()
    shutil.copy(demo_cache["features"], moved)
    with h5py.File(moved, "r+") as f:
        for name in contract.STAMPS:  # a file made before the stamps existed
            del f[name]
    with contract.open_complete(moved) as f:
        assert contract.fingerprint(f) == fingerprint
    with h5py.File(moved, "r+") as f:
        ids[0], ids[1] = ids[1], ids[0]
        f["image_ids"][:] = np.array(ids, dtype=object)
    with contract.open_complete(moved) as f:
        assert contract.fingerprint(f)["image_list_sha256"] != expected


# ---- changed images, --strict on a finished file, non-finite grids ----


def test_changed_and_deleted_images_are_redone_on_rerun(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        picture(images / f"{i}.png", i)
    (images / "bad.png").write_bytes(b"not a png")
    captions = caption_file(tmp_path / "c.csv", ["0.png", "1.png", "2.png", "bad.png"])
    out, fresh = tmp_path / "f.h5", tmp_path / "fresh.h5"
    args = ["--images", images, "--captions", captions, *BASE]
    assert run(*args, "--out", out).exit_code == 0
    with h5py.File(out) as f:
        assert f["image_size_bytes"][0] == (images / "0.png").stat().st_size
        assert f["image_mtime_ns"][0] == (images / "0.png").stat().st_mtime_ns
        assert f["image_size_bytes"][3] == 9  # failed rows are stamped too
        before = f["features"][:]

    strict = run(*args, "--out", out, "--strict")  # complete, with a failed image
    assert strict.exit_code == 1 and "--strict: 1 images failed" in strict.output

    picture(images / "1.png", 11)  # new content
    os.utime(images / "1.png", ns=(1, 1))
    (images / "2.png").unlink()
    result = run(*args, "--out", out)
    assert result.exit_code == 0, result.output
    assert "2 images changed or disappeared" in result.output
    assert run(*args, "--out", fresh).exit_code == 0
    with h5py.File(out) as f, h5py.File(fresh) as g:
        assert f.attrs["complete"]
        assert f["status"][:].tolist() == [1, 1, 2, 2] == g["status"][:].tolist()
        assert contract.read_failed(f)["2.png"] == "missing file"
        np.testing.assert_array_equal(f["features"][0], before[0])
        np.testing.assert_array_equal(f["features"][1], g["features"][1])
        assert not np.array_equal(f["features"][1], before[1])
        assert f["image_mtime_ns"][1] == 1 and f["image_size_bytes"][2] == -1
    again = run(*args, "--out", out)
    assert again.exit_code == 0 and "already complete" in again.output


def test_drop_non_finite_moves_rows_to_failures():
    features = np.ones((3, 49, 2048), dtype=np.float16)
    features[1, 5, 7] = np.inf
    rows, kept, failures = drop_non_finite([4, 6, 9], features, [(5, "missing file")])
    assert rows == [4, 9] and kept.shape == (2, 49, 2048)
    assert failures == [(5, "missing file"), (6, NON_FINITE)]


def test_nan_grids_are_never_written(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    picture(images / "a.png", 0)
    picture(images / "b.png", 1)
    with torch.random.fork_rng(devices=[]):
        state = torchvision.models.resnet50().state_dict()
    state["layer4.2.bn3.running_var"][:] = float("nan")
    weights = tmp_path / "nan.pt"
    torch.save(state, weights)
    out = tmp_path / "f.h5"
    result = run(
        "--images", images, "--out", out, "--weights", weights, "--workers", "0", "--quiet"
    )
    assert result.exit_code == 0, result.output
    assert "2 images failed" in result.output and "non-finite" in result.output
    with contract.open_complete(out) as f:
        assert f["status"][:].tolist() == [2, 2]
        assert set(contract.read_failed(f).values()) == {NON_FINITE}


def test_job_from_config_applies_overrides(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    picture(images / "a.png", 0)
    config = load_config(
        None,
        [
            f"data.images={images}",
            "features.batch_size=7",
            f"features.path={tmp_path / 'x.h5'}",
            "features.weights=none",
        ],
    )
    job = job_from_config(config, workers=0, dtype="float32")
    assert job.names == ["a.png"] and job.batch_size == 7 and job.workers == 0
    assert job.dtype == "float32" and job.out == tmp_path / "x.h5"
    assert job.weights.tag == "none:seed=0" and not job.strict


# ---- a full disk ----


def test_file_size_limit_is_refused_before_writing(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(8):
        picture(images / f"{i}.png", i)
    out = tmp_path / "f.h5"
    code = (
        "import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1000000, 1000000)); " + RUN_CLI
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "--images", str(images), "--out", str(out), *BASE],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "ulimit -f" in done.stderr and "1,000,000 bytes" in done.stderr
    assert "2,6" in done.stderr  # 8 x 200,704 bytes of grids plus the margin: 2.66 MB
    assert not out.exists()


DISK_FULL_DRIVER = """
import json, os, subprocess, sys, time
import h5py
mnt, images, keep, size = sys.argv[1:5]
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=" + size, "tmpfs", mnt], check=True)
out = os.path.join(mnt, "f.h5")
cli = [sys.executable, "-c", {cli!r}, "--images", images, "--out", out, "--weights", "none",
       "--workers", "0", "--batch-size", "1", "--precision", "fp32", "--quiet"]
def done_rows():
    try:
        with h5py.File(out, "r", locking=False) as f:
            return int((f["status"][:] != 0).sum())
    except (OSError, KeyError):
        return 0
tiny = os.path.join(mnt, "tiny")
os.mkdir(tiny)
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", tiny], check=True)
refused = subprocess.run(cli[:6] + [os.path.join(tiny, "f.h5")] + cli[7:], capture_output=True,
                         text=True)
refused = {{"rc": refused.returncode, "err": refused.stderr, "left": os.listdir(tiny)}}
proc = subprocess.Popen(cli, stderr=subprocess.PIPE, text=True)
while proc.poll() is None and done_rows() < 2:
    time.sleep(0.02)
with open(os.path.join(mnt, "filler"), "wb") as filler:  # another program fills the disk
    try:
        while True:
            filler.write(b"x" * 65536)
            filler.flush()
    except OSError:
        pass
first_err = proc.communicate()[1]
first = {{"rc": proc.returncode, "err": first_err, "rows": done_rows()}}
os.unlink(os.path.join(mnt, "filler"))
second = subprocess.run(cli, capture_output=True, text=True)
subprocess.run(["cp", out, keep], check=True)
print(json.dumps({{"first": first, "rc2": second.returncode, "err2": second.stderr,
                  "refused": refused}}))
"""


def test_disk_full_mid_run_ends_in_one_line_and_the_rerun_finishes(tmp_path):
    if (
        shutil.which("unshare") is None
        or subprocess.run(
            ["unshare", "-rm", "mount", "-t", "tmpfs", "tmpfs", str(tmp_path)], capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip("cannot mount a small tmpfs here (the file size limit test still runs)")
    images = tmp_path / "images"
    images.mkdir()
    for i in range(6):
        picture(images / f"{i}.png", i)
    (tmp_path / "mnt").mkdir()
    driver = tmp_path / "driver.py"
    driver.write_text(DISK_FULL_DRIVER.format(cli=RUN_CLI))
    kept = tmp_path / "after-disk-full.h5"
    done = subprocess.run(
        [
            "unshare",
            "-rm",
            sys.executable,
            str(driver),
            str(tmp_path / "mnt"),
            str(images),
            str(kept),
            "4m",
        ],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=500,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    refused = report["refused"]  # a 1 MB disk: refused up front, with both numbers
    assert refused["rc"] == 2 and "Traceback" not in refused["err"], refused["err"]
    assert "not enough free space" in refused["err"] and "2,2" in refused["err"]
    assert "1,048,576 bytes" in refused["err"] and refused["left"] == []
    first = report["first"]
    assert first["rc"] == 2, first["err"]
    assert "Traceback" not in first["err"] and "the disk is full" in first["err"]
    assert "rerun the same command" in first["err"]
    assert 2 <= first["rows"] < 6
    assert report["rc2"] == 0, report["err2"]
    assert f"{first['rows']} from an earlier run" in report["err2"]
    straight = tmp_path / "straight.h5"
    result = run(
        "--images",
        images,
        "--out",
        straight,
        "--weights",
        "none",
        "--workers",
        "0",
        "--batch-size",
        "1",
        "--precision",
        "fp32",
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    with contract.open_complete(kept) as a, contract.open_complete(straight) as b:
        assert a["status"][:].tolist() == [1] * 6 == b["status"][:].tolist()
        fa, fb = a["features"][:].astype(np.float32), b["features"][:].astype(np.float32)
        np.testing.assert_allclose(fa, fb, rtol=0, atol=1e-3 * np.abs(fb).max())
