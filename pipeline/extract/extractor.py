"""Stage one orchestration: image list -> DataLoader (decode) -> backbone -> HDF5 writer thread.

- DataLoader workers decode and resize (uint8 crosses process boundaries); the main process
  normalises whole batches on the device and runs the frozen backbone under inference_mode,
  channels_last and autocast ("auto" precision: the rule in `pipeline/device.py`).
- A writer thread with a bounded queue writes each batch's contiguous row runs straight into
  the file's pre-allocated chunks (`RowFile`: plain `pwrite`s at offsets read from HDF5 once, so
  a full disk is a plain OSError and never leaves HDF5 with unwritable buffers), then the rows'
  image stamps, then their `status` (1 written, 2 failed) last. Memory stays flat: at most a few
  batches exist at any time, whatever the number of images.
- Before writing, the file's remaining size is compared with the free space (and `ulimit -f`);
  a run that cannot fit is refused with both numbers. A disk that fills up anyway ends the run
  with one line; every row already marked is kept, and the same command resumes.
- A row whose grid holds NaN/inf is never written: it is marked failed with a reason.
- An interrupted file (Ctrl-C, kill -9, disk full) is finished by the same command: only rows
  whose status is not 1 are (re)done. A complete file is kept unless `overwrite`, except rows
  whose image changed or disappeared since it was read (size or mtime differ from the file's
  stamps): those are re-extracted (a deleted image becomes a failed row). A file made with other
  settings or for another image list is refused, never modified.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np
import PIL
import torch
import torchvision
from torch.utils.data import DataLoader
from tqdm import tqdm

from pipeline import contract, output
from pipeline.backbones import BACKBONES, DEFAULT_BACKBONE, backbone
from pipeline.capacity import DISK_FULL, require_space
from pipeline.captions.readers import read_captions
from pipeline.device import AUTOCAST_DTYPES, cpu_has_native_bf16
from pipeline.errors import UserError
from pipeline.extract.backbone import (
    GridEncoder,
    WeightsSource,
    build_backbone,
    build_backbone_from_attrs,
)
from pipeline.extract.device_decode import (
    DecodeStats,
    RawImageDataset,
    collate_raw,
    decode_on_device,
)
from pipeline.extract.images import (
    DEFAULT,
    ImageDataset,
    ImageError,
    Preprocessing,
    collate_images,
    empty_images,
    image_stamp,
    list_image_files,
    normalize_batch,
    preprocess_image,
    preprocessing_for,
    resolve_image_path,
)

WRITE_QUEUE_BATCHES = 3
# Room for what grows at the end of a run (ids, stamps, `failed`, HDF5 metadata) besides the grids.
SPACE_MARGIN_BYTES = 1 << 20
SPACE_PER_ROW_BYTES = 512
NON_FINITE = "non-finite features (NaN or inf) from the backbone"


def resolve_precision(precision: str, device: torch.device) -> str:
    """features.precision resolved to fp32 | bf16 | fp16 ("auto": the extraction rule in
    `pipeline/device.py`: fp16 on CUDA; on the CPU bf16 where it is native, else fp32).

    Measured with benchmarks/extract.py on a 2-core AVX512-BF16 CPU, batch 32, channels_last:
    fp32 ~16 img/s, bf16 ~35 img/s (features within ~1.5% of fp32's), so bf16 is the default
    on such CPUs.
    """
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "fp16"
    return "bf16" if cpu_has_native_bf16() else "fp32"


class FeatureEncoder:
    """Backbone + preprocessing + device + precision + storage dtype: uint8 image batches ->
    stored features of `shape`.

    Caption-time extraction of new images uses `FeatureEncoder.from_attrs(file_attrs, device)`
    and `encode_paths` to get features made exactly like the file's.
    """

    def __init__(
        self,
        model: GridEncoder,
        device: torch.device,
        precision: str,
        dtype: str,
        pre: Preprocessing = DEFAULT,
        shape: contract.FeatureShape = contract.LEGACY_SHAPE,
    ) -> None:
        self.model = model
        self.device = device
        self.precision = precision
        self.dtype = dtype
        self.pre = pre
        self.shape = shape

    @classmethod
    def from_attrs(
        cls, attrs: dict, device: torch.device | str, weights_path: str | None = None
    ) -> FeatureEncoder:
        """The encoder a feature file was made with (same backbone, weights, policy, grid,
        precision, dtype)."""
        check_policy(attrs)
        device = torch.device(device)
        model = build_backbone_from_attrs(attrs, device, weights_path)
        pre = preprocessing_for(str(attrs["backbone"]))
        shape = contract.feature_shape(attrs)
        return cls(model, device, str(attrs["precision"]), str(attrs["dtype"]), pre, shape)

    def encode(self, images: torch.Tensor) -> np.ndarray:
        """uint8 (B, 3, S, S) -> (B, R, C) numpy array in the storage dtype."""
        if images.shape[0] == 0:
            return np.zeros((0, self.shape.regions, self.shape.channels), dtype=self.dtype)
        with (
            torch.inference_mode(),
            torch.autocast(
                self.device.type,
                dtype=AUTOCAST_DTYPES.get(self.precision, torch.float32),
                enabled=self.precision in AUTOCAST_DTYPES,
            ),
        ):
            x = normalize_batch(images, self.device, self.pre)  # (B, 3, S, S) float32
            grid = self.model(x)  # (B, R, C) in the autocast dtype
            return grid.to(getattr(torch, self.dtype)).cpu().numpy()

    def encode_paths(self, paths: Sequence[str | Path]) -> tuple[np.ndarray, dict[int, str]]:
        """Image files -> (features (K, R, C) of the K usable ones in order, {index: reason})."""
        images, errors = [], {}
        for index, path in enumerate(paths):
            try:
                images.append(preprocess_image(path, self.pre))  # (3, S, S) uint8
            except ImageError as exc:
                errors[index] = str(exc)
        if not images:
            return self.encode(empty_images(self.pre)), errors
        return self.encode(torch.stack(images)), errors  # (K, R, C)


def native_grid(name: str) -> int:
    """Cells per side of backbone `name`'s own grid at its crop size (7 for the CNNs at 224,
    14 for vit_b_16)."""
    return preprocessing_for(name).crop // backbone(name).stride


def resolve_grid(name: str, grid: int) -> int:
    """features.grid for backbone `name`: 0 is its own grid; UserError for a grid finer than
    its own (pooling never makes cells)."""
    own = native_grid(name)
    if grid == 0:
        return own
    if grid > own:
        raise UserError(
            f"features.grid {grid} is finer than {name}'s own grid ({own}x{own}): choose "
            f"1..{own} (0 = {own})"
        )
    return grid


def extractor_attrs(name: str, grid: int, class_token: bool) -> dict:
    """The attrs that say how a backbone's features are made: backbone, its preprocessing
    (image_size, resize, mean, std) and the shape (grid, regions, channels, class_token)."""
    shape = contract.FeatureShape(grid, backbone(name).channels, class_token)
    return {"backbone": name, **preprocessing_for(name).attrs(), **shape.attrs()}


def check_policy(attrs: dict) -> None:
    """UserError unless a file's backbone is one this code builds and its preprocessing and
    shape attrs are the ones this code makes for it."""
    name = str(attrs.get("backbone", ""))
    if name.startswith(contract.TESTBED_PREFIX):
        raise UserError(
            f"these features are a testbed's ({attrs['backbone']}), written without images: "
            "no image encoder makes them; caption images with a model trained on extracted "
            "features"
        )
    if name not in BACKBONES:
        raise UserError(
            f"features were made with backbone {name!r}, which this code does not build "
            f"(it builds {', '.join(BACKBONES)})"
        )
    shape = contract.feature_shape(attrs)
    ours = extractor_attrs(name, shape.grid, shape.class_token)
    if "regions" not in attrs:  # a file made before shape attrs: 7 x 7 x 2048 by definition
        ours = {k: v for k, v in ours.items() if k not in ("regions", "channels")}
    diff = contract.fingerprint_mismatch(ours, attrs, tuple(ours))
    if not diff and shape.grid > native_grid(name):
        diff = [f"grid: {shape.grid} (finer than {name}'s own {native_grid(name)})"]
    if diff:
        raise UserError(
            "features were made with another preprocessing/backbone than this "
            f"code's ({'; '.join(diff)})"
        )


@dataclass
class ExtractJob:
    """Everything one `extract` run needs, resolved and validated (see `cli.py`)."""

    images_root: Path
    names: list[str]  # relative POSIX image paths, the file's rows in order
    out: Path
    weights: WeightsSource
    device: torch.device
    precision: str  # resolved: fp32 | bf16 | fp16
    dtype: str  # float16 | float32
    backbone: str = DEFAULT_BACKBONE  # a name of pipeline/backbones.py's table
    grid: int = contract.GRID  # resolved (`resolve_grid`): cells per side
    class_token: bool = False  # keep a ViT's class token as region R-1
    batch_size: int = 32
    workers: int = 1
    overwrite: bool = False
    progress: bool = True
    strict: bool = False  # exit 1 when images failed or caption names were rejected
    device_decode: bool | None = None  # JPEGs decoded on `device`; None: on CUDA only
    rejected: list[tuple[str, str]] = field(default_factory=list)  # unsafe caption names

    @property
    def shape(self) -> contract.FeatureShape:
        """The shape of each row the job writes."""
        return contract.FeatureShape(self.grid, backbone(self.backbone).channels, self.class_token)

    @property
    def pre(self) -> Preprocessing:
        """The backbone's preprocessing."""
        return preprocessing_for(self.backbone)

    @property
    def decodes_on_device(self) -> bool:
        """Whether JPEGs are decoded on the model's device (pipeline/extract/device_decode.py)."""
        return self.device.type == "cuda" if self.device_decode is None else self.device_decode


