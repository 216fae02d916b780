"""`caption --out OUT`: one JSON line per image, appended a batch at a time, resumable.

OUT holds one JSON object per line (UTF-8; see `caption_record` and `error_record`):

    {"image": "photos/a.jpg", "caption": "a dog on grass", "logprob": -4.1873,
     "checkpoint": "runs/x/best.pt", "checkpoint_id": "3f2a..."}           (+ "beams" with K)
    {"image": "photos/b.jpg", "error": "truncated or corrupt image (...)"}

and `OUT.meta.json` beside it records what made the lines (`SETTINGS`: the checkpoint's
content id, the kind of input, the decoding settings). The rules:
- a batch's lines go out in one write, then flush and fsync: a kill loses at most the batch
  in flight, and a torn last line (no newline) is dropped, with a warning, by the next run;
- rerunning resumes: images that have a line (captioned or failed) are skipped;
- other settings than OUT.meta.json's are refused with the difference, or `--overwrite`
  deletes OUT (and its parts) first; OUT without OUT.meta.json, or not written by captioner
  (pipeline/infer/files.py's manifest), is refused;
- a file being appended is locked (flock): a second process writing it is refused;
- under torchrun rank r appends to `OUT.part-RRR-of-WWW`; when every rank is done rank 0
  writes OUT's lines then each part's, each image once, to a temp file renamed over OUT, then
  deletes the parts. Parts left by a killed run are resumed by the same number of ranks.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import contract, output
from pipeline.capacity import DISK_FULL
from pipeline.config import EvalConfig
from pipeline.decoder.decode import Decoded
from pipeline.decoder.vocab import Vocabulary
from pipeline.errors import UserError
from pipeline.infer.caption_plan import image_key, rank_of
from pipeline.infer.files import OutputFolder
from pipeline.rank_files import rank_file, rank_files

FORMAT = "captioner-captions-v1"
META_SUFFIX = ".meta.json"
# What OUT.meta.json must agree on for a run to add lines to OUT.
SETTINGS = (
    "format",
    "checkpoint_id",
    "input",
    "jpeg_decode",
    "beam_size",
    "max_len",
    "length_penalty",
    "suppress_unk",
    "keep_beams",
)
LOGPROB_DIGITS = 4
TAIL_BLOCK = 1 << 16  # bytes read at a time when looking for the last newline


def output_settings(
    identity: dict,
    kind: str,
    jpeg_decode: str,
    decoding: EvalConfig,
    beam_size: int,
    keep_beams: int,
) -> dict:
    """OUT.meta.json's content: SETTINGS plus the checkpoint's path (informational).
    `jpeg_decode`: "device", "cpu" or "none" (a feature file): the two decoders' pixels, and
    so a few captions, differ."""
    return {
        "format": FORMAT,
        **identity,
        "input": kind,
        "jpeg_decode": jpeg_decode,
        "beam_size": beam_size,
        "max_len": decoding.max_len,
        "length_penalty": decoding.length_penalty,
        "suppress_unk": decoding.suppress_unk,
        "keep_beams": keep_beams,
    }


def caption_record(
    image: str, decoded: Decoded, vocab: Vocabulary, identity: dict, keep_beams: int
) -> dict:
    """An image's line: its caption, the caption's summed log-prob, the top `keep_beams`
    hypotheses (when asked for), the checkpoint's path and id."""
    record = {
        "image": image,
        "caption": vocab.decode(decoded.tokens),
        "logprob": round(decoded.score, LOGPROB_DIGITS),
    }
    if keep_beams:
        record["beams"] = [
            {"caption": vocab.decode(h.tokens), "logprob": round(h.score, LOGPROB_DIGITS)}
            for h in [decoded, *decoded.others][:keep_beams]
        ]
    return {**record, **identity}


def error_record(image: str, reason: str) -> dict:
    """A failed image's line: the reason, worded as `extract` words it."""
    return {"image": image, "error": reason}


