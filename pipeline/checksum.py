"""File identity by content: how runs recognise a caption file and features a weights file."""

import hashlib
from pathlib import Path

from pipeline.errors import UserError


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks; UserError if it cannot be read."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError as error:
        raise UserError(f"cannot read {path}: {error.strerror}") from None
    return digest.hexdigest()
