"""Writing a file whole or not at all: a temporary file in the same folder, flushed to disk,
renamed over the target (a crash leaves the old file or the new one, never half of one)."""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.errors import UserError


def write_text_atomic(path: str | Path, text: str, temporary: Path | None = None) -> None:
    """Write `text` (UTF-8) to `path` atomically, through `temporary` (default: a hidden name
    beside it); an OS error (disk full, read-only folder) is one UserError line."""
    path = Path(path)
    temporary = temporary or path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        temporary.unlink(missing_ok=True)
        with open(temporary, "x", encoding="utf-8") as handle:  # never through a symlink
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        temporary.unlink(missing_ok=True)
