"""One GPU check: every CUDA path of captioner in one command, a table and one JSON line.

    .venv/bin/python -m benchmarks.gpu_check                 # on a GPU machine, < 8 minutes
    .venv/bin/python -m benchmarks.gpu_check --device cpu --tiny   # the same paths, seconds
    sh benchmarks/gpu_run.sh [ARGS]     # a bare GPU machine: its python3 + `make gpu-bundle`

`make bench-gpu` runs the first form. The third is for a GPU machine without the .venv or a
package registry (docs/benchmarks.md, "The GPU check"). tests/test_gpu_run.py runs the third
with `--device cpu --tiny`, importing only what such a machine has, so the script cannot rot
on machines without a GPU.

What runs, on `--device` (demo images generated here, random-init ResNet50, nothing fetched):
1. Stage one: model-only forward (fp16 on CUDA, batch 128) on pre-decoded images; the decode
   loader alone (workers = cores); extraction with JPEGs decoded on the device and with them
   decoded on the CPU; the two files' features compared. Then one line per backbone of
   pipeline/backbones.py (not with --tiny): its model-only forward images/s and stored bytes
   per image.
2. Stage two: one epoch of the demo decoder at train.precision fp32 and auto (AMP), tokens/s;
   the cached epoch vs the seed's end-to-end epoch (JPEG decode + ResNet50 fp32 per batch) on
   the same batches.
3. Batched beam search (k = 3) images/s on the test split's grids.
4. Bulk captioning (`caption --out`) of every demo image with the fp32 run's best.pt: beam 1
   and beam 3 with JPEGs decoded on the device, beam 3 decoded on the CPU, and beam 3 from
   the cache (`--features`, no CNN); the share of captions the two decode paths agree on.
5. torchrun (1 process, nccl on CUDA, gloo on CPU): one epoch, then `evaluate` of that run.
6. One SCST epoch from the trained checkpoint (`--init ... train.objective=scst`).

The environment (GPU, driver, torch, CUDA, cuDNN, NCCL, torchvision, h5py, Python, and where
the bundled packages were imported from) and every number are written to `--out` (default
gpu_check.json) as JSON at the start and after every section, and each section's figures are
printed as it ends: a run stopped half-way keeps what finished.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from importlib.metadata import version as metadata_version
from pathlib import Path

import h5py
import numpy as np
import torch
import torchvision
from click.testing import CliRunner
from torch.utils.data import DataLoader

from benchmarks.common import DEMO_CONFIG, REPO, DemoCache, demo_data, extract_cache, timed
from benchmarks.gpu_bundle import PACKAGES as BUNDLED_PACKAGES
from benchmarks.train import end_to_end as end_to_end_epoch
from benchmarks.train import make_trainer
from pipeline import contract, output
from pipeline.atomic import write_text_atomic
from pipeline.backbones import BACKBONES
from pipeline.cli import main as captioner
from pipeline.config import load_config
from pipeline.dataset.store import FeatureStore
from pipeline.decoder.checkpoint import load_model
from pipeline.decoder.generate import decode_features
from pipeline.extract.backbone import build_backbone, resolve_weights
from pipeline.extract.extractor import FeatureEncoder, list_images, resolve_precision
from pipeline.extract.images import ImageDataset, collate_images, preprocess_image
from pipeline.infer.caption import CaptionJob, run_caption
from pipeline.infer.caption_sources import Source

SMI_TIMEOUT_S = 20  # nvidia-smi's answer, for the driver's version
SIZES = {  # full: a real GPU run; tiny: the same paths in seconds on a CPU
    "full": {
        "images": 2048,
        "batch": 128,
        "epochs": 1,
        "beam_images": 500,
        "forward_batches": 8,
        "model": [],
        "backbones": tuple(BACKBONES),
        "train_variants": {  # large batches, the grids on the GPU, the compiled static step
            "b512": ["train.batch_size=512"],
            "b512_device": ["train.batch_size=512", 'features.cache="device"'],
            "b512_device_compiled": [
                "train.batch_size=512",
                'features.cache="device"',
                "train.compile=true",
                "train.length_bucket=8",
            ],
        },
    },
    "tiny": {
        "images": 48,
        "batch": 16,
        "epochs": 1,
        "beam_images": 12,
        "forward_batches": 2,
        "backbones": (),  # every backbone's build and forward: minutes on a CPU
        "train_variants": {},  # compiling takes minutes on a CPU
        "model": [
            "model.embed_dim=16",
            "model.hidden_dim=32",
            "model.attention_dim=16",
            "vocab.min_freq=1",
            "eval.max_len=8",
            "train.batch_size=32",
        ],
    },
}


def demo(work: Path) -> DemoCache:
    """The demo data under `work`; the features that stage two reads are the CPU-decoded ones."""
    return DemoCache.under(work, features="cpu_decode.h5")


# ---------------------------------------------------------------- stage one


def stage_one(work: Path, device: torch.device, size: dict) -> dict:
    """Forward-only, loader-only and end-to-end extraction rates; device vs CPU decoding."""
    cache = demo(work)
    images = cache.images
    names, _ = list_images(images, cache.captions)
    precision = resolve_precision("auto", device)
    workers = len(os.sched_getaffinity(0))
    batch = size["batch"]
    encoder = FeatureEncoder(
        build_backbone(resolve_weights("none"), device), device, precision, "float16"
    )
    crops = torch.stack([preprocess_image(images / n) for n in names[:batch]])  # (b, 3, 224, 224)
    encoder.encode(crops)  # warm-up (cuDNN / oneDNN kernels)
    seconds, _ = timed(
        lambda: [encoder.encode(crops) for _ in range(size["forward_batches"])], device
    )
    forward = size["forward_batches"] * len(crops) / seconds
    loader = DataLoader(
        ImageDataset(images, names, list(range(len(names)))),
        batch_size=batch,
        num_workers=workers,
        collate_fn=collate_images,
    )
    seconds, count = timed(lambda: sum(len(b.rows) for b in loader))
    out = {
        "precision": precision,
        "workers": workers,
        "batch": batch,
        "forward_images_per_s": forward,
        "loader_images_per_s": count / seconds,
    }
    for mode, decode in (("device_decode", "device"), ("cpu_decode", "cpu")):
        _, result = extract_cache(
            cache,
            f'features.decode="{decode}"',
            out=str(work / f"{mode}.h5"),
            device=device.type,
            precision=precision,
            batch_size=batch,
            workers=workers,
        )
        out[f"extract_{mode}_images_per_s"] = result.images_per_s
        out[f"extract_{mode}_failed"] = len(result.failed)
    out["device_vs_cpu_decode_max_rel_diff"] = feature_difference(
        work / "device_decode.h5", work / "cpu_decode.h5"
    )
    return {**out, **backbone_forwards(crops, device, precision, size)}


def backbone_forwards(
    crops: torch.Tensor, device: torch.device, precision: str, size: dict
) -> dict:
    """Per backbone of size["backbones"] (random init, its own grid): model-only forward
    images/s on `crops` (B, 3, 224, 224), and the bytes one image's float16 grid takes."""
    from pipeline.extract.extractor import extractor_attrs, native_grid

    out = {}
    for name in size["backbones"]:
        grid = native_grid(name)
        model = build_backbone(resolve_weights("none", name), device, name, grid)
        shape = contract.feature_shape(extractor_attrs(name, grid, False))
        encoder = FeatureEncoder(model, device, precision, "float16", shape=shape)
        encoder.encode(crops)  # warm-up
        seconds, _ = timed(
            lambda e=encoder, c=crops: [e.encode(c) for _ in range(size["forward_batches"])],
            device,
        )
        out[f"backbone_{name}_forward_images_per_s"] = (
            size["forward_batches"] * len(crops) / seconds
        )
        out[f"backbone_{name}_bytes_per_image"] = contract.row_bytes("float16", shape)
        del encoder, model
    return out


