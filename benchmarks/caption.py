"""Bulk captioning speed and memory: `caption --out` against extraction alone, and peak RSS.

Run: `.venv/bin/python -m benchmarks.caption` (a few minutes on 2 cores).

- Demo images (`generate_demo_data`, 224x224 JPEGs) are extracted into a cache once, as
  `captioner extract` does with configs/demo.toml, and the demo decoder is trained on it for
  one epoch: a real checkpoint.
- On the same `--n` images, alternating, `--repeat` times (the best run of each kept: a shared
  machine's other jobs only ever slow a run down): extraction alone (`run_extraction`: decode
  workers + ResNet50 + HDF5 writes) and bulk captioning (`run_caption` with an output file:
  decode workers + ResNet50 + beam search + JSON lines) at beam 1 and at beam 3, with the same
  batch size, workers, precision and threads; model builds are excluded from both.
  `ratio_caption_vs_extract_beam<k>` = captioning images/s / extraction images/s, and
  `decoder_share_beam<k>` = 1 - that ratio: the part of a captioning run's time that the
  decoder (and writing the lines) adds to the CNN's.
- Peak memory of captioning `--n-rss` images and 4x as many (hard-linked copies in
  sub-folders, `--images DIR --recursive`), each in its own child process: VmHWM of the
  child's main process from /proc/self/status (decode workers are processes of their own).
  `ratio_rss_4n_vs_n` stays near 1 when nothing grows with the number of images.

Prints a table, then one line of JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch

from benchmarks.common import alternate, demo_cache, in_child, link_copies, timed, train_demo
from benchmarks.extract import extract_rate
from pipeline import output
from pipeline.decoder.checkpoint import load_checkpoint
from pipeline.infer.caption import CaptionJob, run_caption
from pipeline.infer.caption_sources import Source

BEAMS = (1, 3)


def train_checkpoint(work: Path, images: int) -> Path:
    """Demo data and its cache under `work`, and the demo decoder trained on it for one epoch."""
    cache, _, _ = demo_cache(work, images)
    run = train_demo(cache, "bench", "train.epochs=1", "train.val_images=0", "vocab.min_freq=1")
    return run / "best.pt"


def caption(
    folder: Path, checkpoint: Path, out: Path, beam: int, batch_size: int, workers: int
) -> tuple[float, int]:
    """(images/s, lines written) of bulk-captioning every image under `folder` into `out`."""
    job = CaptionJob(
        Source(folder=str(folder), recursive=True),
        checkpoint,
        beam_size=beam,
        out=out,
        overwrite=True,
        batch_size=batch_size,
        workers=workers,
        device="cpu",
        progress=False,
    )
    with output.quiet():
        result = run_caption(job)
    return result.images_per_s, result.lines


def peak_rss(folder: Path, checkpoint: Path, args: argparse.Namespace) -> dict:
    """Caption every image under `folder` at beam 3 in a child process; its lines and VmHWM."""
    out = folder.with_suffix(".jsonl")
    peak = in_child(caption, folder, checkpoint, out, 3, args.batch_size, args.workers)
    return {"images": peak.result[1], "vmhwm_mb": peak.main_mb}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=128, help="images of the speed runs")
    parser.add_argument("--n-rss", type=int, default=128, help="N for the N vs 4N RSS runs")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=2, help="runs of each; the best is kept")
    return parser.parse_args()


def speed_runs(
    work: Path, checkpoint: Path, precision: str, args: argparse.Namespace
) -> dict[str, list[float]]:
    """images/s of extraction and of captioning at each beam, alternating, `repeat` times."""
    folder = work / "speed" / "c0"

    def shown(mode: str, rate: float) -> float:
        print(f"{mode} {rate:.1f} img/s (load {os.getloadavg()[0]:.1f})", flush=True)
        return rate

    def extract(_) -> float:
        out = work / "baseline.h5"
        return shown(
            "extract", extract_rate(folder, None, out, precision, args.batch_size, args.workers)
        )

    def captioning(beam: int):
        out = work / "captions.jsonl"
        return lambda _: shown(
            f"caption_beam{beam}",
            caption(folder, checkpoint, out, beam, args.batch_size, args.workers)[0],
        )

    runs = {"extract": extract, **{f"caption_beam{k}": captioning(k) for k in BEAMS}}
    return alternate(runs, args.repeat)


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-caption-") as tmp:
        work = Path(tmp)
        seconds, checkpoint = timed(lambda: train_checkpoint(work, max(args.n, args.n_rss)))
        precision = load_checkpoint(checkpoint)["features"]["precision"]
        print(
            f"demo data, cache and checkpoint in {seconds:.1f}s; "
            f"{os.cpu_count()} cpus, precision {precision}, batch {args.batch_size}, "
            f"workers {args.workers}",
            flush=True,
        )
        images = work / "data" / "images"
        link_copies(images, work / "speed", 1, args.n)
        runs = speed_runs(work, checkpoint, precision, args)
        small = link_copies(images, work / "rss" / "n", 1, args.n_rss)
        big = link_copies(small / "c0", work / "rss" / "4n", 4)
        rss_n, rss_4n = (peak_rss(folder, checkpoint, args) for folder in (small, big))
    best = {mode: max(values) for mode, values in runs.items()}
    report = {
        "images": args.n,
        "precision": precision,
        "extract_images_per_s": round(best["extract"], 2),
    }
    print(f"\n{'mode':>14} {'images/s':>9} {'vs extract':>10} {'decoder share':>13}")
    print(f"{'extract':>14} {best['extract']:>9.1f} {1.0:>10.3f} {'':>13}")
    for k in BEAMS:
        rate = best[f"caption_beam{k}"]
        ratio = rate / best["extract"]
        print(f"{f'caption beam {k}':>14} {rate:>9.1f} {ratio:>10.3f} {1 - ratio:>13.3f}")
        report[f"caption_images_per_s_beam{k}"] = round(rate, 2)
        report[f"ratio_caption_vs_extract_beam{k}"] = round(ratio, 3)
        report[f"decoder_share_beam{k}"] = round(1 - ratio, 3)
    print(
        f"peak RSS (VmHWM, main process), beam 3: N={rss_n['images']}: "
        f"{rss_n['vmhwm_mb']:.0f} MB; 4N={rss_4n['images']}: {rss_4n['vmhwm_mb']:.0f} MB "
        f"(ratio {rss_4n['vmhwm_mb'] / rss_n['vmhwm_mb']:.3f})"
    )
    report.update(
        {
            "rss_mb_n": round(rss_n["vmhwm_mb"], 1),
            "rss_mb_4n": round(rss_4n["vmhwm_mb"], 1),
            "ratio_rss_4n_vs_n": round(rss_4n["vmhwm_mb"] / rss_n["vmhwm_mb"], 3),
            "n_rss": rss_n["images"],
            "n_rss_4n": rss_4n["images"],
            "runs": {mode: [round(v, 2) for v in values] for mode, values in runs.items()},
            "batch_size": args.batch_size,
            "workers": args.workers,
            "threads": torch.get_num_threads(),
        }
    )
    print(json.dumps(report))


if __name__ == "__main__":
    main()
