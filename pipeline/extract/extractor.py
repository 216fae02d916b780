"""Stage one orchestration: image list -> DataLoader (decode) -> backbone -> HDF5 writer thread.

- DataLoader workers decode and resize (uint8 crosses process boundaries); the main process
  normalises whole batches on the device and runs the frozen backbone under inference_mode,
  channels_last and autocast (bf16 on CPU, fp16 on CUDA by default).
- A writer thread with a bounded queue writes each batch's contiguous row runs in one h5py call,
  flushes, then marks the rows in `status` (1 written, 2 failed) and flushes again. Memory stays
  flat: at most a few batches exist at any time, whatever the number of images.
- An interrupted file (Ctrl-C, kill -9) is finished by the same command: only rows whose status
  is not 1 are (re)done. A complete file is left alone unless `overwrite`; a file made with other
  settings or for another image list is refused, never modified.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
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

from pipeline import contract
from pipeline.data.captions import read_captions
from pipeline.errors import UserError
from pipeline.extract.backbone import (
    BACKBONE,
    GridEncoder,
    WeightsSource,
    build_backbone,
    build_backbone_from_attrs,
)
from pipeline.extract.images import (
    IMAGE_SIZE,
    MEAN,
    POLICY,
    STD,
    ImageDataset,
    ImageError,
    collate_images,
    list_image_files,
    normalize_batch,
    preprocess_image,
)

WRITE_QUEUE_BATCHES = 3
_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` -> fp16 on CUDA; bf16 on a CPU with native bf16 (AVX512-BF16 or AMX), else fp32.

    Measured with benchmarks/extract.py on a 2-core AVX512-BF16 CPU, batch 32, channels_last:
    fp32 ~16 img/s, bf16 ~35 img/s (features within ~1.5% of fp32's), so bf16 is the default.
    """
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "fp16"
    native_bf16 = (getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
                   or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())
    return "bf16" if native_bf16 else "fp32"


class FeatureEncoder:
    """Backbone + device + precision + storage dtype: uint8 image batches -> stored features.

    Caption-time extraction of new images uses `FeatureEncoder.from_attrs(file_attrs, device)`
    and `encode_paths` to get features made exactly like the file's.
    """

    def __init__(self, model: GridEncoder, device: torch.device, precision: str,
                 dtype: str) -> None:
        self.model = model
        self.device = device
        self.precision = precision
        self.dtype = dtype

    @classmethod
    def from_attrs(cls, attrs: dict, device: torch.device | str,
                   weights_path: str | None = None) -> FeatureEncoder:
        """The encoder a feature file was made with (same weights, policy, precision, dtype)."""
        check_policy(attrs)
        device = torch.device(device)
        model = build_backbone_from_attrs(attrs, device, weights_path)
        return cls(model, device, str(attrs["precision"]), str(attrs["dtype"]))

    def encode(self, images: torch.Tensor) -> np.ndarray:
        """uint8 (B, 3, 224, 224) -> (B, 49, 2048) numpy array in the storage dtype."""
        if images.shape[0] == 0:
            return np.zeros((0, contract.REGIONS, contract.CHANNELS), dtype=self.dtype)
        with torch.inference_mode(), torch.autocast(
            self.device.type, dtype=_AUTOCAST.get(self.precision, torch.float32),
            enabled=self.precision in _AUTOCAST,
        ):
            x = normalize_batch(images, self.device)  # (B, 3, 224, 224) float32, channels_last
            grid = self.model(x)  # (B, 49, 2048) in the autocast dtype
            return grid.to(getattr(torch, self.dtype)).cpu().numpy()

    def encode_paths(self, paths: Sequence[str | Path]) -> tuple[np.ndarray, dict[int, str]]:
        """Image files -> (features (K, 49, 2048) of the K usable ones in order, {index: reason})."""
        images, errors = [], {}
        for index, path in enumerate(paths):
            try:
                images.append(preprocess_image(path))  # (3, 224, 224) uint8
            except ImageError as exc:
                errors[index] = str(exc)
        if not images:
            return self.encode(torch.empty((0, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8)), errors
        return self.encode(torch.stack(images)), errors  # (K, 49, 2048)


def check_policy(attrs: dict) -> None:
    """UserError unless a file's preprocessing attrs are the ones this code implements."""
    ours = {"image_size": IMAGE_SIZE, "resize": POLICY, "mean": list(MEAN), "std": list(STD),
            "backbone": BACKBONE, "grid": contract.GRID}
    diff = contract.fingerprint_mismatch(ours, attrs, tuple(ours))
    if diff:
        raise UserError("features were made with another preprocessing/backbone than this "
                        f"code's ({'; '.join(diff)})")


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
    batch_size: int = 32
    workers: int = 1
    overwrite: bool = False
    progress: bool = True


@dataclass
class ExtractResult:
    """What a run did. `state`: "complete" (already done, untouched) or "done"."""

    state: str
    total: int = 0
    reused: int = 0  # rows already written by an earlier (interrupted) run
    written: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (image, reason), all rows
    seconds: float = 0.0  # decode + forward + write loop, excluding model build

    @property
    def images_per_s(self) -> float:
        """Throughput of this run's loop (written + failed images per second)."""
        done = self.total - self.reused
        return done / self.seconds if self.seconds > 0 else 0.0


def list_images(images_root: str | Path, captions: str | Path | None = None,
                fmt: str = "auto", log: Callable[[str], None] | None = None,
                ) -> tuple[list[str], list[tuple[str, str]]]:
    """Sorted unique image names to extract, and caption-file names rejected as unsafe.

    With `captions`, the images it names (and `log` gets the file's statistics: images,
    captions, captions per image); without, every image file under `images_root`.
    """
    root = Path(images_root)
    if not root.is_dir():
        raise UserError(f"images folder not found: {root}")
    if captions:
        table = read_captions(captions, fmt)
        names, rejected = sorted(set(table.images())), list(table.rejected)
        if log is not None:
            log(f"captions: {table.summary()}")
    else:
        names, rejected = list_image_files(root), []
    if not names:
        where = f"named in {captions}" if captions else f"found under {root}"
        raise UserError(f"no images {where}")
    return names, rejected


def feature_attrs(job: ExtractJob) -> dict:
    """The attrs a new feature file for `job` gets (contract.MATCH_KEYS plus provenance)."""
    attrs = {
        "backbone": BACKBONE, "weights": job.weights.tag, "image_size": IMAGE_SIZE,
        "resize": POLICY, "mean": list(MEAN), "std": list(STD), "grid": contract.GRID,
        "dtype": job.dtype, "precision": job.precision,
        "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__,
                     "h5py": h5py.__version__, "numpy": np.__version__,
                     "pillow": PIL.__version__},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "images_root": str(job.images_root.resolve()),
    }
    if job.weights.path:
        attrs["weights_path"] = job.weights.path
    return attrs