def feature_difference(a: Path, b: Path) -> float:
    """max |a - b| / max |b| over every row of two feature files of the same images."""
    rows = np.arange(feature_rows(a))
    first, second = FeatureStore(str(a)).read(rows), FeatureStore(str(b)).read(rows)
    scale = float(abs(second.astype("float32")).max())
    return float(abs(first.astype("float32") - second.astype("float32")).max()) / scale


def feature_rows(path: Path) -> int:
    """Rows of a feature file."""
    with contract.open_h5(path) as f:
        return f[contract.FEATURES].shape[0]


# ---------------------------------------------------------------- stage two


def settings(work: Path, device: torch.device, size: dict, name: str) -> list[str]:
    """--set overrides of configs/demo.toml for a run named `name` in `work`."""
    return [
        *demo(work).settings(),
        f"train.name={name}",
        f"train.device={device.type}",
        f"train.epochs={size['epochs']}",
        "train.val_images=0",
        *size["model"],
    ]


def invoke(args: list[str]) -> None:
    """Run a captioner command in this process; raise with its output if it fails."""
    result = CliRunner().invoke(captioner, args, catch_exceptions=False)
    if result.exit_code != 0:
        raise RuntimeError(f"captioner {' '.join(args[:2])} failed:\n{result.output}")


