"""`captioner inspect`: what a caption file gives extract and train, without images or a CNN.

The file is read by the readers extract and train use (`read_captions`), split as a new run
splits it (`new_splits`: the file's own splits, official split lists, or `data.split_ratios`)
and counted into a vocabulary as training builds it (train split only, `vocab.min_freq`,
`vocab.tokenizer`). An image the file puts in two splits, which training refuses, is reported
and left out of the split counts. With an images folder, each image the file names is checked
with a stat, never decoded: missing, not a regular file, no read permission, zero bytes.
`Inspection.problems` says why the file is not usable (empty: it is).
"""

from __future__ import annotations

import dataclasses
import os
import stat
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipeline.captions.readers import CaptionTable, read_captions
from pipeline.captions.text import tokenize
from pipeline.config import Config
from pipeline.dataset.splits import (
    SplitOrigin,
    describe_overlap,
    new_splits,
    overlapping_images,
    split_counts,
    splits_line,
)
from pipeline.decoder.vocab import MOST_FREQUENT, SPECIALS, build_vocabulary
from pipeline.errors import UserError

SHOWN = 3  # example names per line of the text report


@dataclass
class Inspection:
    """Everything `captioner inspect` reports (plain types and dataclasses: `--json` is
    `to_json`)."""

    captions: str  # the caption file
    format: str
    images: int  # distinct image names read
    captions_read: int
    captions_per_image: dict  # min, mean, max
    fewer_captions: dict[str, int]  # image with fewer captions than most have -> how many
    dropped: dict[str, int]  # empty, punctuation_only captions; recovered_malformed rows
    rejected: dict[str, str]  # unsafe image name -> why
    overlapping: dict[str, list[str]]  # image the file puts in several splits -> those splits
    splits: dict[str, int]  # images per split
    split_origin: SplitOrigin  # source (SPLIT_SOURCES), lists, unlisted, uncaptioned
    language: str  # data.language
    language_note: str  # "" or: the file names another language
    tokenizer: str  # vocab.tokenizer
    vocabulary: dict  # size, min_freq, train_words, most_frequent [[word, count], ...]
    lengths: dict  # tokens per caption: min, mean, max; max_len, longer (captions above it)
    image_files: dict | None  # with an images folder: folder, checked, problems {name: why}
    problems: list[str]  # why the file is not usable; empty when it is

    def to_json(self) -> dict:
        """The report as one JSON-ready object, with `usable`."""
        return {**dataclasses.asdict(self), "usable": not self.problems}


def inspect_captions(path: str | Path, config: Config, images: str | Path | None) -> Inspection:
    """Read, split and count the caption file at `path` as extract and train would with
    `config`; with `images`, stat each image it names there."""
    data = dataclasses.replace(config.data, captions=str(path))
    table = read_captions(path, data.format)
    overlapping = overlapping_images(table.frame)
    disjoint = table.frame[~table.frame["image"].isin(overlapping.keys())]
    frame, origin = new_splits(disjoint, data, table.format)
    report = Inspection(
        captions=str(path),
        format=table.format,
        images=len(table.images()),
        captions_read=len(table.frame),
        captions_per_image=per_image_counts(table.frame),
        fewer_captions=fewer_captions(table.frame),
        dropped=reading_fixes(table),
        rejected=dict(table.rejected),
        overlapping=overlapping,
        splits=split_counts(frame),
        split_origin=origin,
        language=data.language,
        language_note=table.language_note(data.language),
        tokenizer=config.vocab.tokenizer,
        vocabulary=vocabulary_stats(frame, config),
        lengths=caption_lengths(frame["caption"], config.vocab.tokenizer, config.vocab.max_len),
        image_files=check_image_files(images, table.images()) if images is not None else None,
        problems=[],
    )
    report.problems = problems(report, frame, config.eval.split)
    return report


def per_image_counts(frame: pd.DataFrame) -> dict:
    """Captions per image: min, mean, max."""
    counts = frame.groupby("image", sort=False).size()
    return {"min": int(counts.min()), "mean": float(counts.mean()), "max": int(counts.max())}


def fewer_captions(frame: pd.DataFrame) -> dict[str, int]:
    """Images with fewer captions than the most common count -> their count (table order)."""
    counts = frame.groupby("image", sort=False).size()
    usual = Counter(counts.tolist()).most_common(1)[0][0]
    return {image: int(n) for image, n in counts.items() if n < usual}


def reading_fixes(table: CaptionTable) -> dict[str, int]:
    """What the reader dropped or recovered."""
    return {
        "empty": table.dropped_empty,
        "punctuation_only": table.dropped_punctuation,
        "recovered_malformed": table.recovered,
    }


def vocabulary_stats(frame: pd.DataFrame, config: Config) -> dict:
    """The vocabulary training would build from the train split (`build_vocabulary`)."""
    train = frame.loc[frame["split"] == "train", "caption"]
    vocab, counts = build_vocabulary(train, config.vocab.min_freq, config.vocab.tokenizer)
    return {
        "size": len(vocab),
        "min_freq": config.vocab.min_freq,
        "train_words": len(counts),
        "most_frequent": [[word, count] for word, count in counts.most_common(MOST_FREQUENT)],
    }