def encode_records(records: Iterable[dict]) -> bytes:
    """JSON lines, UTF-8 (a name that is not valid Unicode is written \\u-escaped)."""
    out = []
    for record in records:
        try:
            out.append((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
        except UnicodeEncodeError:
            out.append((json.dumps(record) + "\n").encode("ascii"))
    return b"".join(out)


def meta_path(out: Path) -> Path:
    """Where OUT's settings are recorded."""
    return out.with_name(out.name + META_SUFFIX)


def part_path(out: Path, rank: int, world_size: int) -> Path:
    """Where rank `rank` of `world_size` appends its lines under torchrun."""
    return rank_file(out, "part", rank, world_size)


def leftover_parts(out: Path) -> list[tuple[Path, int]]:
    """(part, its number of ranks) for every part file of OUT in its folder."""
    found = rank_files(out, "part")
    return sorted((path, ranks) for ranks, paths in found.items() for path in paths)


@dataclass
class Scan:
    """What an output file already holds (the complete lines of one rank's share)."""

    keys: set[bytes] = field(default_factory=set)
    lines: int = 0
    failed: int = 0


def scan_output(path: Path, rank: int = 0, world_size: int = 1, into: Scan | None = None) -> Scan:
    """The images a file's complete lines name (those of `rank`'s share), added to `into`
    (images it has already are not counted again); a line that is not a caption line is
    refused with its number (a torn last line is left to `LineFile`)."""
    scan = into if into is not None else Scan()
    for number, line in enumerate(read_lines(path), 1):
        record = parse_line(line, path, number)
        key = image_key(record["image"])
        if rank_of(key, world_size) == rank and key not in scan.keys:
            scan.keys.add(key)
            scan.lines += 1
            scan.failed += "error" in record
    return scan


def read_lines(path: Path) -> Iterator[bytes]:
    """A file's complete lines (ending in a newline), as bytes; none if there is no file."""
    if not path.is_file():
        return
    with open(path, "rb") as handle:
        for line in handle:
            if line.endswith(b"\n"):
                yield line


def parse_line(line: bytes, path: Path, number: int) -> dict:
    """A line as a record; UserError unless it is a caption or error line."""
    try:
        record = json.loads(line)
    except ValueError:
        record = None
    if (
        not isinstance(record, dict)
        or not isinstance(record.get("image"), str)
        or not isinstance(record.get("caption", record.get("error")), str)
    ):
        raise UserError(
            f"{path}, line {number}: not a caption line (the file was changed by something "
            "else): remove that line, or pass --overwrite to start over"
        )
    return record


def prepare_output(out: Path, settings: dict, overwrite: bool, world_size: int) -> None:
    """Make OUT ready before any rank writes (rank 0 only): refuse a foreign file, other
    settings or another run's parts (or, with `overwrite`, delete OUT and its parts); drop a
    torn last line; write OUT.meta.json and claim the files this run appends to."""
    folder = OutputFolder(out.parent)
    meta = meta_path(out)
    parts = leftover_parts(out)
    for path in (out, meta, *(part for part, _ in parts)):
        folder.check(path.name)
    if overwrite:
        if out.exists():
            open_for_append(out).close()  # refused while another process writes it
        for path in (*(part for part, _ in parts), out):
            folder.remove(path.name)
    else:
        check_settings(out, settings, parts, world_size)
    if out.exists():
        open_for_append(out).close()  # drops a torn last line
    folder.write_text(meta.name, json.dumps(settings, indent=1) + "\n")
    names = [part_path(out, r, world_size).name for r in range(world_size)]
    folder.claim([out.name] + (names if world_size > 1 else []))


def check_settings(
    out: Path, settings: dict, parts: list[tuple[Path, int]], world_size: int
) -> None:
    """UserError unless OUT (and its parts) may be resumed with `settings` on `world_size`."""
    recorded = read_meta(meta_path(out))
    if recorded is None:
        if out.exists() or parts:
            raise UserError(
                f"{out} has no {meta_path(out).name} beside it (the settings its lines were "
                "made with): pass --overwrite to start over, or choose another --out"
            )
        return
    diff = contract.fingerprint_mismatch(recorded, settings, SETTINGS)
    if diff:
        raise UserError(
            f"{out} holds captions made with other settings (the file's vs now: "
            f"{'; '.join(diff)}): rerun with those settings to resume it, or pass "
            "--overwrite to start over, or choose another --out"
        )
    other = [(part, ranks) for part, ranks in parts if ranks != world_size or world_size == 1]
    if other:
        part, ranks = other[0]
        raise UserError(
            f"{part} is left by an unfinished torchrun run on {ranks} ranks: rerun it on "
            f"{ranks} ranks to finish it, or pass --overwrite to start over"
        )


def read_meta(path: Path) -> dict | None:
    """OUT.meta.json's settings, None if there is none; UserError if it is not ours."""
    if not path.exists():
        return None
    try:
        recorded = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path} ({exc}): pass --overwrite to start over") from None
    if not isinstance(recorded, dict) or recorded.get("format") != FORMAT:
        raise UserError(f"{path} is not a caption-settings file: pass --overwrite to start over")
    return recorded


class LineFile:
    """A file of JSON lines appended under an exclusive lock, each batch flushed to disk."""

    def __init__(self, path: Path) -> None:
        self.path = path
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            self.fd = os.open(path, flags, 0o644)
        except OSError as exc:
            raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise UserError(f"{path} is being written by another captioner process") from None

    def close(self) -> None:
        """Release the lock and the descriptor."""
        os.close(self.fd)

    def drop_torn_tail(self) -> int:
        """Cut a last line that has no newline (a write a kill interrupted); its byte count."""
        size = os.fstat(self.fd).st_size
        end = size
        while end > 0:
            start = max(0, end - TAIL_BLOCK)
            block = os.pread(self.fd, end - start, start)
            newline = block.rfind(b"\n")
            if newline >= 0:
                end = start + newline + 1
                break
            end = start
        if end < size:
            os.ftruncate(self.fd, end)
            os.fsync(self.fd)
        return size - end

    def append(self, records: list[dict]) -> None:
        """Write the records' lines in one go, then fsync; UserError if the disk refuses."""
        view = memoryview(encode_records(records))
        try:
            while view:
                view = view[os.write(self.fd, view) :]
            os.fsync(self.fd)
        except OSError as exc:
            what = "the disk is full" if exc.errno in DISK_FULL else exc.strerror or str(exc)
            raise UserError(
                f"writing {self.path} failed: {what}; the lines before are saved: free some "
                "space and rerun the same command to resume"
            ) from None


def open_for_append(path: Path) -> LineFile:
    """`LineFile(path)` with a torn last line dropped (with a warning from the rank that
    opens it: under torchrun each rank opens its own part)."""
    lines = LineFile(path)
    dropped = lines.drop_torn_tail()
    if dropped:
        output.warn(
            f"{path}: dropped a torn last line ({dropped} bytes) left by an "
            "interrupted run; its image is captioned again",
            every_rank=True,
        )
    return lines


def join_parts(out: Path, world_size: int) -> None:
    """Rank 0, once every rank is done: OUT's lines, then each part's, each image once, to
    a temp file renamed over OUT; then delete the parts."""
    folder = OutputFolder(out.parent)
    parts = [part_path(out, rank, world_size) for rank in range(world_size)]
    if any(next(read_lines(part), None) for part in parts):
        seen: set[bytes] = set()
        with folder.replacing(out.name) as handle:
            for path in (out, *parts):
                for number, line in enumerate(read_lines(path), 1):
                    key = image_key(parse_line(line, path, number)["image"])
                    if key not in seen:
                        seen.add(key)
                        handle.write(line)
    for part in parts:
        folder.remove(part.name)


class TerminalLines:
    """Without --out: `image: caption` on stdout, `image: error: reason` on stderr."""

    def append(self, records: list[dict]) -> None:
        """Print each record as today's `caption` prints it."""
        for record in records:
            if "error" in record:
                output.say(f"{record['image']}: error: {record['error']}", err=True)
            else:
                output.say(f"{record['image']}: {record['caption']}")

    def close(self) -> None:
        """Nothing to release."""
