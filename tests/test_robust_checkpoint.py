"""Checkpoints under accidents: a full disk, non-finite training, weights that do not fit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.decoder.checkpoint import load_checkpoint, save_checkpoint
from pipeline.errors import UserError

REPO = Path(__file__).resolve().parents[1]
# Run the CLI with a file-size limit: writes past it fail with EFBIG, as on a full disk
# (SIGXFSZ is ignored so that the write fails instead of the process being killed).
LIMITED = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from pipeline.cli import main
main(sys.argv[2:])
"""


def cli(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


def metric_epochs(run: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture()
def one_epoch_run(workspace) -> Path:
    result = cli(
        "train", "--config", workspace["config"], "--set", "train.name=r", "--set", "train.epochs=1"
    )
    assert result.exit_code == 0, result.output
    return workspace["runs"] / "r"


def test_disk_full_during_save_keeps_the_last_checkpoint_and_resumes(one_epoch_run):
    run = one_epoch_run
    before = (run / "last.pt").read_bytes()
    limit = len(before) // 2
    full = subprocess.run(
        [
            sys.executable,
            "-c",
            LIMITED,
            str(limit),
            "train",
            "--resume",
            str(run),
            "--set",
            "train.epochs=2",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert full.returncode == 2, full.stdout + full.stderr
    assert "Traceback" not in full.stderr
    errors = [line for line in full.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "could not save" in errors[0] and "disk full" in errors[0]
    assert (run / "last.pt").read_bytes() == before
    assert not [p.name for p in run.iterdir() if ".tmp-" in p.name]
    resumed = cli("train", "--resume", run, "--set", "train.epochs=2")
    assert resumed.exit_code == 0, resumed.output
    assert metric_epochs(run) == [1, 2]
    assert load_checkpoint(run / "last.pt")["state"]["epoch"] == 2


def test_non_finite_loss_stops_and_saves_nothing(one_epoch_run):
    run = one_epoch_run
    before = (run / "last.pt").read_bytes()
    steps = load_checkpoint(run / "last.pt")["state"]["step"]
    # a finite but huge penalty weight overflows the float32 loss to inf
    result = cli(
        "train",
        "--resume",
        run,
        "--set",
        "train.epochs=2",
        "--set",
        "model.doubly_stochastic=1e300",
    )
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert f"non-finite loss at epoch 2, step {steps + 1}" in result.output
    assert (run / "last.pt").read_bytes() == before
    assert metric_epochs(run) == [1]


def test_non_finite_weights_are_never_written(tmp_path):
    payload = {"model": {"w": torch.tensor([1.0, float("nan")])}}
    with pytest.raises(UserError, match="non-finite weights in w"):
        save_checkpoint(payload, tmp_path / "last.pt")
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_whose_vocabulary_or_sizes_disagree_with_its_weights(one_epoch_run, tmp_path):
    payload = load_checkpoint(one_epoch_run / "last.pt")
    short_vocab = dict(payload, vocab=payload["vocab"][:-1])
    wider = json.loads(json.dumps(payload["config"]))
    wider["model"]["hidden_dim"] += 8
    for name, bad in (("vocab.pt", short_vocab), ("sizes.pt", dict(payload, config=wider))):
        save_checkpoint(bad, tmp_path / name)
        result = cli("evaluate", tmp_path / name, "--out", tmp_path / "ev")
        assert result.exit_code == 2, result.output
        assert "do not fit the model built from its config and vocabulary" in result.output
        assert "size mismatch" in result.output and "Traceback" not in result.output
    missing = {key: value for key, value in payload.items() if key != "vocab"}
    save_checkpoint(missing, tmp_path / "missing.pt")
    result = cli("evaluate", tmp_path / "missing.pt", "--out", tmp_path / "ev")
    assert (
        result.exit_code == 2 and "not a complete captioner checkpoint (no vocab)" in result.output
    )
