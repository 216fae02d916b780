"""Reruns of an interrupted torchrun extract: the shards it left are finished or named, never
silently left behind; --overwrite deletes them. torchrun ranks end together on a user error."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from PIL import Image

from pipeline import contract
from pipeline.cli import main
from pipeline.extract.sharded import shard_path
from pipeline.train.run_folder import LOCK_FILE

REPO = Path(__file__).resolve().parents[1]
WORLD = 2


def make_images(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(count)
    for i in range(count):
        coarse = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
        Image.fromarray(coarse).resize((40, 36), Image.BILINEAR).save(folder / f"{i:02d}.png")
    return folder


def extract(images: Path, out: Path, *extra: str) -> list[str]:
    return ["extract", "--images", str(images), "--out", str(out), "--weights", "none",
            "--workers", "0", "--batch-size", "2", "--quiet", *extra]  # fmt: skip


def cli(*args: str) -> object:
    return CliRunner().invoke(main, list(args))


def finished_rank_0(images: Path, out: Path, tmp_path: Path) -> Path:
    """Rank 0's shard of 4 images, complete (a shard is an ordinary feature file)."""
    part = tmp_path / "part"  # rank 0's images: the same files
    part.mkdir()
    for name in ("00.png", "01.png"):
        os.link(images / name, part / name)
    shard = shard_path(out, 0, WORLD)
    done = cli(*extract(part, shard))
    assert done.exit_code == 0, done.output
    return shard


def test_a_plain_rerun_finishes_the_shards_and_overwrite_deletes_them(tmp_path):
    images = make_images(tmp_path / "images", 4)
    single, out = tmp_path / "single.h5", tmp_path / "f.h5"
    assert cli(*extract(images, single)).exit_code == 0
    first = finished_rank_0(images, out, tmp_path)  # rank 1 never started
    stray = shard_path(out, 0, 3)
    stray.write_bytes(b"")
    refused = cli(*extract(images, out))
    assert refused.exit_code == 2 and first.name in refused.output and stray.name in refused.output
    stray.unlink()

    rerun = cli(*extract(images, out))
    assert rerun.exit_code == 0, rerun.output
    assert "finishing the 2 shard files" in rerun.output
    assert "(2 extracted now, 2 from an earlier run" in rerun.output
    with contract.open_complete(out) as f, contract.open_complete(single) as g:
        assert contract.is_virtual(f)
        np.testing.assert_array_equal(f["features"][:], g["features"][:])

    again = cli(*extract(images, out, "--overwrite"))
    assert again.exit_code == 0, again.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.h5", "images", "part", "single.h5"]
    with contract.open_complete(out) as f:
        assert not contract.is_virtual(f)


HOLD_LOCK = """
import fcntl, sys
handle = open(sys.argv[1], "a+")
fcntl.flock(handle, fcntl.LOCK_EX)
handle.truncate(0)
handle.write("holder")
handle.flush()
print("locked", flush=True)
sys.stdin.read()
"""
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc_per_node", str(WORLD), "--monitor-interval", "10"]  # fmt: skip
# (a long monitor interval: the ranks must end by themselves, not by torchrun's SIGTERM)


def torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return subprocess.run(
        [*TORCHRUN, "-m", "pipeline", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_every_rank_ends_with(done: subprocess.CompletedProcess, line: str) -> None:
    """Every rank reaches that one user error and prints it (`line` is the only error printed;
    two ranks' lines may merge in the shared pipe) and no rank shows a traceback. Each rank
    exits 2, except that torchrun may SIGTERM a rank still exiting once another has ended."""
    output = done.stdout + done.stderr
    assert done.returncode != 0
    errors = [x for x in output.splitlines() if x.startswith("error:")]
    assert errors and set(errors) == {line}, output[-3000:]
    assert output.count(line) == WORLD, output[-3000:]
    assert f'File "{REPO / "pipeline"}' not in output and "RuntimeError" not in output
    exit_codes = re.findall(r"exitcode\s+: (-?\d+)", output)
    assert "2" in exit_codes and set(exit_codes) <= {"2", "-15"}, output[-3000:]


def test_torchrun_ranks_end_together_on_a_user_error(tmp_path):
    images = make_images(tmp_path / "images", 4)
    out = tmp_path / "f.h5"
    other = shard_path(out, 0, 3)  # left by an interrupted run over 3 ranks
    assert cli(*extract(images, other)).exit_code == 0
    seen_by_all = torchrun(*extract(images, out), cwd=tmp_path)
    assert_every_rank_ends_with(
        seen_by_all,
        f"error: {out}: {other.name}... are the shards of an unfinished extract over 3 "
        "ranks: rerun it over 3 ranks, or without torchrun to finish it in one process, "
        "or pass --overwrite to start over (deletes them)",
    )
    other.unlink()

    finished_rank_0(images, out, tmp_path)  # rank 0 waits for rank 1 at once
    foreign = shard_path(out, 1, WORLD)
    foreign.write_text("not a feature file\n")  # only rank 1 meets it
    only_rank_1 = torchrun(*extract(images, out), cwd=tmp_path)
    assert_every_rank_ends_with(
        only_rank_1,
        f"error: --out {foreign} exists and is not an HDF5 file; refusing to touch it "
        "(choose another --out)",
    )
    assert foreign.read_text() == "not a feature file\n" and not out.exists()


def test_torchrun_training_ends_every_rank_when_only_rank_0_fails(workspace):
    trained = cli("train", "--config", str(workspace["config"]), "--set", "train.name=r",
                  "--set", "train.epochs=1")  # fmt: skip
    assert trained.exit_code == 0, trained.output
    run = workspace["runs"] / "r"
    holder = subprocess.Popen(  # a live training's lock on the run: only rank 0 takes it
        [sys.executable, "-c", HOLD_LOCK, str(run / LOCK_FILE)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        done = torchrun("train", "--resume", str(run), "--set", "train.epochs=2",
                        cwd=workspace["root"])  # fmt: skip
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert_every_rank_ends_with(
        done,
        f"error: {run} is in use by a running training (holder): wait for it to finish, "
        "or stop it, before resuming",
    )
