"""Nothing lost, nothing silently wrong (round three): charts over any numbers, checkpoints
of another run, outputs only under --out, config text and seeds, odd caption JSON, runs that
die before their first checkpoint, the owned-files list under concurrent writers."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.config import config_to_dict, load_config, save_config
from pipeline.decoder.checkpoint import load_checkpoint, save_checkpoint
from pipeline.errors import UserError
from pipeline.infer.evaluate import predictions_json
from pipeline.infer.files import MANIFEST
from pipeline.infer.svg import MAX_TICKS, nice_ticks
from tests.conftest import write_tiny_config

REPO = Path(__file__).resolve().parents[1]
EVALUATE_LIMIT_S = 300  # a hang fails the test instead of stalling the suite
SVG = re.compile(r"<svg.*?</svg>", re.DOTALL)
NOT_A_NUMBER = re.compile(r"[\s\"',(](-?nan|-?inf)\b", re.IGNORECASE)


def cli(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_user_error(result, *fragments: str) -> None:
    """Exit 2, one `error:` line holding every fragment, no traceback."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, demo_cache) -> dict:
    """Two one-epoch runs of the tiny config: `a`, and `b` with another hidden size."""
    root = tmp_path_factory.mktemp("round3")
    config = write_tiny_config(root, demo_cache, images=root / "no-images")
    for name, extra in (("a", ()), ("b", ("--set", "model.hidden_dim=24"))):
        args = ("--set", f"train.name={name}", "--set", "train.epochs=1", *extra)
        result = cli("train", "--config", config, *args)
        assert result.exit_code == 0, result.output
    return {"root": root, "config": config, "a": root / "runs" / "a", "b": root / "runs" / "b"}


def copy_run(run: Path, to: Path) -> Path:
    shutil.copytree(run, to, ignore=shutil.ignore_patterns(".lock", "tensorboard"))
    return to


def evaluate_process(*args, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """The real CLI in a subprocess, killed (and failed) if it runs past EVALUATE_LIMIT_S."""
    command = [sys.executable, "-m", "pipeline", "evaluate", *map(str, args), "--examples", "0"]
    return subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=EVALUATE_LIMIT_S
    )


# 1. charts over any numbers

CRAFTED_HISTORIES = {
    "tiny-span": [  # spans below float resolution, and a span of 1e-300
        {"epoch": 1, "train_loss": 1.0, "val_loss": 1e6, "lr": 0.0, "CIDEr": 1e-300},
        {"epoch": 2, "train_loss": 1.0 + 2**-52, "val_loss": 1e6 + 1e-10, "lr": 1e-300},
    ],
    "huge": [
        {"epoch": 1, "train_loss": -1e308, "val_loss": 1e308, "lr": 1.7e308, "CIDEr": 1e308},
        {"epoch": 2, "train_loss": 1e308, "val_loss": 1.7e308, "lr": 1e308, "CIDEr": -1e308},
    ],
    "epochs": [
        {"epoch": 1, "train_loss": 1.0, "lr": 0.1},
        {"epoch": 10**30, "train_loss": 2.0, "lr": 0.2},
        {"epoch": 10**400, "train_loss": 3.0, "lr": 0.3},
    ],
}
NON_FINITE_LINES = (
    '{"epoch": 1, "train_loss": NaN, "val_loss": Infinity, "lr": -Infinity, "CIDEr": 0.5}\n'
    '{"epoch": 2, "train_loss": 1.0, "val_loss": NaN, "lr": 0.001, "CIDEr": Infinity}\n'
)


def test_crafted_metrics_never_hang_or_break_the_report(runs):
    folders = []
    for name, history in CRAFTED_HISTORIES.items():
        folder = copy_run(runs["a"], runs["root"] / "crafted" / name)
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
        folders.append(folder)
    folder = copy_run(runs["a"], runs["root"] / "crafted" / "non-finite")
    (folder / "metrics.jsonl").write_text(NON_FINITE_LINES)
    folders.append(folder)
    out = runs["root"] / "crafted-ev"
    result = evaluate_process(*folders, "--out", out, "--beam-size", "1")
    assert result.returncode == 0, result.stderr
    for folder in folders:
        charts = SVG.findall((out / folder.name / "report.html").read_text())
        assert len(charts) == 3 and not any(NOT_A_NUMBER.search(chart) for chart in charts)
    assert (out / "comparison.html").is_file()


