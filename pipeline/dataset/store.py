"""Reading grids from the HDF5 feature cache: streamed per batch, or held in RAM or GPU memory.

`features.cache` (`choose_cache`): "stream" reads each batch's rows from the file; "ram" loads
every grid once into host memory; "device" loads them once into the training device's memory
(CUDA) and gathers a batch with one index (on a CPU device it is "ram"); "auto" is "ram" when
the grids fit in `RAM_FRACTION` of the available memory, else "stream".

The file is never opened before a DataLoader worker forks; scattered fancy indexing is ~80x
slower than reading one image per call, so reads go row by row, front to back. A held cache
is loaded in the main process with no file left open; it is served without workers.

Grids must be finite (extract never writes nan/inf): every streamed batch is checked as it
is read, and a held cache once when it is loaded.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from pipeline import contract
from pipeline.errors import UserError

_NON_FINITE = "non-finite feature values"
_EXPONENT_BITS = {
    np.dtype(np.float16): (np.uint16, 0x7C00),
    np.dtype(np.float32): (np.uint32, 0x7F800000),
}
_CHECK_ROWS = 256  # rows per read and finiteness pass while loading a held cache
RAM_FRACTION = 0.5  # "auto" holds the grids in RAM when they take at most this share of it
_MEMINFO = "/proc/meminfo"
_GIB = 1024**3


class NonFiniteFeatures(UserError):
    """A feature file holds nan or inf. Raised by `FeatureStore`, in any process."""

    def __init__(self, message: str):
        # A DataLoader worker's error is re-raised in the main process with the worker's
        # traceback prepended to the message: keep only our own line.
        super().__init__(message[message.rfind(_NON_FINITE) :].strip())


def check_finite(grids: np.ndarray, rows: np.ndarray, path: str) -> None:
    """Raise NonFiniteFeatures naming the first row of `grids` (n, R, C) with nan/inf.

    nan and inf are the values whose exponent bits are all set: testing those bits on an
    integer view is several times faster than np.isfinite on float16.
    """
    kind, mask = _EXPONENT_BITS.get(grids.dtype, (None, None))
    if kind is None:
        finite = np.isfinite(grids).reshape(len(grids), -1).all(axis=1)  # (n,)
    else:
        exponent = (grids.view(kind) & kind(mask)).reshape(len(grids), -1).max(axis=1)  # (n,)
        finite = exponent != mask
    if not finite.all():
        row = int(rows[int(np.argmin(finite))])
        raise NonFiniteFeatures(
            f"{_NON_FINITE} (nan or inf) in {path}, row {row}: the file is "
            "damaged; extract it again"
        )


class FeatureStore:
    """Reads (n, R, C) grids by row: streamed from the file (opened lazily in each
    process), or from a copy loaded once into RAM or onto a CUDA device (`cache`).

    `cache` is "stream", "ram" or "device" (`choose_cache` resolves "auto"); "device" needs
    `device` to be CUDA, and means "ram" on any other device (the grids are then already in
    the memory the decoder computes from).
    """

    def __init__(self, path: str, cache: str = "stream", device: torch.device | None = None):
        self.path = str(path)
        on_cuda = device is not None and device.type == "cuda"
        self.cache = "ram" if cache == "device" and not on_cuda else cache
        self._file = None
        self._pid = None
        self._array: np.ndarray | None = None  # (N, R, C) "ram"
        self._tensor: torch.Tensor | None = None  # (N, R, C) on `device`: "device"
        with contract.open_h5(self.path) as f:
            dataset = f[contract.FEATURES]
            self.dtype = dataset.dtype
            self.row_shape = dataset.shape[1:]  # (R, C)
            if self.cache == "ram":
                self._array = _load_ram(dataset, self.path)
            elif self.cache == "device":
                self._tensor = _load_device(dataset, self.path, device)

    @property
    def in_memory(self) -> bool:
        """Whether the grids are held (RAM or device): batches then come without workers, so
        the cache is never copied into worker processes."""
        return self.cache != "stream"

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_file"] = None  # an h5py handle must never cross a fork or a pickle
        state["_pid"] = None
        return state

    def _dataset(self):
        if self._file is None or self._pid != os.getpid():
            self._file = contract.open_h5(self.path)
            self._pid = os.getpid()
        return self._file[contract.FEATURES]

    def read(self, rows: np.ndarray) -> np.ndarray:
        """Grids of `rows` in the given order: (len(rows), R, C) in the file's dtype.

        Streamed reads go one image per call, front to back through the file.
        """
        if self._tensor is not None:
            return self.gather(rows).cpu().numpy()
        if self._array is not None:
            return self._array[rows]
        dataset = self._dataset()
        out = np.empty((len(rows), *self.row_shape), dtype=self.dtype)
        for i in np.argsort(rows, kind="stable"):
            row = int(rows[i])
            dataset.read_direct(out, np.s_[row : row + 1], np.s_[i : i + 1])
        check_finite(out, rows, self.path)
        return out

    def gather(self, rows: np.ndarray) -> torch.Tensor:
        """Grids of `rows` as a tensor (len(rows), R, C) in the file's dtype: on the
        cache's device for "device" (one index_select, no host copy), else on the CPU."""
        if self._tensor is None:
            return torch.from_numpy(self.read(rows))
        index = torch.as_tensor(rows, dtype=torch.long).to(self._tensor.device)  # (n,)
        return self._tensor.index_select(0, index)


