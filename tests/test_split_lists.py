"""Official split lists (Flickr8k's) as the third source of splits: beside the caption file or
in `data.split_lists`; what they leave out is dropped and said in one line per thing."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from pipeline.captions.readers import FLICKR8K_SPLIT_FILES, read_captions
from pipeline.cli import main
from pipeline.config import DataConfig
from pipeline.dataset.splits import assign_splits, new_splits, split_counts
from pipeline.errors import UserError


def cli(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


def write_lists(folder: Path, train: list[str], val: list[str], test: list[str]) -> Path:
    """The three official list files (one name per line) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, names in (("train", train), ("val", val), ("test", test)):
        (folder / FLICKR8K_SPLIT_FILES[split]).write_text("".join(f"{n}\n" for n in names))
    return folder


def token_file(karpathy: Path, target: Path) -> tuple[Path, list[str]]:
    """The demo's Karpathy captions as a Flickr8k.token.txt; returns it and the image names."""
    images = json.loads(karpathy.read_text())["images"]
    lines = [
        f"{image['filename']}#{n}\t{sentence['raw']}"
        for image in images
        for n, sentence in enumerate(image["sentences"])
    ]
    target.write_text("\n".join(lines) + "\n")
    return target, [image["filename"] for image in images]


def frame_of(names: list[str]) -> pd.DataFrame:
    """Two captions per image, no splits (a Flickr8k-like table)."""
    rows = [(name, f"a dog {k}", None, name) for name in names for k in range(2)]
    return pd.DataFrame(rows, columns=["image", "caption", "split", "image_id"])


def test_listed_splits_drop_unlisted_images_and_subset_within_them():
    names = [f"{i}.jpg" for i in range(12)]
    listed = {**dict.fromkeys(names[:6], "train"), "6.jpg": "val", "7.jpg": "test"}
    frame = assign_splits(frame_of(names), [0.8, 0.1, 0.1], 0, listed=listed)
    assert split_counts(frame) == {"train": 6, "val": 1, "test": 1}
    assert frame.groupby("image")["split"].first().to_dict() == listed
    half = assign_splits(frame_of(names), [0.8, 0.1, 0.1], 0, subset=0.5, listed=listed)
    assert half["image"].nunique() == 4 and set(half["image"]) <= set(listed)


def test_lists_beside_a_flickr8k_file_are_found_and_say_what_they_dropped(tmp_path):
    names = [f"{i}.jpg" for i in range(10)]
    captions = tmp_path / "Flickr8k.token.txt"
    captions.write_text("".join(f"{n}#0\ta dog runs\n{n}#1\ta cat\n" for n in names))
    write_lists(tmp_path, names[:6], names[6:8], [names[8], "ghost.jpg"])
    table = read_captions(captions)
    frame, origin = new_splits(table.frame, DataConfig(captions=str(captions)), table.format)
    assert split_counts(frame) == {"train": 6, "val": 2, "test": 1}
    assert (origin.source, origin.lists, origin.unlisted) == ("listed", str(tmp_path), ["9.jpg"])
    assert origin.notes() == [
        "dropped 1 images in no split list (e.g. 9.jpg)",
        "no caption to use for 1 images of the split lists",
    ]
    assert origin.record() == {"source": "listed", "split_lists": str(tmp_path)}


def test_without_all_three_lists_or_for_other_formats_the_splits_are_computed(tmp_path):
    names = [f"{i}.jpg" for i in range(10)]
    csv = tmp_path / "results.csv"
    csv.write_text("".join(f"{n}| 0| a dog\n" for n in names))
    write_lists(tmp_path, names[:8], names[8:9], names[9:])
    table = read_captions(csv)
    assert new_splits(table.frame, DataConfig(captions=str(csv)), table.format)[1].source == (
        "computed"
    )
    token = tmp_path / "Flickr8k.token.txt"
    token.write_text("".join(f"{n}#0\ta dog\n" for n in names))
    (tmp_path / FLICKR8K_SPLIT_FILES["test"]).unlink()
    table = read_captions(token)
    frame, origin = new_splits(table.frame, DataConfig(captions=str(token)), table.format)
    assert origin.source == "computed" and split_counts(frame) == {"train": 8, "val": 1, "test": 1}


