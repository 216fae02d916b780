"""Stage two at real dataset sizes: Flickr30k (31,783 images) and COCO (123,287 images).

    .venv/bin/python -m benchmarks.scale [--sizes flickr30k,coco] [--images N] [--steps 100]
                                         [--dir build] [--keep]

Run from the repository root (`make bench-scale ARGS=...`). Not part of `make test`.

Data, per size (written, measured, then deleted before the next size):
- a contract-valid feature file of N random grids (uniform [0, 1) float32, generated fresh for
  every 256-row block and stored float16: 200,704 bytes per image, 6.4 GB at Flickr30k size,
  24.7 GB at COCO size) and a Karpathy dataset.json of N images x 5 real Flickr8k captions
  (Flickr8k.token.txt; each image takes the five captions of a Flickr8k image drawn at random),
  both written by the testbed writer (`pipeline.testbed.files.write_testbed`, kind "scale").
  Splits: val 1,000 (Flickr30k) / 5,000 (COCO), test 5,000 at both sizes, so `evaluate`
  decodes the same number of images at each size; the rest is train.
- Model: configs/demo.toml's decoder with the real-data vocabulary and lengths (vocab.min_freq
  5, vocab.max_len 30, eval.max_len 30), on the CPU, train.workers 0 (everything in one
  process, so its VmHWM is the whole peak).

Measured, each phase in its own child process (peak RSS = the child's VmHWM at its end):
1. prepare: open the cache, parse the captions, splits, vocabulary, encode train/val
   (`parse_s` is their sum), then the SCST reward's setup over the train references (time, and
   its peak memory above the RSS before it: the peak is reset with /proc/self/clear_refs).
2. train, streamed (features.cache = "stream"): `setup_s` = from the start of `build_trainer`
   (which parses again) to the first batch; then `--steps` optimizer steps of the training
   loop's own `train_epoch` on the epoch's first batches (tokens/s over the steps after the
   first 5); then best.pt (its size in bytes). The grids were just written, so reads come
   partly from the page cache (all of it at Flickr30k size, not at COCO size on 24 GB).
3. train, `ram`: only where features.cache = "auto" holds the grids in RAM on this machine;
   otherwise null, with the package's reason.
4. evaluate: `evaluate_checkpoint` on the test split, beam 3 (METEOR included when Java is
   there), from the streamed run's best.pt.

Then every figure per size and the COCO / Flickr30k ratio next to the image ratio (3.88);
a cost that grows more than 25% faster than the images (or a rate that falls by more than 25%)
is flagged. The last line is one JSON object (`<size>_<figure>`, e.g. `coco_peak_rss_mb`).

Full size needs ~25 GB of free disk at the peak (COCO's cache; Flickr30k's is deleted first,
both with --keep) and takes about 15-25 minutes on a quiet 2-core machine. Everything goes
into a new folder under --dir, deleted at the end (also after an error or Ctrl-C) unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from benchmarks.common import FLICKR8K, REPO, status_mb
from pipeline import capacity, contract
from pipeline.captions.readers import read_captions
from pipeline.config import load_config
from pipeline.dataset.store import choose_cache
from pipeline.testbed import files as testbed_files

FLICKR8K_TOKENS = FLICKR8K / "Flickr8k.token.txt"
DEMO_CONFIG = REPO / "configs" / "demo.toml"
CAPTIONS_PER_IMAGE = 5
GROWTH_TOLERANCE = 1.25  # a figure is flagged when it grows 25% faster than the images
MIN_SPLIT = 10  # the fewest val / test images of a scaled-down (--images) run
CAPTION_BYTES = 400  # room kept per caption for dataset.json (about 220 bytes are written)
RUN_BYTES = 500_000_000  # room kept for the run folders and the evaluation's files
BEAM = 3
WARMUP_STEPS = 5  # training steps left out of tokens/s (the first batch, first kernel calls)


@dataclass(frozen=True)
class Size:
    """One dataset size: images in the cache, and how many of them val and test get."""

    name: str
    images: int
    val: int
    test: int

    @property
    def cache_bytes(self) -> int:
        return self.images * contract.row_bytes("float16")


SIZES = {
    "flickr30k": Size("flickr30k", 31_783, 1_000, 5_000),
    "coco": Size("coco", 123_287, 5_000, 5_000),
}


# ---------------------------------------------------------------- measuring helpers
# A phase runs as its own command (`--child PHASE`, output to a log) and reads its VmHWM with
# benchmarks.common.status_mb; the SCST reward's memory needs the peak reset within a phase.


def reset_peak_rss() -> None:
    """Set this process's VmHWM to its current RSS (Linux >= 4.0), to measure one phase."""
    Path("/proc/self/clear_refs").write_text("5")


