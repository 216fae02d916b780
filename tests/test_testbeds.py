"""Testbeds: ordinary caption and feature files whose grids carry known information."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline import contract
from pipeline.captions.demo_data import COLOURS, SHAPES, demo_scenes, generate_demo_data
from pipeline.cli import main
from pipeline.testbed.knobs import SceneKnobs
from pipeline.testbed.language import content_words
from pipeline.testbed.scene import CODE_SIZE, SLOTS, code_to_channels, covered_cells

FLICKR8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "flickr8k"
needs_flickr8k = pytest.mark.skipif(
    not (FLICKR8K / "Flickr8k.token.txt").is_file(),
    reason=f"the real Flickr8k captions are not at {FLICKR8K}",
)


def cli(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


def grids(folder: Path) -> tuple[np.ndarray, list[str], dict]:
    """(N, 49, 2048) float32, ids and attrs of a complete feature file."""
    with contract.open_complete(folder / "features.h5") as f:
        contract.check_layout(f, folder / "features.h5")
        return (
            f[contract.FEATURES][:].astype(np.float32),
            contract.read_image_ids(f),
            contract.read_attrs(f),
        )


def scene(tmp_path: Path, name: str, *options) -> Path:
    result = cli("testbed", "scene", tmp_path / name, "--images", 30, "--extra-test", 5, *options)
    assert result.exit_code == 0, result.output
    return tmp_path / name


def test_scene_testbed_is_the_demo_data_with_its_knobs_in_the_fingerprint(tmp_path):
    folder = scene(tmp_path, "tb")
    generate_demo_data(tmp_path / "demo", n_images=30, seed=0)
    ours = json.loads((folder / "dataset.json").read_text())["images"]
    demo = json.loads((tmp_path / "demo" / "dataset.json").read_text())["images"]
    assert [(i["filename"], i["split"], i["sentences"]) for i in ours[:30]] == [
        (i["filename"], i["split"], i["sentences"]) for i in demo
    ]
    extra = ours[30:]  # --extra-test 5: more test scenes of the same grammar
    assert [i["filename"] for i in extra] == [f"test_{n:05d}.jpg" for n in range(5)]
    assert {i["split"] for i in extra} == {"test"} and all(len(i["sentences"]) == 5 for i in extra)
    features, ids, attrs = grids(folder)
    assert features.shape == (35, contract.REGIONS, contract.CHANNELS)
    assert ids == [i["filename"] for i in ours]
    with contract.open_h5(folder / "features.h5") as f:
        fingerprint = contract.fingerprint(f)
    assert fingerprint["backbone"] == "testbed:scene"
    assert fingerprint["testbed"] == {"kind": "scene", "version": 1, "images": 30,
                                      "extra_test": 5, "seed": 0,
                                      "colour_error": 0.25, "shape_error": 0.0,
                                      "cell_error": 0.0, "noise": 0.0, "code": "blocks"}  # fmt: skip


def decoded_cells(features: np.ndarray) -> np.ndarray:
    """(N, 49, CODE_SIZE): the code read back from "blocks" channels (noise 0)."""
    blocks = features[:, :, : CODE_SIZE * 16].reshape(*features.shape[:2], CODE_SIZE, 16)
    assert np.all(blocks == blocks[..., :1])  # every block is one value
    return blocks[..., 0]


def test_without_errors_each_cell_codes_what_covers_it_and_where_it_is(tmp_path):
    folder = scene(tmp_path, "exact", "--colour-error", 0, "--shape-error", 0, "--cell-error", 0)
    code = decoded_cells(grids(folder)[0])
    for i, shapes in enumerate(demo_scenes(30).scenes):
        expected = np.zeros((7, 7, CODE_SIZE))
        expected[np.arange(7), :, SLOTS["row"] + np.arange(7)] = 1
        expected[:, np.arange(7), SLOTS["column"] + np.arange(7)] = 1
        for shape in reversed(shapes):
            for row, column in covered_cells(shape):
                expected[row, column, : SLOTS["row"]] = 0
                expected[row, column, SLOTS["colour"] + list(COLOURS).index(shape.colour)] = 1
                expected[row, column, SLOTS["kind"] + SHAPES.index(shape.kind)] = 1
                expected[row, column, SLOTS["size"] + int(shape.large)] = 1
                expected[row, column, SLOTS["object"]] = 1
        np.testing.assert_array_equal(code[i], expected.reshape(49, CODE_SIZE))


def test_errors_happen_at_their_rates_and_the_projection_carries_the_same_code(tmp_path):
    wrong = decoded_cells(
        grids(scene(tmp_path, "wrong", "--colour-error", 1, "--cell-error", 0))[0]
    )
    scenes = demo_scenes(30).scenes
    for i, shapes in enumerate(scenes):
        largest = shapes[0]
        for row, column in covered_cells(largest):  # the largest shape is on top everywhere
            assert wrong[i, row * 7 + column, list(COLOURS).index(largest.colour)] == 0
    default = decoded_cells(grids(scene(tmp_path, "default"))[0])
    seen = default[:30, :, SLOTS["object"]].sum()
    assert 0.9 * sum(len(covered_cells(s)) for sh in scenes for s in sh) <= seen  # moved, kept
    projected = grids(scene(tmp_path, "projected", "--code", "projection"))[0]
    channels = code_to_channels(SceneKnobs(images=30, code="projection"))  # (CODE_SIZE, 2048)
    recovered, *_ = np.linalg.lstsq(channels.T, projected.reshape(-1, 2048).T, rcond=None)
    np.testing.assert_allclose(recovered.T.reshape(default.shape), default, atol=0.02)


def test_rerun_skips_a_complete_testbed_and_refuses_other_knobs_or_foreign_files(tmp_path):
    folder = scene(tmp_path, "tb")
    stamp = (folder / "features.h5").stat().st_mtime_ns
    again = cli("testbed", "scene", folder, "--images", 30, "--extra-test", 5)
    assert again.exit_code == 0 and again.output.startswith("already complete")
    assert (folder / "features.h5").stat().st_mtime_ns == stamp
    other = cli(
        "testbed", "scene", folder, "--images", 30, "--extra-test", 5, "--colour-error", 0.1
    )
    assert other.exit_code == 2 and "holds other features" in other.output
    assert "Traceback" not in other.output
    replaced = cli(
        "testbed",
        "scene",
        folder,
        "--images",
        30,
        "--extra-test",
        5,
        "--colour-error",
        0.1,
        "--overwrite",
    )
    assert replaced.exit_code == 0 and grids(folder)[2]["testbed"]["colour_error"] == 0.1
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("a user's file")
    refused = cli("testbed", "scene", tmp_path / "mine", "--images", 30, "--extra-test", 5)
    assert refused.exit_code == 2 and "not a testbed's" in refused.output
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "dataset.json").write_text("{}")
    refused = cli("testbed", "scene", tmp_path / "theirs", "--images", 30, "--extra-test", 5)
    assert refused.exit_code == 2 and "not this testbed's caption file" in refused.output
    bad = cli("testbed", "scene", tmp_path / "bad", "--shape-error", 1.5)
    assert bad.exit_code == 2 and "--shape-error must be in [0, 1]" in bad.output


@pytest.fixture(scope="module")
def small_lists(tmp_path_factory) -> Path:
    """Official split lists cut to 30 / 10 / 10 images, beside no caption file."""
    folder = tmp_path_factory.mktemp("lists")
    for name, keep in (("train", 30), ("dev", 10), ("test", 10)):
        lines = (FLICKR8K / f"Flickr_8k.{name}Images.txt").read_text().split()[:keep]
        (folder / f"Flickr_8k.{name}Images.txt").write_text("\n".join(lines) + "\n")
    return folder


def language(tmp_path: Path, lists: Path, name: str, *options) -> tuple[Path, str]:
    result = cli(
        "testbed", "language", tmp_path / name, "--captions", FLICKR8K / "Flickr8k.token.txt",
        "--split-lists", lists, *options,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return tmp_path / name, result.output


@needs_flickr8k
def test_language_testbed_takes_the_split_lists_and_says_what_it_left_out(tmp_path, small_lists):
    folder, output = language(tmp_path, small_lists, "tb", "--train-images", 20)
    images = json.loads((folder / "dataset.json").read_text())["images"]
    assert [i["split"] for i in images] == ["train"] * 20 + ["val"] * 10 + ["test"] * 10
    assert "images: train 20, val 10, test 10" in output
    assert "8,043 in no split list" in output and "10 train images left out" in output
    features, ids, attrs = grids(folder)
    assert ids == [i["filename"] for i in images] and attrs["backbone"] == "testbed:language"


@needs_flickr8k
def test_full_recall_writes_every_concept_of_the_references_and_zero_recall_none(
    tmp_path, small_lists
):
    folder, _ = language(tmp_path, small_lists, "all", "--recall", 1, "--distractors", 0)
    features, _, _ = grids(folder)
    images = json.loads((folder / "dataset.json").read_text())["images"]
    train_words = [w for i in images if i["split"] == "train"
                   for s in i["sentences"] for w in content_words(s["raw"])]  # fmt: skip
    concepts = {w for w in set(train_words) if train_words.count(w) >= 5}
    for grid, image in zip(features, images, strict=True):
        words = {w for s in image["sentences"] for w in content_words(s["raw"])} & concepts
        assert int((np.abs(grid).sum(axis=1) > 0).sum()) == min(len(words), 49)
    none, _ = language(tmp_path, small_lists, "none", "--recall", 0, "--distractors", 0)
    assert not grids(none)[0].any()


def test_distractors_stop_when_every_concept_is_the_images_own():
    from collections import Counter

    from pipeline.testbed.knobs import LanguageKnobs
    from pipeline.testbed.language import seen_words

    knobs = LanguageKnobs(captions_sha256="-", recall=1.0, distractors=5.0)
    words = ["dog", "grass"]
    seen = seen_words(["a dog on the grass"], "x.jpg", Counter(dog=3, grass=2), knobs, words,
                      np.array([0.5, 0.5]))  # fmt: skip
    assert seen == ["dog", "grass"]  # no other word to draw: it returns instead of looping