@dataclass
class ExtractResult:
    """What a run did. `state`: "complete" (already done, untouched), "done", or "shard" (a
    rank other than 0 under torchrun: rank 0 reports for the whole job)."""

    state: str
    total: int = 0
    reused: int = 0  # rows already written by an earlier (interrupted) run
    written: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (image, reason), all rows
    seconds: float = 0.0  # decode + forward + write loop, excluding model build
    stale: int = 0  # rows of a complete file redone because their image changed or vanished
    decode: DecodeStats | None = None  # this process's device decoding; None: not counted

    @property
    def images_per_s(self) -> float:
        """Throughput of this run's loop (written + failed images per second)."""
        done = self.total - self.reused
        return done / self.seconds if self.seconds > 0 else 0.0


def list_images(
    images_root: str | Path,
    captions: str | Path | None = None,
    fmt: str = "auto",
) -> tuple[list[str], list[tuple[str, str]]]:
    """Sorted unique image names to extract, and caption-file names rejected as unsafe.

    With `captions`, the images it names (printing the file's statistics: images,
    captions, captions per image); without, every image file under `images_root`.
    """
    root = Path(images_root)
    if not root.is_dir():
        raise UserError(f"images folder not found: {root}")
    if captions:
        table = read_captions(captions, fmt)
        names, rejected = sorted(set(table.images())), list(table.rejected)
        output.say(f"captions: {table.summary()}", err=True)
    else:
        names, rejected = list_image_files(root), []
    if not names:
        where = f"named in {captions}" if captions else f"found under {root}"
        raise UserError(f"no images {where}")
    return names, rejected