class Timer:
    """Seconds since it was made (`seconds`), and since the last `lap`."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        seconds, self.last = now - self.last, now
        return seconds

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start


def run_child(phase: str, spec: dict, folder: Path, label: str = "") -> dict:
    """Run `phase` in a child python (`--child`), its output into folder/<label>.log; return
    the JSON it wrote. A failing child ends the benchmark with the end of its log."""
    label = label or phase
    result, log = folder / f"{label}.json", folder / f"{label}.log"
    command = [sys.executable, "-m", "benchmarks.scale", "--child", phase]
    command += ["--spec", json.dumps({**spec, "result": str(result)})]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    with log.open("w") as out:
        code = subprocess.run(
            command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
        ).returncode
    if code != 0:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        raise SystemExit(f"{label} failed (exit {code}):\n" + "\n".join(tail))
    return json.loads(result.read_text())


# ---------------------------------------------------------------- data


def planned_sizes(names: list[str], images: int | None) -> list[Size]:
    """The sizes to measure; `images` scales all of them so Flickr30k's has that many."""
    unknown = [name for name in names if name not in SIZES]
    if unknown or not names:
        raise SystemExit(f"--sizes: expected names from {', '.join(SIZES)}, got {names}")
    sizes = [SIZES[name] for name in names]
    if images is None:
        return sizes
    factor = images / SIZES["flickr30k"].images
    return [
        replace(
            size,
            images=round(size.images * factor),
            val=max(MIN_SPLIT, round(size.val * factor)),
            test=max(MIN_SPLIT, round(size.test * factor)),
        )
        for size in sizes
    ]


def needed_bytes(size: Size) -> int:
    """Disk one size takes at most: its cache, its captions, its runs and evaluation."""
    return size.cache_bytes + size.images * CAPTIONS_PER_IMAGE * CAPTION_BYTES + RUN_BYTES


def flickr8k_groups(path: Path) -> list[list[str]]:
    """The real Flickr8k captions, five per image (images with fewer are left out)."""
    if not path.is_file():
        raise SystemExit(f"no Flickr8k captions at {path}: pass --flickr8k PATH/Flickr8k.token.txt")
    frame = read_captions(path).frame
    groups = frame.groupby("image", sort=True)["caption"].apply(list)
    return [list(g[:CAPTIONS_PER_IMAGE]) for g in groups if len(g) >= CAPTIONS_PER_IMAGE]


def write_dataset(size: Size, folder: Path, groups: list[list[str]], seed: int) -> dict:
    """The size's feature file and dataset.json in `folder` (the testbed writer); returns
    their paths, bytes and the seconds it took."""
    rng = np.random.default_rng([seed, size.images])
    names = [f"{i:06d}.jpg" for i in range(size.images)]  # sorted, as extract writes ids
    drawn = rng.integers(0, len(groups), size=size.images)
    captions = [groups[int(g)] for g in drawn]
    order = rng.permutation(size.images)
    splits = np.full(size.images, "train", dtype=object)
    splits[order[: size.test]] = "test"
    splits[order[size.test : size.test + size.val]] = "val"

    def grids(start: int, stop: int) -> np.ndarray:
        """Rows start..stop-1: fresh uniform [0, 1) values, (n, 49, 2048) float32."""
        return rng.random((stop - start, contract.REGIONS, contract.CHANNELS), dtype=np.float32)

    timer = Timer()
    knobs = {"images": size.images, "seed": seed, "captions": "flickr8k, resampled"}
    testbed_files.write_testbed(folder, "scale", knobs, names, captions, list(splits), grids)
    features = folder / testbed_files.FEATURES_FILE
    captions_path = folder / testbed_files.CAPTIONS_FILE
    contract.open_complete(features).close()  # the contract's own checks: layout, complete
    return {
        "features": str(features),
        "captions": str(captions_path),
        "write_s": timer.seconds,
        "cache_bytes": features.stat().st_size,
        "captions_bytes": captions_path.stat().st_size,
    }


