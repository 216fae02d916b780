"""Train/val/test splits by image: the caption file's own (Karpathy) or a seeded random one."""

from __future__ import annotations

import numpy as np
import pandas as pd

SPLITS = ("train", "val", "test")


def assign_splits(frame: pd.DataFrame, ratios: list[float], seed: int,
                  subset: float = 1.0) -> pd.DataFrame:
    """Return a copy of a caption frame whose `split` column is filled for every row.

    Karpathy files already carry splits (restval was mapped to train by the reader) and are
    kept. Otherwise images, never captions, are shuffled with `seed` and cut by `ratios`,
    so no image is in two splits. `subset` < 1 keeps that fraction of images (seeded).
    """
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
        split_of[images[index]] = ("train" if rank < n_train
                                   else "val" if rank < n_train + n_val else "test")
    frame["split"] = frame["image"].map(split_of)
    return frame.reset_index(drop=True)


def split_counts(frame: pd.DataFrame) -> dict[str, int]:
    """Images per split, for printouts."""
    return {name: int(frame.loc[frame["split"] == name, "image"].nunique()) for name in SPLITS}
