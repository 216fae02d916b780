"""torchrun with 2 CPU processes (gloo): training with both objectives, rank-0 outputs, resume,
evaluation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from pipeline.cli import main

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def torchrun(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    return subprocess.run(
        [*TORCHRUN, "-m", "pipeline", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_two_process_training_resume_and_evaluation(workspace):
    run = workspace["runs"] / "ddp"
    first = torchrun(
        "train",
        "--config",
        workspace["config"],
        "--set",
        "train.name=ddp",
        "--set",
        "train.epochs=1",
        cwd=workspace["root"],
    )
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.count("epoch 1  train_loss") == 1  # rank 0 prints, rank 1 does not
    resumed = torchrun("train", "--resume", run, "--set", "train.epochs=2", cwd=workspace["root"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    assert log[1]["train_loss"] < log[0]["train_loss"]
    scst = torchrun(
        "train", "--config", workspace["config"], "--init", run / "best.pt",
        "--set", "train.name=ddp-scst", "--set", "train.epochs=1",
        "--set", "train.objective=scst", "--set", "scst.samples=2", "--set", "scst.max_len=8",
        cwd=workspace["root"],
    )  # fmt: skip
    assert scst.returncode == 0, scst.stderr[-3000:]
    assert scst.stdout.count("epoch 1  train_loss") == 1  # the same one loop, rank 0 prints
    record = json.loads((workspace["runs"] / "ddp-scst" / "metrics.jsonl").read_text())
    assert record["reward"] >= 0 and record["sample_length"] > 0
    evaluated = CliRunner().invoke(
        main,
        [
            "evaluate",
            str(run / "last.pt"),
            "--out",
            str(workspace["root"] / "ev"),
            "--beam-size",
            "2",
        ],
    )
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads((workspace["root"] / "ev" / "ddp-last" / "metrics.json").read_text())
    assert report["num_images"] == 4 and report["epoch"] == 2
