"""A real tiny training run writes TensorBoard event files with the scalars the README names."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from pipeline.cli import main

pytest.importorskip("tensorboard", reason="tensorboard is installed by `make install`")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

README_TAGS = ("loss/train", "loss/val", "val/CIDEr", "val/BLEU-4", "lr", "speed/tokens_per_s")


def test_training_writes_the_readme_scalars_per_epoch(workspace):
    result = CliRunner().invoke(
        main,
        [
            "train",
            "--config",
            str(workspace["config"]),
            "--set",
            "train.name=tb",
            "--set",
            "train.epochs=2",
        ],
    )
    assert result.exit_code == 0, result.output
    run = workspace["runs"] / "tb"
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()

    tags = set(events.Tags()["scalars"])
    assert set(README_TAGS) <= tags
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for tag, key in (
        ("loss/train", "train_loss"),
        ("loss/val", "val_loss"),
        ("val/CIDEr", "CIDEr"),
        ("lr", "lr"),
    ):
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == [1, 2]
        assert [s.value for s in scalars] == pytest.approx([h[key] for h in history], rel=1e-6)
