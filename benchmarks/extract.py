"""Stage-one speed and memory: end-to-end `extract` vs model-only forward, and peak RSS.

Run: `.venv/bin/python -m benchmarks.extract` (about 2-4 minutes on 2 cores).

- Writes photo-like 500x375 JPEGs (gradients + blurred and fine noise, quality 90) to a temp dir.
- For fp32 and bf16 (`--precisions`): model-only forward images/s on pre-made uint8 batches
  (normalisation + backbone, the exact work the extractor's main loop does per batch; one warm-up batch), then
  end-to-end extraction images/s (decode workers + forward + HDF5 writer; model build and file
  creation excluded) with the same batch size, precision and threads, in the same process.
  Each is run `--repeat` times, alternating, and the best run of each is kept (a shared
  machine's other jobs only ever slow a run down); every run is printed and in the JSON.
- The honest bound: decoding and the model share the same cores, so the best possible rate is
  cores / (decode CPU-seconds + forward CPU-seconds) per image. Decode CPU-s per image is
  measured on the policy's Pillow path (and, for comparison, torchvision.io.decode_jpeg plus a
  uint8 tensor resize, the device-decode path run on the CPU); forward CPU-s per image is the
  process CPU time of the model-only runs. `ratio_extract_vs_bound_<precision>` = extract
  images/s / that bound (target >= 0.9).
- fp32 also times the forward of the backbone as torchvision builds it, batch norms not folded:
  `ratio_forward_folded_vs_unfolded_fp32` is what `build_backbone`'s folding gains.
- Peak RSS (in the last of `--precisions`) of an extraction of N and of 4N images, each in its
  own child process: its VmHWM, and the largest decode worker's private memory (sampled).

Prints a table, then one line of JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image

from benchmarks.common import alternate, folder_job, in_child, link_copies, timed
from pipeline import output
from pipeline.extract.backbone import GridEncoder, build_backbone, resolve_weights
from pipeline.extract.extractor import FeatureEncoder, run_extraction, torch_threads
from pipeline.extract.images import list_image_files, preprocess_image, resize_crop_tensor

WIDTH, HEIGHT = 500, 375


def make_photo(rng: np.random.Generator) -> Image.Image:
    """A 500x375 RGB image with photo-like statistics: gradients, blobs and sensor noise."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * x + np.sin(angle) * y) / WIDTH  # (H, W)
    coarse = rng.normal(size=(12, 16, 3)).astype(np.float32)
    blobs = np.asarray(
        Image.fromarray(((coarse - coarse.min()) / np.ptp(coarse) * 255).astype(np.uint8)).resize(
            (WIDTH, HEIGHT), Image.BICUBIC
        ),
        dtype=np.float32,
    )  # (H, W, 3)
    base = rng.uniform(40, 200, size=3).astype(np.float32)
    img = 0.5 * blobs + 0.5 * base + 60 * ramp[..., None] + rng.normal(0, 8, size=blobs.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def make_images(folder: Path, count: int, seed: int = 0) -> None:
    """`count` JPEGs (quality 90) named 00000.jpg... in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        make_photo(rng).save(folder / f"{i:05d}.jpg", quality=90)


def unfolded_backbone() -> GridEncoder:
    """The grid encoder as torchvision builds it, batch norms not folded (the comparison)."""
    resnet = torchvision.models.resnet50(weights=None)
    model = GridEncoder(resnet).eval().requires_grad_(False)
    return model.to(memory_format=torch.channels_last)


def forward_rate(
    folder: Path, names: list[str], precision: str, batch_size: int, folded: bool = True
) -> tuple[float, float]:
    """Model-only (images/s, CPU-seconds per image): normalise + backbone on a pre-made uint8
    batch, len(names) images. CPU time is the whole process's (every intra-op thread).
    `folded=False`: the backbone without its batch norms folded into the convolutions."""
    device = torch.device("cpu")
    with torch_threads(device):
        model = build_backbone(resolve_weights("none"), device) if folded else unfolded_backbone()
        encoder = FeatureEncoder(model, device, precision, "float16")
        batch = torch.stack([preprocess_image(folder / n) for n in names[:batch_size]])
        encoder.encode(batch)  # warm-up: oneDNN primitive creation
        steps = math.ceil(len(names) / batch_size)
        cpu = time.process_time()
        seconds, _ = timed(lambda: [encoder.encode(batch) for _ in range(steps)])  # (B, 49, 2048)
        images = steps * batch_size
        return images / seconds, (time.process_time() - cpu) / images


def decode_cpu_seconds(folder: Path, names: list[str]) -> dict[str, float]:
    """CPU-seconds per image to make the uint8 (3, 224, 224) input, one thread, two ways:
    the policy's Pillow path, and torchvision.io.decode_jpeg + a uint8 tensor resize."""
    from torchvision.io import ImageReadMode, decode_jpeg  # only this benchmark needs it here

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.process_time()
        for name in names:
            preprocess_image(folder / name)
        pillow = (time.process_time() - start) / len(names)
        raws = [
            torch.frombuffer(bytearray((folder / n).read_bytes()), dtype=torch.uint8) for n in names
        ]
        start = time.process_time()
        for raw in raws:
            resize_crop_tensor(decode_jpeg(raw, mode=ImageReadMode.RGB))
        tensor = (time.process_time() - start) / len(names)
    finally:
        torch.set_num_threads(previous)
    return {"pillow": pillow, "torchvision": tensor}


def extract_rate(
    folder: Path, names: list[str] | None, out: Path, precision: str, batch_size: int, workers: int
) -> float:
    """End-to-end images/s of run_extraction (decode, forward, HDF5 writes) of `names` (every
    image under `folder` when None)."""
    job = folder_job(folder, out, precision=precision, batch_size=batch_size, workers=workers)
    if names is not None:
        job = dataclasses.replace(job, names=names)
    with output.quiet():
        return run_extraction(job).images_per_s


def peak_rss_mb(folder: Path, precision: str, args: argparse.Namespace) -> dict:
    """Peak memory (MB) of extracting every image under `folder` in a child process."""
    out = folder.with_suffix(".h5")
    peak = in_child(extract_rate, folder, None, out, precision, args.batch_size, args.workers)
    images = len(list_image_files(folder))
    return {"images": images, "main_mb": peak.main_mb, "worker_mb": peak.workers_mb}


def measure_precision(
    images: Path, names: list[str], precision: str, args: argparse.Namespace
) -> dict:
    """Forward (folded, and unfolded for fp32) and extraction runs, alternated, `repeat` each."""

    def forward(folded: bool):
        rate, cpu = forward_rate(images, names, precision, args.batch_size, folded)
        what = "forward" if folded else "forward without folded batch norms"
        print(f"{precision}: {what} {rate:.1f} img/s ({cpu * 1e3:.1f} CPU-ms/img)", flush=True)
        return rate, cpu

    def extract(_):
        out = images.parent / f"{precision}.h5"
        rate = extract_rate(images, names, out, precision, args.batch_size, args.workers)
        print(f"{precision}: extract {rate:.1f} img/s (load {os.getloadavg()[0]:.1f})", flush=True)
        return rate

    runs = {"forward": lambda _: forward(True)}
    if precision == "fp32":  # what folding the batch norms gains
        runs["forward_unfolded"] = lambda _: forward(False)
    return alternate({**runs, "extract": extract}, args.repeat)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-fp32", type=int, default=96)
    parser.add_argument("--n-bf16", type=int, default=256)
    parser.add_argument("--n-rss", type=int, default=64, help="N for the N vs 4N RSS runs")
    parser.add_argument("--n-decode", type=int, default=64, help="images timed for decode cost")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=2, help="runs of each; the best is kept")
    parser.add_argument(
        "--precisions",
        default="fp32,bf16",
        help="comma-separated (bf16 is slow without native bf16)",
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-extract-") as tmp:
        tmp = Path(tmp)
        images = tmp / "images"
        count = max(args.n_fp32, args.n_bf16, args.n_rss, args.n_decode)
        seconds, _ = timed(lambda: make_images(images, count))
        print(
            f"made {count} JPEGs {WIDTH}x{HEIGHT} in {seconds:.1f}s; "
            f"{os.cpu_count()} cpus, torch threads {torch.get_num_threads()}, "
            f"batch {args.batch_size}, workers {args.workers}",
            flush=True,
        )
        names = list_image_files(images)
        rows, report = [], {}
        cores = len(os.sched_getaffinity(0))
        decode = decode_cpu_seconds(images, names[: args.n_decode])
        print(
            f"decode CPU-s per image: Pillow policy {decode['pillow'] * 1e3:.2f} ms, "
            f"torchvision decode_jpeg + tensor resize {decode['torchvision'] * 1e3:.2f} ms",
            flush=True,
        )
        report["decode_cpu_ms_per_image"] = round(decode["pillow"] * 1e3, 3)
        report["decode_cpu_ms_per_image_torchvision"] = round(decode["torchvision"] * 1e3, 3)
        report["cores"] = cores
        sizes = {"fp32": args.n_fp32, "bf16": args.n_bf16}
        precisions = args.precisions.split(",")
        for precision in precisions:
            n = sizes[precision]
            runs = measure_precision(images, names[:n], precision, args)
            fwds = [rate for rate, _ in runs["forward"]]
            exts = runs["extract"]
            fwd, ext, cpu = max(fwds), max(exts), min(cpu for _, cpu in runs["forward"])
            bound = cores / (decode["pillow"] + cpu)
            rows.append((precision, n, fwd, ext, ext / fwd, bound, ext / bound))
            report[f"images_per_s_{precision}"] = round(ext, 2)
            report[f"forward_images_per_s_{precision}"] = round(fwd, 2)
            report[f"ratio_extract_vs_forward_{precision}"] = round(ext / fwd, 3)
            report[f"forward_cpu_ms_per_image_{precision}"] = round(cpu * 1e3, 2)
            report[f"bound_images_per_s_{precision}"] = round(bound, 2)
            report[f"ratio_extract_vs_bound_{precision}"] = round(ext / bound, 3)
            report[f"runs_{precision}"] = {
                "forward": [round(v, 2) for v in fwds],
                "extract": [round(v, 2) for v in exts],
            }
            if "forward_unfolded" in runs:
                unfolded = [rate for rate, _ in runs["forward_unfolded"]]
                report["ratio_forward_folded_vs_unfolded_fp32"] = round(fwd / max(unfolded), 3)
                report["runs_fp32"]["forward_unfolded"] = [round(v, 2) for v in unfolded]
        small = link_copies(images, tmp / "rss" / "n", 1, args.n_rss)
        big = link_copies(small / "c0", tmp / "rss" / "4n", 4)
        rss_precision = precisions[-1]
        rss_n, rss_4n = (peak_rss_mb(folder, rss_precision, args) for folder in (small, big))
        print(
            f"\n{'precision':>9} {'images':>6} {'forward/s':>10} {'extract/s':>10} {'ratio':>6} "
            f"{'bound/s':>8} {'vs bound':>8}"
        )
        for precision, n, fwd, ext, ratio, bound, vs_bound in rows:
            print(
                f"{precision:>9} {n:>6} {fwd:>10.1f} {ext:>10.1f} {ratio:>6.3f} {bound:>8.1f} "
                f"{vs_bound:>8.3f}"
            )
        print(
            f"peak RSS {rss_precision} (main VmHWM / largest worker's private memory): "
            f"N={rss_n['images']}: {rss_n['main_mb']:.0f} / {rss_n['worker_mb']:.0f} MB; "
            f"4N={rss_4n['images']}: {rss_4n['main_mb']:.0f} / {rss_4n['worker_mb']:.0f} MB"
        )
        report.update(
            {
                "rss_mb_n": round(rss_n["main_mb"], 1),
                "rss_mb_4n": round(rss_4n["main_mb"], 1),
                "rss_worker_mb_n": round(rss_n["worker_mb"], 1),
                "rss_worker_mb_4n": round(rss_4n["worker_mb"], 1),
                "n_rss": rss_n["images"],
                "rss_precision": rss_precision,
                "batch_size": args.batch_size,
                "workers": args.workers,
                "threads": torch.get_num_threads(),
            }
        )
        print(json.dumps(report))


if __name__ == "__main__":
    main()