def feature_attrs(job: ExtractJob) -> dict:
    """The attrs a new feature file for `job` gets (contract.MATCH_KEYS plus provenance)."""
    attrs = {
        **extractor_attrs(job.backbone, job.grid, job.class_token),
        "weights": job.weights.tag,
        "dtype": job.dtype,
        "precision": job.precision,
        "versions": {
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "h5py": h5py.__version__,
            "numpy": np.__version__,
            "pillow": PIL.__version__,
        },
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "images_root": str(job.images_root.resolve()),
    }
    if job.weights.path:
        attrs["weights_path"] = job.weights.path
    return attrs


def check_output(job: ExtractJob, attrs: dict) -> str:
    """ "new" (create it), "resume" (matching, incomplete) or "complete" for `job.out`.

    UserError for a path that is not a matching captioner feature file; nothing is modified.
    """
    out = job.out
    if not out.exists():
        return "new"
    if not out.is_file() or not _is_hdf5(out):
        raise UserError(
            f"--out {out} exists and is not an HDF5 file; refusing to touch it "
            "(choose another --out)"
        )
    with contract.open_h5(out) as f:
        contract.check_layout(f, out)
        if job.overwrite:
            return "new"
        _check_same_job(f, out, attrs, job.names)
        return "complete" if bool(f.attrs.get("complete", False)) else "resume"