def check_output(job: ExtractJob, attrs: dict) -> str:
    """"new" (create it), "resume" (matching, incomplete) or "complete" for `job.out`.

    UserError for a path that is not a matching captioner feature file; nothing is modified.
    """
    out = job.out
    if not out.exists():
        return "new"
    if not out.is_file() or not h5py.is_hdf5(out):
        raise UserError(f"--out {out} exists and is not an HDF5 file; refusing to touch it "
                        "(choose another --out)")
    with contract.open_h5(out) as f:
        contract.check_layout(f, out)
        if job.overwrite:
            return "new"
        _check_same_job(f, out, attrs, job.names)
        return "complete" if bool(f.attrs.get("complete", False)) else "resume"


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
        raise UserError(f"{out} was made with other settings ({'; '.join(diff)}); rerun with "
                        "those settings to finish/reuse it, or pass --overwrite, or another --out")
    stored = contract.read_image_ids(f)
    if stored != names:
        first = next((i for i, (a, b) in enumerate(zip(stored, names, strict=False)) if a != b),
                     min(len(stored), len(names)))
        raise UserError(f"{out} was made for another image list ({len(stored)} images in the "
                        f"file, {len(names)} now; row {first}: {_at(stored, first)!r} in the "
                        f"file, {_at(names, first)!r} now); pass --overwrite or another --out")


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