@pytest.mark.parametrize(
    "low, high",
    [(1.0, 1.0 + 2**-52), (0.0, 1e-300), (-1e308, 1.7e308), (0, 10**30), (5.0, 5.0), (0, 5e-324)],
)
def test_ticks_are_few_finite_and_cover_the_span(low, high):
    for integer in (False, True):
        ticks = nice_ticks(low, high, integer=integer)
        assert 1 <= len(ticks) <= MAX_TICKS
        assert ticks == sorted(set(ticks)) and ticks[0] <= low and ticks[-1] >= high


# 2. checkpoints of another run, --resume that changes the run


def test_a_checkpoint_copied_from_another_run_is_refused(runs):
    mixed = copy_run(runs["b"], runs["root"] / "mixed")
    for name in ("last.pt", "best.pt"):
        shutil.copy(runs["a"] / name, mixed / name)
    evaluated = cli("evaluate", mixed, "--out", runs["root"] / "mixed-ev")
    assert_user_error(evaluated, "belongs to another run (a)", "model.hidden_dim = 32")
    resumed = cli("train", "--resume", mixed, "--set", "train.epochs=2")
    assert_user_error(resumed, "belongs to another run (a)", "model.hidden_dim = 32")
    assert not list((runs["root"] / "mixed-ev").rglob("*.*"))  # nothing written


def test_resume_keeps_the_objective_and_takes_no_config(runs):
    scst = cli("train", "--resume", runs["a"], "--set", "train.objective=scst")
    assert_user_error(scst, "train.objective = 'xe'", "--init")
    both = cli("train", "--resume", runs["a"], "--config", runs["config"])
    assert_user_error(both, "drop --config")


# 3. evaluate writes only under --out; ids and tables


def test_evaluate_writes_only_under_out_and_escapes_table_names(runs, tmp_path):
    odd = copy_run(runs["a"], tmp_path / "=1+2|<i>r")
    (odd / "sub").mkdir()
    loose = tmp_path / "here"
    loose.mkdir()
    shutil.copy(runs["a"] / "best.pt", loose / "best.pt")
    out = tmp_path / "out"
    before = sorted(p.name for p in tmp_path.iterdir())
    arguments = (f"{odd}/sub/..", "best.pt", "--out", out, "--beam-size", "1")
    result = evaluate_process(*arguments, cwd=loose)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, "out"])
    assert sorted(p.name for p in loose.iterdir()) == ["best.pt"]
    assert {p.name for p in out.iterdir()} >= {"=1+2|<i>r", "here", "table.md", "table.csv"}
    markdown = (out / "table.md").read_text()
    assert "=1+2\\|&lt;i&gt;r" in markdown and "<i>" not in markdown
    assert "'=1+2|<i>r" in (out / "table.csv").read_text()


def test_prediction_ids_are_unique_per_image():
    names = ["a/x.jpg", "b/x.jpg", "y.jpg", "123.jpg"]
    predictions = predictions_json(names, ["x", "x", "y", "123"], ["c"] * 4)
    assert [p["image_id"] for p in predictions] == ["a/x.jpg", "b/x.jpg", "y", 123]


# 4. config text, seeds, odd caption JSON


@pytest.mark.parametrize("item", ["train.name=a\x00b", "train.name=two\nlines", "data.images=x\ty"])
def test_control_characters_in_config_strings_are_refused(runs, item):
    result = cli("train", "--config", runs["config"], "--set", item)
    assert_user_error(result, f"config {item.split('=')[0]} must not hold control characters")


def test_saved_config_reads_back_identically(tmp_path):
    odd = 'C:\\data\\"quoted" ünïcödé 字 \u2028 # not a comment'
    config = load_config(None, [f"data.images={odd}", "train.name=r ü"])
    save_config(config, tmp_path / "config.toml")
    again = load_config(tmp_path / "config.toml")
    assert {**config_to_dict(again), "name": ""} == {**config_to_dict(config), "name": ""}


