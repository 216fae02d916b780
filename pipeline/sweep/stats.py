"""A sweep's numbers: means and spreads over seeds, and paired bootstrap comparisons.

A comparison of variant A against variant B pairs them by seed and by test image (the same
seeds and images for both): each bootstrap replicate draws seeds and images with replacement
(the same image draws for every seed) and takes the difference of A's and B's mean per-image
CIDEr, and their ratio. The 95% interval is the 2.5th to 97.5th percentile of the replicates.
Resampling seeds carries the seed-to-seed spread into the interval, resampling images the
test set's; with 3 seeds the seed part is coarse (10 distinct draws).
"""

from __future__ import annotations

import statistics

import numpy as np

from pipeline.metrics.coco import DISPLAY_NAMES

REPLICATES = 4000
CHUNK = 500  # replicates drawn at a time (bounded memory on large test splits)
SHOWN = ("CIDEr", "Bleu_4", "METEOR")  # the metrics a sweep's table shows


def mean_std(values: list[float]) -> list[float]:
    """[mean, sample standard deviation] (0 for a single value)."""
    return [statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0]


def paired_bootstrap(
    a: np.ndarray, b: np.ndarray, replicates: int = REPLICATES, seed: int = 0
) -> dict:
    """a, b (S, N): per-image scores of two variants on S shared seeds and N shared images.

    Returns the mean difference a - b with its 95% interval, and the relative difference
    mean(a) / mean(b) - 1 with its interval (None when b's mean can be 0).
    """
    seeds, images = a.shape
    rng = np.random.default_rng(seed)
    differences, ratios = [], []
    for start in range(0, replicates, CHUNK):
        count = min(CHUNK, replicates - start)
        image_weights = rng.multinomial(images, np.full(images, 1 / images), count) / images
        seed_weights = rng.multinomial(seeds, np.full(seeds, 1 / seeds), count) / seeds
        mean_a = ((image_weights @ a.T) * seed_weights).sum(axis=1)  # (count,)
        mean_b = ((image_weights @ b.T) * seed_weights).sum(axis=1)  # (count,)
        differences.append(mean_a - mean_b)
        ratios.append(mean_a[mean_b > 0] / mean_b[mean_b > 0] - 1.0)
    difference, ratio = np.concatenate(differences), np.concatenate(ratios)
    relative = b.mean() > 0 and len(ratio) == replicates  # else a ratio to 0: undefined
    return {
        "difference": float(a.mean() - b.mean()),
        "difference_ci": [float(x) for x in np.percentile(difference, [2.5, 97.5])],
        "relative": float(a.mean() / b.mean() - 1.0) if relative else None,
        "relative_ci": [float(x) for x in np.percentile(ratio, [2.5, 97.5])] if relative else None,
        "seeds": seeds,
        "images": images,
    }


def per_image_matrix(results: list[dict], decoding: str, images: list[str]) -> np.ndarray:
    """(S, N) per-image CIDEr of runs (one per seed) on `images`, in that order."""
    return np.asarray([[r["per_image_cider"][decoding][i] for i in images] for r in results])


def compare(mine: dict[int, dict], theirs: dict[int, dict], decoding: str) -> dict | None:
    """Paired bootstrap of two variants' runs (seed -> result) on their shared seeds and
    images; None when they share none."""
    seeds = sorted(set(mine) & set(theirs))
    if not seeds:
        return None
    shared = set(mine[seeds[0]]["per_image_cider"][decoding])
    for seed in seeds:
        for runs in (mine, theirs):
            shared &= set(runs[seed]["per_image_cider"][decoding])
    images = sorted(shared)
    if not images:
        return None
    a = per_image_matrix([mine[s] for s in seeds], decoding, images)
    b = per_image_matrix([theirs[s] for s in seeds], decoding, images)
    return {**paired_bootstrap(a, b), "seed_list": seeds}


def variant_row(runs: dict[int, dict], decodings: tuple[str, ...]) -> dict:
    """Mean and std over seeds of the shown metrics (x100) per decoding, plus cost."""
    row: dict = {"seeds": sorted(runs)}
    for decoding in decodings:
        for key in SHOWN:
            values = [
                100 * r["scores"][decoding][key]
                for r in runs.values()
                if r["scores"][decoding].get(key) is not None
            ]
            row[f"{key}_{decoding}"] = mean_std(values) if values else None
    row["epoch_seconds"] = statistics.mean(r["epoch_seconds"] for r in runs.values())
    row["parameters"] = next(iter(runs.values()))["parameters"]
    return row


def markdown_table(rows: dict[str, dict], comparisons: dict[str, dict], beam: int) -> str:
    """Variants as rows: CIDEr greedy and beam, BLEU-4 and METEOR at the beam (mean ± std over
    seeds, x100), parameters, s/epoch, and the paired comparison at the beam."""

    def cell(value) -> str:
        return "–" if value is None else f"{value[0]:.1f} ± {value[1]:.1f}"

    decoding = f"beam{beam}"
    shown = " | ".join(f"{DISPLAY_NAMES[key]} beam {beam}" for key in SHOWN)
    lines = [
        f"| variant | seeds | CIDEr greedy | {shown} | parameters | s/epoch | against | "
        f"Δ CIDEr beam {beam} [95% CI] | relative [95% CI] |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        versus = comparisons.get(name)
        if versus:
            low, high = versus["difference_ci"]
            relative = "–"
            if versus["relative"] is not None:
                rel_low, rel_high = versus["relative_ci"]
                relative = f"{100 * versus['relative']:+.1f}% [{100 * rel_low:+.1f}, {100 * rel_high:+.1f}]"
            against = (
                versus["against"],
                f"{100 * versus['difference']:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]",
                relative,
            )
        else:
            against = ("–", "–", "–")
        lines.append(
            f"| {name} | {len(row['seeds'])} | {cell(row['CIDEr_greedy'])} | "
            + " | ".join(cell(row[f"{key}_{decoding}"]) for key in SHOWN)
            + f" | {row['parameters'] / 1e6:.2f} M | "
            f"{row['epoch_seconds']:.1f} | " + " | ".join(against) + " |"
        )
    return "\n".join(lines) + "\n"
