"""What the machine has room for: free disk space (and `ulimit -f`) and available memory.

Checked before work starts, so a job that cannot fit is refused in one line instead of
failing half-way (extract's feature file, demo-data's images, a model's parameters).
"""

from __future__ import annotations

import errno
import os
import resource
import shutil
from pathlib import Path

from pipeline.errors import UserError

DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # errnos that mean "no room left"
MEMINFO = Path("/proc/meminfo")


def byte_count(count: int) -> str:
    """`count` bytes as users read them: "1,048,576 bytes (0.00 GB)"."""
    return f"{count:,} bytes ({count / 1e9:.2f} GB)"


def require_space(
    out: Path, needed: int, final: int, freed: int = 0, hint: str = "choose another --out"
) -> None:
    """UserError unless `needed` more bytes fit where `out` goes (plus `freed` bytes that
    replacing it frees) and a file of `final` bytes is within `ulimit -f`."""
    folder = existing_folder(out.parent)
    free = shutil.disk_usage(folder).free + freed
    if needed > free:
        raise UserError(
            f"not enough free space for {out}: it needs {byte_count(needed)} more "
            f"and {folder} has {byte_count(free)} free; free some space or {hint}"
        )
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY and final > limit:
        raise UserError(
            f"{out} would be {byte_count(final)} but the file size limit (ulimit -f) is "
            f"{byte_count(limit)}"
        )


def existing_folder(folder: Path) -> Path:
    """`folder`, or its nearest ancestor that exists (where a new file will take space)."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def available_memory() -> int:
    """Bytes of memory the kernel can give a new allocation without swapping (MemAvailable
    of /proc/meminfo; free physical pages where that file is missing)."""
    try:
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # the file counts in KiB
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
