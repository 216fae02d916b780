"""The HDF5 feature-file contract: the only thing stage one and stage two share.

Layout (documented for users in features/README.md):

- `features`   (N, R, C) float16|float32, chunks (1, R, C), uncompressed, all chunks
               allocated when the file is created (so writing rows never changes the file's
               metadata: a kill -9 mid-run leaves a readable file). R regions of C channels:
               a `grid` x `grid` grid of cells in row-major order, plus the backbone's class
               token as region R-1 when `class_token` is true (ResNet50: 7 x 7 x 2048).
- `image_ids`  (N,) UTF-8 strings: image paths relative to the images folder, unique.
- `status`     (N,) int8: 0 pending, 1 written, 2 failed.
- `failed`     (M, 2) UTF-8 strings: [image_id, reason], written when the run completes.
- `image_size_bytes`, `image_mtime_ns`  (N,) int64: each image's size and modification time
               when it was read (-1: unreadable), so a rerun notices changed or deleted images.
               Optional for readers (files made before they existed have neither).
- Sharded (torchrun) files may hold `features`, `image_ids`, `status` and the stamps as HDF5
  virtual datasets over shard files next to them; they read exactly like plain ones.
- attrs        backbone, weights, image_size, resize, mean, std, grid, regions, channels,
               dtype, precision, versions, created, num_images, complete; `class_token` only
               where it is kept; a testbed's file (written from captions, not images:
               pipeline/testbed/) adds `testbed`. `regions` and `channels` are optional for
               readers: a file without them (made before them, or a testbed's) is 7 x 7 x 2048.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from pipeline.backbones import BACKBONES, DEFAULT_BACKBONE, DEFAULT_GRID
from pipeline.config import FEATURE_DTYPES
from pipeline.errors import UserError

TESTBED_PREFIX = "testbed:"  # the backbone of a testbed's file (written without images)
# The default shape, and that of every file without shape attributes: ResNet50's at 224 px.
BACKBONE = DEFAULT_BACKBONE
GRID = DEFAULT_GRID
REGIONS = GRID * GRID
CHANNELS = BACKBONES[DEFAULT_BACKBONE].channels
SHAPE_KEYS = ("grid", "regions", "channels", "class_token")  # the attrs that give the shape
FEATURES = "features"
IMAGE_IDS = "image_ids"
STATUS = "status"
FAILED = "failed"
IMAGE_SIZE_BYTES = "image_size_bytes"
IMAGE_MTIME_NS = "image_mtime_ns"
STAMPS = (IMAGE_SIZE_BYTES, IMAGE_MTIME_NS)  # (N,) int64 each; -1 = could not stat
PER_ROW = (FEATURES, IMAGE_IDS, STATUS, *STAMPS)  # the datasets with one entry per row
PENDING, WRITTEN, FAILED_STATUS = 0, 1, 2

# Attributes that must match for two runs to write the same file, and for stage two /
# caption to treat features as coming from the same extractor.
MATCH_KEYS = (
    "backbone",
    "weights",
    "image_size",
    "resize",
    "mean",
    "std",
    "grid",
    "dtype",
    "precision",
    "class_token",  # only where a backbone's class token is kept (region R-1)
    "testbed",  # only in a testbed's file: its kind, generator version and knobs
)
STRING_DTYPE = h5py.string_dtype("utf-8")
LOCKED = (errno.EAGAIN, errno.EWOULDBLOCK)  # HDF5's lock held by another process


@dataclass(frozen=True)
class FeatureShape:
    """What one row of `features` holds: `grid` x `grid` cells of `channels` values, row-major,
    then the class token when `class_token`."""

    grid: int = GRID
    channels: int = CHANNELS
    class_token: bool = False

    @property
    def cells(self) -> int:
        """The grid's cells: grid * grid."""
        return self.grid * self.grid

    @property
    def regions(self) -> int:
        """R: the cells, plus one for a kept class token."""
        return self.cells + int(self.class_token)

    def attrs(self) -> dict:
        """The attrs a file of this shape carries (`class_token` only where it is kept)."""
        out = {"grid": self.grid, "regions": self.regions, "channels": self.channels}
        if self.class_token:
            out["class_token"] = True
        return out

    def describe(self) -> str:
        """E.g. "7x7x2048" or "14x14x768 + class token"."""
        text = f"{self.grid}x{self.grid}x{self.channels}"
        return text + " + class token" if self.class_token else text


LEGACY_SHAPE = FeatureShape()  # files (and checkpoints) without shape attributes


def feature_shape(attrs: dict) -> FeatureShape:
    """The shape a file's attrs (or a fingerprint, e.g. a checkpoint's) declare: absent keys
    are ResNet50's 7 x 7 x 2048 (what every file made before shape attributes holds)."""
    return FeatureShape(
        grid=int(attrs.get("grid", GRID)),
        channels=int(attrs.get("channels", CHANNELS)),
        class_token=bool(attrs.get("class_token", False)),
    )


