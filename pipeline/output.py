"""The one path for what captioner tells its user: lines on stdout, warnings on stderr.

Every command and layer prints with `say` and `warn`, so two rules hold everywhere:
- under torchrun only rank 0 prints (every rank runs the same code and would print each
  line once per rank); a line about this rank alone (e.g. its own part file) passes
  `every_rank=True`;
- inside `quiet()` the `say` lines are dropped (a step that would repeat what an earlier
  step said, e.g. `evaluate` loading the data its training described); warnings still show.

The rank is read once, at the first line, from what torchrun set (pipeline/launch.py).
Errors are not printed here: a `UserError` ends the command with its one line on every rank
(pipeline/errors.py). Streams are looked up at each line, so a caller's redirection (a sweep
run's log.txt, a test's capture) takes everything.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import sys
from collections.abc import Iterator
from typing import TextIO

from pipeline.launch import launch_rank

BOLD, RESET = "\033[1m", "\033[0m"  # `say(bold=True)` on a terminal

_QUIET = contextvars.ContextVar("captioner_output_quiet", default=False)


def say(
    message: str = "", *, err: bool = False, every_rank: bool = False, bold: bool = False
) -> None:
    """Print one line (or several joined by newlines) on stdout, or stderr with `err`:
    on rank 0 only unless `every_rank`; nothing inside `quiet()`."""
    if _QUIET.get() or not (every_rank or speaks()):
        return
    _write(sys.stderr if err else sys.stdout, message, bold)


def warn(message: str, *, every_rank: bool = False) -> None:
    """Print `warning: <message>` on stderr: on rank 0 only unless `every_rank`; inside
    `quiet()` too."""
    if every_rank or speaks():
        _write(sys.stderr, f"warning: {message}")


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Drop the `say` lines printed inside the block (warnings still show)."""
    token = _QUIET.set(True)
    try:
        yield
    finally:
        _QUIET.reset(token)


def speaks() -> bool:
    """Whether this process prints the job's lines: rank 0 under torchrun, else always."""
    return _rank() == 0


@functools.cache
def _rank() -> int:
    """This process's rank, read once."""
    return launch_rank()


def _write(stream: TextIO, message: str, bold: bool = False) -> None:
    """`message` and its newline in one write, flushed (lines of several ranks never mix)."""
    if bold and stream.isatty():
        message = f"{BOLD}{message}{RESET}"
    stream.write(message + "\n")
    stream.flush()