def _is_hdf5(path: Path) -> bool:
    try:
        return h5py.is_hdf5(path)
    except OSError:
        return False


def check_free_space(job: ExtractJob, state: str) -> None:
    """UserError when what is left to write of `job.out` cannot fit on its disk or under the
    file size limit (`ulimit -f`), with both numbers. `state` is check_output's answer."""
    final = final_size(len(job.names), job.dtype, job.shape)
    allocated = _allocated_bytes(job.out)  # freed by --overwrite, or already written by a resume
    needed = max(0, final - allocated) if state == "resume" else final
    require_space(job.out, needed, final, freed=allocated if state == "new" else 0)


def final_size(rows: int, dtype: str, shape: contract.FeatureShape = contract.LEGACY_SHAPE) -> int:
    """Upper bound of a finished feature file's size in bytes: grids of `shape` plus a margin."""
    return rows * (contract.row_bytes(dtype, shape) + SPACE_PER_ROW_BYTES) + SPACE_MARGIN_BYTES


def _allocated_bytes(path: Path) -> int:
    try:
        return path.stat().st_blocks * 512
    except OSError:
        return 0


def stale_rows(job: ExtractJob) -> list[int]:
    """Rows of `job.out` (complete or not) whose image changed or vanished since it was read:
    its (size, mtime_ns) now differs from the file's stamps. [] for files without stamps."""
    with contract.open_h5(job.out) as f:
        if contract.IMAGE_SIZE_BYTES not in f:
            return []
        status = f[contract.STATUS][:]  # (N,) int8
        recorded = np.stack([f[name][:] for name in contract.STAMPS], axis=1)  # (N, 2) int64
    stale = []
    for row in np.flatnonzero(status != contract.PENDING):
        try:
            now = image_stamp(resolve_image_path(job.images_root, job.names[row]))
        except ImageError:
            now = (-1, -1)
        if tuple(recorded[row]) != now:
            stale.append(int(row))
    return stale


def mark_pending(path: Path, rows: list[int]) -> None:
    """Set `rows` back to pending and the file to incomplete (to redo them)."""
    with contract.open_h5(path, "r+") as f:
        if contract.is_virtual(f):
            raise UserError(
                f"{len(rows)} images of {path} changed since extraction, and its "
                "rows live in shard files: run `captioner extract --consolidate` "
                "on it first, then rerun"
            )
        status = f[contract.STATUS][:]  # (N,) int8
        status[rows] = contract.PENDING
        f[contract.STATUS][:] = status
        f.attrs["complete"] = False


def create_output(job: ExtractJob, attrs: dict) -> None:
    """Create (or atomically replace) `job.out` as an empty, fully allocated feature file."""
    _ensure_folder(job.out.parent)
    try:
        contract.create_feature_file(job.out, job.names, attrs, job.dtype)
    except OSError as exc:
        raise UserError(f"cannot write {job.out}: {exc.strerror or exc}") from None


def _check_same_job(f: h5py.File, out: Path, attrs: dict, names: list[str]) -> None:
    expected = {k: contract.decode_attr(contract.encode_attr(v)) for k, v in attrs.items()}
    diff = contract.fingerprint_mismatch(expected, contract.fingerprint(f))
    if diff:
        raise UserError(
            f"{out} was made with other settings ({'; '.join(diff)}); rerun with "
            "those settings to finish/reuse it, or pass --overwrite, or another --out"
        )
    stored = contract.read_image_ids(f)
    if stored != names:
        first = next(
            (i for i, (a, b) in enumerate(zip(stored, names, strict=False)) if a != b),
            min(len(stored), len(names)),
        )
        raise UserError(
            f"{out} was made for another image list ({len(stored)} images in the "
            f"file, {len(names)} now; row {first}: {_at(stored, first)!r} in the "
            f"file, {_at(names, first)!r} now); pass --overwrite or another --out"
        )