def caption_lengths(captions: pd.Series, tokenizer: str, max_len: int) -> dict:
    """Tokens per caption (min, mean, max) and how many captions training cuts at `max_len`."""
    lengths = [len(tokenize(caption, tokenizer)) for caption in captions] or [0]
    return {
        "min": min(lengths),
        "mean": sum(lengths) / len(lengths),
        "max": max(lengths),
        "max_len": max_len,
        "longer": sum(1 for n in lengths if n > max_len),
    }


def image_problem(path: Path) -> str:
    """Why extract could not read the image file at `path`, from a stat ("" when none)."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return "missing"
    except OSError as error:
        return error.strerror or "cannot stat"
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file"
    if not os.access(path, os.R_OK):
        return "no read permission"
    if info.st_size == 0:
        return "zero bytes"
    return ""


def check_image_files(folder: str | Path, names: list[str]) -> dict:
    """Stat each of `names` under `folder`: {folder, checked, problems {name: why}}."""
    root = Path(folder)
    if not root.is_dir():
        raise UserError(f"images folder not found: {root}")
    found = {name: image_problem(root / name) for name in names}
    return {
        "folder": str(root),
        "checked": len(names),
        "problems": {name: why for name, why in found.items() if why},
    }


def problems(report: Inspection, frame: pd.DataFrame, eval_split: str) -> list[str]:
    """Why training or evaluating (on `eval_split`) with this file would fail."""
    found = []
    if report.overlapping:
        found.append(f"{describe_overlap(report.overlapping)}, which training refuses")
    needed = dict.fromkeys(("train", "val", eval_split))
    found += [f"the {name} split has no image" for name in needed if not report.splits[name]]
    if report.vocabulary["size"] == len(SPECIALS):
        found.append(f"no train word occurs vocab.min_freq = {report.vocabulary['min_freq']} times")
    if report.image_files is not None:
        bad, folder = report.image_files["problems"], report.image_files["folder"]
        for name in needed:
            images = frame.loc[frame["split"] == name, "image"].unique()
            if len(images) and all(image in bad for image in images):
                found.append(f"no image of the {name} split is readable in {folder}")
    return found


def examples(items: list[str], shown: int = SHOWN) -> str:
    """The first `shown` items, comma-separated, then "..." if there are more."""
    return ", ".join(items[:shown]) + (", ..." if len(items) > shown else "")


def inspection_lines(report: Inspection) -> list[str]:
    """The text report, one subject per line (problems are the caller's to show)."""
    per_image = report.captions_per_image
    lines = [
        f"captions: {report.captions} ({report.format})",
        f"images: {report.images:,}; captions: {report.captions_read:,} (per image: min "
        f"{per_image['min']}, mean {per_image['mean']:.2f}, max {per_image['max']})",
    ]
    if report.fewer_captions:
        few = [f"{name}: {n}" for name, n in report.fewer_captions.items()]
        lines.append(f"fewer captions than most images: {len(few):,} ({examples(few)})")
    lines.append(reading_line(report))
    lines.append(splits_line(report.splits, report.split_origin.describe()))
    lines += report.split_origin.notes(SHOWN)
    overlap = describe_overlap(report.overlapping) if report.overlapping else "none"
    lines.append(f"overlapping splits: {overlap}")
    language = f"language: {report.language} (data.language)"
    note = f"; {report.language_note}" if report.language_note else ""
    lines.append(f"{language}; tokenizer: {report.tokenizer} (vocab.tokenizer){note}")
    lines.append(vocabulary_line(report.vocabulary))
    lines.append(lengths_line(report.lengths))
    if report.image_files is not None:
        lines.append(image_files_line(report.image_files))
    return lines


def reading_line(report: Inspection) -> str:
    """What reading dropped, recovered and rejected."""
    dropped = report.dropped
    rejected = [f"{name}: {why}" for name, why in report.rejected.items()]
    return (
        f"read: dropped {dropped['empty']:,} empty and {dropped['punctuation_only']:,} "
        f"punctuation-only captions, recovered {dropped['recovered_malformed']:,} malformed "
        f"rows, rejected {len(rejected):,} unsafe names"
        + (f" ({examples(rejected)})" if rejected else "")
    )


def vocabulary_line(vocab: dict) -> str:
    """Size at min_freq and the most frequent train words."""
    top = ", ".join(f"{word} ({count:,})" for word, count in vocab["most_frequent"])
    return (
        f"vocabulary: {vocab['size']:,} tokens at vocab.min_freq {vocab['min_freq']} "
        f"({vocab['train_words']:,} distinct train words); most frequent: {top}"
    )


def lengths_line(lengths: dict) -> str:
    """Tokens per caption and how many captions vocab.max_len cuts."""
    return (
        f"caption lengths (tokens): min {lengths['min']}, mean {lengths['mean']:.2f}, max "
        f"{lengths['max']}; {lengths['longer']:,} captions longer than vocab.max_len "
        f"{lengths['max_len']} (cut to it in training)"
    )


def image_files_line(image_files: dict) -> str:
    """How many images a stat found unreadable, by reason."""
    by_reason: dict[str, list[str]] = {}
    for name, why in image_files["problems"].items():
        by_reason.setdefault(why, []).append(name)
    found = "; ".join(
        f"{len(names):,} {why} ({examples(names)})" for why, names in by_reason.items()
    )
    return (
        f"images in {image_files['folder']}: {image_files['checked']:,} checked; "
        f"{found or 'all present and readable'}"
    )
