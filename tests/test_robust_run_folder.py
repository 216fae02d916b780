"""A run folder belongs to one training: exclusive creation, a lock, leftovers, a torn log."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.train.run_folder import create_run_dir

REPO = Path(__file__).resolve().parents[1]
HOLD_LOCK = """
import sys, time
from pathlib import Path
from pipeline.train.run_folder import lock_run
lock = lock_run(Path(sys.argv[1]))
print("locked", flush=True)
time.sleep(600)
"""


def cli(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


def train_process(config: Path, *overrides: str) -> subprocess.Popen:
    """`python -m pipeline train` in its own process."""
    args = [
        sys.executable,
        "-m",
        "pipeline",
        "train",
        "--config",
        str(config),
        "--set",
        "train.epochs=1",
    ]
    for item in overrides:
        args += ["--set", item]
    return subprocess.Popen(
        args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(process: subprocess.Popen) -> tuple[int, str]:
    out, err = process.communicate(timeout=300)
    return process.returncode, out + err


def metric_epochs(run: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_trainings_with_one_name_never_share_a_folder(workspace):
    first = train_process(workspace["config"], "train.name=same")
    second = train_process(workspace["config"], "train.name=same")
    results = sorted([finish(first), finish(second)], key=lambda r: r[0])
    assert [code for code, _ in results] == [0, 2], results
    loser = results[1][1]
    assert "Traceback" not in loser
    assert any(text in loser for text in ("already holds a run", "already exists", "is in use"))
    run = workspace["runs"] / "same"
    assert metric_epochs(run) == [1]
    assert [p.name for p in workspace["runs"].iterdir()] == ["same"]


def test_default_names_launched_together_get_their_own_folders(workspace):
    processes = [train_process(workspace["config"]) for _ in range(2)]
    results = [finish(p) for p in processes]
    assert [code for code, _ in results] == [0, 0], results
    runs = sorted(workspace["runs"].iterdir())
    assert len(runs) == 2
    for run in runs:
        assert run.name.startswith("tiny-")
        assert metric_epochs(run) == [1]
    config = load_config(
        workspace["config"], [f"train.out_dir={json.dumps(str(workspace['root'] / 'x'))}"]
    )
    (a, lock_a), (b, lock_b) = create_run_dir(config), create_run_dir(config)
    assert a != b and a.is_dir() and b.is_dir()
    lock_a.release()
    lock_b.release()


def test_live_run_is_refused_killed_run_resumes_and_leftovers_go(workspace):
    assert (
        cli(
            "train",
            "--config",
            workspace["config"],
            "--set",
            "train.name=r",
            "--set",
            "train.epochs=1",
        ).exit_code
        == 0
    )
    run = workspace["runs"] / "r"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(run)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        refused = cli("train", "--resume", run, "--set", "train.epochs=2")
        assert refused.exit_code == 2, refused.output
        assert f"is in use by a running training (pid {holder.pid})" in refused.output
        again = cli("train", "--config", workspace["config"], "--set", "train.name=r")
        assert again.exit_code == 2 and "already holds a run" in again.output
    finally:
        holder.kill()
        holder.wait()
    # the killed holder's lock is gone with it
    wrong_size = cli("train", "--resume", run, "--set", "model.hidden_dim=64")
    assert wrong_size.exit_code == 2, wrong_size.output
    assert "do not fit the model" in wrong_size.output
    assert "a resumed run keeps its model.* sizes" in wrong_size.output
    assert "Traceback" not in wrong_size.output
    # a crash left a temp checkpoint and a torn line
    leftover = run / f".last.pt.tmp-{holder.pid}"
    leftover.write_bytes(b"half a checkpoint")
    with open(run / "metrics.jsonl", "a") as handle:
        handle.write('{"epoch": 2, "train_lo')
    resumed = cli("train", "--resume", run, "--set", "train.epochs=2")
    assert resumed.exit_code == 0, resumed.output
    assert "removed 1 temporary file(s)" in resumed.output
    assert "dropped 1 unreadable line(s)" in resumed.output
    assert not leftover.exists()
    assert metric_epochs(run) == [1, 2]
    assert not [p for p in os.listdir(run) if ".tmp-" in p]
