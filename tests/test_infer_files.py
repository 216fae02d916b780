"""Inference outputs never clobber: foreign files and planted symlinks are refused, reruns
replace their own files, and a read-only folder ends in one line with a non-zero exit."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.errors import UserError
from pipeline.infer.files import MANIFEST, OutputFolder


def cli(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


@contextlib.contextmanager
def read_only(folder: Path):
    """Make `folder` unwritable even for root (chattr +i), else by its mode bits."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        made = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, check=False)
        if made.returncode != 0:
            pytest.skip(f"cannot make a read-only folder as root here: {made.stderr!r}")
        try:
            yield folder
        finally:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
    else:
        folder.chmod(0o555)
        try:
            yield folder
        finally:
            folder.chmod(0o755)


def test_rerun_replaces_its_own_file_but_never_a_foreign_one(tmp_path):
    folder = OutputFolder(tmp_path / "out")
    folder.write_text("metrics.json", "first")
    OutputFolder(tmp_path / "out").write_text("metrics.json", "second")  # a rerun
    assert (tmp_path / "out" / "metrics.json").read_text() == "second"

    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not written by captioner"):
        OutputFolder(tmp_path / "out").write_text("notes.txt", "clobbered")
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        MANIFEST,
        "metrics.json",
        "notes.txt",
    ]  # no temp file left behind


def test_a_symlink_planted_at_an_output_path_is_not_written_through(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("keep")
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.html").symlink_to(secret)
    with pytest.raises(UserError, match="not written by captioner"):
        OutputFolder(out).write_text("report.html", "<html>")
    assert secret.read_text() == "keep"


def test_a_symlink_at_an_owned_name_is_replaced_not_followed(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("keep")
    out = tmp_path / "out"
    OutputFolder(out).write_text("report.html", "old")
    (out / "report.html").unlink()
    (out / "report.html").symlink_to(secret)  # planted after captioner wrote the name
    OutputFolder(out).write_text("report.html", "new")
    assert secret.read_text() == "keep"
    assert not (out / "report.html").is_symlink() and (out / "report.html").read_text() == "new"


def test_caption_refuses_to_overwrite_a_users_file_before_any_work(tmp_path):
    image = tmp_path / "photo.jpg"
    image.write_bytes(b"not needed: refused before reading")
    maps = tmp_path / "maps"
    maps.mkdir()
    (maps / "photo.png").write_bytes(b"the user's own picture")
    result = cli("caption", image, "--checkpoint", tmp_path / "missing.pt", "--attention-dir", maps)
    assert result.exit_code == 2
    assert "photo.png already exists and was not written by captioner" in result.output
    assert (maps / "photo.png").read_bytes() == b"the user's own picture"


@pytest.mark.parametrize("option", ["--attention-dir", "--html"])
def test_caption_on_a_read_only_folder_is_one_line(tmp_path, option):
    image = tmp_path / "photo.jpg"
    image.write_bytes(b"x")
    with read_only(tmp_path / "ro") as folder:
        target = folder / "sub" if option == "--attention-dir" else folder / "page.html"
        result = cli("caption", image, "--checkpoint", tmp_path / "missing.pt", option, target)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot "), lines
    assert "Traceback" not in result.output


def test_evaluate_out_on_a_read_only_folder_is_one_line(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.pt").write_bytes(b"refused before it is read")
    for out in ("ro", "ro/nested"):
        with read_only(tmp_path / "ro"):
            result = cli("evaluate", run, "--out", tmp_path / out)
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: cannot "), lines