class FeatureWriter(threading.Thread):
    """Background HDF5 writer: features of a batch, flush, then its status marks, flush.

    `put` blocks when WRITE_QUEUE_BATCHES batches are waiting (bounded memory). An error in
    the thread is kept in `error` (the caller checks it); later batches are then dropped.
    """

    def __init__(self, f: h5py.File, depth: int = WRITE_QUEUE_BATCHES) -> None:
        super().__init__(name="feature-writer", daemon=True)
        self.f = f
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.failures: dict[int, str] = {}
        self.written = 0

    def put(self, rows: list[int], features: np.ndarray, failures: list[tuple[int, str]]) -> None:
        """Queue one batch: rows (ascending) with features (K, 49, 2048), and failed rows."""
        self.queue.put((rows, features, failures))

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

    def _write(self, rows: list[int], features: np.ndarray,
               failures: list[tuple[int, str]]) -> None:
        dataset = self.f[contract.FEATURES]
        for row_start, row_stop, i, j in contiguous_runs(rows):
            dataset[row_start:row_stop] = features[i:j]  # (run, 49, 2048)
        self.f.flush()
        marks = {row: contract.WRITTEN for row in rows}
        marks.update({row: contract.FAILED_STATUS for row, _ in failures})
        if marks:
            low, high = min(marks), max(marks) + 1
            status = self.f[contract.STATUS][low:high]  # (high - low,) int8
            status[np.array(list(marks)) - low] = list(marks.values())
            self.f[contract.STATUS][low:high] = status
            self.f.flush()
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


def run_extraction(job: ExtractJob, log: Callable[[str], None] = print) -> ExtractResult:
    """Extract (or finish) `job.out`. KeyboardInterrupt: flush, close, log how far, re-raise."""
    attrs = feature_attrs(job)
    state = check_output(job, attrs)
    if state == "complete":
        return ExtractResult("complete", total=len(job.names))
    if state == "new":
        _ensure_folder(job.out.parent)  # fail early, before a possible weights download
    if job.weights.warning:
        log(f"warning: {job.weights.warning}")
    with torch_threads(job.device):
        encoder = FeatureEncoder(build_backbone(job.weights, job.device), job.device,
                                 job.precision, job.dtype)
        if state == "new":
            create_output(job, attrs)
        with contract.open_h5(job.out, "r+") as f:
            status = f[contract.STATUS][:]  # (N,) int8
        todo = np.flatnonzero(status != contract.WRITTEN).tolist()
        result = ExtractResult("done", total=len(job.names), reused=len(job.names) - len(todo))
        if todo:
            _extract_rows(job, encoder, todo, result, log)
        _finish(job, result)
    return result


def _loader(job: ExtractJob, todo: list[int]) -> DataLoader:
    """Decode workers -> ImageBatch of uint8 images; pinned memory for CUDA copies."""
    return DataLoader(ImageDataset(job.images_root, job.names, todo), batch_size=job.batch_size,
                      num_workers=job.workers, collate_fn=collate_images,
                      pin_memory=job.device.type == "cuda")


def _extract_rows(job: ExtractJob, encoder: FeatureEncoder, todo: list[int],
                  result: ExtractResult, log: Callable[[str], None]) -> None:
    """Run the decode -> forward -> write loop over `todo` rows, filling `result`."""
    start = time.perf_counter()
    batches = iter(_loader(job, todo))  # forks the decode workers before the file is open
    bar = tqdm(total=len(todo), unit="img", desc="extract", disable=not job.progress,
               dynamic_ncols=True)
    with contract.open_h5(job.out, "r+") as f:
        writer = FeatureWriter(f)
        writer.start()
        try:
            try:
                for batch in batches:
                    if writer.error is not None:
                        break
                    features = encoder.encode(batch.images)  # (K, 49, 2048) storage dtype
                    writer.put(batch.rows, features, batch.failures)
                    bar.update(len(batch.rows) + len(batch.failures))
            finally:
                bar.close()
                del batches  # stops the decode workers
                writer.stop()  # what was computed is written and flushed
        except KeyboardInterrupt:
            done = result.reused + writer.written + len(writer.failures)
            log(f"interrupted: {done}/{result.total} rows done and saved in {job.out}")
            raise
    if isinstance(writer.error, OSError):
        raise UserError(f"writing {job.out} failed ({writer.error}); fix that and rerun the "
                        "same command to resume") from None
    if writer.error is not None:
        raise writer.error
    result.written = writer.written
    result.failed = [(job.names[row], reason) for row, reason in sorted(writer.failures.items())]
    result.seconds = time.perf_counter() - start


def _finish(job: ExtractJob, result: ExtractResult) -> None:
    """Write the `failed` dataset (image, reason) and mark the file complete."""
    with contract.open_h5(job.out, "r+") as f:
        status = f[contract.STATUS][:]  # (N,) int8
        if (status == contract.PENDING).any():
            raise RuntimeError(f"{int((status == contract.PENDING).sum())} rows still pending")
        reasons = dict(result.failed)  # every failed row was (re)tried by this run
        result.failed = [(job.names[row], reasons[job.names[row]])
                         for row in np.flatnonzero(status == contract.FAILED_STATUS)]
        contract.write_failed_and_complete(f, result.failed)
