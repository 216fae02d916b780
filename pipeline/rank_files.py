"""Files that torchrun ranks write beside an output, `OUT.<kind>-RRR-of-WWW` (extract's
shards, caption's parts): named and found in one place."""

from __future__ import annotations

import glob
import re
from pathlib import Path

SUFFIX = ".{kind}-{rank}-of-{ranks}"  # appended to OUT's file name
RANK_DIGITS = 3  # rank and ranks are zero-padded to at least this many digits


def rank_file(out: Path, kind: str, rank: int, ranks: int) -> Path:
    """Where rank `rank` of `ranks` writes its `kind` of `out`."""
    rank_text, ranks_text = str(rank).zfill(RANK_DIGITS), str(ranks).zfill(RANK_DIGITS)
    return out.with_name(out.name + SUFFIX.format(kind=kind, rank=rank_text, ranks=ranks_text))


def rank_files(out: Path, kind: str) -> dict[int, list[Path]]:
    """The `kind` files of `out` that exist, sorted, by the number of ranks they were made for."""
    number = rf"(\d{{{RANK_DIGITS},}})"  # a rank or a count of ranks, as rank_file writes it
    literal = re.escape(SUFFIX).replace(r"\{", "{").replace(r"\}", "}")  # escaped, but {}
    pattern = re.compile(
        re.escape(out.name) + literal.format(kind=re.escape(kind), rank=number, ranks=number)
    )
    wildcard = glob.escape(out.name) + SUFFIX.format(kind=glob.escape(kind), rank="*", ranks="*")
    found: dict[int, list[Path]] = {}
    for path in sorted(out.parent.glob(wildcard)):
        match = pattern.fullmatch(path.name)
        if match:
            found.setdefault(int(match.group(2)), []).append(path)
    return found
