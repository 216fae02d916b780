"""Stage-one speed and memory: end-to-end `extract` vs model-only forward, and peak RSS.

Run standalone: `.venv/bin/python benchmarks/extract.py` (about 2-4 minutes on 2 cores).

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
  own subprocess (VmHWM of the main process and the largest decode worker).

Prints a table, then one line of JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import output  # noqa: E402
from pipeline.extract.backbone import GridEncoder, build_backbone, resolve_weights  # noqa: E402
from pipeline.extract.extractor import (  # noqa: E402
    ExtractJob,
    FeatureEncoder,
    run_extraction,
    torch_threads,
)
from pipeline.extract.images import (  # noqa: E402
    list_image_files,
    preprocess_image,
    resize_crop_tensor,
)

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


def link_copies(source: Path, target: Path, copies: int) -> None:
    """`copies` hard-linked copies of every file in `source`, in target/c0, target/c1, ..."""
    for c in range(copies):
        sub = target / f"c{c}"
        sub.mkdir(parents=True, exist_ok=True)
        for path in sorted(source.iterdir()):
            os.link(path, sub / path.name)


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
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(steps):
            encoder.encode(batch)  # (B, 49, 2048)
        images = steps * batch_size
        return images / (time.perf_counter() - start), (time.process_time() - cpu) / images


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
    folder: Path, names: list[str], out: Path, precision: str, batch_size: int, workers: int
) -> float:
    """End-to-end images/s of run_extraction (decode, forward, HDF5 writes)."""
    job = ExtractJob(
        images_root=folder,
        names=names,
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
        result = run_extraction(job)
    return result.images_per_s


def peak_rss_mb(folder: Path, out: Path, precision: str, batch_size: int, workers: int) -> dict:
    """Run one extraction of every image under `folder` in a subprocess; its peak RSS in MB."""
    cmd = [
        sys.executable,
        __file__,
        "--child",
        str(folder),
        str(out),
        precision,
        str(batch_size),
        str(workers),
    ]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def child(folder: str, out: str, precision: str, batch_size: int, workers: int) -> None:
    """Subprocess body for `peak_rss_mb`: extract, then print peak RSS (MB) as JSON."""
    names = list_image_files(folder)
    extract_rate(Path(folder), names, Path(out), precision, batch_size, workers)
    main_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    workers_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(
        json.dumps(
            {"images": len(names), "main_mb": main_kb / 1024, "worker_mb": workers_kb / 1024}
        )
    )


def main() -> None:
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
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        folder, out, precision, batch_size, workers = args.child
        child(folder, out, precision, int(batch_size), int(workers))
        return
    with tempfile.TemporaryDirectory(prefix="bench-extract-") as tmp:
        tmp = Path(tmp)
        count = max(args.n_fp32, args.n_bf16, args.n_rss, args.n_decode)
        start = time.perf_counter()
        make_images(tmp / "images", count)
        print(
            f"made {count} JPEGs {WIDTH}x{HEIGHT} in {time.perf_counter() - start:.1f}s; "
            f"{os.cpu_count()} cpus, torch threads {torch.get_num_threads()}, "
            f"batch {args.batch_size}, workers {args.workers}",
            flush=True,
        )
        names = list_image_files(tmp / "images")
        rows, report = [], {}
        cores = len(os.sched_getaffinity(0))
        decode = decode_cpu_seconds(tmp / "images", names[: args.n_decode])
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
            fwds, exts, cpus, unfolded = [], [], [], []
            for _ in range(args.repeat):  # alternate, keep the best: the machine may be shared
                rate, cpu = forward_rate(tmp / "images", names[:n], precision, args.batch_size)
                fwds.append(rate)
                cpus.append(cpu)
                if precision == "fp32":  # what folding the batch norms gains
                    unfolded.append(
                        forward_rate(
                            tmp / "images", names[:n], precision, args.batch_size, folded=False
                        )[0]
                    )
                    print(f"fp32: forward without folded batch norms {unfolded[-1]:.1f} img/s")
                exts.append(
                    extract_rate(
                        tmp / "images",
                        names[:n],
                        tmp / f"{precision}.h5",
                        precision,
                        args.batch_size,
                        args.workers,
                    )
                )
                print(
                    f"{precision}: forward {fwds[-1]:.1f} img/s ({cpu * 1e3:.1f} CPU-ms/img), "
                    f"extract {exts[-1]:.1f} img/s (load {os.getloadavg()[0]:.1f})",
                    flush=True,
                )
            fwd, ext, cpu = max(fwds), max(exts), min(cpus)
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
            if unfolded:
                report["ratio_forward_folded_vs_unfolded_fp32"] = round(fwd / max(unfolded), 3)
                report["runs_fp32"]["forward_unfolded"] = [round(v, 2) for v in unfolded]
        (tmp / "rss").mkdir()
        link_copies(tmp / "images", tmp / "rss" / "n", 1)
        small = tmp / "rss" / "n"
        for path in sorted((small / "c0").iterdir())[args.n_rss :]:
            path.unlink()
        link_copies(small / "c0", tmp / "rss" / "4n", 4)
        rss_precision = precisions[-1]
        rss_n = peak_rss_mb(small, tmp / "rss_n.h5", rss_precision, args.batch_size, args.workers)
        rss_4n = peak_rss_mb(
            tmp / "rss" / "4n", tmp / "rss_4n.h5", rss_precision, args.batch_size, args.workers
        )
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
            f"peak RSS {rss_precision} (main / largest worker): N={rss_n['images']}: "
            f"{rss_n['main_mb']:.0f} / {rss_n['worker_mb']:.0f} MB; 4N={rss_4n['images']}: "
            f"{rss_4n['main_mb']:.0f} / {rss_4n['worker_mb']:.0f} MB"
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