def _at(items: list[str], index: int) -> str | None:
    return items[index] if index < len(items) else None


def _ensure_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create output folder {folder}: {exc.strerror or exc}") from None
    if not os.access(folder, os.W_OK):
        raise UserError(f"output folder {folder} is not writable")


def contiguous_runs(rows: Sequence[int]) -> Iterator[tuple[int, int, int, int]]:
    """(row_start, row_stop, index_start, index_stop) for runs of consecutive ascending rows."""
    start = 0
    for i in range(1, len(rows) + 1):
        if i == len(rows) or rows[i] != rows[i - 1] + 1:
            yield rows[start], rows[i - 1] + 1, start, i
            start = i


class RowFile:
    """Writes rows of an allocated feature file with plain `pwrite`s (no HDF5 call).

    The offsets of every `features` chunk and of `status` and the stamps are read once; the
    file then stays open only as a descriptor, locked exclusively (another extract of the same
    file is refused). A full disk is an OSError from `pwrite` and nothing else.
    """

    def __init__(self, path: Path) -> None:
        with contract.open_h5(path) as f:
            features = f[contract.FEATURES]
            self.dtype = features.dtype
            self.shape = features.shape[1:]  # (R, C)
            self.row_offsets = _chunk_offsets(features, path)  # (N,) int64
            self.offsets = {
                name: _contiguous_offset(f, name, path)
                for name in (contract.STATUS, *contract.STAMPS)
                if name in f
            }
        self.row_bytes = int(np.prod(self.shape)) * self.dtype.itemsize
        self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise UserError(f"{path} is being written by another process") from None

    def close(self) -> None:
        """Release the lock and the descriptor."""
        os.close(self.fd)

    def write_features(self, rows: list[int], features: np.ndarray) -> None:
        """features (K, R, C) -> rows `rows` (ascending), one pwrite per run of rows."""
        data = np.ascontiguousarray(features, dtype=self.dtype)
        for row_start, row_stop, i, j in contiguous_runs(rows):
            offsets = self.row_offsets[row_start:row_stop]
            if (np.diff(offsets) == self.row_bytes).all():
                _pwrite_all(self.fd, data[i:j].tobytes(), int(offsets[0]))
            else:
                for k, offset in enumerate(offsets):
                    _pwrite_all(self.fd, data[i + k].tobytes(), int(offset))

    def write_column(self, name: str, values: dict[int, int], dtype: str) -> None:
        """values[row] into the contiguous (N,) dataset `name` (skipped if the file lacks it)."""
        if name not in self.offsets or not values:
            return
        rows = sorted(values)
        data = np.array([values[row] for row in rows], dtype=dtype)
        size = data.itemsize
        for row_start, _, i, j in contiguous_runs(rows):
            _pwrite_all(self.fd, data[i:j].tobytes(), self.offsets[name] + row_start * size)


def _chunk_offsets(features: h5py.Dataset, path: Path) -> np.ndarray:
    """File offset of every row's chunk, (N,) int64; UserError if not laid out as we write."""
    n = features.shape[0]
    offsets = np.full(n, -1, dtype=np.int64)
    if (
        features.chunks == (1, *features.shape[1:])
        and not features.is_virtual
        and features.compression is None
    ):

        def keep(info) -> None:
            offsets[info.chunk_offset[0]] = info.byte_offset

        features.id.chunk_iter(keep)
    if (offsets < 0).any():
        raise UserError(
            f"{path}: features are not stored one uncompressed, allocated chunk per "
            "image, as captioner writes them; use --overwrite or another --out"
        )
    return offsets


def _contiguous_offset(f: h5py.File, name: str, path: Path) -> int:
    offset = f[name].id.get_offset()
    if offset is None or f[name].chunks is not None:
        raise UserError(
            f"{path}: dataset '{name}' is not stored as captioner writes it; use "
            "--overwrite or another --out"
        )
    return offset


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        done = os.pwrite(fd, view, offset)
        view, offset = view[done:], offset + done


