"""Every backbone's extraction cost on this machine: images/s and bytes per image.

    .venv/bin/python -m benchmarks.backbones                      # all of them, ~10-20 min on 2 cores
    .venv/bin/python -m benchmarks.backbones --images 4 --backbones resnet50,convnext_tiny

`make bench-backbones` runs the first form. Random-init weights (`weights = "none"`, nothing
is fetched), so only speed and size are measured, never quality. For each backbone of
pipeline/backbones.py (`--backbones`): end-to-end `extract` of the same photo-like JPEGs
(decode workers + forward + HDF5 writer; model build and file creation excluded; the run's
precision "auto" rule and batch size) into a file of its grid (`--grid`, default 7: what the
sweep's backbone axis compares; 0 = each backbone's own grid), and the bytes one image's grid
takes stored as float16. (The runs store float32: random-init resnet101/152 grids reach
values past float16's range; writing is a small share of the time either way.) Every figure
is also given as a ratio to resnet50's, measured in the same run (resnet50 is measured first whether or not it is listed): on a shared machine
only ratios are comparable between runs.

Prints a table, then one line of JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from benchmarks.common import folder_job
from benchmarks.extract import make_images
from pipeline import contract, output
from pipeline.backbones import BACKBONES, DEFAULT_BACKBONE
from pipeline.config import Config
from pipeline.extract.extractor import run_extraction

DTYPE = "float16"  # what bytes per image are given for
STORED = "float32"  # what the runs write (random-init deep ResNets overflow float16)


def measure(name: str, images: Path, work: Path, grid: int, batch: int, workers: int) -> dict:
    """One backbone's end-to-end extraction of every image in `images`: images/s and the
    float16 bytes per image of its grid."""
    config = Config()
    config.features.backbone, config.features.grid = name, grid
    job = folder_job(
        images, work / f"{name}.h5", config, dtype=STORED, batch_size=batch, workers=workers
    )
    with output.quiet():
        result = run_extraction(job)
    if result.failed:
        raise SystemExit(f"{name}: {len(result.failed)} images failed: {result.failed[:2]}")
    return {
        "shape": job.shape.describe(),
        "precision": job.precision,
        "images_per_s": result.images_per_s,
        "bytes_per_image": contract.row_bytes(DTYPE, job.shape),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default=",".join(BACKBONES), help="comma-separated")
    parser.add_argument("--images", type=int, default=64, help="photos extracted per backbone")
    parser.add_argument("--grid", type=int, default=contract.GRID, help="0: each one's own")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1, help="decode worker processes")
    args = parser.parse_args()
    wanted = [n.strip() for n in args.backbones.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in BACKBONES]
    if unknown:
        raise SystemExit(f"unknown backbone {unknown[0]!r}; known: {', '.join(BACKBONES)}")
    order = [DEFAULT_BACKBONE] + [n for n in wanted if n != DEFAULT_BACKBONE]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        make_images(folder / "images", args.images)
        for name in order:
            results[name] = measure(
                name, folder / "images", folder, args.grid, args.batch_size, args.workers
            )
            (folder / f"{name}.h5").unlink()
    base = results[DEFAULT_BACKBONE]
    for figures in results.values():
        figures["ratio_images_per_s_vs_resnet50"] = figures["images_per_s"] / base["images_per_s"]
        figures["ratio_bytes_per_image_vs_resnet50"] = (
            figures["bytes_per_image"] / base["bytes_per_image"]
        )
    print(
        f"{'backbone':<18}{'grid':<22}{'images/s':>10}{'x resnet50':>12}{'bytes/image':>14}"
        f"{'x resnet50':>12}"
    )
    for name, f in results.items():
        print(
            f"{name:<18}{f['shape']:<22}{f['images_per_s']:>10.2f}"
            f"{f['ratio_images_per_s_vs_resnet50']:>12.2f}{f['bytes_per_image']:>14,}"
            f"{f['ratio_bytes_per_image_vs_resnet50']:>12.2f}"
        )
    print(
        json.dumps(
            {
                "benchmark": "backbones",
                "images": args.images,
                "grid": args.grid,
                "batch_size": args.batch_size,
                "threads": torch.get_num_threads(),
                "results": results,
            }
        )
    )


if __name__ == "__main__":
    main()
