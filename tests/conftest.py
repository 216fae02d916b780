"""Shared fixtures: a small real feature cache made by stage one from generated demo images."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.captions.demo_data import generate_demo_data
from pipeline.extract.cli import extract_command

TINY_CONFIG = """
[data]
captions = "{captions}"
images = "{images}"

[features]
path = "{features}"
weights = "none"
workers = 0

[vocab]
min_freq = 1
max_len = 16

[model]
attention = "additive"
embed_dim = 16
hidden_dim = 32
attention_dim = 16
dropout = 0.0

[train]
epochs = 2
batch_size = 32
lr = 0.003
seed = 0
out_dir = "{runs}"
workers = 0
val_images = 0
samples = 1

[eval]
beam_size = 2
max_len = 12
batch_size = 16
"""


def write_tiny_config(root: Path, demo_cache: dict, images: Path | None = None) -> Path:
    """root/tiny.toml: TINY_CONFIG on the demo cache (its images unless `images`), runs
    under root/runs."""
    config = root / "tiny.toml"
    config.write_text(
        TINY_CONFIG.format(
            captions=demo_cache["captions"],
            images=images or demo_cache["images"],
            features=demo_cache["features"],
            runs=root / "runs",
        )
    )
    return config


def error_line(result) -> str:
    """The single `error:` line of a run that must end with exit 2 and no traceback."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    return errors[0]


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory) -> dict[str, Path]:
    """40 demo images + dataset.json + their features.h5 (random-init ResNet50, "auto"
    precision: bf16 on a CPU with native bf16, else fp32; pipeline/device.py)."""
    root = tmp_path_factory.mktemp("demo")
    generate_demo_data(root / "data", n_images=40, seed=0)
    features = root / "features.h5"
    result = CliRunner().invoke(
        extract_command,
        [
            "--images",
            str(root / "data" / "images"),
            "--captions",
            str(root / "data/dataset.json"),
            "--out",
            str(features),
            "--weights",
            "none",
            "--workers",
            "0",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    return {
        "root": root,
        "images": root / "data" / "images",
        "captions": root / "data" / "dataset.json",
        "features": features,
    }


@pytest.fixture()
def workspace(tmp_path, demo_cache) -> dict[str, Path]:
    """A private copy of the cache and captions WITHOUT the images folder, plus a tiny config."""
    features = tmp_path / "features.h5"
    captions = tmp_path / "dataset.json"
    shutil.copy(demo_cache["features"], features)
    shutil.copy(demo_cache["captions"], captions)
    config = tmp_path / "tiny.toml"
    config.write_text(
        TINY_CONFIG.format(
            captions=captions,
            images=tmp_path / "no-images",
            features=features,
            runs=tmp_path / "runs",
        )
    )
    return {
        "root": tmp_path,
        "config": config,
        "features": features,
        "captions": captions,
        "runs": tmp_path / "runs",
        "images": demo_cache["images"],
    }


def install_logging_java(folder: Path, monkeypatch, meteor_exit: str = "") -> Path:
    """Put a `java` first on PATH that appends its arguments to the returned log, then runs
    the real java (or, with `meteor_exit`, fails METEOR's jar with that message)."""
    log = folder / "java.log"
    crash = (
        f'case "$*" in *meteor*) echo "{meteor_exit}" >&2; exit 3;; esac\n' if meteor_exit else ""
    )
    wrapper = folder / "java"
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> {log}\n{crash}exec {shutil.which("java")} "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    return log


def meteor_starts(log: Path) -> int:
    """How many METEOR java processes a logging java (`install_logging_java`) has started."""
    return sum("meteor" in line for line in log.read_text().splitlines())
