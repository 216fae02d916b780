"""Reading grids from the HDF5 feature cache: lazily per process, one image per call, or in RAM.

The file is never opened before a DataLoader worker forks; scattered fancy indexing is ~80x
slower than reading one image per call, so reads go row by row, front to back.
"""

from __future__ import annotations

import os

import numpy as np

from pipeline import contract


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
            dataset.read_direct(out, np.s_[row:row + 1], np.s_[i:i + 1])
        return out

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def cache_fits_in_memory(path: str, budget_gb: float) -> bool:
    """Whether the whole `features` dataset fits in `budget_gb` of RAM."""
    with contract.open_h5(path) as f:
        ds = f[contract.FEATURES]
        return ds.size * ds.dtype.itemsize <= budget_gb * 1024**3
