"""A score is computed on the images it claims: frozen splits, feature identity, finiteness."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.captions.readers import read_captions
from pipeline.cli import main
from pipeline.dataset.splits import assign_splits
from pipeline.decoder.checkpoint import load_checkpoint, save_checkpoint
from pipeline.extract.cli import extract_command


def cli(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_user_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output, result.output


def write_csv(path: Path, images: list[dict]) -> None:
    """A Kaggle Flickr30k results.csv (no splits) with the captions of `images`."""
    lines = ["image_name| comment_number| comment"]
    for image in images:
        lines += [f"{image['filename']}| {n}| {s['raw']}" for n, s in enumerate(image["sentences"])]
    path.write_text("\n".join(lines) + "\n")


def train(workspace, name: str, *overrides: str) -> Path:
    result = cli(
        "train",
        "--config",
        workspace["config"],
        "--set",
        f"train.name={name}",
        "--set",
        "train.epochs=1",
        *[a for o in overrides for a in ("--set", o)],
    )
    assert result.exit_code == 0, result.output
    return workspace["runs"] / name


def test_computed_splits_are_frozen_in_the_run(workspace):
    images = json.loads(workspace["captions"].read_text())["images"]
    csv = workspace["root"] / "results.csv"
    write_csv(csv, images)
    run = train(workspace, "csv", f"data.captions={json.dumps(str(csv))}")
    saved = json.loads((run / "splits.json").read_text())
    assert load_checkpoint(run / "last.pt")["splits"] == saved
    assert sum(len(saved[name]) for name in ("train", "val", "test")) == 40
    write_csv(csv, images[::-1])  # the same captions, another order
    recomputed = assign_splits(read_captions(csv).frame, [0.8, 0.1, 0.1], 0)
    recomputed_test = set(recomputed.loc[recomputed["split"] == "test", "image"])
    assert recomputed_test & set(saved["train"])  # what evaluating without frozen splits meant
    result = cli("evaluate", run, "--out", workspace["root"] / "ev", "--beam-size", "1")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "changed since this run was trained" in warnings[0]
    predicted = json.loads((workspace["root"] / "ev" / "csv" / "predictions.json").read_text())
    assert [p["image_id"] for p in predicted] == [Path(n).stem for n in saved["test"]]
    resumed = cli("train", "--resume", run, "--set", "train.epochs=2")
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((run / "splits.json").read_text()) == saved
    assert load_checkpoint(run / "last.pt")["splits"]["train"] == saved["train"]


def test_file_splits_that_now_cross_the_runs_are_refused(workspace):
    run = train(workspace, "k")
    saved = json.loads((run / "splits.json").read_text())
    data = json.loads(workspace["captions"].read_text())
    moved = saved["test"][0]
    for image in data["images"]:
        if image["filename"] == moved:
            image["split"] = "train"
    workspace["captions"].write_text(json.dumps(data))
    result = cli("evaluate", run, "--out", workspace["root"] / "ev")
    assert_user_error(result, "on the other side of the run's train / held-out line", moved)


def test_caption_file_with_overlapping_splits_is_refused(workspace):
    data = json.loads(workspace["captions"].read_text())
    test_image = next(im for im in data["images"] if im["split"] == "test")
    data["images"].append(dict(test_image, split="train"))
    workspace["captions"].write_text(json.dumps(data))
    result = cli("train", "--config", workspace["config"])
    assert_user_error(
        result, "puts 1 image(s) in more than one split", f"{test_image['filename']} (test+train)"
    )
    assert not workspace["runs"].exists() or not list(workspace["runs"].iterdir())


def test_feature_file_with_another_image_list_is_refused_moved_one_accepted(workspace):
    run = train(workspace, "f")
    images = json.loads(workspace["captions"].read_text())["images"][:4]
    few = workspace["root"] / "few.csv"
    write_csv(few, images)
    small = workspace["root"] / "small.h5"
    made = CliRunner().invoke(
        extract_command,
        [
            "--images",
            str(workspace["images"]),
            "--captions",
            str(few),
            "--out",
            str(small),
            "--weights",
            "none",
            "--workers",
            "0",
            "--quiet",
        ],
    )
    assert made.exit_code == 0, made.output
    evaluated = cli("evaluate", run, "--features", small, "--out", workspace["root"] / "ev")
    assert_user_error(
        evaluated,
        "holds another image list",
        "checkpoint: 40 images, file: 4",
        "36 of the run's images are not in it",
    )
    resumed = cli(
        "train",
        "--resume",
        run,
        "--set",
        "train.epochs=2",
        "--set",
        f"features.path={json.dumps(str(small))}",
    )
    assert_user_error(resumed, "holds another image list")
    assert load_checkpoint(run / "last.pt")["features"]["num_images"] == 40
    renamed = workspace["root"] / "renamed-image.h5"
    shutil.copy(workspace["features"], renamed)
    with h5py.File(renamed, "r+") as f:
        first = f["image_ids"][0].decode()
        f["image_ids"][0] = "another.jpg"
    same_count = cli("evaluate", run, "--features", renamed, "--out", workspace["root"] / "ev")
    assert_user_error(
        same_count,
        "checkpoint: 40 images, file: 40",
        f"e.g. {first}",
        "same count, other images or order",
    )
    moved = workspace["root"] / "elsewhere" / "renamed.h5"
    moved.parent.mkdir()
    shutil.move(workspace["features"], moved)
    ok = cli(
        "evaluate", run, "--features", moved, "--out", workspace["root"] / "ev2", "--beam-size", "1"
    )
    assert ok.exit_code == 0, ok.output
    # a checkpoint from before frozen splits and image-list hashes still evaluates
    old = load_checkpoint(run / "best.pt")
    old.pop("splits")
    old["features"].pop("image_list_sha256", None)
    save_checkpoint(old, workspace["root"] / "old.pt")
    legacy = cli(
        "evaluate",
        workspace["root"] / "old.pt",
        "--features",
        moved,
        "--out",
        workspace["root"] / "ev3",
        "--beam-size",
        "1",
    )
    assert legacy.exit_code == 0, legacy.output


@pytest.mark.parametrize("in_memory, workers", [("true", 0), ("false", 2)])
def test_features_with_nan_are_refused(workspace, in_memory, workers):
    with h5py.File(workspace["features"], "r+") as f:
        row = f["features"][7]
        row[3, 5] = np.nan
        f["features"][7] = row
    result = cli(
        "train",
        "--config",
        workspace["config"],
        "--set",
        "train.epochs=1",
        "--set",
        f"features.in_memory={in_memory}",
        "--set",
        f"train.workers={workers}",
    )
    assert_user_error(result, "non-finite feature values (nan or inf)", "row 7")
    error = [line for line in result.output.splitlines() if "non-finite" in line]
    assert len(error) == 1 and error[0].startswith("error: non-finite feature values")


def test_word_vectors_with_nan_are_refused(workspace):
    vectors = workspace["root"] / "vectors.txt"
    good = " ".join(["0.1"] * 16)
    vectors.write_text(f"zebra {good}\na {' '.join(['0.1'] * 15 + ['inf'])}\n")
    result = cli(
        "train",
        "--config",
        workspace["config"],
        "--set",
        f"model.pretrained_embeddings={json.dumps(str(vectors))}",
    )
    assert_user_error(result, f"{vectors}:2: word vector has a non-finite value")