def overrides(data: dict, runs: Path, name: str, cache: str) -> list[str]:
    """configs/demo.toml's decoder on this size's files, real-data vocabulary, on the CPU."""
    return [
        f"data.captions={json.dumps(data['captions'])}",
        f"features.path={json.dumps(data['features'])}",
        f"features.cache={cache}",
        "vocab.min_freq=5",
        "vocab.max_len=30",
        "eval.max_len=30",
        f"train.out_dir={json.dumps(str(runs))}",
        f"train.name={name}",
        "train.device=cpu",
        "train.workers=0",
    ]


# ---------------------------------------------------------------- child phases


def prepare_phase(spec: dict) -> dict:
    """Parse + splits + vocabulary + encoded splits, then the SCST reward's setup."""
    from pipeline.dataset.batches import build_split, filter_to_cache
    from pipeline.dataset.experiment import open_cache, run_splits
    from pipeline.decoder.vocab import build_vocabulary
    from pipeline.train import scst

    config = load_config(DEMO_CONFIG, spec["overrides"])
    timer, out = Timer(), {}
    _, row_of, failed = open_cache(config.features.path)
    out["open_cache_s"] = timer.lap()
    table = read_captions(config.data.captions, config.data.format)
    out["read_captions_s"] = timer.lap()
    frame = filter_to_cache(table.frame, row_of, failed)
    frame, _, _, _ = run_splits(frame, table, config, None)
    out["splits_s"] = timer.lap()
    train_captions = frame.loc[frame["split"] == "train", "caption"]
    vocab, _ = build_vocabulary(train_captions, config.vocab.min_freq, config.vocab.tokenizer)
    out["vocab_s"] = timer.lap()
    max_len = config.vocab.max_len
    train = build_split(frame, "train", vocab, max_len, row_of)
    build_split(frame, "val", vocab, max_len, row_of)
    out["encode_s"] = timer.lap()
    out["parse_s"] = timer.seconds
    out["parse_peak_rss_mb"] = status_mb("VmHWM")
    out["vocab_size"] = len(vocab)
    out["train_images"] = len(train.image_names)
    out["train_captions"] = train.num_captions
    reset_peak_rss()
    before = status_mb("VmRSS")
    timer.lap()
    scst.build_scst(config, train.references, vocab)
    out["scst_setup_s"] = timer.lap()
    out["scst_setup_mb"] = status_mb("VmHWM") - before
    return out


class FirstSteps:
    """A training objective that runs only the first `steps` batches of `inner`'s epoch plan,
    noting when each batch reached it and its tokens."""

    def __init__(self, inner, steps: int):
        self.inner, self.steps, self.name = inner, steps, inner.name
        self.host_bound = inner.host_bound
        self.arrivals: list[float] = []  # perf_counter() when batch i reached `loss`
        self.tokens: list[float] = []  # target tokens of batch i

    def plan(self, trainer, epoch: int, rng: np.random.Generator) -> list:
        return self.inner.plan(trainer, epoch, rng)[: self.steps]

    def loss(self, trainer, key, batch: dict):
        self.arrivals.append(time.perf_counter())
        loss, stats = self.inner.loss(trainer, key, batch)
        self.tokens.append(stats["tokens"])
        return loss, stats

    def progress(self, sums: dict, seconds: float) -> str:
        return self.inner.progress(sums, seconds)

    def record(self, sums: dict, seconds: float) -> dict:
        return self.inner.record(sums, seconds)

    def steady_tokens_per_s(self) -> float:
        """Tokens/s of the steps after the first WARMUP_STEPS, up to the last batch's
        arrival (step i runs from arrival i to arrival i + 1, its next batch's read included)."""
        first = min(WARMUP_STEPS, len(self.arrivals) - 2)
        if first < 0:
            raise SystemExit("too few training steps to time: raise --steps")
        seconds = self.arrivals[-1] - self.arrivals[first]
        return sum(self.tokens[first:-1]) / seconds