def create_feature_file(path: str | Path, image_ids: list[str], attrs: dict, dtype: str) -> None:
    """Create an empty, fully allocated feature file for `image_ids` (complete = False), its
    rows shaped as `attrs` declare (`feature_shape`).

    Written under a temporary name and renamed into place, so a crash here never leaves a
    half-made file at `path`.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".creating")
    n = len(image_ids)
    if n == 0:
        raise UserError("no images to extract")
    shape = feature_shape(attrs)
    with h5py.File(tmp, "w") as f:
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_chunk((1, shape.regions, shape.channels))
        dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
        dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
        space = h5py.h5s.create_simple((n, shape.regions, shape.channels))
        tid = h5py.h5t.py_create(np.dtype(dtype))
        h5py.h5d.create(f.id, FEATURES.encode(), tid, space, dcpl=dcpl)
        f.create_dataset(IMAGE_IDS, data=np.array(image_ids, dtype=object), dtype=STRING_DTYPE)
        f.create_dataset(STATUS, data=np.zeros(n, dtype=np.int8))
        for name in STAMPS:
            f.create_dataset(name, data=np.full(n, -1, dtype=np.int64))
        for key, value in attrs.items():
            f.attrs[key] = encode_attr(value)
        f.attrs["num_images"] = n
        f.attrs["complete"] = False
    os.replace(tmp, path)


def row_bytes(dtype: str | np.dtype, shape: FeatureShape = LEGACY_SHAPE) -> int:
    """Bytes of one image's grid: R x C x bytes per value (ResNet50: 49 x 2048)."""
    return shape.regions * shape.channels * np.dtype(dtype).itemsize


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
    """Open an HDF5 file, turning 'missing', 'locked by another process' and 'not HDF5' into
    clear user errors."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"feature file not found: {path}")
    try:
        return h5py.File(path, mode)
    except OSError as exc:
        if exc.errno in LOCKED:
            raise UserError(
                f"another process is writing or reading {path}; wait for it or use another file"
            ) from None
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
    """Refuse files that do not follow the contract: datasets, shapes, dtypes, unique ids.

    Also refuses a sharded (virtual) file whose shard files are missing.
    """
    for name in (FEATURES, IMAGE_IDS, STATUS):
        if name not in f:
            raise UserError(f"{path} is not a captioner feature file (no '{name}' dataset)")
    features = f[FEATURES]
    if not isinstance(features, h5py.Dataset) or features.dtype.name not in FEATURE_DTYPES:
        raise UserError(f"{path}: 'features' is not a {'/'.join(FEATURE_DTYPES)} dataset")
    declared = _declared_shape(f, path)
    shape = features.shape
    if len(shape) != 3 or shape[1:] != (declared.regions, declared.channels):
        raise UserError(
            f"{path}: features have shape {shape}, expected "
            f"(N, {declared.regions}, {declared.channels})"
        )
    n = shape[0]
    _check_vector(f, path, IMAGE_IDS, n, "a string", lambda d: h5py.check_string_dtype(d))
    _check_vector(f, path, STATUS, n, "int8", lambda d: d == np.int8)
    for name in STAMPS:
        if name in f:
            _check_vector(f, path, name, n, "int64", lambda d: d == np.int64)
    if FAILED in f:
        failed = f[FAILED]
        if (
            not isinstance(failed, h5py.Dataset)
            or len(failed.shape) != 2
            or failed.shape[1] != 2
            or not h5py.check_string_dtype(failed.dtype)
        ):
            raise UserError(f"{path}: dataset 'failed' must be (M, 2) strings [image_id, reason]")
    _check_attrs(f, path)
    _check_unique(read_image_ids(f), path)
    _check_sources(f, path)


def _check_attrs(f: h5py.File, path: str | Path) -> None:
    """`complete` a boolean, `num_images` the row count, `dtype` the stored dtype of the rows
    (each checked where present: readers default the missing ones)."""
    attrs, n, dtype = f.attrs, f[FEATURES].shape[0], f[FEATURES].dtype.name
    if "complete" in attrs and not isinstance(attrs["complete"], (bool, np.bool_)):
        _bad_attr(path, "complete", attrs["complete"], "True or False")
    if "num_images" in attrs:
        value = attrs["num_images"]
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value != n:
            _bad_attr(path, "num_images", value, f"the integer {n}, its number of rows")
    if "dtype" in attrs:
        value = decode_attr(attrs["dtype"])
        if not isinstance(value, str) or value not in FEATURE_DTYPES or value != dtype:
            _bad_attr(path, "dtype", value, f"{dtype!r}, the dtype of its 'features'")


def _declared_shape(f: h5py.File, path: str | Path) -> FeatureShape:
    """The shape the file's attrs declare; UserError for shape attrs that are not positive
    integers or that disagree with each other (`regions` = grid * grid + class token)."""
    attrs = read_attrs(f)
    for key in ("grid", "regions", "channels"):
        value = attrs.get(key)
        if key in attrs and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            _bad_attr(path, key, f.attrs[key], "a positive integer")
    if "class_token" in attrs and not isinstance(attrs["class_token"], bool):
        _bad_attr(path, "class_token", f.attrs["class_token"], "True or False")
    shape = feature_shape(attrs)
    if "regions" in attrs and attrs["regions"] != shape.regions:
        token = " + 1 (class token)" if shape.class_token else ""
        _bad_attr(
            path,
            "regions",
            f.attrs["regions"],
            f"{shape.regions} (grid {shape.grid} squared{token})",
        )
    return shape


def _bad_attr(path: str | Path, name: str, value: object, expected: str) -> None:
    """UserError naming attribute `name`, what it holds, and what it should hold."""
    if isinstance(value, np.ndarray):
        held = np.array2string(value)
    else:
        held = repr(value.item() if isinstance(value, np.generic) else value)
    raise UserError(
        f"{path}: attribute '{name}' holds {held} ({type(value).__name__}), expected "
        f"{expected} (not a captioner feature file, or damaged)"
    )


def _check_vector(f: h5py.File, path: str | Path, name: str, n: int, kind: str, ok) -> None:
    """Dataset `name` must be (n,) with a dtype `ok` accepts (described as `kind`)."""
    data = f[name]
    if not isinstance(data, h5py.Dataset) or data.shape != (n,) or not ok(data.dtype):
        got = f"{getattr(data, 'shape', '?')} {getattr(data, 'dtype', 'group')}"
        raise UserError(
            f"{path}: dataset '{name}' is {got}, expected ({n},) {kind} "
            "(not a captioner feature file, or damaged)"
        )


def _check_unique(ids: list[str], path: str | Path) -> None:
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dup = next(i for i in ids if i in seen or seen.add(i))
        raise UserError(f"{path}: image ids are not unique ({dup!r} appears more than once)")


def _check_sources(f: h5py.File, path: str | Path) -> None:
    """Every shard file a virtual dataset maps must exist (else HDF5 reads zeros silently)."""
    for name in PER_ROW:
        if name in f and f[name].is_virtual:
            missing = sorted(
                {
                    s.file_name
                    for s in f[name].virtual_sources()
                    if not source_path(path, s.file_name).is_file()
                }
            )
            if missing:
                raise UserError(
                    f"{path} reads its rows from shard files that are missing "
                    f"({', '.join(missing[:3])}): keep the shards next to it "
                    "(see features/README.md)"
                )


def source_path(path: str | Path, file_name: str) -> Path:
    """Where HDF5 finds a virtual dataset's source: relative names are next to the file."""
    source = Path(file_name)
    return source if source.is_absolute() else Path(path).parent / source


