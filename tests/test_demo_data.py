"""Demo data: deterministic files, true captions, readable by the real caption readers."""

import re

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from pipeline.captions.cli import demo_data_command
from pipeline.captions.demo_data import COLOURS, generate_demo_data
from pipeline.captions.readers import read_captions
from pipeline.errors import UserError

N_IMAGES = 20
POSITION_WORDS = (
    "left",
    "right",
    "top",
    "bottom",
    "center",
    "middle",
    "corner",
    "above",
    "below",
    "next to",
)
CELL_OF = {  # the 3x3 cell (row, column) each location phrase names
    "in the top left corner": (0, 0),
    "at the top left": (0, 0),
    "at the top": (0, 1),
    "near the top": (0, 1),
    "in the top right corner": (0, 2),
    "at the top right": (0, 2),
    "on the left": (1, 0),
    "on the left side": (1, 0),
    "in the center": (1, 1),
    "in the middle": (1, 1),
    "on the right": (1, 2),
    "on the right side": (1, 2),
    "in the bottom left corner": (2, 0),
    "at the bottom left": (2, 0),
    "at the bottom": (2, 1),
    "near the bottom": (2, 1),
    "in the bottom right corner": (2, 2),
    "at the bottom right": (2, 2),
}
SINGLE_PLACED = re.compile(
    r"^(?:a|a large|a small|a single|there is one) (?P<colour>\w+) \w+ (?P<where>.+)$"
)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    stats = generate_demo_data(out, n_images=N_IMAGES, seed=0)
    return out, stats


def _files(root):
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _colour_mask(pixels, colour, tolerance=60):
    """(H, W) True where a pixel is within `tolerance` (per channel) of a shape colour."""
    return (np.abs(pixels.astype(int) - np.array(COLOURS[colour])) < tolerance).all(axis=2)


def test_same_seed_writes_identical_bytes_other_seed_differs(demo, tmp_path):
    out, _ = demo
    generate_demo_data(tmp_path / "again", n_images=N_IMAGES, seed=0)
    generate_demo_data(tmp_path / "other", n_images=N_IMAGES, seed=1)
    first, again, other = _files(out), _files(tmp_path / "again"), _files(tmp_path / "other")
    assert sorted(first) == sorted(
        ["dataset.json", "results.csv"] + [f"images/demo_{i:05d}.jpg" for i in range(N_IMAGES)]
    )
    assert first == again
    assert first["results.csv"] != other["results.csv"]
    assert first["images/demo_00000.jpg"] != other["images/demo_00000.jpg"]


def test_images_are_rgb_jpegs_of_the_requested_size(demo, tmp_path):
    out, _ = demo
    with Image.open(out / "images" / "demo_00007.jpg") as image:
        assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (224, 224))
    generate_demo_data(tmp_path / "small", n_images=2, size=96)
    with Image.open(tmp_path / "small" / "images" / "demo_00001.jpg") as image:
        assert image.size == (96, 96)


def test_both_caption_files_read_back_with_counts_and_splits(demo):
    out, stats = demo
    csv_table = read_captions(out / "results.csv")
    json_table = read_captions(out / "dataset.json")
    assert (csv_table.format, json_table.format) == ("flickr30k-csv", "karpathy")
    for table in (csv_table, json_table):
        assert len(table.images()) == N_IMAGES
        assert len(table.frame) == 5 * N_IMAGES
        assert (table.dropped_empty, table.recovered, table.rejected) == (0, 0, [])
    assert csv_table.frame["caption"].tolist() == json_table.frame["caption"].tolist()
    per_image = json_table.frame.groupby("image")["split"].agg(["nunique", "first"])
    assert (per_image["nunique"] == 1).all()
    assert per_image["first"].value_counts().to_dict() == {"train": 16, "val": 2, "test": 2}
    assert stats["splits"] == {"train": 16, "val": 2, "test": 2}
    assert (stats["images"], stats["captions"]) == (N_IMAGES, 5 * N_IMAGES)


def test_five_distinct_captions_per_image_about_colour_and_position(demo):
    out, _ = demo
    frame = read_captions(out / "results.csv").frame
    for _, captions in frame.groupby("image")["caption"]:
        assert len(captions) == 5
        assert captions.nunique() == 5
        assert all(any(colour in text.split() for colour in COLOURS) for text in captions)
    placed = frame["caption"].map(lambda text: any(word in text for word in POSITION_WORDS))
    assert placed.mean() > 0.7


def test_captions_are_true_for_their_images(demo):
    out, _ = demo
    frame = read_captions(out / "results.csv").frame
    checked_places = 0
    for name, captions in frame.groupby("image")["caption"]:
        with Image.open(out / "images" / name) as image:
            pixels = np.asarray(image.convert("RGB"))  # (224, 224, 3)
        for text in captions:
            for colour in set(text.split()) & set(COLOURS):
                assert _colour_mask(pixels, colour).sum() > 300, (name, text)
            match = SINGLE_PLACED.match(text)
            if match and match["where"] in CELL_OF:
                row, column = CELL_OF[match["where"]]
                cell = pixels[row * 75 : (row + 1) * 75, column * 75 : (column + 1) * 75]
                assert _colour_mask(cell, match["colour"]).sum() > 300, (name, text)
                checked_places += 1
    assert checked_places >= N_IMAGES


def test_bad_arguments_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="at least 1"):
        generate_demo_data(tmp_path / "none", n_images=0)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match="cannot write demo data"):
        generate_demo_data(blocker, n_images=1)


def test_demo_data_cli_writes_files_and_prints_summary(tmp_path):
    out = tmp_path / "cli-demo"
    result = CliRunner().invoke(demo_data_command, [str(out), "--images", "10", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert "wrote 10 images" in result.output
    assert "10 images, 50 captions, 5.00 captions per image" in result.output
    assert "splits: train 8, val 1, test 1" in result.output
    assert len(list((out / "images").glob("demo_*.jpg"))) == 10
    assert (out / "results.csv").is_file() and (out / "dataset.json").is_file()


def test_demo_data_cli_reports_bad_arguments_in_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = CliRunner().invoke(demo_data_command, [str(blocker)])
    assert result.exit_code == 2
    assert result.output.startswith("error: cannot write demo data")
    assert "Traceback" not in result.output
    result = CliRunner().invoke(demo_data_command, [str(tmp_path / "x"), "--images", "0"])
    assert result.exit_code == 2
    assert "error: --images must be at least 1" in result.output


def test_demo_data_never_overwrites_a_users_files(tmp_path):
    folder = tmp_path / "flickr30k"
    folder.mkdir()
    mine = folder / "results.csv"
    mine.write_text("my own captions\n")
    refused = CliRunner().invoke(demo_data_command, [str(folder), "--images", "2"])
    assert refused.exit_code == 2
    assert "already holds files" in refused.output and "--overwrite" in refused.output
    assert mine.read_text() == "my own captions\n"
    assert sorted(p.name for p in folder.iterdir()) == ["results.csv"]
    assert [p.name for p in tmp_path.iterdir()] == ["flickr30k"]  # no temp folder left
    forced = CliRunner().invoke(demo_data_command, [str(folder), "--images", "2", "--overwrite"])
    assert forced.exit_code == 0, forced.output
    assert mine.read_text().startswith("image_name| comment_number| comment")
    empty = tmp_path / "empty"
    empty.mkdir()
    stats = generate_demo_data(empty, n_images=2)
    assert (empty / "dataset.json").is_file() and stats["dataset_json"] == str(
        empty / "dataset.json"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "flickr30k"]
    with pytest.raises(UserError, match="already holds files"):
        generate_demo_data(empty, n_images=2)
