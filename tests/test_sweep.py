"""`captioner sweep`: variants x seeds on a real (tiny) cache, shared recipes, paired
intervals, reuse, resume after a kill, and one-line refusals."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.sweep.stats import paired_bootstrap

REPO = Path(__file__).resolve().parents[1]
TINY = """
[data]
captions = "tb/dataset.json"
[features]
path = "tb/features.h5"
[vocab]
min_freq = 1
max_len = 16
[model]
embed_dim = 16
hidden_dim = 32
attention_dim = 16
dropout = 0.0
[train]
epochs = 2
batch_size = 32
lr = 0.003
out_dir = "runs"
val_images = 0
samples = 1
[eval]
beam_size = 2
max_len = 12
batch_size = 16
"""
SWEEP = """
[sweep]
config = "tiny.toml"
seeds = 2
reference = "xe"
beam_size = 2

[variants.xe]
about = "cross-entropy"

[variants.scst]
from = "xe"
set = ["train.objective='scst'", "scst.samples=2", "scst.max_len=8", "train.epochs=1"]

[variants.same]
about = "the xe recipe again, spelled out"
set = ["train.epochs=2"]
"""


def cli(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


def last_json(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> dict:
    """A scene testbed of 40 images, a tiny config, a sweep file, and the sweep's first run."""
    root = tmp_path_factory.mktemp("sweep")
    made = cli("testbed", "scene", root / "tb", "--images", 40, "--extra-test", 0)
    assert made.exit_code == 0, made.output
    (root / "tiny.toml").write_text(TINY)
    (root / "sweep.toml").write_text(SWEEP)
    cwd = os.getcwd()
    os.chdir(root)  # the configs' paths are relative, as a user's would be
    try:
        result = cli("sweep", "sweep.toml", "--jobs", 2)
    finally:
        os.chdir(cwd)
    assert result.exit_code == 0, result.output
    return {"root": root, "out": root / "runs" / "sweep-sweep", "output": result.output}


def in_root(swept: dict, *args) -> object:
    cwd = os.getcwd()
    os.chdir(swept["root"])
    try:
        return cli(*args)
    finally:
        os.chdir(cwd)


def test_sweep_trains_each_recipe_once_and_compares_with_paired_intervals(swept):
    out, summary = swept["out"], last_json(swept["output"])
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [
        "scst-s0",
        "scst-s1",
        "xe-s0",
        "xe-s1",
    ]  # fmt: skip  ("same" resolves to the xe recipe: it shares its runs)
    assert set(summary["variants"]) == {"xe", "scst", "same"}
    assert summary["variants"]["xe"]["seeds"] == [0, 1]
    same = summary["comparisons"]["beam2"]["same"]
    assert same["against"] == "xe" and same["difference"] == 0 and same["difference_ci"] == [0, 0]
    scst = summary["comparisons"]["greedy"]["scst"]
    assert scst["against"] == "xe" and scst["seeds"] == 2 and scst["images"] == 4
    for seed in (0, 1):
        recipe = json.loads((out / f"scst-s{seed}" / "recipe.json").read_text())
        assert recipe["init"].endswith(f"xe-s{seed}/run/best.pt")
        assert recipe["config"]["train"]["seed"] == seed
        assert (out / f"scst-s{seed}" / "eval-beam2" / "report.html").is_file()
    assert (out / "summary.md").read_text().count("\n| ") == 4  # header and three variants
    assert "| scst | 2 |" in swept["output"]


def test_a_rerun_reuses_finished_runs_and_rescores_an_interrupted_one(swept):
    out = swept["out"]
    logs = {p.parent.name: p.stat().st_size for p in out.glob("*/log.txt")}
    before = last_json(swept["output"])
    (out / "scst-s1" / "result.json").unlink()  # killed after training, before its scores
    recipe = json.loads((out / "xe-s0" / "recipe.json").read_text())
    del recipe["config"]["train"]["warmup_steps"]  # as written before the key existed
    recipe["config"]["features"]["ram_budget_gb"] = 4.0  # a default that changed since
    (out / "xe-s0" / "recipe.json").write_text(json.dumps(recipe))
    shutil.rmtree(out / "scst-s1" / "eval-beam2")
    again = in_root(swept, "sweep", "sweep.toml")
    assert again.exit_code == 0, again.output
    after = last_json(again.output)
    assert after["variants"] == before["variants"]
    assert after["comparisons"] == before["comparisons"]
    grown = {
        p.parent.name for p in out.glob("*/log.txt") if p.stat().st_size != logs[p.parent.name]
    }
    assert grown == {"scst-s1"}  # only that run did anything, and it trained no further
    assert "has already trained 1 epochs" in (out / "scst-s1" / "log.txt").read_text()