def is_virtual(f: h5py.File) -> bool:
    """True if the file's rows live in shard files (HDF5 virtual datasets)."""
    return f[FEATURES].is_virtual


def fingerprint(f: h5py.File) -> dict:
    """What identifies a file: MATCH_KEYS (the extractor: backbone, weights, grid, ...), N,
    `regions` and `channels` where the file has them (`feature_shape` reads its shape back)
    and `image_list_sha256`.

    Plain types only. `image_list_sha256` is computed from the file's ids (see
    `image_list_sha256`), so files made before it existed have one too.
    """
    attrs = read_attrs(f)
    out = {key: attrs.get(key) for key in MATCH_KEYS}
    out["num_images"] = int(attrs.get("num_images", f[FEATURES].shape[0]))
    for key in ("regions", "channels", "weights_path"):  # only files that have them
        if key in attrs:
            out[key] = attrs[key]
    out["image_list_sha256"] = image_list_sha256(read_image_ids(f))
    return out


def image_list_sha256(image_ids: list[str]) -> str:
    """Hex sha256 over the row-ordered ids, each UTF-8 encoded and followed by a newline."""
    digest = hashlib.sha256()
    for image_id in image_ids:
        digest.update(image_id.encode("utf-8") + b"\n")
    return digest.hexdigest()


def fingerprint_mismatch(
    expected: dict, actual: dict, keys: tuple[str, ...] = MATCH_KEYS
) -> list[str]:
    """Human-readable differences between two fingerprints on `keys` (empty if they match)."""
    return [
        f"{key}: {expected.get(key)!r} vs {actual.get(key)!r}"
        for key in keys
        if expected.get(key) != actual.get(key)
    ]


def open_complete(path: str | Path) -> h5py.File:
    """Open a finished feature file for stage two; refuse incomplete or malformed ones."""
    f = open_h5(path)
    try:
        check_layout(f, path)
        pending = int((f[STATUS][:] == PENDING).sum())
        n = f[FEATURES].shape[0]
        if not bool(f.attrs.get("complete", False)):
            raise UserError(
                f"{path} is incomplete ({n - pending}/{n} rows done): "
                "rerun the same `captioner extract` command to finish it"
            )
        if pending:
            raise UserError(
                f"{path} says it is complete but {pending}/{n} rows are still "
                "pending: it is damaged or not made by captioner; rerun "
                "`captioner extract` with --overwrite"
            )
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
