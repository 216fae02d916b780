"""Bulk captioning speed and memory: `caption --out` against extraction alone, and peak RSS.

Run standalone: `.venv/bin/python benchmarks/caption.py` (a few minutes on 2 cores).

- Demo images (`generate_demo_data`, 224x224 JPEGs) are extracted into a cache once, and the
  demo decoder (configs/demo.toml) is trained on it for one epoch: a real checkpoint.
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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from benchmarks.extract import link_copies  # noqa: E402
from pipeline import output  # noqa: E402
from pipeline.captions.demo_data import generate_demo_data  # noqa: E402
from pipeline.cli import main as captioner  # noqa: E402
from pipeline.decoder.checkpoint import load_checkpoint  # noqa: E402
from pipeline.extract.backbone import resolve_weights  # noqa: E402
from pipeline.extract.extractor import ExtractJob, run_extraction  # noqa: E402
from pipeline.extract.images import list_image_files  # noqa: E402
from pipeline.infer.caption import CaptionJob, run_caption  # noqa: E402
from pipeline.infer.caption_sources import Source  # noqa: E402

DEMO_CONFIG = REPO / "configs" / "demo.toml"
BEAMS = (1, 3)


def invoke(args: list[str]) -> None:
    """Run a captioner command in this process; raise with its output if it fails."""
    result = CliRunner().invoke(captioner, [str(a) for a in args], catch_exceptions=False)
    if result.exit_code != 0:
        raise RuntimeError(f"captioner {args[0]} failed:\n{result.output[-2000:]}")


def train_checkpoint(work: Path) -> Path:
    """Extract the demo images' cache and train the demo decoder on it for one epoch."""
    settings = [
        f"data.captions={json.dumps(str(work / 'data' / 'dataset.json'))}",
        f"data.images={json.dumps(str(work / 'data' / 'images'))}",
        f"features.path={json.dumps(str(work / 'cache.h5'))}",
        f"train.out_dir={json.dumps(str(work / 'runs'))}",
        "train.name=bench",
        "train.epochs=1",
        "train.val_images=0",
        "vocab.min_freq=1",
    ]
    overrides = sum((["--set", s] for s in settings), [])
    invoke(["extract", "--config", DEMO_CONFIG, *overrides, "--quiet"])
    invoke(["train", "--config", DEMO_CONFIG, *overrides])
    return work / "runs" / "bench" / "best.pt"


def extract_rate(folder: Path, out: Path, precision: str, batch_size: int, workers: int) -> float:
    """End-to-end images/s of extracting every image of `folder` (the baseline)."""
    job = ExtractJob(
        images_root=folder,
        names=list_image_files(folder),
        out=out,
        weights=resolve_weights("none"),
        device=torch.device("cpu"),
        precision=precision,
        dtype="float16",
        batch_size=batch_size,
        workers=workers,
        overwrite=True,
        progress=False,
    )
    with output.quiet():
        return run_extraction(job).images_per_s


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


def vmhwm_mb() -> float:
    """This process's peak resident memory (VmHWM in /proc/self/status), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def child(folder: str, checkpoint: str, out: str, batch_size: int, workers: int) -> None:
    """Subprocess body for `peak_rss`: caption the folder, print lines and VmHWM as JSON."""
    _, lines = caption(Path(folder), Path(checkpoint), Path(out), 3, batch_size, workers)
    print(json.dumps({"images": lines, "vmhwm_mb": vmhwm_mb()}))


def peak_rss(folder: Path, checkpoint: Path, out: Path, batch_size: int, workers: int) -> dict:
    """Caption every image under `folder` in a child process; its lines and peak RSS (MB)."""
    command = [sys.executable, __file__, "--child", str(folder), str(checkpoint), str(out)]
    command += [str(batch_size), str(workers)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=128, help="images of the speed runs")
    parser.add_argument("--n-rss", type=int, default=128, help="N for the N vs 4N RSS runs")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=2, help="runs of each; the best is kept")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    return parser.parse_args()


def speed_runs(
    work: Path, checkpoint: Path, precision: str, args: argparse.Namespace
) -> dict[str, list[float]]:
    """images/s of extraction and of captioning at each beam, alternating, `repeat` times."""
    runs: dict[str, list[float]] = {"extract": [], **{f"caption_beam{k}": [] for k in BEAMS}}
    folder = work / "speed" / "c0"
    for _ in range(args.repeat):
        runs["extract"].append(
            extract_rate(folder, work / "baseline.h5", precision, args.batch_size, args.workers)
        )
        for k in BEAMS:
            rate, _ = caption(
                folder, checkpoint, work / "captions.jsonl", k, args.batch_size, args.workers
            )
            runs[f"caption_beam{k}"].append(rate)
        print(
            ", ".join(f"{mode} {values[-1]:.1f} img/s" for mode, values in runs.items())
            + f" (load {os.getloadavg()[0]:.1f})",
            flush=True,
        )
    return runs


def link_first(source: Path, target: Path, count: int) -> Path:
    """`target`/c0 holding hard links to the first `count` images of `source`."""
    link_copies(source, target, 1)
    for path in sorted((target / "c0").iterdir())[count:]:
        path.unlink()
    return target


def main() -> None:
    args = parse_args()
    if args.child:
        folder, checkpoint, out, batch_size, workers = args.child
        child(folder, checkpoint, out, int(batch_size), int(workers))
        return
    with tempfile.TemporaryDirectory(prefix="bench-caption-") as tmp:
        work = Path(tmp)
        start = time.perf_counter()
        generate_demo_data(work / "data", n_images=max(args.n, args.n_rss), seed=0)
        checkpoint = train_checkpoint(work)
        precision = load_checkpoint(checkpoint)["features"]["precision"]
        print(
            f"demo data, cache and checkpoint in {time.perf_counter() - start:.1f}s; "
            f"{os.cpu_count()} cpus, precision {precision}, batch {args.batch_size}, "
            f"workers {args.workers}",
            flush=True,
        )
        images = work / "data" / "images"
        link_first(images, work / "speed", args.n)
        runs = speed_runs(work, checkpoint, precision, args)
        small = link_first(images, work / "rss" / "n", args.n_rss)
        link_copies(small / "c0", work / "rss" / "4n", 4)
        rss_n = peak_rss(small, checkpoint, work / "rss_n.jsonl", args.batch_size, args.workers)
        rss_4n = peak_rss(
            work / "rss" / "4n", checkpoint, work / "rss_4n.jsonl", args.batch_size, args.workers
        )
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
