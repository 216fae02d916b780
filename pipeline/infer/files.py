"""Writing inference outputs without clobbering anything a user made.

Every file that `evaluate` or `caption` writes goes through `OutputFolder`:
- a temp file is created exclusively (O_CREAT | O_EXCL | O_NOFOLLOW, random name) in the same
  folder, written, fsynced and renamed over the target, so nothing is ever written through a
  symlink planted at the target or at a temp path, and a reader never sees half a file;
- the folder keeps a manifest (MANIFEST) of the names captioner wrote there. A target that
  exists but is not in it belongs to someone else: it is refused, never replaced. Rerunning a
  command replaces its own earlier outputs. The manifest is merged under a lock on the
  folder, so several processes (torchrun ranks) may claim names in one folder;
- a file that grows (`caption --out`) is claimed first (`claim`), then written by its owner;
- an unwritable folder (read-only, full, not a folder) ends in one UserError line.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from pipeline.errors import UserError

MANIFEST = ".captioner-outputs.json"


class OutputFolder:
    """A folder that a command writes its own named files into."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(
                f"cannot create the output folder {self.path}: {exc.strerror or exc}"
            ) from None
        if not self.path.is_dir():
            raise UserError(f"cannot write into {self.path}: not a folder")
        if not os.access(self.path, os.W_OK | os.X_OK):  # read-only, immutable, or not ours
            raise UserError(f"cannot write into the output folder {self.path}: it is read-only")
        self.owned = self._read_manifest()

    def check(self, name: str) -> Path:
        """The target path for `name`; UserError if a file not written by captioner is there."""
        target = self.path / name
        if name != Path(name).name or name in ("", ".", "..", MANIFEST):
            raise ValueError(f"not a plain file name: {name!r}")
        if (target.exists() or target.is_symlink()) and name not in self.owned:
            raise UserError(
                f"{target} already exists and was not written by captioner: "
                "refusing to replace it (move it away or choose another folder)"
            )
        return target

    def claim(self, names: Iterable[str]) -> list[Path]:
        """The targets for `names`, recorded in the manifest as captioner's (UserError for a
        foreign file); other processes' claims made meanwhile are kept."""
        names = list(names)
        targets = [self.check(name) for name in names]
        new = [name for name in names if name not in self.owned]
        if new:
            with _locked(self.path):
                self.owned |= self._read_manifest()
                self.owned.update(new)
                self._write_manifest()
        return targets

    def remove(self, name: str) -> None:
        """Delete `name` if it is there (UserError for a file captioner did not write)."""
        target = self.check(name)
        try:
            target.unlink(missing_ok=True)
        except OSError as exc:
            raise UserError(f"cannot remove {target}: {exc.strerror or exc}") from None

    def write_bytes(self, name: str, data: bytes) -> Path:
        """Atomically write `data` as `name` (refusing a foreign file); returns its path."""
        with self.replacing(name) as handle:
            handle.write(data)
        return self.path / name

    @contextlib.contextmanager
    def replacing(self, name: str) -> Iterator[BinaryIO]:
        """A binary handle whose content atomically replaces `name` when the block ends
        (refusing a foreign file); for content too large to hold in memory."""
        (target,) = self.claim([name])
        with _atomic_file(target) as handle:
            yield handle

    def write_text(self, name: str, text: str) -> Path:
        """`write_bytes` for UTF-8 text."""
        return self.write_bytes(name, text.encode("utf-8"))

    def _read_manifest(self) -> set[str]:
        path = self.path / MANIFEST
        if not path.is_file() or path.is_symlink():
            return set()
        try:
            names = json.loads(path.read_text("utf-8"))
        except (OSError, ValueError):
            return set()
        return {n for n in names if isinstance(n, str)} if isinstance(names, list) else set()

    def _write_manifest(self) -> None:
        payload = json.dumps(sorted(self.owned), indent=0).encode("utf-8")
        _replace_atomically(self.path / MANIFEST, payload)


def _replace_atomically(target: Path, data: bytes) -> None:
    """Exclusive temp file beside `target` + fsync + rename over it; OSError -> UserError."""
    with _atomic_file(target) as handle:
        handle.write(data)


@contextlib.contextmanager
def _atomic_file(target: Path) -> Iterator[BinaryIO]:
    """An exclusive temp file beside `target`, fsynced and renamed over it when the block ends
    (removed if the block fails); OSError -> UserError."""
    tmp = target.with_name(f".{target.name}.tmp-{secrets.token_hex(6)}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        try:
            with os.fdopen(fd, "wb") as handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as exc:
        raise UserError(f"cannot write {target}: {exc.strerror or exc}") from None


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """An exclusive lock on `folder` (flock on its descriptor), for the manifest's updates."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