def last_epoch(run: Path) -> dict:
    """The run's last metrics.jsonl record."""
    lines = (run / "metrics.jsonl").read_text("utf-8").strip().splitlines()
    return json.loads(lines[-1])


def training(work: Path, device: torch.device, size: dict) -> dict:
    """tokens/s of one epoch at fp32 and at the automatic mixed precision."""
    out = {}
    for precision in ("fp32", "auto"):
        name = f"train-{precision}"
        invoke(
            [
                "train",
                "--config",
                str(DEMO_CONFIG),
                *sum((["--set", s] for s in settings(work, device, size, name)), []),
                "--set",
                f"train.precision={precision}",
            ]
        )
        record = last_epoch(work / "runs" / name)
        out[f"tokens_per_s_{precision}"] = record["tokens_per_s"]
        out[f"val_CIDEr_{precision}"] = record.get("CIDEr")
    return out


def training_variants(work: Path, device: torch.device, size: dict) -> dict:
    """tokens/s of one epoch at the automatic precision for each of `size`'s variants (batch
    size, `features.cache`, `train.compile`), each beside the plain automatic run's."""
    out = {}
    for name, overrides in size["train_variants"].items():
        run = f"train-{name}"
        extra = sum((["--set", s] for s in (*settings(work, device, size, run), *overrides)), [])
        invoke(["train", "--config", str(DEMO_CONFIG), *extra])
        out[f"tokens_per_s_{name}"] = last_epoch(work / "runs" / run)["tokens_per_s"]
    return out


def end_to_end(work: Path, device: torch.device, size: dict) -> dict:
    """The cached epoch vs the seed's end-to-end epoch (benchmarks/train.py's measurement)."""
    config = load_config(
        DEMO_CONFIG, (*settings(work, device, size, "e2e"), 'features.cache="ram"')
    )
    trainer = make_trainer(config)
    encoder = FeatureEncoder(
        build_backbone(resolve_weights("none"), device), device, "fp32", "float16"
    )
    count = min(len(trainer.train_split.image_names), 4 * size["batch"])
    result = end_to_end_epoch(
        trainer, demo(work).images, encoder, count, trainer.config.train.batching, repeats=1
    )
    return {"speedup_cached_vs_end_to_end": result["speedup"]}


def beam(work: Path, device: torch.device, size: dict) -> dict:
    """Batched beam search (k = 3) images/s on cached grids with the fp32 run's best.pt."""
    loaded = load_model(work / "runs" / "train-fp32", device)
    store = FeatureStore(str(work / "cpu_decode.h5"))
    rows = np.arange(min(size["beam_images"], feature_rows(work / "cpu_decode.h5")))
    grids = torch.from_numpy(store.read(rows)).to(device)  # (n, 49, 2048)
    decode_features(loaded.model, grids[:2], loaded.vocab, loaded.config.eval, 3)  # warm-up
    seconds, _ = timed(
        lambda: decode_features(loaded.model, grids, loaded.vocab, loaded.config.eval, 3), device
    )
    return {"beam3_images_per_s": len(rows) / seconds}


CAPTION_MODES = {  # name: (source, beam, JPEGs decoded on the device)
    "beam1": ("images", 1, True),
    "beam3": ("images", 3, True),
    "beam3_cpu_decode": ("images", 3, False),
    "beam3_features": ("features", 3, None),
}


