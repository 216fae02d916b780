"""`caption` at scale on real inputs: a folder with bad images, JSON lines, resume after a
kill or a torn line, feature-file rows, torchrun ranks, refusals, stdin and duplicates."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from pipeline.checksum import file_sha256
from pipeline.cli import main
from pipeline.infer.caption_plan import image_key, rank_of
from tests.conftest import write_tiny_config

REPO = Path(__file__).resolve().parents[1]
GOOD = [f"demo_0000{i}.jpg" for i in range(6)]
FAST = ["--batch-size", "2", "--workers", "0", "--quiet"]


def cli(*args, input=None) -> object:
    return CliRunner().invoke(main, [str(a) for a in args], input=input)


def lines(path: Path) -> list[str]:
    return path.read_text("utf-8").splitlines()


def records(path: Path) -> dict[str, dict]:
    """image -> its line's record; fails if an image has two lines."""
    found = [json.loads(line) for line in lines(path)]
    by_image = {record["image"]: record for record in found}
    assert len(by_image) == len(found), "an image has two lines"
    return by_image


def env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))


def write_photos(folder: Path, demo_images: Path) -> list[str]:
    """Six demo images, one more in a sub-folder, three bad ones and two to skip."""
    (folder / "sub").mkdir(parents=True)
    for name in GOOD:
        shutil.copy(demo_images / name, folder / name)
    shutil.copy(demo_images / "demo_00006.jpg", folder / "sub" / "demo_00006.jpg")
    jpeg = (demo_images / "demo_00007.jpg").read_bytes()
    (folder / "trunc.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (folder / "notes.jpg").write_text("not an image, whatever its name says")
    Image.new("RGB", (16, 12), (200, 30, 30)).save(folder / "tiny.png")
    (folder / "readme.txt").write_text("not an image suffix: skipped")
    shutil.copy(demo_images / "demo_00008.jpg", folder / ".hidden.jpg")  # hidden: skipped
    named = [*GOOD, "notes.jpg", "tiny.png", "trunc.jpg", "sub/demo_00006.jpg"]
    return [os.path.join(str(folder), name) for name in named]


@pytest.fixture(scope="module")
def bulk(tmp_path_factory, demo_cache) -> dict:
    """A checkpoint trained on the demo cache, a folder of photos, and a straight run's output."""
    root = tmp_path_factory.mktemp("bulk")
    config = write_tiny_config(root, demo_cache)
    # eval.beam_size = 3: the beam every `caption` below runs at without --beam-size
    trained = cli(
        "train", "--config", config, "--set", "train.name=bulk", "--set", "eval.beam_size=3"
    )
    assert trained.exit_code == 0, trained.output
    photos = root / "photos"
    paths = write_photos(photos, demo_cache["images"])
    checkpoint = root / "runs" / "bulk" / "best.pt"
    out = root / "straight" / "captions.jsonl"
    result = cli(
        "caption",
        "--images",
        photos,
        "--recursive",
        "--checkpoint",
        checkpoint,
        "--out",
        out,
        *FAST,
    )
    assert result.exit_code == 1, result.output  # three images failed
    return {
        "photos": photos,
        "paths": paths,
        "checkpoint": checkpoint,
        "out": out,
        "result": result,
        **demo_cache,
    }


def test_a_folder_gets_one_line_per_image_with_the_errors(bulk):
    found = records(bulk["out"])
    assert sorted(found) == sorted(bulk["paths"])  # the sub-folder, not .hidden or readme.txt
    errors = {Path(k).name: r["error"] for k, r in found.items() if "error" in r}
    assert errors["trunc.jpg"].startswith("truncated or corrupt image")
    assert errors["notes.jpg"] == "not an image file (Pillow cannot identify it)"
    assert errors["tiny.png"].startswith("too small: 16x12 px")
    identity = file_sha256(bulk["checkpoint"])[:16]
    for record in (r for r in found.values() if "error" not in r):
        assert set(record) == {"image", "caption", "logprob", "checkpoint", "checkpoint_id"}
        assert record["caption"] and record["logprob"] < 0
        assert record["checkpoint_id"] == identity
        assert record["checkpoint"] == str(bulk["checkpoint"])
    meta = json.loads(bulk["out"].with_name("captions.jsonl.meta.json").read_text())
    assert meta["checkpoint_id"] == identity and meta["beam_size"] == 3
    assert "caption: 10 images" in bulk["result"].output

    before = bulk["out"].read_bytes()
    again = cli(
        "caption",
        "--images",
        bulk["photos"],
        "--recursive",
        "--checkpoint",
        bulk["checkpoint"],
        "--out",
        bulk["out"],
        *FAST,
    )
    assert again.exit_code == 1 and "nothing new, 10 already there" in again.output
    assert bulk["out"].read_bytes() == before


def test_kill_after_the_first_batch_then_rerun_gives_the_straight_lines(bulk, tmp_path):
    out = tmp_path / "killed.jsonl"
    command = [
        sys.executable,
        "-m",
        "pipeline",
        "caption",
        "--images",
        str(bulk["photos"]),
        "--recursive",
        "--checkpoint",
        str(bulk["checkpoint"]),
        "--out",
        str(out),
        *FAST,
    ]
    process = subprocess.Popen(
        command, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if out.is_file() and out.read_bytes().count(b"\n") >= 2:  # the first batch is flushed
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "the run ended before it was killed"
    assert 2 <= out.read_bytes().count(b"\n") < 10

    rerun = cli(
        "caption",
        "--images",
        bulk["photos"],
        "--recursive",
        "--checkpoint",
        bulk["checkpoint"],
        "--out",
        out,
        *FAST,
    )
    assert rerun.exit_code == 1, rerun.output
    assert "already there" in rerun.output
    assert sorted(lines(out)) == sorted(lines(bulk["out"]))  # each image once, same lines


def test_a_torn_last_line_is_dropped_with_a_warning(bulk, tmp_path):
    shutil.copytree(bulk["out"].parent, tmp_path / "copy")  # with the manifest and meta
    out = tmp_path / "copy" / "captions.jsonl"
    whole = out.read_bytes()
    out.write_bytes(whole[: whole.rindex(b"\n", 0, len(whole) - 1) + 1 + 30])  # a torn last line

    rerun = cli(
        "caption",
        "--images",
        bulk["photos"],
        "--recursive",
        "--checkpoint",
        bulk["checkpoint"],
        "--out",
        out,
        *FAST,
    )
    assert rerun.exit_code == 1, rerun.output
    assert "dropped a torn last line (30 bytes)" in rerun.output
    assert "1 captioned now" in rerun.output
    assert sorted(lines(out)) == sorted(lines(bulk["out"]))


def test_feature_rows_get_the_captions_of_their_images(bulk, tmp_path):
    out = tmp_path / "rows.jsonl"
    result = cli(
        "caption",
        "--features",
        bulk["features"],
        "--checkpoint",
        bulk["checkpoint"],
        "--out",
        out,
        "--html",
        tmp_path / "page.html",
        "--html-limit",
        3,
        *FAST,
    )
    assert result.exit_code == 0, result.output
    rows = records(out)
    assert len(rows) == 40  # every row of the demo cache, keyed by its image id
    from_images = records(bulk["out"])
    for name in GOOD:
        image = from_images[os.path.join(str(bulk["photos"]), name)]
        assert rows[name]["caption"] == image["caption"]
        assert rows[name]["logprob"] == pytest.approx(image["logprob"], abs=1e-3)
    page = (tmp_path / "page.html").read_text("utf-8")
    assert page.count('<div class="card">') == 3
    assert "a sample of 3 of the 40 images captioned" in page

    other = tmp_path / "other.h5"
    shutil.copy(bulk["features"], other)
    with h5py.File(other, "r+") as f:
        f.attrs["weights"] = "file:sha256:" + "0" * 64
    refused = cli("caption", "--features", other, "--checkpoint", bulk["checkpoint"])
    assert refused.exit_code == 2 and "does not match the checkpoint's features" in refused.output
    assert "Traceback" not in refused.output


def test_another_checkpoint_or_decoding_on_an_output_is_refused(bulk, tmp_path):
    out = tmp_path / "rows.jsonl"
    base = ["caption", "--features", bulk["features"], "--out", out, *FAST]
    assert cli(*base, "--checkpoint", bulk["checkpoint"]).exit_code == 0
    before = out.read_bytes()
    payload = torch.load(bulk["checkpoint"], weights_only=True)
    payload["state"]["epoch"] += 1  # same weights, other file: another checkpoint id
    torch.save(payload, tmp_path / "other.pt")

    for change, difference in (
        (["--checkpoint", tmp_path / "other.pt"], "checkpoint_id: "),
        (["--checkpoint", bulk["checkpoint"], "--beam-size", 1], "beam_size: 3 vs 1"),
        (["--checkpoint", bulk["checkpoint"], "--keep-beams", 2], "keep_beams: 0 vs 2"),
    ):
        refused = cli(*base, *change)
        assert refused.exit_code == 2, refused.output
        assert "other settings" in refused.output and difference in refused.output
        assert out.read_bytes() == before

    restarted = cli(*base, "--checkpoint", bulk["checkpoint"], "--beam-size", 1, "--overwrite")
    assert restarted.exit_code == 0, restarted.output
    assert "40 captioned now" in restarted.output
    assert json.loads(out.with_name("rows.jsonl.meta.json").read_text())["beam_size"] == 1

    foreign = tmp_path / "mine.jsonl"
    foreign.write_text("my own notes\n")
    refused = cli(
        "caption",
        "--features",
        bulk["features"],
        "--out",
        foreign,
        "--overwrite",
        "--checkpoint",
        bulk["checkpoint"],
    )
    assert refused.exit_code == 2 and "not written by captioner" in refused.output
    assert foreign.read_text() == "my own notes\n"


def test_a_list_on_stdin_captions_a_duplicate_once(bulk, tmp_path):
    first, second = (os.path.join(str(bulk["photos"]), name) for name in GOOD[1:3])
    listed = f"{first}\n{os.path.join(str(bulk['photos']), '.', GOOD[1])}\n\n{second}\n"
    out = tmp_path / "listed.jsonl"
    result = cli(
        "caption",
        "--list",
        "-",
        "--checkpoint",
        bulk["checkpoint"],
        "--out",
        out,
        "--keep-beams",
        2,
        *FAST,
        input=listed,
    )
    assert result.exit_code == 0, result.output
    assert "2 captioned now, 0 failed now, 1 listed twice" in result.output
    found, straight = records(out), records(bulk["out"])
    assert sorted(found) == sorted([first, second])
    for image, record in found.items():
        beams = record.pop("beams")
        assert record == straight[image]
        assert len(beams) == 2 and beams[0] == {
            "caption": record["caption"],
            "logprob": record["logprob"],
        }
        assert beams[1]["logprob"] <= beams[0]["logprob"]


def test_without_out_the_terminal_shows_each_image_and_glob_picks_the_files(bulk):
    result = cli(
        "caption",
        "--images",
        bulk["photos"],
        "--glob",
        "*.PNG",
        "--checkpoint",
        bulk["checkpoint"],
        "--workers",
        0,
    )
    assert result.exit_code == 1, result.output
    assert result.output.strip() == (
        f"{bulk['photos'] / 'tiny.png'}: error: too small: 16x12 px (shorter side must be >= 32)"
    )
    mixed = cli(
        "caption", bulk["paths"][0], "--images", bulk["photos"], "--checkpoint", bulk["checkpoint"]
    )
    assert mixed.exit_code == 2 and "name the images one way" in mixed.output


def test_two_torchrun_ranks_write_the_lines_of_one_process(bulk, tmp_path):
    assert {rank_of(image_key(p), 2) for p in bulk["paths"]} == {0, 1}  # both ranks have work
    out = tmp_path / "ranks.jsonl"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "pipeline",
        "caption",
        "--images",
        str(bulk["photos"]),
        "--recursive",
        "--checkpoint",
        str(bulk["checkpoint"]),
        "--out",
        str(out),
        *FAST,
    ]
    done = subprocess.run(command, env=env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr[-3000:]  # rank 0: three images failed
    assert "caption: 10 images in" in done.stderr
    assert sorted(lines(out)) == sorted(lines(bulk["out"]))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".captioner-outputs.json",
        "ranks.jsonl",
        "ranks.jsonl.meta.json",
    ]  # the parts are joined and gone

    before = out.read_bytes()
    part = tmp_path / "ranks.jsonl.part-001-of-002"  # claimed by the run above
    part.write_text("a line captioner did not write\n")
    refused = subprocess.run(command, env=env(), capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0
    line = f"error: {part}, line 1: not a caption line"
    assert refused.stderr.count(line) == 2, refused.stderr[-3000:]  # rank 1's error, on both
    assert out.read_bytes() == before and part.read_text() == "a line captioner did not write\n"
