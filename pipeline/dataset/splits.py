"""Train/val/test splits by image, from one of three sources (`SPLIT_SOURCES`): the caption
file's own (Karpathy), official split lists beside it or in `data.split_lists` (Flickr8k's),
or a seeded random cut by `data.split_ratios`.

A run freezes its splits: the image list of each split is saved (RUN/splits.json and every
checkpoint) with the caption file's sha256 and the splits' source, and evaluate / --resume
reuse those lists (`apply_saved_splits`) instead of recomputing them from a file that may have
changed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.captions.readers import read_split_lists, split_lists_folder
from pipeline.config import SPLITS, DataConfig
from pipeline.errors import UserError

SPLIT_SOURCES = ("karpathy", "listed", "computed")
RECORD_KEYS = ("source", "split_lists")  # what a run's saved splits say of their source


@dataclass
class SplitOrigin:
    """Where a new run's splits come from, and what that leaves out."""

    source: str  # one of SPLIT_SOURCES
    lists: str = ""  # the folder of the split lists (source "listed")
    unlisted: list[str] = field(default_factory=list)  # captioned images in no split list
    uncaptioned: int = 0  # images of the split lists without a caption to use

    def describe(self) -> str:
        """A few words on the source, for the `splits (images): ...` line."""
        if self.source == "listed":
            return f"official split lists in {self.lists}"
        if self.source == "karpathy":
            return "the caption file's own (karpathy)"
        return "computed: data.split_ratios, data.split_seed"

    def notes(self, shown: int = 3) -> list[str]:
        """One line per thing the split lists left out (none for the other sources)."""
        lines = []
        if self.unlisted:
            examples = ", ".join(self.unlisted[:shown])
            lines.append(
                f"dropped {len(self.unlisted):,} images in no split list (e.g. {examples})"
            )
        if self.uncaptioned:
            lines.append(f"no caption to use for {self.uncaptioned:,} images of the split lists")
        return lines

    def record(self) -> dict:
        """What the run's saved splits (splits.json, checkpoints) say about the source."""
        values = (self.source, self.lists)
        return {key: value for key, value in zip(RECORD_KEYS, values, strict=True) if value}

    @staticmethod
    def saved_record(splits: dict) -> dict:
        """The `record` part of a run's saved splits (empty for runs saved before it existed)."""
        return {key: splits[key] for key in RECORD_KEYS if key in splits}


def new_splits(frame: pd.DataFrame, data: DataConfig, fmt: str) -> tuple[pd.DataFrame, SplitOrigin]:
    """Splits for a new run on a caption frame of format `fmt` (`data.captions`), as
    `assign_splits` gives them, and where they came from."""
    folder = split_lists_folder(data.captions, fmt, data.split_lists)
    listed = read_split_lists(folder) if folder is not None else None
    origin = split_origin(frame, listed, folder)
    return assign_splits(frame, data.split_ratios, data.split_seed, data.subset, listed), origin


def split_origin(
    frame: pd.DataFrame, listed: dict[str, str] | None, folder: Path | None = None
) -> SplitOrigin:
    """The source `assign_splits` will use for `frame` and `listed`, with what it drops."""
    if listed is None:
        return SplitOrigin("karpathy" if frame["split"].notna().all() else "computed")
    names = list(dict.fromkeys(frame["image"]))
    captioned = set(names)
    return SplitOrigin(
        "listed",
        str(folder or ""),
        [name for name in names if name not in listed],
        sum(1 for name in listed if name not in captioned),
    )


def assign_splits(
    frame: pd.DataFrame,
    ratios: list[float],
    seed: int,
    subset: float = 1.0,
    listed: dict[str, str] | None = None,
) -> pd.DataFrame:
    """Return a copy of a caption frame whose `split` column is filled for every row.

    Karpathy files already carry splits (restval was mapped to train by the reader) and are
    kept. `listed` (image -> split, from `read_split_lists`) gives the splits of a file
    without its own, and its images in no list are dropped. Otherwise images, never
    captions, are shuffled with `seed` and cut by `ratios`, so no image is in two splits.
    `subset` < 1 keeps that fraction of images (seeded).
    """
    check_disjoint(frame)
    frame = frame.copy()
    if listed is not None:
        frame = frame[frame["image"].isin(listed.keys())].copy()
        frame["split"] = frame["image"].map(listed)
    images = frame["image"].drop_duplicates().to_numpy()
    rng = np.random.default_rng(seed)
    if subset < 1.0:
        keep = rng.permutation(len(images))[: max(1, round(subset * len(images)))]
        kept = set(images[np.sort(keep)])
        frame = frame[frame["image"].isin(kept)]
        images = frame["image"].drop_duplicates().to_numpy()
    if frame["split"].notna().all():
        return frame.reset_index(drop=True)
    order = rng.permutation(len(images))
    n_train = round(ratios[0] * len(images))
    n_val = round(ratios[1] * len(images))
    split_of = {}
    for rank, index in enumerate(order):
        split_of[images[index]] = (
            "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
        )
    frame["split"] = frame["image"].map(split_of)
    return frame.reset_index(drop=True)