def train_phase(spec: dict) -> dict:
    """Build the trainer, train `steps` steps, save best.pt when asked."""
    from pipeline import distributed
    from pipeline.decoder.checkpoint import save_checkpoint
    from pipeline.train.loop import train_epoch
    from pipeline.train.trainer import build_trainer, checkpoint_payload

    config = load_config(DEMO_CONFIG, spec["overrides"])
    timer = Timer()
    trainer = build_trainer(config, None, (), distributed.DistInfo())
    try:
        built = timer.seconds
        steps = FirstSteps(trainer.objective, spec["steps"])
        record = train_epoch(trainer, steps, 0)
        out = {
            "build_s": built,
            "first_batch_s": steps.arrivals[0] - timer.start - built,
            "setup_s": steps.arrivals[0] - timer.start,
            "tokens_per_s": steps.steady_tokens_per_s(),
            "steps": len(steps.arrivals),
            "steps_s": record["epoch_seconds"],
            "cache": trainer.data.store.cache,
        }
        if spec["checkpoint"]:
            path = trainer.run_dir / "best.pt"
            timer.lap()
            save_checkpoint(checkpoint_payload(trainer), path)
            out["checkpoint_s"] = timer.lap()
            out["checkpoint_bytes"] = path.stat().st_size
            out["checkpoint"] = str(path)
        out["peak_rss_mb"] = status_mb("VmHWM")
        return out
    finally:
        if trainer.lock is not None:
            trainer.lock.release()


def evaluate_phase(spec: dict) -> dict:
    """`evaluate_checkpoint` on the test split with beam BEAM, on the CPU."""
    from pipeline.infer.evaluate import evaluate_checkpoint

    timer = Timer()
    result = evaluate_checkpoint(
        spec["checkpoint"], "test", BEAM, Path(spec["out"]), device_name="cpu"
    )
    return {
        "evaluate_s": timer.seconds,
        "evaluate_images": result["num_images"],
        "evaluate_cider": result["scores"].get("CIDEr"),
        "evaluate_peak_rss_mb": status_mb("VmHWM"),
    }


PHASES = {"prepare": prepare_phase, "train": train_phase, "evaluate": evaluate_phase}


def run_phase(name: str, spec: dict) -> None:
    """The child's side of `run_child`: run the phase, write its JSON result."""
    out = PHASES[name](spec)
    Path(spec["result"]).write_text(json.dumps(out))


# ---------------------------------------------------------------- one size


def measure_size(size: Size, root: Path, groups: list[list[str]], args) -> dict:
    """Write one size's files under root/<size>, run every phase; the size's figures."""
    folder = root / size.name
    data_dir, runs, logs = folder / "data", folder / "runs", folder / "logs"
    logs.mkdir(parents=True)
    capacity.require_space(
        data_dir / "features.h5", needed_bytes(size), size.cache_bytes, hint="pass another --dir"
    )
    print(
        f"\n{size.name}: {size.images:,} images (val {size.val:,}, test {size.test:,})", flush=True
    )
    data = write_dataset(size, data_dir, groups, args.seed)
    print(
        f"  wrote {data['cache_bytes'] / 1e9:.2f} GB of grids + {data['captions_bytes'] / 1e6:.0f} MB "
        f"of captions in {data['write_s']:.0f} s",
        flush=True,
    )
    figures = {
        "images": size.images,
        **{k: v for k, v in data.items() if k.endswith(("_s", "_bytes"))},
    }
    figures.update(
        run_child("prepare", {"overrides": overrides(data, runs, "prepare", "stream")}, logs)
    )
    print(
        f"  parse + vocabulary + splits {figures['parse_s']:.1f} s; SCST reward {figures['scst_setup_s']:.1f} s",
        flush=True,
    )
    spec = {
        "overrides": overrides(data, runs, "stream", "stream"),
        "steps": args.steps,
        "checkpoint": True,
    }
    stream = run_child("train", spec, logs, "train-stream")
    figures.update(
        {
            k: stream[k]
            for k in (
                "build_s",
                "first_batch_s",
                "setup_s",
                "peak_rss_mb",
                "checkpoint_s",
                "checkpoint_bytes",
            )
        }
    )
    figures["tokens_per_s_stream"] = stream["tokens_per_s"]
    print(
        f"  streamed: setup {stream['setup_s']:.1f} s, {stream['tokens_per_s']:.0f} tok/s, peak RSS {stream['peak_rss_mb']:.0f} MB",
        flush=True,
    )
    figures.update(ram_figures(data, runs, logs, args.steps))
    evaluation = run_child(
        "evaluate", {"checkpoint": stream["checkpoint"], "out": str(folder / "evaluate")}, logs
    )
    figures.update(evaluation)
    print(
        f"  evaluate {evaluation['evaluate_images']:,} test images, beam {BEAM}: {evaluation['evaluate_s']:.0f} s",
        flush=True,
    )
    return figures


