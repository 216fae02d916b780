"""The HDF5 feature-file contract: the only thing stage one and stage two share.

Layout (documented for users in features/README.md):

- `features`   (N, 49, 2048) float16|float32, chunks (1, 49, 2048), uncompressed, all
               chunks allocated when the file is created (so writing rows never changes
               the file's metadata: a kill -9 mid-run leaves a readable file).
- `image_ids`  (N,) UTF-8 strings: image paths relative to the images folder, unique.
- `status`     (N,) int8: 0 pending, 1 written, 2 failed.
- `failed`     (M, 2) UTF-8 strings: [image_id, reason], written when the run completes.
- attrs        backbone, weights, image_size, resize, mean, std, grid, dtype, precision,
               versions, created, num_images, complete.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np

from pipeline.errors import UserError

GRID = 7
REGIONS = GRID * GRID
CHANNELS = 2048
FEATURES = "features"
IMAGE_IDS = "image_ids"
STATUS = "status"
FAILED = "failed"
PENDING, WRITTEN, FAILED_STATUS = 0, 1, 2

# Attributes that must match for two runs to write the same file, and for stage two /
# caption to treat features as coming from the same extractor.
MATCH_KEYS = ("backbone", "weights", "image_size", "resize", "mean", "std", "grid", "dtype",
              "precision")
STRING_DTYPE = h5py.string_dtype("utf-8")


def create_feature_file(path: str | Path, image_ids: list[str], attrs: dict, dtype: str) -> None:
    """Create an empty, fully allocated feature file for `image_ids` (complete = False).

    Written under a temporary name and renamed into place, so a crash here never leaves a
    half-made file at `path`.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".creating")
    n = len(image_ids)
    if n == 0:
        raise UserError("no images to extract")
    with h5py.File(tmp, "w") as f:
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_chunk((1, REGIONS, CHANNELS))
        dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
        dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
        space = h5py.h5s.create_simple((n, REGIONS, CHANNELS))
        tid = h5py.h5t.py_create(np.dtype(dtype))
        h5py.h5d.create(f.id, FEATURES.encode(), tid, space, dcpl=dcpl)
        f.create_dataset(IMAGE_IDS, data=np.array(image_ids, dtype=object), dtype=STRING_DTYPE)
        f.create_dataset(STATUS, data=np.zeros(n, dtype=np.int8))
        for key, value in attrs.items():
            f.attrs[key] = encode_attr(value)
        f.attrs["num_images"] = n
        f.attrs["complete"] = False
    os.replace(tmp, path)


def encode_attr(value: object) -> object:
    """HDF5 attrs hold scalars and strings; lists and dicts are stored as JSON text."""
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return value


def decode_attr(value: object) -> object:
    """Inverse of `encode_attr` for the values this contract writes."""
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    if isinstance(value, np.generic):
        return value.item()
    return value


def open_h5(path: str | Path, mode: str = "r") -> h5py.File:
    """Open an HDF5 file, turning 'missing' and 'not HDF5' into clear user errors."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"feature file not found: {path}")
    try:
        return h5py.File(path, mode)
    except OSError as exc:
        raise UserError(f"{path} is not a readable HDF5 feature file ({exc})") from None


def read_attrs(f: h5py.File) -> dict:
    """All attrs of an open feature file as plain Python values."""
    return {key: decode_attr(value) for key, value in f.attrs.items()}


def read_image_ids(f: h5py.File) -> list[str]:
    """The row-ordered image ids of an open feature file."""
    return [s.decode("utf-8") if isinstance(s, bytes) else s for s in f[IMAGE_IDS][:]]


def read_failed(f: h5py.File) -> dict[str, str]:
    """image_id -> reason for the images the extractor could not use."""
    if FAILED not in f:
        return {}
    rows = f[FAILED][:]
    return {_text(a): _text(b) for a, b in rows}


def _text(value: object) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def check_layout(f: h5py.File, path: str | Path) -> None:
    """Refuse files that do not follow the contract's datasets and shapes."""
    for name in (FEATURES, IMAGE_IDS, STATUS):
        if name not in f:
            raise UserError(f"{path} is not a captioner feature file (no '{name}' dataset)")
    shape = f[FEATURES].shape
    if len(shape) != 3 or shape[1:] != (REGIONS, CHANNELS):
        raise UserError(f"{path}: features have shape {shape}, expected (N, {REGIONS}, {CHANNELS})")
    if f[IMAGE_IDS].shape[0] != shape[0]:
        raise UserError(f"{path}: {f[IMAGE_IDS].shape[0]} image ids for {shape[0]} feature rows")


def fingerprint(f: h5py.File) -> dict:
    """What identifies the extractor behind a file: MATCH_KEYS plus N. Plain types only."""
    attrs = read_attrs(f)
    out = {key: attrs.get(key) for key in MATCH_KEYS}
    out["num_images"] = int(attrs.get("num_images", f[FEATURES].shape[0]))
    if "weights_path" in attrs:
        out["weights_path"] = attrs["weights_path"]
    return out


def fingerprint_mismatch(expected: dict, actual: dict, keys: tuple[str, ...] = MATCH_KEYS) -> list[str]:
    """Human-readable differences between two fingerprints on `keys` (empty if they match)."""
    return [f"{key}: {expected.get(key)!r} vs {actual.get(key)!r}"
            for key in keys if expected.get(key) != actual.get(key)]


def open_complete(path: str | Path) -> h5py.File:
    """Open a finished feature file for stage two; refuse incomplete or malformed ones."""
    f = open_h5(path)
    try:
        check_layout(f, path)
        if not bool(f.attrs.get("complete", False)):
            done = int((f[STATUS][:] != PENDING).sum())
            raise UserError(f"{path} is incomplete ({done}/{f[FEATURES].shape[0]} rows done): "
                            "rerun the same `captioner extract` command to finish it")
    except UserError:
        f.close()
        raise
    return f


def write_failed_and_complete(f: h5py.File, failed: list[tuple[str, str]]) -> None:
    """Write the `failed` dataset ((M, 2) [image_id, reason]) and set complete = True.

    The last step of a run: call it only when no row is pending.
    """
    if FAILED in f:
        del f[FAILED]
    rows = np.array(failed, dtype=object).reshape(-1, 2)  # (M, 2)
    f.create_dataset(FAILED, data=rows, dtype=STRING_DTYPE)
    f.attrs["complete"] = True
    f.flush()