class FeatureWriter(threading.Thread):
    """Background writer: a batch's features, then its stamps, then its status marks.

    `put` blocks when WRITE_QUEUE_BATCHES batches are waiting (bounded memory). An error in
    the thread is kept in `error` (the caller checks it); later batches are then dropped.
    """

    def __init__(self, rows: RowFile, depth: int = WRITE_QUEUE_BATCHES) -> None:
        super().__init__(name="feature-writer", daemon=True)
        self.rows = rows
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.failures: dict[int, str] = {}
        self.written = 0

    def put(
        self,
        rows: list[int],
        features: np.ndarray,
        failures: list[tuple[int, str]],
        stamps: dict[int, tuple[int, int]],
    ) -> None:
        """Queue one batch: rows (ascending) with features (K, R, C), failed rows, and
        every row's (size, mtime_ns) stamp."""
        self.queue.put((rows, features, failures, stamps))

    def stop(self) -> None:
        """Write everything queued and stop the thread (an error stays in `self.error`)."""
        if self.is_alive():
            self.queue.put(None)
            self.join()

    def run(self) -> None:
        while (item := self.queue.get()) is not None:
            if self.error is None:  # after an error, keep draining so `put` never blocks
                try:
                    self._write(*item)
                except BaseException as exc:  # handed to the main thread
                    self.error = exc

    def _write(
        self,
        rows: list[int],
        features: np.ndarray,
        failures: list[tuple[int, str]],
        stamps: dict[int, tuple[int, int]],
    ) -> None:
        self.rows.write_features(rows, features)
        self.rows.write_column(
            contract.IMAGE_SIZE_BYTES, {row: size for row, (size, _) in stamps.items()}, "<i8"
        )
        self.rows.write_column(
            contract.IMAGE_MTIME_NS, {row: mtime for row, (_, mtime) in stamps.items()}, "<i8"
        )
        marks = {row: contract.WRITTEN for row in rows}
        marks.update({row: contract.FAILED_STATUS for row, _ in failures})
        self.rows.write_column(contract.STATUS, marks, "i1")  # last: status 1 = on disk
        self.failures.update(failures)
        self.written += len(rows)


@contextlib.contextmanager
def torch_threads(device: torch.device) -> Iterator[None]:
    """Intra-op threads = the CPU cores this process may use, restored afterwards."""
    previous = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(len(os.sched_getaffinity(0)))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def run_extraction(job: ExtractJob) -> ExtractResult:
    """Extract (or finish) `job.out`. KeyboardInterrupt: say how far, re-raise."""
    attrs = feature_attrs(job)
    state = check_output(job, attrs)
    stale: list[int] = []
    if state != "new":
        stale = stale_rows(job)
    if state == "complete" and not stale:
        with contract.open_h5(job.out) as f:
            failed = list(contract.read_failed(f).items())
        return ExtractResult("complete", total=len(job.names), failed=failed)
    if stale:
        output.say(
            f"{len(stale)} images changed or disappeared since they were read: re-extracting them",
            err=True,
        )
        mark_pending(job.out, stale)
        state = "resume"
    check_free_space(job, state)
    if state == "new":
        _ensure_folder(job.out.parent)  # fail early, before a possible weights download
    if job.weights.warning:
        output.warn(job.weights.warning)
    with torch_threads(job.device):
        model = build_backbone(job.weights, job.device, job.backbone, job.grid, job.class_token)
        encoder = FeatureEncoder(model, job.device, job.precision, job.dtype, job.pre, job.shape)
        if state == "new":
            create_output(job, attrs)
        with contract.open_h5(job.out) as f:
            status = f[contract.STATUS][:]  # (N,) int8
        todo = np.flatnonzero(status != contract.WRITTEN).tolist()
        result = ExtractResult(
            "done", total=len(job.names), reused=len(job.names) - len(todo), stale=len(stale)
        )
        if todo:
            _extract_rows(job, encoder, todo, result)
        _finish(job, result)
    return result