def ram_figures(data: dict, runs: Path, logs: Path, steps: int) -> dict:
    """The `ram` run where features.cache = "auto" would hold the grids in RAM; else nulls
    and the package's reason."""
    config = load_config(DEMO_CONFIG, overrides(data, runs, "ram", "auto"))
    cache, why = choose_cache(config.features.path, "auto", config.features.ram_budget_gb)
    if cache != "ram":
        print(f"  ram: not run: features.cache = auto picks {cache!r} here ({why})", flush=True)
        return {
            "tokens_per_s_ram": None,
            "setup_s_ram": None,
            "peak_rss_mb_ram": None,
            "ram_note": why,
        }
    spec = {"overrides": overrides(data, runs, "ram", "ram"), "steps": steps, "checkpoint": False}
    ram = run_child("train", spec, logs, "train-ram")
    print(
        f"  ram: setup {ram['setup_s']:.1f} s, {ram['tokens_per_s']:.0f} tok/s, peak RSS {ram['peak_rss_mb']:.0f} MB",
        flush=True,
    )
    return {
        "tokens_per_s_ram": ram["tokens_per_s"],
        "setup_s_ram": ram["setup_s"],
        "peak_rss_mb_ram": ram["peak_rss_mb"],
        "ram_note": why,
    }


# ---------------------------------------------------------------- report

# (figure, what it is, "cost" (should grow at most like the images) or "rate" (should stay))
FIGURES = (
    ("write_s", "write grids + captions (s)", "cost"),
    ("open_cache_s", "open and check the cache (s)", "cost"),
    ("read_captions_s", "parse the caption file (s)", "cost"),
    ("splits_s", "join to the cache + splits (s)", "cost"),
    ("vocab_s", "vocabulary (s)", "cost"),
    ("encode_s", "encode train + val captions (s)", "cost"),
    ("parse_s", "parse + vocabulary + splits (s)", "cost"),
    ("parse_peak_rss_mb", "peak RSS of parsing (MB)", "cost"),
    ("scst_setup_s", "SCST reward setup (s)", "cost"),
    ("scst_setup_mb", "SCST reward setup memory (MB)", "cost"),
    ("build_s", "build_trainer, streamed (s)", "cost"),
    ("first_batch_s", "then the first batch (s)", "cost"),
    ("setup_s", "setup: parse to first batch (s)", "cost"),
    ("tokens_per_s_stream", "tokens/s, streamed", "rate"),
    ("peak_rss_mb", "peak RSS, streamed training (MB)", "cost"),
    ("setup_s_ram", "setup, ram (s)", "cost"),
    ("tokens_per_s_ram", "tokens/s, ram", "rate"),
    ("peak_rss_mb_ram", "peak RSS, ram training (MB)", "cost"),
    ("checkpoint_s", "save best.pt (s)", "cost"),
    ("checkpoint_bytes", "best.pt (bytes)", "cost"),
    ("evaluate_s", f"evaluate test, beam {BEAM} (s)", "cost"),
    ("evaluate_peak_rss_mb", "peak RSS of evaluate (MB)", "cost"),
    ("cache_bytes", "feature file (bytes)", "cost"),
    ("captions_bytes", "dataset.json (bytes)", "cost"),
)


