"""Everything stage two derives from a config before training or evaluating.

Reads the caption file and the feature cache (never the images), checks the cache, assigns
splits and joins captions to feature rows. Training, evaluation and resume all go through
`load_experiment_data`, so a test split is the same split everywhere: a new run computes
its splits and records them (`ExperimentData.splits`); evaluate and --resume pass those
saved lists back in, and the feature file must hold the image list the run was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from pipeline import contract, output
from pipeline.backbones import BACKBONES
from pipeline.captions.readers import CaptionTable, read_captions
from pipeline.checksum import file_sha256
from pipeline.config import Config
from pipeline.dataset.batches import filter_to_cache
from pipeline.dataset.splits import (
    SplitOrigin,
    apply_saved_splits,
    new_splits,
    split_counts,
    split_lists,
    splits_line,
)
from pipeline.dataset.store import FeatureStore, choose_cache
from pipeline.errors import UserError

EVALUATE_ADVICE = "evaluate with the feature file the model was trained on"
CACHE_WORDS = {"stream": "streamed from HDF5", "ram": "in memory", "device": "in GPU memory"}


@dataclass
class ExperimentData:
    """Captions with splits, joined to a checked feature cache."""

    frame: pd.DataFrame  # image, caption, split, image_id; only cached images
    fingerprint: dict  # the cache's identity (contract.fingerprint)
    row_of: dict[str, int]  # image name -> feature row
    store: FeatureStore
    splits: dict  # captions_sha256 + the image list of train, val and test


def open_cache(path: str, expected: dict | None = None) -> tuple[dict, dict[str, int], dict]:
    """Check a complete feature file; return (fingerprint, image -> row, failed images).

    `expected` is a fingerprint (e.g. a checkpoint's) that the file must match.
    """
    with contract.open_complete(path) as f:
        fingerprint = contract.fingerprint(f)
        image_ids = contract.read_image_ids(f)
        failed = contract.read_failed(f)
    check_cache(path, fingerprint, expected)
    return fingerprint, {name: row for row, name in enumerate(image_ids)}, failed


def check_cache(
    path: str, fingerprint: dict, expected: dict | None = None, advice: str = EVALUATE_ADVICE
) -> None:
    """UserError unless a feature file's fingerprint is one of our extractor's (a backbone of
    pipeline/backbones.py, or a testbed's) and, given `expected` (a checkpoint's), made the
    same way (MATCH_KEYS: backbone, weights, preprocessing, grid, ...). The grid's shape is
    the file's own (checked against its `features` by `contract.check_layout`)."""
    problems = []
    backbone = str(fingerprint.get("backbone"))
    if backbone not in BACKBONES and not backbone.startswith(contract.TESTBED_PREFIX):
        problems.append(f"backbone: {backbone!r}")
    if fingerprint.get("dtype") not in ("float16", "float32"):
        problems.append(f"dtype: {fingerprint.get('dtype')!r}")
    if problems:
        raise UserError(f"{path} was not made by this extractor ({'; '.join(problems)})")
    if expected is not None:
        problems = contract.fingerprint_mismatch(expected, fingerprint)
        if problems:
            raise UserError(
                f"{path} does not match the checkpoint's features "
                f"(checkpoint vs file: {'; '.join(problems)}); {advice}"
            )


def load_experiment_data(
    config: Config,
    expected_fingerprint: dict | None = None,
    saved_splits: dict | None = None,
    device: torch.device | None = None,
) -> ExperimentData:
    """Read captions + cache, drop captions without usable grids, assign splits.

    `expected_fingerprint` and `saved_splits` come from a checkpoint (evaluate, --resume):
    the cache must then hold the same images, and the saved split lists are used as they are.
    `device` is where the model runs: features.cache = "device" holds the grids there (CUDA).
    Prints what it read (`output.quiet()` drops it; its warnings show).
    """
    path = config.features.path
    fingerprint, row_of, failed = open_cache(path, expected_fingerprint)
    if expected_fingerprint is not None:
        check_same_images(path, expected_fingerprint, fingerprint, row_of, saved_splits)
    if not config.data.captions:
        raise UserError("config data.captions is empty: name the caption file")
    table = read_captions(config.data.captions, config.data.format)
    frame = filter_to_cache(table.frame, row_of, failed)
    frame, splits, where, notes = run_splits(frame, table, config, saved_splits)
    cache, why = choose_cache(path, config.features.cache, config.features.ram_budget_gb)
    store = FeatureStore(path, cache, device)
    if store.cache != cache:
        why = f"{cache} asked for, but the model is not on a CUDA device: the grids are in RAM"
    output.say(f"captions: {table.summary()}")
    output.say(
        f"{splits_line(split_counts(frame), where)}; features: {path} ({CACHE_WORDS[store.cache]})"
    )
    if why:
        output.say(f"features.cache: {store.cache} ({why})")
    for line in notes:
        output.say(line)
    note = table.language_note(config.data.language)
    if note:  # part of the summary above: quiet with it
        output.say(f"warning: {config.data.captions}: {note}", err=True)
    return ExperimentData(
        frame=frame, fingerprint=fingerprint, row_of=row_of, store=store, splits=splits
    )


def run_splits(
    frame: pd.DataFrame, table: CaptionTable, config: Config, saved: dict | None
) -> tuple[pd.DataFrame, dict, str, list[str]]:
    """The frame with the run's splits (its saved ones if `saved`, else new ones), what the
    run records of them (`ExperimentData.splits`), where they came from, and notes."""
    captions_sha256 = file_sha256(config.data.captions)
    if saved:
        frame = frozen_splits(frame, saved, captions_sha256, config.data.captions)
        source, where, notes = SplitOrigin.saved_record(saved), "the run's saved splits", []
    else:
        frame, origin = new_splits(frame, config.data, table.format)
        source, where, notes = origin.record(), origin.describe(), origin.notes()
    return frame, {"captions_sha256": captions_sha256, **source, **split_lists(frame)}, where, notes


def frozen_splits(
    frame: pd.DataFrame, saved: dict, captions_sha256: str, captions_path: str
) -> pd.DataFrame:
    """The run's saved splits on today's caption file; one warning line if the file changed."""
    frame, notes = apply_saved_splits(frame, saved)
    if saved.get("captions_sha256") not in (None, captions_sha256):
        output.warn(
            f"{captions_path} changed since this run was trained; using the "
            f"run's saved splits{': ' + '; '.join(notes) if notes else ''}"
        )
    if frame.empty:
        raise UserError(f"no image of the run's saved splits is left in {captions_path}")
    return frame


def check_same_images(
    path: str,
    expected: dict,
    fingerprint: dict,
    row_of: dict[str, int],
    saved_splits: dict | None,
    shown: int = 3,
) -> None:
    """Refuse a feature file whose image list differs from the checkpoint's (moved is fine).

    Compares the row count and, when both fingerprints carry it, the image list's sha256.
    Older checkpoints without `image_list_sha256` are checked on the row count alone.
    """
    same_count = expected.get("num_images") in (None, fingerprint.get("num_images"))
    hashes = (expected.get("image_list_sha256"), fingerprint.get("image_list_sha256"))
    same_list = None in hashes or hashes[0] == hashes[1]
    if same_count and same_list:
        return
    detail = (
        f"checkpoint: {expected.get('num_images')} images, file: {fingerprint.get('num_images')}"
    )
    if saved_splits:
        missing = [
            image
            for name in ("train", "val", "test")
            for image in saved_splits.get(name, [])
            if image not in row_of
        ]
        if missing:
            detail += (
                f"; {len(missing)} of the run's images are not in it, e.g. "
                f"{', '.join(missing[:shown])}"
            )
    if not same_list and same_count:
        detail += "; same count, other images or order"
    raise UserError(
        f"{path} holds another image list than the features this run was trained "
        f"on ({detail}): use that feature file (it may be moved or renamed)"
    )
