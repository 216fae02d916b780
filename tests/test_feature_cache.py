"""features.cache: streamed, in RAM, on the device (= RAM on the CPU) give the same run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pipeline import contract
from pipeline.cli import main
from pipeline.config import load_config
from pipeline.dataset.store import (
    RAM_FRACTION,
    FeatureStore,
    _load_device,
    auto_cache,
    available_memory,
)
from pipeline.errors import UserError

GIB = 1024**3
TIMING = ("epoch_seconds", "tokens_per_s")  # the only values allowed to differ between runs


def train(workspace, name: str, *settings: str):
    args = ["train", "--config", str(workspace["config"]), "--set", "train.epochs=1"]
    args += ["--set", f"train.name={name}"]
    for setting in settings:
        args += ["--set", setting]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    lines = (workspace["runs"] / name / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    return result.output, [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def test_ram_and_device_caches_log_exactly_what_streaming_logs(workspace):
    _, streamed = train(workspace, "stream", "features.cache=stream", "train.workers=1")
    _, in_ram = train(workspace, "ram", "features.cache=ram")
    output, on_device = train(workspace, "device", "features.cache=device")
    assert streamed == in_ram == on_device
    assert "train_loss" in streamed[0]
    assert "features.cache: ram (device asked for, but the model is not on a CUDA" in output


def test_auto_says_what_it_chose(workspace):
    output, _ = train(workspace, "auto")
    assert "features.cache: ram (auto: the grids (0.0 GB) fit in 50% of" in output


def test_auto_holds_the_grids_in_ram_only_when_they_fit():
    available = 10 * GIB
    assert auto_cache(int(RAM_FRACTION * available), available)[0] == "ram"
    assert auto_cache(int(RAM_FRACTION * available) + 1, available)[0] == "stream"
    assert auto_cache(GIB, available, budget_gb=0.5) == (
        "stream",
        "auto: the grids (1.0 GB) exceed features.ram_budget_gb",
    )
    assert auto_cache(GIB, None)[0] == "stream"


def test_available_memory_reads_meminfo(tmp_path: Path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemAvailable:   12000000 kB\n")
    assert available_memory(str(meminfo)) == 12_000_000 * 1024
    assert available_memory(str(tmp_path / "missing")) is None


def test_a_ram_cache_serves_the_files_grids(workspace):
    rows = np.array([5, 0, 3, 3])
    streamed, held = FeatureStore(workspace["features"]), FeatureStore(workspace["features"], "ram")
    assert held.in_memory and not streamed.in_memory
    np.testing.assert_array_equal(held.read(rows), streamed.read(rows))
    np.testing.assert_array_equal(held.gather(rows).numpy(), streamed.read(rows))


def test_the_device_loader_copies_every_grid(workspace):
    """What features.cache = "device" loads on CUDA, run here onto the CPU."""
    with contract.open_h5(workspace["features"]) as f:
        dataset = f[contract.FEATURES]
        loaded = _load_device(dataset, str(workspace["features"]), torch.device("cpu"))
        np.testing.assert_array_equal(loaded.numpy(), dataset[:])


def test_cache_settings_are_checked_and_the_old_key_still_reads():
    with pytest.raises(UserError, match="features.cache must be one of auto, stream, ram, dev"):
        load_config(None, ["features.cache=gpu"])
    assert load_config(None, ["features.in_memory=true"]).features.cache == "ram"
    assert load_config(None, ['features.in_memory="false"']).features.cache == "stream"