def test_data_split_lists_names_a_folder_that_must_hold_the_three_lists(tmp_path):
    names = [f"{i}.jpg" for i in range(10)]
    token = tmp_path / "data" / "Flickr8k.token.txt"
    token.parent.mkdir()
    token.write_text("".join(f"{n}#0\ta dog\n" for n in names))
    lists = write_lists(tmp_path / "lists", names[:5], names[5:7], names[7:])
    table = read_captions(token)
    data = DataConfig(captions=str(token), split_lists=str(lists))
    frame, origin = new_splits(table.frame, data, table.format)
    assert origin.source == "listed" and split_counts(frame) == {"train": 5, "val": 2, "test": 3}
    (lists / FLICKR8K_SPLIT_FILES["val"]).unlink()
    for folder in (lists, tmp_path / "nowhere"):
        data = DataConfig(captions=str(token), split_lists=str(folder))
        with pytest.raises(UserError, match=r"data.split_lists = .* must be a folder holding"):
            new_splits(table.frame, data, table.format)


@pytest.fixture()
def listed_workspace(workspace):
    """The demo cache's captions as a Flickr8k.token.txt with split lists beside it: 30 / 4 /
    4 images, 2 images in no list, one listed image without captions."""
    folder = workspace["root"] / "flickr8k"
    folder.mkdir()
    captions, names = token_file(workspace["captions"], folder / "Flickr8k.token.txt")
    write_lists(folder, names[:30], names[30:34], [*names[34:38], "ghost.jpg"])
    return {**workspace, "token": captions, "names": names, "lists": folder}


def test_a_run_takes_the_listed_splits_reports_them_and_saves_their_source(listed_workspace):
    ws = listed_workspace
    sets = [f"data.captions={json.dumps(str(ws['token']))}", "train.epochs=1", "train.name=l"]
    result = cli("train", "--config", ws["config"], *[a for s in sets for a in ("--set", s)])
    assert result.exit_code == 0, result.output
    assert (
        f"splits (images): train 30, val 4, test 4 (official split lists in {ws['lists']}); "
        in result.output
    )
    assert f"dropped 2 images in no split list (e.g. {ws['names'][38]}, {ws['names'][39]})\n" in (
        result.output
    )
    assert "no caption to use for 1 images of the split lists\n" in result.output
    saved = json.loads((ws["runs"] / "l" / "splits.json").read_text())
    assert (saved["source"], saved["split_lists"]) == ("listed", str(ws["lists"]))
    assert saved["train"] == ws["names"][:30] and saved["val"] == ws["names"][30:34]
    assert saved["test"] == ws["names"][34:38]
    evaluated = cli("evaluate", ws["runs"] / "l", "--out", ws["root"] / "ev", "--beam-size", 1)
    assert evaluated.exit_code == 0, evaluated.output
    assert "on test, 4 images" in evaluated.output


def test_a_karpathy_run_records_its_source_and_split_lists_errors_are_one_line(workspace):
    result = cli(
        "train", "--config", workspace["config"], "--set", "train.name=k", "--set", "train.epochs=1"
    )
    assert result.exit_code == 0, result.output
    assert "splits (images): train 32, val 4, test 4 (the caption file's own (karpathy))" in (
        result.output
    )
    assert json.loads((workspace["runs"] / "k" / "splits.json").read_text())["source"] == (
        "karpathy"
    )
    lists = write_lists(workspace["root"] / "lists", ["a.jpg"], ["b.jpg"], ["c.jpg"])
    for folder, fragment in (
        (workspace["root"] / "nowhere", "must be a folder holding Flickr_8k.trainImages.txt"),
        (lists, "a karpathy caption file brings its own splits"),
    ):
        refused = cli(
            "train", "--config", workspace["config"], "--set", f"data.split_lists={folder}"
        )
        assert refused.exit_code == 2, refused.output
        assert fragment in refused.output and "Traceback" not in refused.output
