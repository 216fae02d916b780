"""Writing a testbed: an ordinary caption file and feature file, made without any image.

A testbed's grids are written straight into the feature contract (`pipeline.contract`): the
same datasets, ids, status and attributes as `extract` writes, so training, evaluation, SCST,
reports and `captioner sweep` read them unchanged. The attributes say what made the file:
`backbone` is "testbed:<kind>" and `testbed` holds every knob as JSON (both are part of the
fingerprint, so a checkpoint trained on one testbed refuses another's file).

Output folder: `dataset.json` (Karpathy layout with its splits) and `features.h5`. Each is
written under a temporary name and renamed into place. A rerun with the same knobs finds
both complete and does nothing; other knobs, or files that are not this testbed's, are
refused unless `overwrite`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import h5py
import numpy as np

from pipeline import contract
from pipeline.atomic import write_text_atomic
from pipeline.captions.demo_data import karpathy_json_text
from pipeline.errors import UserError

CAPTIONS_FILE = "dataset.json"
FEATURES_FILE = "features.h5"
ROWS_PER_WRITE = 256  # rows generated and written at a time (bounded memory)
TESTBED_VERSION = 1  # bump when a testbed's generator changes what it writes
CODE_ENERGY = 16.0  # squared norm of one written code value (a colour, a word), noise aside


def testbed_attrs(kind: str, knobs: dict) -> dict:
    """The feature-file attributes of testbed `kind` made with `knobs`."""
    return {
        "backbone": f"{contract.TESTBED_PREFIX}{kind}",
        "weights": "none",
        "image_size": 0,
        "resize": f"testbed {kind}: grids written from captions and scenes, no image read",
        "mean": [],
        "std": [],
        "grid": contract.GRID,
        "dtype": "float16",
        "precision": "fp32",
        "testbed": {"kind": kind, "version": TESTBED_VERSION, **knobs},
        "versions": {"numpy": np.__version__, "h5py": version("h5py")},
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def is_complete(out_dir: Path, attrs: dict, captions_text: str) -> bool:
    """Whether `out_dir` already holds this testbed, complete, with the same knobs.

    Refuses (UserError) a feature file that is another testbed's or not a testbed's, and a
    caption file that is not the one this testbed writes.
    """
    captions, features = out_dir / CAPTIONS_FILE, out_dir / FEATURES_FILE
    if captions.exists() and captions.read_text("utf-8", errors="replace") != captions_text:
        raise UserError(
            f"{captions} is not this testbed's caption file; pass --overwrite to replace "
            "it, or write this testbed into another folder"
        )
    if not features.exists():
        return False
    with contract.open_h5(features) as f:
        saved = contract.read_attrs(f)
    if saved.get("testbed") != attrs["testbed"]:
        made = saved.get("testbed") or f"not a testbed (backbone {saved.get('backbone')!r})"
        raise UserError(
            f"{features} holds other features ({made}); pass --overwrite to replace it, "
            "or write this testbed into another folder"
        )
    return bool(saved.get("complete", False)) and captions.is_file()


def check_folder(out_dir: Path, overwrite: bool) -> None:
    """`out_dir` must be a folder (made if missing) holding nothing but this testbed's files."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"cannot write a testbed to {out_dir}: it is not a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create {out_dir}: {error.strerror}") from None
    if overwrite:
        return
    foreign = sorted(
        p.name
        for p in out_dir.iterdir()
        if p.name not in (CAPTIONS_FILE, FEATURES_FILE) and not p.name.startswith(".")
    )
    if foreign:
        raise UserError(
            f"{out_dir} holds files that are not a testbed's ({', '.join(foreign[:3])}): "
            "write the testbed into a new or empty folder"
        )


def write_testbed(
    out_dir: Path,
    kind: str,
    knobs: dict,
    names: list[str],
    captions: list[list[str]],
    splits: list[str],
    grids: Callable[[int, int], np.ndarray],
    overwrite: bool = False,
) -> bool:
    """Write `dataset.json` and `features.h5` of a testbed into `out_dir`.

    `grids(start, stop)` returns the rows start..stop-1 as (n, 49, 2048) float32, image i's
    grid at row i (`names[i]`). Returns False when the folder already held this testbed
    complete (nothing written).
    """
    out_dir = Path(out_dir)
    attrs = testbed_attrs(kind, knobs)
    text = karpathy_json_text(names, captions, splits, f"testbed-{kind}")
    check_folder(out_dir, overwrite)
    if not overwrite and is_complete(out_dir, attrs, text):
        return False
    write_text_atomic(out_dir / CAPTIONS_FILE, text)
    staging = out_dir / f".{FEATURES_FILE}.tmp-{os.getpid()}"
    try:
        _write_features(staging, names, attrs, grids)
        os.replace(staging, out_dir / FEATURES_FILE)
    finally:
        staging.unlink(missing_ok=True)
    return True


def _write_features(
    path: Path, names: list[str], attrs: dict, grids: Callable[[int, int], np.ndarray]
) -> None:
    """Create the feature file at `path`, fill every row, mark it complete."""
    contract.create_feature_file(path, names, attrs, attrs["dtype"])
    with h5py.File(path, "r+") as f:
        for start in range(0, len(names), ROWS_PER_WRITE):
            stop = min(start + ROWS_PER_WRITE, len(names))
            rows = grids(start, stop)  # (n, 49, 2048) float32
            if rows.shape != (stop - start, contract.REGIONS, contract.CHANNELS):
                raise ValueError(f"testbed rows {start}..{stop} have shape {rows.shape}")
            f[contract.FEATURES][start:stop] = rows.astype(attrs["dtype"])
            f[contract.STATUS][start:stop] = contract.WRITTEN
        contract.write_failed_and_complete(f, [])


def describe(out_dir: Path, kind: str, knobs: dict) -> str:
    """One line naming what was written and with which knobs."""
    settings = ", ".join(f"{k} {json.dumps(v)}" for k, v in knobs.items())
    return f"testbed {kind}: {out_dir / CAPTIONS_FILE} and {out_dir / FEATURES_FILE} ({settings})"
