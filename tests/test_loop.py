"""The one training loop: warmup, the non-finite stop for every objective, --init's optimizer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.dataset.batches import CaptionBatches
from pipeline.decoder.checkpoint import load_checkpoint
from pipeline.distributed import DistInfo
from pipeline.train.loop import optimizer_step, warmup_factor
from pipeline.train.trainer import build_trainer

SCST = ("--set", "train.objective=scst", "--set", "scst.samples=2", "--set", "scst.max_len=8")


def cli(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture()
def xe_run(workspace) -> Path:
    result = cli(
        "train",
        "--config",
        workspace["config"],
        "--set",
        "train.name=xe",
        "--set",
        "train.epochs=1",
    )
    assert result.exit_code == 0, result.output
    return workspace["runs"] / "xe"


def first_step(config) -> tuple[dict, dict, float]:
    """Parameters before and after one optimizer step on a new run's first train batch, and
    the learning rate the optimizer holds afterwards."""
    trainer = build_trainer(config, None, (), DistInfo())
    try:
        key = trainer.objective.plan(trainer, 0, np.random.default_rng(0))[0]
        batch = CaptionBatches(trainer.data.store, trainer.train_split, trainer.vocab.pad)[key]
        before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
        loss, _ = trainer.objective.loss(trainer, key, batch)
        optimizer_step(trainer, loss, 0)
        after = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
        return before, after, trainer.optimizer.param_groups[0]["lr"]
    finally:
        trainer.lock.release()


def test_warmup_factor_rises_linearly_then_stays_at_one():
    assert [warmup_factor(s, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_factor(0, 0) == 1.0


def test_warmup_scales_the_first_update_and_leaves_the_schedule_alone(workspace):
    moves, lrs = {}, {}
    for warmup in (0, 4):
        config = load_config(
            workspace["config"], [f"train.warmup_steps={warmup}", f"train.name=w{warmup}"]
        )
        before, after, lrs[warmup] = first_step(config)
        moves[warmup] = max(float((after[k] - before[k]).abs().max()) for k in before)
    # Adam's first update moves each weight by about lr * factor: a quarter with 4 warmup steps
    assert moves[4] / moves[0] == pytest.approx(0.25, rel=0.02)
    assert lrs[0] == lrs[4] == 0.003  # the scheduled rate is restored after the step


def test_init_keeps_the_checkpoints_adam_moments_only_when_asked(workspace, xe_run):
    saved = load_checkpoint(xe_run / "best.pt")["optimizer"]["state"][0]["exp_avg"]
    for keep in (False, True):
        config = load_config(
            workspace["config"],
            [
                "train.objective=scst",
                "scst.samples=2",
                "scst.max_len=8",
                "train.lr=1e-4",
                f"scst.keep_optimizer={str(keep).lower()}",
                f"train.name=keep-{keep}",
            ],
        )
        trainer = build_trainer(config, None, (), DistInfo(), xe_run / "best.pt")
        state = trainer.optimizer.state_dict()
        trainer.lock.release()
        assert state["param_groups"][0]["lr"] == 1e-4
        if keep:
            torch.testing.assert_close(state["state"][0]["exp_avg"], saved)
        else:
            assert state["state"] == {}


@pytest.mark.parametrize("objective", ["xe", "scst"])
def test_a_non_finite_loss_stops_either_objective_the_same_way(workspace, xe_run, objective):
    """Cross-entropy overflows through a huge penalty weight, SCST through a huge reward
    penalty; both end in the loop's one stop, before any checkpoint of the new run."""
    if objective == "xe":
        extra = ("--set", "model.doubly_stochastic=1e300")
    else:
        extra = ("--init", xe_run / "best.pt", *SCST, "--set", "scst.bad_ending_penalty=3e38")
    result = cli(
        "train", "--config", workspace["config"], "--set", f"train.name=nan-{objective}", *extra
    )
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    assert errors[0].startswith("error: training stopped: non-finite loss at epoch 1, step ")
    assert "nothing of it was saved (no checkpoint yet, resume starts over)" in errors[0]
    run = workspace["runs"] / f"nan-{objective}"
    assert not (run / "last.pt").exists() and not (run / "best.pt").exists()


def test_scst_epochs_log_the_val_subsets_sampled_and_greedy_reward(workspace, xe_run):
    result = cli(
        "train",
        "--config",
        workspace["config"],
        "--init",
        xe_run / "best.pt",
        *SCST,
        "--set",
        "train.name=monitored",
        "--set",
        "train.epochs=1",
        "--set",
        "scst.val_images=3",
    )
    assert result.exit_code == 0, result.output
    line = json.loads((workspace["runs"] / "monitored" / "metrics.jsonl").read_text())
    assert 0 <= line["val_reward_sample"] and 0 <= line["val_reward_greedy"]


def test_kept_adam_moments_that_no_longer_fit_are_one_clear_error(workspace, xe_run):
    result = cli(
        "train", "--config", workspace["config"], "--init", xe_run / "best.pt", *SCST,
        "--set", "scst.keep_optimizer=true", "--set", "model.freeze_embeddings=true",
        "--set", "train.name=frozen",
    )  # fmt: skip
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "optimizer state does not fit this run's trainable parameters" in result.output


def test_a_run_that_stopped_early_does_not_train_on_when_resumed(workspace):
    # val CIDEr stays 0 on the tiny cache: no improvement after epoch 1, patience 1 -> stop
    options = ("--set", "train.patience=1", "--set", "train.epochs=6", "--set", "train.name=p")
    first = cli("train", "--config", workspace["config"], *options)
    assert first.exit_code == 0 and "early stopping" in first.output, first.output
    run = workspace["runs"] / "p"
    before = (run / "metrics.jsonl").read_text()
    resumed = cli("train", "--resume", run)
    assert resumed.exit_code == 0 and "stopped early after epoch" in resumed.output
    assert (run / "metrics.jsonl").read_text() == before
