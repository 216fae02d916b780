"""Stage two end to end on a real (tiny) cache: training, resume, refusals, checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.dataset.splits import assign_splits
from pipeline.decoder.checkpoint import CHECKPOINT_FORMAT, load_checkpoint
from pipeline.decoder.vocab import build_vocabulary
from pipeline.errors import UserError


def cli(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_user_error(result, fragment: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert fragment in result.output, result.output


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_training_from_cache_alone_lowers_the_loss(workspace):
    assert not (workspace["root"] / "no-images").exists()
    result = cli("train", "--config", workspace["config"], "--set", "train.name=r")
    assert result.exit_code == 0, result.output
    run = workspace["runs"] / "r"
    log = metrics(run)
    assert [r["epoch"] for r in log] == [1, 2]
    assert log[1]["train_loss"] < log[0]["train_loss"]
    assert log[1]["val_loss"] < log[0]["val_loss"]
    for name in ("config.toml", "vocab.json", "last.pt", "best.pt"):
        assert (run / name).is_file()
    payload = torch.load(run / "last.pt", weights_only=True)
    assert payload["format"] == CHECKPOINT_FORMAT
    assert payload["state"]["epoch"] == 2
    assert set(payload) >= {
        "model",
        "optimizer",
        "scheduler",
        "scaler",
        "config",
        "vocab",
        "features",
        "splits",
    }
    assert payload["features"]["num_images"] == 40
    assert "vocabulary:" in result.output and "No CNN here" in result.output


def test_resume_logs_the_same_losses_as_a_straight_run(workspace):
    config = workspace["config"]
    assert (
        cli(
            "train", "--config", config, "--set", "train.name=straight", "--set", "train.epochs=3"
        ).exit_code
        == 0
    )
    assert cli("train", "--config", config, "--set", "train.name=stopped").exit_code == 0
    resumed = cli("train", "--resume", workspace["runs"] / "stopped", "--set", "train.epochs=3")
    assert resumed.exit_code == 0, resumed.output
    straight = metrics(workspace["runs"] / "straight")
    stopped = metrics(workspace["runs"] / "stopped")
    assert len(stopped) == 3
    for a, b in zip(straight, stopped, strict=True):
        assert a["train_loss"] == b["train_loss"]
        assert a["val_loss"] == b["val_loss"]


def test_streamed_with_workers_equals_in_memory(workspace):
    common = ("--config", workspace["config"], "--set", "train.epochs=1")
    assert (
        cli(
            "train", *common, "--set", "train.name=mem", "--set", "features.in_memory=true"
        ).exit_code
        == 0
    )
    streamed = cli(
        "train",
        *common,
        "--set",
        "train.name=stream",
        "--set",
        "features.in_memory=false",
        "--set",
        "train.workers=2",
    )
    assert streamed.exit_code == 0, streamed.output
    assert "streamed from HDF5" in streamed.output
    mem, stream = metrics(workspace["runs"] / "mem"), metrics(workspace["runs"] / "stream")
    assert mem[0]["train_loss"] == pytest.approx(stream[0]["train_loss"], abs=1e-6)


def test_existing_run_folder_is_not_overwritten(workspace):
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
    before = (workspace["runs"] / "r" / "last.pt").read_bytes()
    again = cli("train", "--config", workspace["config"], "--set", "train.name=r")
    assert_user_error(again, "already holds a run")
    assert (workspace["runs"] / "r" / "last.pt").read_bytes() == before


def test_incomplete_cache_is_refused(workspace):
    with h5py.File(workspace["features"], "r+") as f:
        f.attrs["complete"] = False
    assert_user_error(cli("train", "--config", workspace["config"]), "incomplete")


def test_cache_from_another_backbone_is_refused(workspace):
    with h5py.File(workspace["features"], "r+") as f:
        f.attrs["backbone"] = "vgg16"
    assert_user_error(cli("train", "--config", workspace["config"]), "backbone")


def test_missing_cache_and_non_hdf5_cache_are_refused(workspace):
    missing = cli(
        "train",
        "--config",
        workspace["config"],
        "--set",
        f"features.path={json.dumps(str(workspace['root'] / 'nope.h5'))}",
    )
    assert_user_error(missing, "feature file not found")
    workspace["features"].write_text("not hdf5")
    assert_user_error(cli("train", "--config", workspace["config"]), "not a readable HDF5")


def test_captions_without_grids_are_dropped_with_a_warning(workspace):
    data = json.loads(workspace["captions"].read_text())
    extra = dict(data["images"][0], filename="not_in_cache.jpg")
    data["images"].append(extra)
    workspace["captions"].write_text(json.dumps(data))
    result = cli(
        "train", "--config", workspace["config"], "--set", "train.epochs=1", "--set", "train.name=w"
    )
    assert result.exit_code == 0, result.output
    assert "warning: dropped 5 captions of 1 images" in result.output


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("model.nope=1", "unknown config key model.nope"),
        ("train.epochs=two", "train.epochs must be int"),
        ("model.attention=dot", "model.attention must be one of"),
        ("train.lr=-1", "train.lr must be finite and > 0"),
        ("train.lr=inf", "train.lr must be a finite number"),
        ("model.dropout=nan", "model.dropout must be a finite number"),
        ("banana", "--set expects section.key=value"),
        ("colour.x=1", "unknown config section [colour]"),
    ],
)
def test_config_errors_are_one_clear_message(workspace, override, fragment):
    assert_user_error(cli("train", "--config", workspace["config"], "--set", override), fragment)


def test_missing_config_file(tmp_path):
    assert_user_error(cli("train", "--config", tmp_path / "none.toml"), "config file not found")


def test_shipped_configs_load():
    from pipeline.config import load_config

    configs = sorted(Path(__file__).resolve().parents[1].glob("configs/*.toml"))
    assert {c.stem for c in configs} >= {"demo", "flickr30k", "flickr30k-sat", "flickr8k", "coco"}
    for path in configs:
        load_config(path)
    seed = load_config(configs[0].parent / "flickr30k.toml")
    assert (seed.model.attention, seed.model.embed_dim, seed.model.hidden_dim) == (
        "linear",
        256,
        256,
    )
    assert (seed.train.lr, seed.train.batch_size, seed.train.epochs) == (1e-3, 32, 25)
    assert (seed.train.step_size, seed.train.gamma, seed.vocab.max_len) == (10, 0.5, 30)


class Exploit:
    """Unpickling this would create a file: a checkpoint is code unless weights_only."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_checkpoint_with_pickled_object_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "bad.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "model": {}, "payload": Exploit(marker)}, bad)
    with pytest.raises(UserError, match="pickled Python objects"):
        load_checkpoint(bad)
    assert not marker.exists()
    result = cli("evaluate", bad, "--out", tmp_path / "ev")
    assert_user_error(result, "pickled Python objects")
    assert not marker.exists()