def split_counts(frame: pd.DataFrame) -> dict[str, int]:
    """Images per split, for printouts."""
    return {name: int(frame.loc[frame["split"] == name, "image"].nunique()) for name in SPLITS}


def splits_line(counts: dict[str, int], where: str) -> str:
    """ "splits (images): train 6,000, val 1,000, test 1,000 (where they came from)" """
    sizes = ", ".join(f"{name} {count:,}" for name, count in counts.items())
    return f"splits (images): {sizes} ({where})"


def overlapping_images(frame: pd.DataFrame) -> dict[str, list[str]]:
    """Images a caption file puts in more than one split -> those splits, in table order."""
    labelled = frame.dropna(subset=["split"])
    per_image = labelled.groupby("image", sort=False)["split"].unique()
    return {image: list(splits) for image, splits in per_image.items() if len(splits) > 1}


def describe_overlap(overlapping: dict[str, list[str]], shown: int = 5) -> str:
    """ "the caption file puts N image(s) in more than one split: a.jpg (train+test), ..." """
    examples = ", ".join(
        f"{image} ({'+'.join(splits)})" for image, splits in list(overlapping.items())[:shown]
    )
    return f"the caption file puts {len(overlapping)} image(s) in more than one split: {examples}"


def check_disjoint(frame: pd.DataFrame) -> None:
    """Refuse a caption file that puts an image in more than one split (naming a few)."""
    overlapping = overlapping_images(frame)
    if overlapping:
        raise UserError(f"{describe_overlap(overlapping)}; each image must belong to one split")


def split_lists(frame: pd.DataFrame) -> dict[str, list[str]]:
    """The image names of each split, in table order (what a run saves)."""
    return {
        name: list(dict.fromkeys(frame.loc[frame["split"] == name, "image"])) for name in SPLITS
    }


def apply_saved_splits(
    frame: pd.DataFrame, saved: dict[str, list[str]], shown: int = 3
) -> tuple[pd.DataFrame, list[str]]:
    """Give each caption its image's saved split, in the saved image order.

    Images the run never saw are dropped. Returns (frame, notes about what differs).
    Refuses when the caption file's own splits now put an image of the run's val or test
    split into train (or the reverse): scores would then be computed on training images.
    """
    split_of = {image: name for name in SPLITS for image in saved.get(name, [])}
    position = {image: i for name in SPLITS for i, image in enumerate(saved.get(name, []))}
    file_split = frame.drop_duplicates("image").set_index("image")["split"]
    crossed = [
        image
        for image, split in file_split.items()
        if isinstance(split, str)
        and image in split_of
        and (split == "train") != (split_of[image] == "train")
    ]
    if crossed:
        raise UserError(
            f"the caption file now puts {len(crossed)} image(s) on the other side "
            f"of the run's train / held-out line (e.g. {', '.join(crossed[:shown])}):"
            " scores would be computed on training images"
        )
    known = frame["image"].isin(split_of)
    notes = []
    new_images = frame.loc[~known, "image"].nunique()
    if new_images:
        notes.append(f"{new_images} images not in the run's splits are ignored")
    gone = len(split_of) - frame.loc[known, "image"].nunique()
    if gone:
        notes.append(f"{gone} of the run's images are no longer in it")
    frame = frame[known].copy()
    frame["split"] = frame["image"].map(split_of)
    frame["_order"] = frame["image"].map(position)
    frame = frame.sort_values(["split", "_order"], kind="stable").drop(columns="_order")
    return frame.reset_index(drop=True), notes
