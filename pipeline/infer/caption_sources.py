"""Where `caption` finds its images, read lazily: arguments, a folder walk, a list file (or
standard input), or the rows of a feature file.

A source yields `Input`s in a fixed order and is iterated, never collected into a list:
- a folder is walked one folder at a time, each folder's names sorted (hidden files and
  folders skipped, symlinked folders not followed, like `extract`); only one folder's
  matching names are held at once;
- a list file is read line by line (one path per line, blank lines skipped); `-` is standard
  input, which can be read only once (so no pass counts it first);
- a feature file is read in blocks of rows; a row that failed at extraction is an `Input`
  carrying its reason.
"""

from __future__ import annotations

import fnmatch
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from pipeline import contract
from pipeline.errors import UserError
from pipeline.extract.images import IMAGE_SUFFIXES

STDIN = "-"
FEATURE_BLOCK = 4096  # feature-file rows read per h5py call
UNKNOWN_FAILURE = "failed at extraction (no reason recorded)"


class Input(NamedTuple):
    """One image to caption."""

    image: str  # the output's "image": the path as given, or the feature file's image id
    row: int = -1  # its feature row (feature files only)
    error: str = ""  # why a feature file's row has no grid (its `failed` reason)
    index: int = -1  # position in the whole input sequence (set by the planner)
    stem: str = ""  # file stem of its attention maps (set by the planner when they are drawn)


@dataclass(frozen=True)
class Source:
    """Exactly one of: image paths, a folder, a list file (or `-`), a feature file."""

    paths: tuple[str, ...] = ()
    folder: str | None = None
    recursive: bool = False
    globs: tuple[str, ...] = ()  # file-name patterns; default: IMAGE_SUFFIXES
    list_file: str | None = None
    features: str | None = None

    @property
    def kind(self) -> str:
        """ "features" (grids read from a feature file) or "images" (files run through the CNN)."""
        return "features" if self.features else "images"

    @property
    def rereadable(self) -> bool:
        """False for standard input, which can be read only once."""
        return self.list_file != STDIN

    def inputs(self, warn: Callable[[str], None] = lambda _: None) -> Iterator[Input]:
        """Every input in order; `warn` (e.g. `output.warn`) hears about sub-folders that
        cannot be read."""
        if self.features:
            return feature_inputs(self.features)
        if self.folder is not None:
            return (Input(p) for p in walk(self.folder, self.recursive, self.globs, warn))
        if self.list_file is not None:
            return (Input(p) for p in list_lines(self.list_file))
        return (Input(p) for p in self.paths)


def make_source(
    paths: tuple[str, ...] = (),
    folder: str | None = None,
    recursive: bool = False,
    globs: tuple[str, ...] = (),
    list_file: str | None = None,
    features: str | None = None,
) -> Source:
    """The one source the options name; UserError for none, several, or a missing one."""
    given = [bool(paths), folder is not None, list_file is not None, features is not None]
    if sum(given) != 1:
        raise UserError(
            "name the images one way: as arguments, --images DIR, --list FILE (- for "
            "standard input) or --features F.h5"
        )
    if (recursive or globs) and folder is None:
        raise UserError("--recursive and --glob go with --images DIR")
    if folder is not None and not Path(folder).is_dir():
        raise UserError(f"images folder not found: {folder}")
    if list_file not in (None, STDIN) and not Path(list_file).is_file():
        raise UserError(f"list file not found: {list_file}")
    if features is not None and not Path(features).is_file():
        raise UserError(f"feature file not found: {features}")
    return Source(tuple(paths), folder, recursive, tuple(globs), list_file, features)


def matches(name: str, globs: tuple[str, ...]) -> bool:
    """Whether a file name is an image to caption: one of `globs` (case-insensitive), or by
    default one of the suffixes `extract` reads."""
    lower = name.lower()
    if globs:
        return any(fnmatch.fnmatchcase(lower, pattern.lower()) for pattern in globs)
    return lower.endswith(IMAGE_SUFFIXES)


def walk(
    folder: str, recursive: bool, globs: tuple[str, ...], warn: Callable[[str], None]
) -> Iterator[str]:
    """Paths (`folder` joined with each name) of the matching files, folder by folder."""
    files, folders = _listing(folder, globs, warn)
    for name in files:
        yield os.path.join(folder, name)
    del files
    for name in folders if recursive else ():
        yield from walk(os.path.join(folder, name), recursive, globs, warn)


def _listing(
    folder: str, globs: tuple[str, ...], warn: Callable[[str], None]
) -> tuple[list[str], list[str]]:
    """Sorted names of a folder's matching files and of its sub-folders (hidden ones skipped)."""
    files, folders = [], []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    folders.append(entry.name)
                elif entry.is_file() and matches(entry.name, globs):
                    files.append(entry.name)
    except OSError as exc:
        warn(f"cannot read the folder {folder} ({exc.strerror or exc}): skipped")
    return sorted(files), sorted(folders)


def list_lines(list_file: str) -> Iterator[str]:
    """The paths of a list file (or standard input), one per line, blank lines skipped."""
    if list_file == STDIN:
        yield from _lines(sys.stdin.buffer, "standard input")
        return
    try:
        with open(list_file, "rb") as handle:
            yield from _lines(handle, list_file)
    except OSError as exc:
        raise UserError(f"cannot read the list file {list_file}: {exc.strerror or exc}") from None


def _lines(handle, name: str) -> Iterator[str]:
    """The non-blank lines of a binary handle, without their line ends, as UTF-8 text."""
    for number, raw in enumerate(handle, 1):
        try:
            path = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            raise UserError(f"{name}, line {number}: not UTF-8 text") from None
        if path.strip():
            yield path


def feature_inputs(path: str) -> Iterator[Input]:
    """One Input per row of a feature file, with the `failed` reason of failed rows."""
    with contract.open_h5(path) as f:
        failed = contract.read_failed(f)
        count = f[contract.IMAGE_IDS].shape[0]
        for start in range(0, count, FEATURE_BLOCK):
            stop = min(start + FEATURE_BLOCK, count)
            ids = f[contract.IMAGE_IDS][start:stop]  # (b,) strings
            status = f[contract.STATUS][start:stop]  # (b,) int8
            for offset, (raw, state) in enumerate(zip(ids, status, strict=True)):
                image = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
                error = ""
                if state != contract.WRITTEN:
                    error = failed.get(image, UNKNOWN_FAILURE)
                yield Input(image, row=start + offset, error=error)