def test_splits_are_disjoint_by_image_and_seeded():
    frame = pd.DataFrame(
        {
            "image": [f"{i // 5}.jpg" for i in range(500)],
            "caption": ["a cat"] * 500,
            "split": [None] * 500,
            "image_id": [str(i // 5) for i in range(500)],
        }
    )
    a = assign_splits(frame, [0.8, 0.1, 0.1], seed=3)
    b = assign_splits(frame, [0.8, 0.1, 0.1], seed=3)
    assert a["split"].tolist() == b["split"].tolist()
    per_image = a.groupby("image")["split"].nunique()
    assert (per_image == 1).all()
    counts = a.drop_duplicates("image")["split"].value_counts()
    assert (counts["train"], counts["val"], counts["test"]) == (80, 10, 10)
    half = assign_splits(frame, [0.8, 0.2, 0.0], seed=3, subset=0.5)
    assert half["image"].nunique() == 50 and set(half["split"]) == {"train", "val"}


def test_vocabulary_comes_from_train_captions_only(workspace):
    result = cli(
        "train", "--config", workspace["config"], "--set", "train.epochs=1", "--set", "train.name=v"
    )
    assert result.exit_code == 0, result.output
    itos = json.loads((workspace["runs"] / "v" / "vocab.json").read_text())["itos"]
    data = json.loads(workspace["captions"].read_text())
    train_words = {
        w
        for im in data["images"]
        if im["split"] == "train"
        for s in im["sentences"]
        for w in s["raw"].lower().replace(",", " ").split()
    }
    assert itos[:4] == ["<pad>", "<sos>", "<eos>", "<unk>"]
    assert set(itos[4:]) <= train_words
    vocab, counts = build_vocabulary(["a b b", "b c"], min_freq=2)
    assert vocab.itos[4:] == ["b"] and counts["b"] == 3
    assert vocab.encode("B c zebra", max_len=2) == [1, vocab.stoi["b"], vocab.unk, 2]
    assert vocab.decode(vocab.encode("b b", 5)) == "b b"
    assert np.array_equal(np.array(vocab.encode("", 3)), np.array([1, 2]))
