"""Train/val/test splits by image: the caption file's own (Karpathy) or a seeded random one.

A run freezes its splits: the image list of each split is saved (RUN/splits.json and every
checkpoint) with the caption file's sha256, and evaluate / --resume reuse those lists
(`apply_saved_splits`) instead of recomputing them from a file that may have changed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.config import SPLITS
from pipeline.errors import UserError


def assign_splits(
    frame: pd.DataFrame, ratios: list[float], seed: int, subset: float = 1.0
) -> pd.DataFrame:
    """Return a copy of a caption frame whose `split` column is filled for every row.

    Karpathy files already carry splits (restval was mapped to train by the reader) and are
    kept. Otherwise images, never captions, are shuffled with `seed` and cut by `ratios`,
    so no image is in two splits. `subset` < 1 keeps that fraction of images (seeded).
    """
    check_disjoint(frame)
    frame = frame.copy()
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


def check_disjoint(frame: pd.DataFrame, shown: int = 5) -> None:
    """Refuse a caption file that puts an image in more than one split (naming a few)."""
    labelled = frame.dropna(subset=["split"])
    per_image = labelled.groupby("image", sort=False)["split"].unique()
    overlapping = per_image[per_image.map(len) > 1]
    if len(overlapping):
        examples = ", ".join(
            f"{image} ({'+'.join(splits)})" for image, splits in list(overlapping.items())[:shown]
        )
        raise UserError(
            f"the caption file puts {len(overlapping)} image(s) in more than one "
            f"split: {examples}; each image must belong to one split"
        )


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