def test_a_changed_recipe_is_refused_on_the_same_out_and_bad_files_in_one_line(swept):
    changed = in_root(swept, "sweep", "sweep.toml", "--set", "train.lr=0.01")
    assert changed.exit_code == 2 and "holds a run of another recipe" in changed.output
    root = swept["root"]
    cases = {
        "[sweep]\nconfig = 'tiny.toml'\n[variants.a]\nfrom = 'b'\n": "names no variant: 'b'",
        "[sweep]\nconfig = 'tiny.toml'\n[variants.a]\nfrom = 'b'\n[variants.b]\nfrom = 'a'\n": (
            "goes round in a circle"
        ),
        "[sweep]\nconfig = 'nowhere.toml'\n[variants.a]\n": "config file not found",
        "[sweep]\nconfig = 'tiny.toml'\n[variants.a]\nsets = []\n": "unknown key 'sets'",
        "[sweep]\nconfig = 'tiny.toml'\nseeds = 0\n[variants.a]\n": "sweep.seeds must be",
    }
    for text, fragment in cases.items():
        (root / "bad.toml").write_text(text)
        result = in_root(swept, "sweep", "bad.toml")
        assert result.exit_code == 2, result.output
        assert fragment in result.output and "Traceback" not in result.output
    wrong_key = in_root(swept, "sweep", "sweep.toml", "--set", "train.nope=1", "--out", root / "x")
    assert wrong_key.exit_code == 2 and "unknown config key train.nope" in wrong_key.output
    missing = in_root(swept, "sweep", "sweep.toml", "--set", "features.path='gone.h5'")
    assert missing.exit_code == 2 and "gone.h5 (features.path of variant" in missing.output


def test_new_data_under_the_same_paths_is_refused_on_the_same_out(swept, tmp_path):
    for name in ("tb", "runs"):
        shutil.copytree(swept["root"] / name, tmp_path / name)
    for name in ("tiny.toml", "sweep.toml"):
        shutil.copy(swept["root"] / name, tmp_path / name)
    made = cli(
        "testbed",
        "scene",
        tmp_path / "tb",
        "--images",
        40,
        "--extra-test",
        0,
        "--noise",
        0.5,
        "--overwrite",
    )
    assert made.exit_code == 0, made.output
    result = in_root({"root": tmp_path}, "sweep", "sweep.toml")
    assert result.exit_code == 2 and "the data changed" in result.output


def test_a_testbed_checkpoint_refuses_to_caption_images(swept, tmp_path):
    from PIL import Image

    Image.new("RGB", (64, 64), (200, 30, 30)).save(tmp_path / "photo.jpg")
    checkpoint = swept["out"] / "xe-s0" / "run" / "best.pt"
    result = cli("caption", tmp_path / "photo.jpg", "--checkpoint", checkpoint)
    assert result.exit_code == 2, result.output
    assert "testbed's (testbed:scene)" in result.output and "Traceback" not in result.output


def test_an_interrupted_sweep_resumes_to_the_straight_runs_result(swept, tmp_path):
    root = tmp_path / "killed"
    shutil.copytree(swept["root"] / "tb", root / "tb")
    for name in ("tiny.toml", "sweep.toml"):
        shutil.copy(swept["root"] / name, root / name)
    command = [sys.executable, "-m", "pipeline", "sweep", "sweep.toml", "--variants", "xe"]
    command += ["--seeds", "1"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    process = subprocess.Popen(command, cwd=root, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    run = root / "runs" / "sweep-sweep" / "xe-s0" / "run"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not (run / "last.pt").is_file():
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)  # Ctrl-C after the first epoch's checkpoint, mid-run
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130 and "Traceback" not in stderr, stderr[-2000:]
    assert "sweep interrupted: finished runs are kept" in stdout
    assert (run / "last.pt").is_file() and not (run.parent / "result.json").exists()
    resumed = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    result = json.loads((run.parent / "result.json").read_text())
    straight = json.loads((swept["out"] / "xe-s0" / "result.json").read_text())
    assert [h["epoch"] for h in result["history"]] == [1, 2]
    for key in ("scores", "per_image_cider", "best_epoch", "parameters"):
        assert result[key] == straight[key], key
    for mine, theirs in zip(result["history"], straight["history"], strict=True):
        # the resumed epoch's sums may differ in the last bits (weights loaded from disk can
        # take other SIMD paths on some CPUs), never more
        assert mine["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-6)
        assert mine["CIDEr"] == theirs["CIDEr"]


def test_paired_bootstrap_interval_covers_the_true_difference():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.0, 2.0, size=(3, 400))  # (S, N) per-image scores
    better = base + 0.1 + rng.normal(0.0, 0.05, size=base.shape)
    result = paired_bootstrap(better, base)
    low, high = result["difference_ci"]
    assert low < 0.1 < high and low > 0.05 and result["difference"] == pytest.approx(0.1, abs=0.01)
    assert result["relative_ci"][0] > 0
    same = paired_bootstrap(base, base)
    assert same["difference_ci"] == [0.0, 0.0] and same["relative"] == 0.0
    assert paired_bootstrap(base, np.zeros_like(base))["relative"] is None


def test_a_second_sweep_on_the_same_out_is_refused_while_one_runs(swept):
    import fcntl

    with open(swept["out"] / ".sweep.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running sweep holds it
        result = in_root(swept, "sweep", "sweep.toml")
    assert result.exit_code == 2 and "another sweep is running in" in result.output


def test_another_beam_size_rescores_without_training_again(swept, tmp_path):
    for name in ("tb", "runs"):
        shutil.copytree(swept["root"] / name, tmp_path / name)
    shutil.copy(swept["root"] / "tiny.toml", tmp_path / "tiny.toml")
    (tmp_path / "sweep.toml").write_text(SWEEP.replace("beam_size = 2", "beam_size = 1"))
    result = in_root({"root": tmp_path}, "sweep", "sweep.toml", "--variants", "xe", "--seeds", 1)
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "runs" / "sweep-sweep" / "xe-s0" / "result.json").read_text())
    assert saved["scoring"] == {"split": "test", "beam": 1} and "beam1" in saved["scores"]
    log = (tmp_path / "runs" / "sweep-sweep" / "xe-s0" / "log.txt").read_text()
    assert "has already trained 2 epochs" in log  # scored again, not trained again
