"""Round three of "nothing lost, nothing silently wrong": images too thin to resize, one
image with very many captions, model sizes that cannot fit in memory, demo-data's disk space
and SIGTERM. Tiny real files, the real CLI (CliRunner on `pipeline.cli.main` or a subprocess).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from pipeline import contract
from pipeline.capacity import available_memory
from pipeline.cli import main
from pipeline.config import load_config
from pipeline.dataset.batches import build_split, plan_epoch
from pipeline.dataset.experiment import load_experiment_data
from pipeline.dataset.teacher_forced import split_loss
from pipeline.decoder.build import build_decoder, parameter_count
from pipeline.decoder.vocab import build_vocabulary
from pipeline.extract.images import MAX_ASPECT
from tests.conftest import error_line, write_tiny_config

REPO = Path(__file__).resolve().parents[1]
FAST = ["--batch-size", "2", "--workers", "0", "--quiet"]
THIN = "thin.png"
THIN_REASON = f"aspect ratio 3125:1 is beyond {MAX_ASPECT}:1"


def cli(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


def thin_folder(folder: Path, demo_images: Path) -> Path:
    """Three demo images and a 33 KB 32 x 100,000 PNG (3 GB once resized the old way)."""
    folder.mkdir()
    for i in range(3):
        (folder / f"demo_{i:05d}.jpg").write_bytes((demo_images / f"demo_{i:05d}.jpg").read_bytes())
    Image.new("RGB", (32, 100_000), (90, 140, 200)).save(folder / THIN)
    return folder


# ---- 1. an image too thin to resize fails alone ----


def test_extract_records_a_thin_image_as_failed_and_reruns(demo_cache, tmp_path):
    images = thin_folder(tmp_path / "images", demo_cache["images"])
    out = tmp_path / "f.h5"
    args = ["extract", "--images", images, "--out", out, "--weights", "none", *FAST]
    first = cli(*args)
    assert first.exit_code == 0 and "Traceback" not in first.output, first.output
    with h5py.File(out, "r") as f:
        failed = contract.read_failed(f)
        status = dict(zip(contract.read_image_ids(f), f["status"][:].tolist(), strict=True))
    assert list(failed) == [THIN] and failed[THIN].startswith(THIN_REASON)
    assert status[THIN] == 2 and sorted(v for k, v in status.items() if k != THIN) == [1, 1, 1]
    again = cli(*args)
    assert again.exit_code == 0 and "Traceback" not in again.output, again.output


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, demo_cache) -> Path:
    """A one-epoch checkpoint trained on the demo cache."""
    root = tmp_path_factory.mktemp("round3")
    config = write_tiny_config(root, demo_cache)
    trained = cli("train", "--config", config, "--set", "train.name=r3", "--set", "train.epochs=1")
    assert trained.exit_code == 0, trained.output
    return root / "runs" / "r3" / "best.pt"


def test_caption_records_a_thin_image_as_failed_and_reruns(checkpoint, demo_cache, tmp_path):
    images = thin_folder(tmp_path / "images", demo_cache["images"])
    out = tmp_path / "captions.jsonl"
    args = ["caption", "--images", images, "--checkpoint", checkpoint, "--out", out, *FAST]
    first = cli(*args)
    assert first.exit_code == 1 and "Traceback" not in first.output, first.output  # one failed
    found = {Path(r["image"]).name: r for r in map(json.loads, out.read_text().splitlines())}
    assert found[THIN]["error"].startswith(THIN_REASON)
    assert all(found[f"demo_{i:05d}.jpg"]["caption"] for i in range(3))
    again = cli(*args)
    assert again.exit_code == 1 and "nothing new, 4 already there" in again.output, again.output


MEMORY_DRIVER = """
import resource, sys
from pipeline.extract.images import ImageDataset, preprocess_image
folder = sys.argv[1]
preprocess_image(folder + "/small.png")  # every lazy import and allocator pool, first
vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + 40_000_000, resource.RLIM_INFINITY))
items = [ImageDataset(folder, ["big.png", "small.png"], [0, 1])[i] for i in range(2)]
print(repr(items[0].error), items[1].image is not None)
"""


def test_running_out_of_memory_fails_that_image_only(tmp_path):
    Image.new("RGB", (6000, 6000), (10, 200, 30)).save(tmp_path / "big.png")  # 108 MB decoded
    Image.new("RGB", (64, 48), (200, 30, 30)).save(tmp_path / "small.png")
    done = subprocess.run(
        [sys.executable, "-c", MEMORY_DRIVER, str(tmp_path)],
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "'out of memory while decoding or resizing it' True"


# ---- 2. one image with very many captions ----


def test_split_loss_is_the_same_in_small_and_large_batches(workspace):
    config = load_config(workspace["config"])
    data = load_experiment_data(config)
    vocab, _ = build_vocabulary(data.frame["caption"], 1)
    val = data.frame[data.frame["split"] == "val"]
    many = pd.DataFrame(  # 120 more references for the first val image
        {
            "image": val["image"].iloc[0],
            "caption": data.frame["caption"].sample(120, replace=True, random_state=0).values,
            "split": "val",
            "image_id": val["image_id"].iloc[0],
        }
    )
    split = build_split(pd.concat([val, many]), "val", vocab, 16, data.row_of)
    for batch_size in (3, 7):
        for rng in (None, np.random.default_rng(0)):  # validation's plan, training's plan
            plan = plan_epoch(split, batch_size, "images", rng)
            assert max(len(captions) for _, captions in plan) < 2 * batch_size
            assert sorted(np.concatenate([c for _, c in plan])) == list(range(split.num_captions))
    torch.manual_seed(0)
    model = build_decoder(config.model, vocab)
    losses = [
        split_loss(
            model,
            data.store,
            split,
            dataclasses.replace(config, train=dataclasses.replace(config.train, batch_size=size)),
            vocab.pad,
            torch.device("cpu"),
        )
        for size in (4, 100_000)  # 4 rows at a time; the whole split in one batch
    ]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


# ---- 3. model sizes that cannot fit in memory ----


def test_a_model_too_large_for_memory_is_refused_naming_the_size(workspace):
    result = cli(
        "train",
        "--config",
        REPO / "configs" / "demo.toml",
        *("--set", f"data.captions={workspace['captions']}"),
        *("--set", f"features.path={workspace['features']}"),
        *("--set", f"train.out_dir={workspace['runs']}"),
        *("--set", "model.hidden_dim=1000000"),
    )
    line = error_line(result)
    assert "hidden_dim 1,000,000" in line and "parameters" in line and "memory" in line
    assert not workspace["runs"].exists()  # refused before a run folder or any weight


def test_the_parameter_count_is_the_built_models(workspace):
    config = load_config(workspace["config"], ["model.kind=transformer", "model.layers=3"])
    vocab, _ = build_vocabulary(["a red circle", "a blue square"], 1)
    assert (
        parameter_count(config.model, vocab)
        == build_decoder(config.model, vocab).parameter_counts()[0]
    )
    huge = dataclasses.replace(config.model, layers=10**9)  # counted without building it
    assert parameter_count(huge, vocab) * 4 > available_memory()


# ---- 4. demo-data: free space, SIGTERM, a full disk ----


def test_demo_data_beyond_the_free_space_is_refused_up_front(tmp_path):
    line = error_line(cli("demo-data", tmp_path / "out", "--images", 10**9))
    assert "not enough free space" in line and "fewer --images" in line
    assert list(tmp_path.iterdir()) == []


def test_demo_data_cleans_its_temporary_folder_on_sigterm(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "demo-data", str(tmp_path / "out"), "--images", "5000"],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        staging = list(tmp_path.glob(".out.tmp-*/images/*.jpg"))
        if len(staging) >= 5:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stderr = proc.communicate(timeout=60)[1]
    assert proc.returncode != 0 and "Traceback" not in stderr, stderr
    assert list(tmp_path.iterdir()) == []


FULL_DISK_DRIVER = """
set -e
mount -t tmpfs -o size=40m tmpfs "$1"
cd "$1"
{python} -m pipeline demo-data out --images 2000 2>"$2" >/dev/null &
pid=$!
while [ "$(ls .out.tmp-*/images 2>/dev/null | wc -l)" -lt 5 ]; do sleep 0.05; done
dd if=/dev/zero of=filler bs=64k 2>/dev/null || true
rc=0; wait $pid || rc=$?
rm filler
echo "$rc $(ls -A | tr '\\n' ' ')"
"""


def test_demo_data_on_a_disk_that_fills_ends_in_one_line(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    probe = ["unshare", "-rm", "mount", "-t", "tmpfs", "tmpfs", str(mnt)]
    if subprocess.run(probe, capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    err = tmp_path / "stderr"
    driver = FULL_DISK_DRIVER.format(python=sys.executable)
    done = subprocess.run(
        ["unshare", "-rm", "sh", "-c", driver, "sh", str(mnt), str(err)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    rc, *left = done.stdout.split()
    stderr = err.read_text()
    assert rc == "2" and left == [], (done.stdout, stderr)
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert "the disk is full" in stderr
