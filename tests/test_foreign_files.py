"""Files that are not what they claim: feature files with wrong attributes or locked by another
process, checkpoints that are no checkpoint, a TensorBoard run that does not exist."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.cli import main

REPO = Path(__file__).resolve().parents[1]
# Holds the file open for writing (HDF5 locks it) until its stdin closes.
HOLD_OPEN = (
    "import h5py, sys; f = h5py.File(sys.argv[1], 'a'); print('open', flush=True); sys.stdin.read()"
)


def cli(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


def extract_args(workspace) -> list:
    return [
        "extract",
        "--images",
        workspace["images"],
        "--captions",
        workspace["captions"],
        "--out",
        workspace["features"],
        "--weights",
        "none",
        "--workers",
        "0",
        "--quiet",
    ]


def assert_one_error(result, text: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and text in errors[0], result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("name", "value", "held"),
    [
        ("complete", "yes", "holds 'yes' (str)"),
        ("complete", np.array([1, 0]), "holds [1 0] (ndarray)"),
        ("num_images", 39, "holds 39 (int64), expected the integer 40"),
        ("num_images", "40", "holds '40' (str)"),
        ("dtype", "float64", "holds 'float64' (str), expected 'float16'"),
        ("dtype", "float32", "holds 'float32' (str), expected 'float16'"),
    ],
)
def test_wrong_attributes_are_refused_by_extract_and_train(workspace, name, value, held):
    with h5py.File(workspace["features"], "r+") as f:
        assert f["features"].shape[0] == 40 and f["features"].dtype == np.float16
        f.attrs[name] = value
    text = f"{workspace['features']}: attribute '{name}' {held}"
    assert_one_error(cli(*extract_args(workspace)), text)
    assert_one_error(cli("train", "--config", workspace["config"]), text)


def test_a_file_another_process_writes_is_named_as_such(workspace):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_OPEN, str(workspace["features"])],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "open"
        text = (
            f"another process is writing or reading {workspace['features']}; "
            "wait for it or use another file"
        )
        assert_one_error(cli(*extract_args(workspace)), text)
        assert_one_error(cli("train", "--config", workspace["config"]), text)
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert cli(*extract_args(workspace)).exit_code == 0  # released: complete, nothing to do


def test_a_file_that_is_no_checkpoint_is_named_for_what_it_is(workspace, tmp_path):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    hdf5 = tmp_path / "features.pt"
    shutil.copy(workspace["features"], hdf5)
    text = tmp_path / "notes.pt"
    text.write_text("not a model\n")
    for path, what in (
        (empty, "an empty file"),
        (hdf5, "an HDF5 file (a feature file?)"),
        (text, "not the zip archive torch.save writes"),
    ):
        result = cli("evaluate", path, "--out", tmp_path / "ev")
        assert_one_error(result, f"{path} is not a captioner checkpoint: it is {what}")
        assert "pickled" not in result.output
    result = cli("train", "--config", workspace["config"], "--init", hdf5)
    assert_one_error(result, f"{hdf5} is not a captioner checkpoint: it is an HDF5 file")


@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
def test_make_tensorboard_refuses_a_missing_run(tmp_path):
    missing = tmp_path / "missing"
    for variable in ("RUN", "RUNS"):
        done = subprocess.run(
            ["make", "-s", "-o", ".venv/.installed", "tensorboard", f"{variable}={missing}"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
        assert done.returncode == 2 and len(lines) == 1, lines
        assert f"no {missing}" in lines[0] or f"no folder {missing}" in lines[0]