def _loader(job: ExtractJob, todo: list[int]) -> DataLoader:
    """Decode workers -> batches of uint8 images (or JPEG bytes to decode on the device);
    pinned memory for CUDA copies."""
    if job.decodes_on_device:
        dataset = RawImageDataset(job.images_root, job.names, todo, job.pre)
        collate = functools.partial(collate_raw, root=job.images_root, names=job.names)
    else:
        dataset = ImageDataset(job.images_root, job.names, todo, job.pre)
        collate = collate_images
    return DataLoader(
        dataset,
        batch_size=job.batch_size,
        num_workers=job.workers,
        collate_fn=collate,
        pin_memory=job.device.type == "cuda",
    )


def _extract_rows(
    job: ExtractJob,
    encoder: FeatureEncoder,
    todo: list[int],
    result: ExtractResult,
) -> None:
    """Run the decode -> forward -> write loop over `todo` rows, filling `result`."""
    start = time.perf_counter()
    stats = result.decode = DecodeStats()
    batches = iter(_loader(job, todo))  # forks the decode workers before the file is open
    rows_file = RowFile(job.out)  # (an error here drops `batches`, stopping the workers)
    bar = tqdm(
        total=len(todo), unit="img", desc="extract", disable=not job.progress, dynamic_ncols=True
    )
    writer = FeatureWriter(rows_file)
    writer.start()
    try:
        try:
            for batch in batches:
                if writer.error is not None:
                    break
                if job.decodes_on_device:
                    batch = decode_on_device(batch, job.device, stats, job.pre)  # (K, 3, S, S)
                features = encoder.encode(batch.images)  # (K, R, C) storage dtype
                rows, features, failures = drop_non_finite(batch.rows, features, batch.failures)
                writer.put(rows, features, failures, batch.stamps)
                bar.update(len(batch.rows) + len(batch.failures))
        finally:
            bar.close()
            del batches  # stops the decode workers
            writer.stop()  # what was computed is written
            rows_file.close()
    except KeyboardInterrupt:
        output.say(
            f"interrupted: {_done(result, writer)}/{result.total} rows done and saved in {job.out}",
            err=True,
        )
        raise
    if isinstance(writer.error, OSError):
        what = (
            "the disk is full"
            if writer.error.errno in DISK_FULL
            else writer.error.strerror or str(writer.error)
        )
        raise UserError(
            f"writing {job.out} failed: {what}; {_done(result, writer)}/"
            f"{result.total} rows are saved in it: free some space and rerun the "
            "same command to resume"
        ) from None
    if writer.error is not None:
        raise writer.error
    result.written = writer.written
    result.failed = [(job.names[row], reason) for row, reason in sorted(writer.failures.items())]
    result.seconds = time.perf_counter() - start


def _done(result: ExtractResult, writer: FeatureWriter) -> int:
    return result.reused + writer.written + len(writer.failures)


def drop_non_finite(
    rows: list[int],
    features: np.ndarray,
    failures: list[tuple[int, str]],
) -> tuple[list[int], np.ndarray, list[tuple[int, str]]]:
    """Move rows whose grid (in the storage dtype) holds NaN/inf from `rows` to `failures`."""
    finite = np.isfinite(features).all(axis=(1, 2))  # (K,)
    if finite.all():
        return rows, features, failures
    bad = [(row, NON_FINITE) for row, ok in zip(rows, finite, strict=True) if not ok]
    kept = [row for row, ok in zip(rows, finite, strict=True) if ok]
    return kept, features[finite], sorted(failures + bad)


def _finish(job: ExtractJob, result: ExtractResult) -> None:
    """Write the `failed` dataset (image, reason) and mark the file complete."""
    try:
        with contract.open_h5(job.out, "r+") as f:
            status = f[contract.STATUS][:]  # (N,) int8
            if (status == contract.PENDING).any():
                raise RuntimeError(f"{int((status == contract.PENDING).sum())} rows still pending")
            reasons = contract.read_failed(f)  # failures of rows kept from an earlier run
            reasons.update(result.failed)  # every row this run (re)tried
            result.failed = [
                (job.names[row], reasons[job.names[row]])
                for row in np.flatnonzero(status == contract.FAILED_STATUS)
            ]
            contract.write_failed_and_complete(f, result.failed)
    except OSError as exc:
        raise UserError(
            f"finishing {job.out} failed ({exc}); every row is saved: free some "
            "space and rerun the same command"
        ) from None