@pytest.mark.parametrize("seed", [-1, 2**64])
def test_seeds_out_of_range_are_refused(runs, tmp_path, seed):
    for key in ("train.seed", "data.split_seed"):
        result = cli("train", "--config", runs["config"], "--set", f"{key}={seed}")
        assert_user_error(result, f"{key} must be in [0, 2**32)")
    demo = cli("demo-data", tmp_path / "demo", "--images", "2", "--seed", seed)
    assert demo.exit_code == 2 and "Invalid value for '--seed'" in demo.output
    assert "Traceback" not in demo.output


def karpathy(split) -> dict:
    sentence = {"raw": "a red circle"}
    return {"images": [{"filename": "x.jpg", "split": split, "sentences": [sentence]}]}


def coco(image_id) -> dict:
    return {
        "images": [{"id": image_id, "file_name": "x.jpg"}],
        "annotations": [{"image_id": image_id, "caption": "a red circle"}],
    }


@pytest.mark.parametrize(
    "content, fragment",
    [
        (json.dumps(karpathy(["train"])), "unknown split ['train']"),
        (json.dumps(karpathy({"a": 1})), "unknown split {'a': 1}"),
        (json.dumps(coco([1])), "'id' (a number or text)"),
        (json.dumps(coco(1.5)), "'id' (a number or text)"),
        ('{"images": [' + "[" * 100_000 + "]" * 100_000 + "]}", "nested too deeply"),
    ],
)
def test_odd_caption_json_ends_in_one_line(tmp_path, content, fragment):
    path = tmp_path / "captions.json"
    path.write_text(content)
    assert_user_error(cli("inspect", path), fragment)


# 5. a run that dies before its first checkpoint


def test_a_run_killed_in_its_first_epoch_resumes_from_its_config(runs, tmp_path):
    out = tmp_path / "runs"
    command = [sys.executable, "-m", "pipeline", "train", "--config", str(runs["config"])]
    overrides = (f"train.out_dir={out}", "train.name=k", "train.batch_size=1", "train.epochs=1")
    command += [arg for item in overrides for arg in ("--set", item)]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL)
    run = out / "k"
    while not (run / "metrics.jsonl").exists() and process.poll() is None:
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert (run / "config.toml").is_file() and not (run / "last.pt").exists()
    resumed = cli("train", "--resume", run, "--set", "train.batch_size=32")
    assert resumed.exit_code == 0, resumed.output
    assert "has no checkpoint yet" in resumed.output and (run / "last.pt").is_file()
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").open()] == [1]


def test_a_run_stopped_before_any_checkpoint_lets_its_name_be_reused(runs):
    name = ("--set", "train.name=nan")
    stopped = cli(
        "train", "--config", runs["config"], *name, "--set", "model.doubly_stochastic=1e300"
    )
    assert_user_error(stopped, "no checkpoint yet, resume starts over", "--resume")
    again = cli("train", "--config", runs["config"], *name, "--set", "train.epochs=1")
    assert again.exit_code == 0, again.output
    assert "reusing" in again.output and (runs["root"] / "runs" / "nan" / "last.pt").is_file()
    taken = cli("train", "--config", runs["config"], *name)
    assert_user_error(taken, "already holds a run", "--resume")


def test_a_failed_first_save_says_nothing_was_there(tmp_path, runs):
    payload = load_checkpoint(runs["a"] / "last.pt")
    with pytest.raises(UserError, match="No last.pt was written") as error:
        save_checkpoint(payload, tmp_path / "gone" / "last.pt")  # its folder is not there
    assert "previous" not in str(error.value)


# 6. the owned-files list under two writers at once

CLAIMER = """
import sys
from pipeline.infer.files import OutputFolder
folder, prefix = sys.argv[1], sys.argv[2]
for i in range(150):
    OutputFolder(folder).write_text(f"{prefix}-{i}.txt", "x")
"""


def test_two_writers_keep_every_owned_name(tmp_path):
    writers = [
        subprocess.Popen([sys.executable, "-c", CLAIMER, str(tmp_path), prefix], cwd=REPO)
        for prefix in ("left", "right")
    ]
    assert [w.wait(timeout=EVALUATE_LIMIT_S) for w in writers] == [0, 0]
    owned = set(json.loads((tmp_path / MANIFEST).read_text()))
    assert owned == {f"{p}-{i}.txt" for p in ("left", "right") for i in range(150)}