def bulk_caption(work: Path, device: torch.device, size: dict) -> dict:
    """`caption --out` images/s over every demo image in each of CAPTION_MODES, with the fp32
    run's best.pt; how many captions the device and the CPU decode paths share."""
    sources = {
        "images": Source(folder=str(demo(work).images)),
        "features": Source(features=str(work / "cpu_decode.h5")),
    }
    out = {}
    for name, (source, beam, on_device) in CAPTION_MODES.items():
        job = CaptionJob(
            sources[source],
            work / "runs" / "train-fp32" / "best.pt",
            beam_size=beam,
            out=work / f"caption_{name}.jsonl",
            batch_size=size["batch"],
            workers=len(os.sched_getaffinity(0)),
            device=device.type,
            device_decode=on_device,
            progress=False,
        )
        with output.quiet():
            _, result = timed(lambda job=job: run_caption(job), device)
        out[f"caption_{name}_images_per_s"] = result.images_per_s
        out[f"caption_{name}_failed"] = result.failed
    on_device, on_cpu = (
        captions(work / f"caption_{n}.jsonl") for n in ("beam3", "beam3_cpu_decode")
    )
    same = sum(on_device[image] == on_cpu.get(image) for image in on_device)
    out["caption_device_vs_cpu_decode_same_captions"] = same / max(1, len(on_device))
    return out


def captions(path: Path) -> dict[str, str]:
    """image -> caption of a `caption --out` file."""
    lines = [json.loads(line) for line in path.read_text("utf-8").splitlines()]
    return {line["image"]: line.get("caption") for line in lines}


def torchrun(work: Path, device: torch.device, size: dict) -> dict:
    """One epoch under torchrun (1 process), then evaluate that run."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "1",
        "-m",
        "pipeline",
        "train",
        "--config",
        str(DEMO_CONFIG),
        *sum((["--set", s] for s in settings(work, device, size, "torchrun")), []),
    ]
    seconds, done = timed(
        lambda: subprocess.run(command, capture_output=True, text=True, cwd=REPO), device
    )
    if done.returncode != 0:
        raise RuntimeError(f"torchrun failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    run = work / "runs" / "torchrun"
    invoke(["evaluate", str(run), "--out", str(work / "evaluations"), "--device", device.type])
    metrics = json.loads((work / "evaluations" / "torchrun" / "metrics.json").read_text("utf-8"))
    return {
        "torchrun_backend": "nccl" if device.type == "cuda" else "gloo",
        "torchrun_seconds": seconds,
        "torchrun_test_CIDEr": metrics["scores"]["CIDEr"],
    }


def scst(work: Path, device: torch.device, size: dict) -> dict:
    """One SCST epoch started from the fp32 run's best checkpoint."""
    init = work / "runs" / "train-fp32" / "best.pt"
    invoke(
        [
            "train",
            "--config",
            str(DEMO_CONFIG),
            "--init",
            str(init),
            *sum((["--set", s] for s in settings(work, device, size, "scst")), []),
            "--set",
            'train.objective="scst"',
        ]
    )
    record = last_epoch(work / "runs" / "scst")
    return {"scst_epoch_seconds": record["epoch_seconds"], "scst_mean_reward": record.get("reward")}


# ---------------------------------------------------------------- main

SECTIONS = (stage_one, training, end_to_end, beam, bulk_caption, torchrun, scst, training_variants)