def _blocks(count: int) -> list[tuple[int, int]]:
    """(start, stop) of consecutive blocks of at most _CHECK_ROWS rows."""
    return [(a, min(a + _CHECK_ROWS, count)) for a in range(0, count, _CHECK_ROWS)]


def _load_ram(dataset, path: str) -> np.ndarray:
    """Every grid of `dataset` (N, R, C) in RAM, checked finite block by block."""
    try:
        array = np.empty(dataset.shape, dtype=dataset.dtype)
    except MemoryError:
        raise UserError(_too_big(dataset, "RAM", "stream")) from None
    for start, stop in _blocks(len(array)):
        dataset.read_direct(array, np.s_[start:stop], np.s_[start:stop])
        check_finite(array[start:stop], np.arange(start, stop), path)
    return array


def _load_device(dataset, path: str, device: torch.device) -> torch.Tensor:
    """Every grid of `dataset` as one (N, R, C) tensor on `device`, read and checked on
    the host a block at a time (host memory stays at one block)."""
    block = np.empty((min(_CHECK_ROWS, len(dataset)), *dataset.shape[1:]), dtype=dataset.dtype)
    try:
        out = torch.empty(dataset.shape, dtype=torch.from_numpy(block).dtype, device=device)
    except torch.cuda.OutOfMemoryError:
        raise UserError(_too_big(dataset, "GPU memory", "ram or stream")) from None
    for start, stop in _blocks(len(dataset)):
        rows = stop - start
        dataset.read_direct(block, np.s_[start:stop], np.s_[0:rows])
        check_finite(block[:rows], np.arange(start, stop), path)
        out[start:stop].copy_(torch.from_numpy(block[:rows]))  # (rows, R, C), synchronous
    return out


def _too_big(dataset, memory: str, instead: str) -> str:
    return (
        f"the feature grids ({_gb(dataset.size * dataset.dtype.itemsize)}) do not fit in "
        f"{memory}: set features.cache = {instead!r}"
    )


def _gb(size: float) -> str:
    return f"{size / _GIB:.1f} GB"


def grid_bytes(path: str) -> int:
    """Bytes of the whole `features` dataset of a feature file."""
    with contract.open_h5(path) as f:
        ds = f[contract.FEATURES]
        return ds.size * ds.dtype.itemsize


def available_memory(meminfo: str = _MEMINFO) -> int | None:
    """MemAvailable in bytes, read from /proc/meminfo; None where it cannot be read."""
    try:
        with open(meminfo, encoding="ascii") as handle:
            for line in handle:
                name, _, value = line.partition(":")
                if name == "MemAvailable":
                    return int(value.split()[0]) * 1024  # the file counts kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def auto_cache(size: int, available: int | None, budget_gb: float = 0.0) -> tuple[str, str]:
    """features.cache = "auto": ("ram" or "stream", why), for grids of `size` bytes.

    "ram" when they take at most RAM_FRACTION of `available` bytes (MemAvailable) and, if
    `budget_gb` > 0 (features.ram_budget_gb), at most that many GB.
    """
    if available is None:
        return "stream", "auto: the available memory is unknown (no /proc/meminfo)"
    share = f"{RAM_FRACTION:.0%} of the available memory ({_gb(available)})"
    if size > RAM_FRACTION * available:
        return "stream", f"auto: the grids ({_gb(size)}) exceed {share}"
    if budget_gb > 0 and size > budget_gb * _GIB:
        return "stream", f"auto: the grids ({_gb(size)}) exceed features.ram_budget_gb"
    return "ram", f"auto: the grids ({_gb(size)}) fit in {share}"


def choose_cache(path: str, cache: str, budget_gb: float = 0.0) -> tuple[str, str]:
    """features.cache resolved to "stream" | "ram" | "device", and why ("" when set)."""
    if cache != "auto":
        return cache, ""
    return auto_cache(grid_bytes(path), available_memory(), budget_gb)
