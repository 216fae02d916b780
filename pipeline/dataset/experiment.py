"""Everything stage two derives from a config before training or evaluating.

Reads the caption file and the feature cache (never the images), checks the cache, assigns
splits and joins captions to feature rows. Training, evaluation and resume all go through
`load_experiment_data`, so a test split is the same split everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import click
import pandas as pd

from pipeline import contract
from pipeline.config import Config
from pipeline.data.captions import read_captions
from pipeline.dataset.batches import filter_to_cache
from pipeline.dataset.splits import assign_splits, split_counts
from pipeline.dataset.store import FeatureStore, cache_fits_in_memory
from pipeline.errors import UserError

EXPECTED = {"backbone": "resnet50", "grid": contract.GRID}


@dataclass
class ExperimentData:
    """Captions with splits, joined to a checked feature cache."""

    frame: pd.DataFrame           # image, caption, split, image_id; only cached images
    fingerprint: dict             # the cache's identity (contract.fingerprint)
    row_of: dict[str, int]        # image name -> feature row
    store: FeatureStore


def open_cache(path: str, expected: dict | None = None) -> tuple[dict, dict[str, int], dict]:
    """Check a complete feature file; return (fingerprint, image -> row, failed images).

    `expected` is a fingerprint (e.g. a checkpoint's) that the file must match.
    """
    with contract.open_complete(path) as f:
        fingerprint = contract.fingerprint(f)
        image_ids = contract.read_image_ids(f)
        failed = contract.read_failed(f)
    problems = contract.fingerprint_mismatch(EXPECTED, fingerprint, tuple(EXPECTED))
    if fingerprint.get("dtype") not in ("float16", "float32"):
        problems.append(f"dtype: {fingerprint.get('dtype')!r}")
    if problems:
        raise UserError(f"{path} was not made by this extractor ({'; '.join(problems)})")
    if expected is not None:
        problems = contract.fingerprint_mismatch(expected, fingerprint)
        if problems:
            raise UserError(f"{path} does not match the checkpoint's features "
                            f"(checkpoint vs file: {'; '.join(problems)}); evaluate with the "
                            "feature file the model was trained on")
    return fingerprint, {name: row for row, name in enumerate(image_ids)}, failed


def load_experiment_data(config: Config, expected_fingerprint: dict | None = None,
                         echo: bool = True) -> ExperimentData:
    """Read captions + cache, drop captions without usable grids, assign splits."""
    path = config.features.path
    fingerprint, row_of, failed = open_cache(path, expected_fingerprint)
    if not config.data.captions:
        raise UserError("config data.captions is empty: name the caption file")
    table = read_captions(config.data.captions, config.data.format)
    frame = filter_to_cache(table.frame, row_of, failed)
    frame = assign_splits(frame, config.data.split_ratios, config.data.split_seed,
                          config.data.subset)
    store = FeatureStore(path, in_memory=use_in_memory(config, path))
    if echo:
        counts = split_counts(frame)
        click.echo(f"captions: {table.summary()}")
        click.echo(f"splits (images): train {counts['train']}, val {counts['val']}, "
                   f"test {counts['test']}; features: {path} "
                   f"({'in memory' if store.in_memory else 'streamed from HDF5'})")
    return ExperimentData(frame=frame, fingerprint=fingerprint, row_of=row_of, store=store)


def use_in_memory(config: Config, path: str) -> bool:
    """features.in_memory: "true", "false", or "auto" (on when the cache fits the budget)."""
    if config.features.in_memory == "auto":
        return cache_fits_in_memory(path, config.features.ram_budget_gb)
    return config.features.in_memory == "true"