def run_checks(work: Path, device: torch.device, size: dict, out: Path) -> dict:
    """Every section in order; a failing section is recorded and the others still run.

    The report goes to `out` at the start (with `environment`) and again after every section,
    each section's figures are printed as it ends: a run cut short keeps what finished.
    `sections` maps each finished section to "ok" or "failed"; `finished` is true at the end.
    """
    report = {
        "device": describe(device),
        "environment": environment(device),
        "sections": {},
        "results": {},
        "failures": {},
        "finished": False,
    }
    write_report(report, out)
    show(f"gpu check on {report['device']}")
    for key, value in report["environment"].items():
        show(f"  {key:<42}{value}")
    demo_data(work, size["images"])
    for section in SECTIONS:
        name = section.__name__
        try:
            seconds, figures = timed(lambda s=section: s(work, device, size), device)
        except Exception as exc:  # noqa: BLE001 - one broken path must not hide the others
            report["failures"][name] = f"{type(exc).__name__}: {str(exc)[-800:]}"
            report["sections"][name] = "failed"
            show(f"{name}: FAILED {report['failures'][name]}")
        else:
            figures[f"{name}_seconds"] = round(seconds, 1)
            report["results"].update(figures)
            report["sections"][name] = "ok"
            show(f"{name}:")
            for key, value in figures.items():
                shown = f"{value:,.3f}" if isinstance(value, float) else str(value)
                show(f"  {key:<42}{shown:>16}")
        write_report(report, out)
    report["finished"] = True
    write_report(report, out)
    return report


def show(line: str) -> None:
    """Print one line now (not when the buffer fills): a run cut short still shows it."""
    print(line, flush=True)


def write_report(report: dict, out: Path) -> None:
    """The report as JSON at `out`, whole or not at all (temp file, then rename)."""
    write_text_atomic(out, json.dumps(report, indent=1))


def describe(device: torch.device) -> str:
    """One line naming the device and torch."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return f"cpu ({len(os.sched_getaffinity(0))} cores), torch {torch.__version__}"


def environment(device: torch.device) -> dict:
    """What the figures were measured on: GPU, driver, library versions, and where each package
    of `make gpu-bundle` was imported from (None where a part is absent, e.g. on a CPU)."""
    cuda = device.type == "cuda"
    return {
        "gpu": torch.cuda.get_device_name(device) if cuda else None,
        "driver": nvidia_driver(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "nccl": nccl_version(),
        "torchvision": torchvision.__version__,
        "h5py": h5py.__version__,
        "hdf5": h5py.version.hdf5_version,
        "cpu_cores": len(os.sched_getaffinity(0)),
        "packages": {name: package_origin(name) for name in BUNDLED_PACKAGES},
    }


def nvidia_driver() -> str | None:
    """The NVIDIA driver's version from nvidia-smi, or None without one that answers."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    query = [smi, "--query-gpu=driver_version", "--format=csv,noheader"]
    try:
        done = subprocess.run(query, capture_output=True, text=True, timeout=SMI_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = done.stdout.strip().splitlines()
    return lines[0].strip() if done.returncode == 0 and lines else None


def nccl_version() -> str | None:
    """NCCL's version as torch was built with it, or None (a CPU build has none)."""
    try:
        return ".".join(str(part) for part in torch.cuda.nccl.version())
    except (AttributeError, RuntimeError):
        return None


def package_origin(name: str) -> dict:
    """The version of a package and the folders it is imported from (a namespace package, as
    pycocoevalcap is, may have several)."""
    folders = list(importlib.import_module(name).__path__)
    return {"version": metadata_version(name), "folders": folders}


def print_ratios(report: dict) -> None:
    """The ratios between sections' figures, and the failures, after the last section."""
    for section, reason in report["failures"].items():
        show(f"  FAILED {section}: {reason}")
    results = report["results"]
    if "caption_beam3_images_per_s" in results and "forward_images_per_s" in results:
        show(
            f"  bulk caption beam 3 / model-only forward: "
            f"{results['caption_beam3_images_per_s'] / results['forward_images_per_s']:.2f}"
        )
    if "extract_device_decode_images_per_s" in results:
        show(
            f"  device decode / model-only forward: "
            f"{results['extract_device_decode_images_per_s'] / results['forward_images_per_s']:.2f}"
            f"; cpu decode / forward: "
            f"{results['extract_cpu_decode_images_per_s'] / results['forward_images_per_s']:.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--tiny", action="store_true", help="small sizes: the paths, in seconds")
    parser.add_argument("--out", default="gpu_check.json", help="JSON of the results so far")
    parser.add_argument("--work", default="", help="keep the work folder here (default: temp)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device here; use --device cpu --tiny to check the paths")
    size = SIZES["tiny" if args.tiny else "full"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        report = run_checks(work, device, size, Path(args.out))
    print_ratios(report)
    print(json.dumps(report), flush=True)
    if report["failures"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
