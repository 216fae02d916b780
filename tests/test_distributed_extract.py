"""torchrun extraction with 2 CPU processes: shards joined (virtual datasets) into a file that
reads exactly like the single-process one, before and after `--consolidate`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
from click.testing import CliRunner

from pipeline import contract
from pipeline.captions.demo_data import generate_demo_data
from pipeline.extract.cli import extract_command
from pipeline.extract.sharded import shard_bounds, shard_path

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = [
    sys.executable,
    "-m",
    "torch.distributed.run",
    "--standalone",
    "--nproc_per_node",
    "2",
    "-m",
    "pipeline",
    "extract",
]


def make_images(root: Path, n: int) -> Path:
    generate_demo_data(root, n_images=n, seed=1)
    (root / "images" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return root / "images"


def args(images: Path, out: Path) -> list[str]:
    return [
        "--images",
        str(images),
        "--out",
        str(out),
        "--weights",
        "none",
        "--workers",
        "0",
        "--batch-size",
        "2",
        "--quiet",
    ]


def env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))


def read(path: Path) -> dict:
    with h5py.File(path) as f:
        return {
            "features": f[contract.FEATURES][:],
            "status": f[contract.STATUS][:],
            "ids": contract.read_image_ids(f),
            "failed": contract.read_failed(f),
            "fingerprint": contract.fingerprint(f),
            "complete": bool(f.attrs["complete"]),
        }


def assert_same_file(a: Path, b: Path) -> None:
    x, y = read(a), read(b)
    assert x["complete"] and y["complete"]
    assert x["ids"] == y["ids"] and x["failed"] == y["failed"]
    assert x["fingerprint"] == y["fingerprint"]
    np.testing.assert_array_equal(x["status"], y["status"])
    ok = x["status"] == contract.WRITTEN
    np.testing.assert_array_equal(x["features"][ok], y["features"][ok])


def test_shard_bounds_cover_every_row_once():
    for count, world in ((10, 3), (2, 4), (100, 8)):
        bounds = shard_bounds(count, world)
        assert bounds[0][0] == 0 and bounds[-1][1] == count
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))


def test_two_ranks_equal_one_process_and_survive_a_killed_rank(tmp_path):
    images = make_images(tmp_path / "data", 30)
    single = tmp_path / "single.h5"
    result = CliRunner().invoke(extract_command, args(images, single))
    assert result.exit_code == 0, result.output

    out = tmp_path / "dist.h5"
    proc = subprocess.Popen(
        TORCHRUN + args(images, out),
        env=env(),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    shard1 = shard_path(out, 1, 2)
    deadline = time.time() + 300
    while time.time() < deadline:  # kill rank 1 once its shard has a few rows
        if shard1.exists():
            try:
                with h5py.File(shard1, "r", locking=False) as f:
                    if (f[contract.STATUS][:] == contract.WRITTEN).sum() >= 2:
                        break
            except OSError:
                pass
        time.sleep(0.05)
    rank1 = [
        pid
        for pid in os.listdir("/proc")
        if pid.isdigit() and rank_of(pid) == "1" and parent_of(pid) == proc.pid
    ]
    assert rank1, "rank 1 not found"
    os.kill(int(rank1[0]), signal.SIGKILL)
    proc.wait(timeout=120)
    assert proc.returncode != 0
    assert shard1.exists() and not out.exists()
    with h5py.File(shard1, "r", locking=False) as f:
        assert not f.attrs["complete"]

    rerun = subprocess.run(
        TORCHRUN + args(images, out),
        env=env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    assert shard1.exists() and shard_path(out, 0, 2).exists()  # the file maps them
    assert_same_file(out, single)
    assert read(out)["failed"] == {"broken.jpg": read(single)["failed"]["broken.jpg"]}

    result = CliRunner().invoke(extract_command, ["--consolidate", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert not shard1.exists() and not shard_path(out, 0, 2).exists()
    with h5py.File(out) as f:
        assert not f[contract.FEATURES].is_virtual
    assert_same_file(out, single)


def rank_of(pid: str) -> str | None:
    """RANK from a process's environment (torchrun sets it for each worker)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in environ:
        if item.startswith(b"RANK=") and any(x.startswith(b"TORCHELASTIC") for x in environ):
            return item[5:].decode()
    return None


def parent_of(pid: str) -> int | None:
    """The parent pid (torchrun's agent is the workers' parent)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])
