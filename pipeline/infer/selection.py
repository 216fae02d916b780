"""Which images a report's gallery shows: the best, the worst and a random sample by CIDEr."""

from __future__ import annotations

import numpy as np

GALLERY_SIZE = 12  # default number of images in each group
HTML_LIMIT = 50  # default number of images on a `caption --html` page (a fixed sample)
GALLERY_SEED = 0  # the random sample is the same on every run


def select_gallery(
    per_image_cider: list[float], count: int, seed: int = GALLERY_SEED
) -> dict[str, list[int]]:
    """Disjoint image positions: the `count` best and worst by CIDEr, and a seeded random
    sample of `count` among the rest (fewer when the split is small)."""
    order = sorted(range(len(per_image_cider)), key=lambda i: (-per_image_cider[i], i))
    best = order[:count]
    shown = set(best)
    worst = [i for i in reversed(order) if i not in shown][:count]
    rest = sorted(set(order) - set(best) - set(worst))
    pick = np.random.default_rng(seed).permutation(len(rest))[:count]
    return {"best": best, "worst": worst, "random": [rest[int(j)] for j in pick]}