def growth(results: dict[str, dict]) -> tuple[float | None, dict[str, float], list[str]]:
    """The image ratio COCO / Flickr30k, each figure's ratio, and the flagged figures."""
    if not {"flickr30k", "coco"} <= results.keys():
        return None, {}, []
    small, large = results["flickr30k"], results["coco"]
    images = large["images"] / small["images"]
    ratios, flagged = {}, []
    for key, _, kind in FIGURES:
        if small.get(key) and large.get(key) is not None:
            ratios[key] = large[key] / small[key]
            too_fast = ratios[key] > GROWTH_TOLERANCE * images
            too_slow = kind == "rate" and ratios[key] < 1 / GROWTH_TOLERANCE
            if too_fast if kind == "cost" else too_slow:
                flagged.append(key)
    return images, ratios, flagged


def number(value: float | None) -> str:
    """A table cell: "-" for none, thousands without decimals, else two decimals."""
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.2f}"


def report(results: dict[str, dict]) -> dict:
    """Print the figures per size with their growth; return the JSON fields."""
    images, ratios, flagged = growth(results)
    names = list(results)
    print(
        "\n"
        + f"{'figure':<36}"
        + "".join(f"{n:>16}" for n in names)
        + ("   coco/flickr30k" if images else "")
    )
    for key, label, _ in FIGURES:
        values = [results[n].get(key) for n in names]
        cells = "".join(f"{number(v):>16}" for v in values)
        ratio = f"   {ratios[key]:6.2f}" if key in ratios else ""
        flag = "  <- faster than linear" if key in flagged else ""
        print(f"{label:<36}{cells}{ratio}{flag}")
    for name in names:
        if results[name]["tokens_per_s_ram"] is None:
            print(f"{name}: ram not measured: {results[name]['ram_note']}")
    if images:
        print(
            f"images: x{images:.2f}; costs should grow at most x{images:.2f} (flagged above "
            f"x{GROWTH_TOLERANCE * images:.2f}), rates stay (flagged below x{1 / GROWTH_TOLERANCE:.2f})"
        )
    out = {
        f"{name}_{key}": value
        for name, figures in results.items()
        for key, value in figures.items()
    }
    if images:
        out["image_ratio"] = images
        out.update({f"growth_{key}": value for key, value in ratios.items()})
        out["faster_than_linear"] = flagged
    return out


# ---------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", default="flickr30k,coco", help="comma-separated: flickr30k, coco"
    )
    parser.add_argument("--images", type=int, help="scale every size so Flickr30k's has N images")
    parser.add_argument("--steps", type=int, default=100, help="training steps per timed run")
    parser.add_argument("--dir", type=Path, default=REPO / "build", help="where to write")
    parser.add_argument("--keep", action="store_true", help="keep what was written")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--flickr8k", type=Path, default=FLICKR8K_TOKENS)
    parser.add_argument("--child", choices=PHASES, help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    return parser.parse_args()


def stop_on_sigterm(signum, frame) -> None:
    """SIGTERM ends the run like Ctrl-C, so the files are deleted."""
    raise KeyboardInterrupt


def main() -> None:
    args = parse_args()
    if args.child:
        run_phase(args.child, json.loads(args.spec))
        return
    sizes = planned_sizes([s.strip() for s in args.sizes.split(",") if s.strip()], args.images)
    if args.images is not None and args.images < 10 * MIN_SPLIT:
        raise SystemExit(f"--images must be at least {10 * MIN_SPLIT}")
    if args.steps < WARMUP_STEPS + 2:
        raise SystemExit(f"--steps must be at least {WARMUP_STEPS + 2}")
    total = sum(map(needed_bytes, sizes)) if args.keep else max(map(needed_bytes, sizes))
    capacity.require_space(
        args.dir / "scale", total, max(s.cache_bytes for s in sizes), hint="pass another --dir"
    )
    args.dir.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="scale-", dir=args.dir))
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    timer, results = Timer(), {}
    print(f"writing under {root} ({total / 1e9:.1f} GB at most); {os.cpu_count()} cpus", flush=True)
    try:
        groups = flickr8k_groups(args.flickr8k)
        print(
            f"captions: {len(groups):,} Flickr8k images x {CAPTIONS_PER_IMAGE} real captions, resampled",
            flush=True,
        )
        for size in sizes:
            results[size.name] = measure_size(size, root, groups, args)
            if not args.keep:
                shutil.rmtree(root / size.name)
    except KeyboardInterrupt:
        raise SystemExit("interrupted") from None
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
            print(f"deleted {root}")
    out = report(results)
    out.update({"steps": args.steps, "seconds": timer.seconds})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
