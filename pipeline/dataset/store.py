"""Reading grids from the HDF5 feature cache: lazily per process, one image per call, or in RAM.

The file is never opened before a DataLoader worker forks; scattered fancy indexing is ~80x
slower than reading one image per call, so reads go row by row, front to back.

Grids must be finite (extract never writes nan/inf): every streamed batch is checked as it
is read, and an in-memory cache once when it is loaded.
"""

from __future__ import annotations

import os

import numpy as np

from pipeline import contract
from pipeline.errors import UserError

_NON_FINITE = "non-finite feature values"
_EXPONENT_BITS = {
    np.dtype(np.float16): (np.uint16, 0x7C00),
    np.dtype(np.float32): (np.uint32, 0x7F800000),
}
_CHECK_ROWS = 256  # rows per np.isfinite pass over an in-memory cache (bounded temp memory)


class NonFiniteFeatures(UserError):
    """A feature file holds nan or inf. Raised by `FeatureStore`, in any process."""

    def __init__(self, message: str):
        # A DataLoader worker's error is re-raised in the main process with the worker's
        # traceback prepended to the message: keep only our own line.
        super().__init__(message[message.rfind(_NON_FINITE) :].strip())


def check_finite(grids: np.ndarray, rows: np.ndarray, path: str) -> None:
    """Raise NonFiniteFeatures naming the first row of `grids` (n, 49, 2048) with nan/inf.

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
    """Reads (n, 49, 2048) grids by row; opens the HDF5 file lazily in each process."""

    def __init__(self, path: str, in_memory: bool = False):
        self.path = str(path)
        self.in_memory = in_memory
        self._file = None
        self._pid = None
        self._array: np.ndarray | None = None
        with contract.open_h5(self.path) as f:
            self.dtype = f[contract.FEATURES].dtype
            if in_memory:
                self._array = f[contract.FEATURES][:]  # (N, 49, 2048)
        if self._array is not None:
            for start in range(0, len(self._array), _CHECK_ROWS):
                rows = np.arange(start, min(start + _CHECK_ROWS, len(self._array)))
                check_finite(self._array[start : start + _CHECK_ROWS], rows, self.path)

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
        """Grids of `rows` in the given order: (len(rows), 49, 2048) in the file's dtype.

        Streamed reads go one image per call, front to back through the file.
        """
        if self._array is not None:
            return self._array[rows]
        dataset = self._dataset()
        out = np.empty((len(rows), contract.REGIONS, contract.CHANNELS), dtype=self.dtype)
        for i in np.argsort(rows, kind="stable"):
            row = int(rows[i])
            dataset.read_direct(out, np.s_[row : row + 1], np.s_[i : i + 1])
        check_finite(out, rows, self.path)
        return out


def cache_fits_in_memory(path: str, budget_gb: float) -> bool:
    """Whether the whole `features` dataset fits in `budget_gb` of RAM."""
    with contract.open_h5(path) as f:
        ds = f[contract.FEATURES]
        return ds.size * ds.dtype.itemsize <= budget_gb * 1024**3
