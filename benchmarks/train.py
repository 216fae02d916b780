"""Stage-two training speed and memory: cached grids vs the seed's per-step CNN, streamed vs RAM.

    .venv/bin/python benchmarks/train.py [--quick]

About 3 minutes on a quiet 2-core CPU (--quick about 1). Another busy process makes the
2-thread decoder several times slower (see `others` below), so compare ratios within one run.

Data: N demo images (`generate_demo_data`) extracted once by `run_extraction` (random-init
ResNet50, the auto precision, float16 grids); a 4N cache is built from it with
`contract.create_feature_file` (rows repeated, each copy scaled slightly) plus a matching
Karpathy dataset.json. Decoder: configs/demo.toml (additive attention, embed 128, hidden 256,
attention 128), train.batch_size 64 captions of whole images, Adam, CPU fp32. Every timed
epoch is the training loop's own `train_epoch` on a `build_trainer` Trainer.

1. Epochs: in memory (features.in_memory = true) vs streamed from HDF5 (false) with
   train.workers 0 and 2; one Trainer per mode, the same epoch index (so the same batches and
   losses) for every mode in a round, the order alternating (ABC, CBA, ...); round 0 is
   warm-up and dropped; best epoch of each mode.
2. End-to-end (the seed's way): the same Trainer with a store that decodes the JPEGs and runs
   ResNet50 fp32 on every read, vs the in-memory cache, on the same fixed batches (first K
   train images, same epoch index), alternated, best of each. Also with the seed's batch
   composition (batching = "random": 64 images, one caption each) unless --quick.
3. Memory of one training epoch, each in its own subprocess: streamed (train.workers 2) on the
   N and the 4N cache, and (for contrast) in memory: the main process's VmHWM and the
   largest DataLoader worker's private memory.

"others" is the CPU time other processes took during a timing, in cores (0 = quiet machine,
1 = one of the cores busy elsewhere): slow rows with others > 0.3 were measured under load.
Prints tables, then one line of JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pipeline import contract, distributed, output  # noqa: E402
from pipeline.captions.demo_data import generate_demo_data  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.dataset.batches import SplitData, plan_epoch  # noqa: E402
from pipeline.extract.backbone import build_backbone, resolve_weights  # noqa: E402
from pipeline.extract.extractor import (  # noqa: E402
    ExtractJob,
    FeatureEncoder,
    list_images,
    resolve_precision,
    run_extraction,
)
from pipeline.extract.images import preprocess_image  # noqa: E402
from pipeline.train.loop import train_epoch  # noqa: E402
from pipeline.train.trainer import Trainer, build_trainer  # noqa: E402

DEMO_CONFIG = REPO / "configs" / "demo.toml"
CPU = torch.device("cpu")
RSS_WORKERS = 2  # train.workers of the streamed RSS runs: the trainer's default, with workers


# ---------------------------------------------------------------- data


def make_cache(root: Path, n_images: int) -> dict:
    """Demo JPEGs + dataset.json under root/data and their features.h5 (run_extraction)."""
    generate_demo_data(root / "data", n_images=n_images, seed=0)
    with output.quiet():
        names, _ = list_images(root / "data" / "images", root / "data" / "dataset.json")
    job = ExtractJob(
        images_root=root / "data" / "images",
        names=names,
        out=root / "features.h5",
        weights=resolve_weights("none"),
        device=CPU,
        precision=resolve_precision("auto", CPU),
        dtype="float16",
        batch_size=32,
        workers=1,
        progress=False,
    )
    with output.quiet():
        result = run_extraction(job)
    return {
        "images": root / "data" / "images",
        "captions": root / "data" / "dataset.json",
        "features": root / "features.h5",
        "precision": job.precision,
        "extract_images_per_s": result.images_per_s,
    }


def make_copies_cache(source: dict, out_dir: Path, copies: int) -> dict:
    """A cache of `copies` x N rows ("c<k>/<image>", copy k scaled by 1 + k/100) + captions."""
    with contract.open_complete(source["features"]) as f:
        attrs = contract.read_attrs(f)
        names = contract.read_image_ids(f)
        features = f[contract.FEATURES][:]  # (N, 49, 2048) float16
    for key in ("num_images", "complete"):
        attrs.pop(key, None)
    ids = [f"c{k}/{name}" for k in range(copies) for name in names]
    path = out_dir / f"features_x{copies}.h5"
    contract.create_feature_file(path, ids, attrs, str(features.dtype))
    with contract.open_h5(path, "r+") as f:
        for k in range(copies):
            rows = slice(k * len(names), (k + 1) * len(names))
            f[contract.FEATURES][rows] = features * features.dtype.type(1 + k / 100)
        f[contract.STATUS][:] = contract.WRITTEN
        f.create_dataset(
            contract.FAILED, data=np.zeros((0, 2), dtype=object), dtype=contract.STRING_DTYPE
        )
        f.attrs["complete"] = True
    captions = out_dir / f"dataset_x{copies}.json"
    captions.write_text(json.dumps(copied_karpathy(source["captions"], copies)), "utf-8")
    return {"features": path, "captions": captions, "rows": len(ids)}


def copied_karpathy(path: Path, copies: int) -> dict:
    """The Karpathy file's images repeated under filepath c0..c<copies-1>, ids renumbered."""
    data = json.loads(Path(path).read_text("utf-8"))
    images, sentid = [], 0
    for k in range(copies):
        for entry in data["images"]:
            imgid = len(images)
            sentences = []
            for sentence in entry["sentences"]:
                sentences.append({**sentence, "imgid": imgid, "sentid": sentid})
                sentid += 1
            images.append(
                {
                    **entry,
                    "filepath": f"c{k}",
                    "imgid": imgid,
                    "sentences": sentences,
                    "sentids": [s["sentid"] for s in sentences],
                }
            )
    return {"images": images, "dataset": data.get("dataset", "demo")}


# ---------------------------------------------------------------- trainers


def bench_config(
    features: Path,
    captions: Path,
    runs: Path,
    name: str,
    in_memory: bool,
    workers: int,
    extra: tuple[str, ...] = (),
):
    """configs/demo.toml pointed at a cache, on the CPU, with this mode's features/workers."""
    return load_config(
        DEMO_CONFIG,
        (
            f"data.captions={json.dumps(str(captions))}",
            f"features.path={json.dumps(str(features))}",
            f"features.in_memory={'true' if in_memory else 'false'}",
            f"train.out_dir={json.dumps(str(runs))}",
            f"train.name={name}",
            "train.device=cpu",
            f"train.workers={workers}",
            *extra,
        ),
    )


def make_trainer(config) -> Trainer:
    """build_trainer, with its progress lines swallowed."""
    with contextlib.redirect_stdout(io.StringIO()):
        return build_trainer(config, None, (), distributed.DistInfo())


def cpu_seconds() -> tuple[float, float]:
    """(busy CPU seconds of the whole machine, CPU seconds of this process + reaped children)."""
    t = os.times()
    ours = t.user + t.system + t.children_user + t.children_system
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            ticks = [int(v) for v in handle.readline().split()[1:9]]
    except OSError:
        return float("nan"), ours
    busy = sum(ticks) - ticks[3] - ticks[4]  # all but idle and iowait (steal counts as busy)
    return busy / os.sysconf("SC_CLK_TCK"), ours


def timed_epoch(trainer: Trainer, epoch: int) -> dict:
    """train_epoch's record plus `others`: cores other processes used meanwhile."""
    busy0, ours0 = cpu_seconds()
    record = train_epoch(trainer, trainer.objective, epoch)
    busy1, ours1 = cpu_seconds()
    others = ((busy1 - busy0) - (ours1 - ours0)) / record["epoch_seconds"]
    return {**record, "others": max(others, 0.0)}


def alternate_epochs(trainers: dict[str, Trainer], rounds: int) -> dict[str, list[dict]]:
    """Round r runs epoch r of every trainer, order reversed every other round."""
    records: dict[str, list[dict]] = {name: [] for name in trainers}
    names = list(trainers)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            records[name].append(timed_epoch(trainers[name], r))
            rec = records[name][-1]
            print(
                f"  round {r} {name:<22} {rec['epoch_seconds']:6.2f} s "
                f"{rec['tokens_per_s']:6.0f} tok/s  others {rec['others']:.2f}",
                flush=True,
            )
    return records


# ---------------------------------------------------------------- end to end


class ImageStore:
    """Stands in for the trainer's FeatureStore: every read decodes the JPEGs of `rows` and
    runs the ResNet50 encoder on them (the seed's per-step CNN)."""

    in_memory = True  # make_loader then decodes in the training process, like the seed on CPU
    cache = "ram"  # (FeatureStore's attribute that make_loader reads for pinning)

    def __init__(self, images_root: Path, row_names: list[str], encoder: FeatureEncoder):
        self.images_root = images_root
        self.row_names = row_names
        self.encoder = encoder

    def read(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), 49, 2048) float32 grids computed now from the image files."""
        images = torch.stack(
            [preprocess_image(self.images_root / self.row_names[int(r)]) for r in rows]
        )  # (n, 3, 224, 224) uint8
        return self.encoder.encode(images)  # (n, 49, 2048)

    def gather(self, rows: np.ndarray) -> torch.Tensor:
        """`read` as a tensor, as FeatureStore.gather gives it."""
        return torch.from_numpy(self.read(rows))  # (n, 49, 2048)


def head_split(split: SplitData, count: int) -> SplitData:
    """The first `count` images of a split with their captions (indices renumbered)."""
    keep = split.captions_of_image[:count]
    old = np.concatenate(keep)  # (n_captions,) indices into split.tokens
    new_of_old = {int(c): i for i, c in enumerate(old)}
    return SplitData(
        image_names=split.image_names[:count],
        image_ids=split.image_ids[:count],
        image_rows=split.image_rows[:count],
        captions_of_image=[
            np.asarray([new_of_old[int(c)] for c in g], dtype=np.int64) for g in keep
        ],
        caption_image=split.caption_image[old],
        tokens=[split.tokens[int(c)] for c in old],
        references=split.references[:count],
    )


def with_composition(trainer: Trainer, mode: str) -> Trainer:
    """The same Trainer (model, optimizer) with train.batching = `mode`."""
    config = trainer.config
    train = dataclasses.replace(config.train, batching=mode)
    return dataclasses.replace(trainer, config=dataclasses.replace(config, train=train))


def end_to_end(
    trainer: Trainer,
    images_root: Path,
    encoder: FeatureEncoder,
    count: int,
    mode: str,
    repeats: int,
) -> dict:
    """Best seconds of the same batches (first `count` train images, epoch 0) cached vs seed."""
    cached = with_composition(
        dataclasses.replace(trainer, train_split=head_split(trainer.train_split, count)), mode
    )
    row_names = {row: name for name, row in trainer.data.row_of.items()}
    store = ImageStore(images_root, [row_names[r] for r in range(len(row_names))], encoder)
    seed_way = dataclasses.replace(cached, data=dataclasses.replace(trainer.data, store=store))
    first_batch, _ = plan_epoch(cached.train_split, cached.config.train.batch_size, mode, None)[0]
    store.read(cached.train_split.image_rows[first_batch])  # warm-up: oneDNN primitives
    runs: dict[str, list[dict]] = {"cached": [], "end_to_end": []}
    for _ in range(repeats):
        runs["end_to_end"].append(timed_epoch(seed_way, 0))
        runs["cached"].append(timed_epoch(cached, 0))
    best = {k: min(v, key=lambda r: r["epoch_seconds"]) for k, v in runs.items()}
    tokens = best["cached"]["tokens_per_s"] * best["cached"]["epoch_seconds"]
    return {
        "mode": mode,
        "images": count,
        "captions": cached.train_split.num_captions,
        "tokens": round(tokens),
        "runs": runs,
        "best": best,
        "speedup": best["end_to_end"]["epoch_seconds"] / best["cached"]["epoch_seconds"],
    }


# ---------------------------------------------------------------- peak RSS


def status_mb(field: str, pid: int | str = "self") -> float:
    """A /proc/<pid>/status memory field (VmRSS, VmHWM) in MB."""
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith(field + ":")) / 1024


def private_mb(pid: int) -> float:
    """Memory only `pid` holds (USS: private clean + dirty pages), MB; 0 once it has exited."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as handle:
            return (
                sum(
                    int(line.split()[1])
                    for line in handle
                    if line.startswith(("Private_Clean:", "Private_Dirty:"))
                )
                / 1024
            )
    except OSError:
        return 0.0


def child_pids() -> list[int]:
    """Processes whose parent is this process (DataLoader workers)."""
    me, pids = os.getpid(), []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as handle:
                    if int(handle.read().rsplit(")", 1)[1].split()[1]) == me:
                        pids.append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    return pids


class WorkerMemory(threading.Thread):
    """Samples the private memory of this process's children every 0.2 s; keeps the peak.

    A forked worker's RSS (and its ru_maxrss) counts the pages it shares with the main
    process; its private memory is what it allocated itself (read buffers, batches).
    """

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak_mb = 0.0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.2):
            for pid in child_pids():
                self.peak_mb = max(self.peak_mb, private_mb(pid))


def child_rss(args: dict) -> None:
    """Subprocess body: build a trainer, train one epoch, print memory (MB) as JSON.

    VmHWM, not ru_maxrss: ru_maxrss survives exec, so a subprocess of a big parent would
    report the parent's size.
    """
    config = bench_config(
        Path(args["features"]),
        Path(args["captions"]),
        Path(args["runs"]),
        args["name"],
        args["in_memory"],
        args["workers"],
        (f"data.subset={args['subset']}",),
    )
    trainer = make_trainer(config)
    before = status_mb("VmRSS")
    sampler = WorkerMemory()
    sampler.start()
    record = train_epoch(trainer, trainer.objective, 0)
    sampler.done.set()
    sampler.join()
    print(
        json.dumps(
            {
                "before_epoch_mb": before,
                "main_mb": status_mb("VmHWM"),
                "workers_mb": sampler.peak_mb,
                "train_images": len(trainer.train_split.image_names),
                "epoch_seconds": record["epoch_seconds"],
            }
        )
    )


def peak_rss(
    cache: dict, runs: Path, name: str, in_memory: bool, workers: int, subset: float = 1.0
) -> dict:
    """One training epoch in a fresh subprocess; its peak RSS (main, largest worker) in MB."""
    args = {
        "features": str(cache["features"]),
        "captions": str(cache["captions"]),
        "runs": str(runs),
        "name": name,
        "in_memory": in_memory,
        "workers": workers,
        "subset": subset,
    }
    done = subprocess.run(
        [sys.executable, __file__, "--child-rss", json.dumps(args)], capture_output=True, text=True
    )
    if done.returncode:
        raise RuntimeError(f"RSS subprocess failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["rows"] = cache["rows"]
    return result


# ---------------------------------------------------------------- report


def best_of(records: list[dict]) -> dict:
    """The fastest measured epoch (round 0 dropped)."""
    return min(records[1:], key=lambda r: r["epoch_seconds"])


def print_epochs(records: dict[str, list[dict]]) -> None:
    """Per mode: every measured round's seconds, the best, tok/s, losses and others' CPU."""
    rounds = len(next(iter(records.values())))
    head = " ".join(f"{f'r{r} s':>7}" for r in range(1, rounds))
    print(
        f"\n{'epoch (round 0 dropped)':<24} {head} {'best s':>7} {'tok/s':>7} "
        f"{'others':>6}  train_loss per round"
    )
    for name, recs in records.items():
        best = best_of(recs)
        cells = " ".join(f"{r['epoch_seconds']:7.2f}" for r in recs[1:])
        losses = " ".join(f"{r['train_loss']:.4f}" for r in recs)
        others = max(r["others"] for r in recs[1:])
        print(
            f"{name:<24} {cells} {best['epoch_seconds']:7.2f} {best['tokens_per_s']:7.0f} "
            f"{others:6.2f}  {losses}"
        )


def print_end_to_end(e2e: dict, epoch_tokens: float, cached_epoch_s: float) -> None:
    """Cached vs seed-way seconds on the same batches, and the epoch-time estimates."""
    best = e2e["best"]
    print(
        f"\nend to end vs cached, composition {e2e['mode']!r}: the same {e2e['images']} "
        f"images / {e2e['captions']} captions / {e2e['tokens']} tokens, epoch 0's batches"
    )
    print(f"{'path':<40} {'runs s':>16} {'best s':>7} {'tok/s':>7} {'others':>6}")
    labels = {
        "cached": "cached grids (in memory)",
        "end_to_end": "decode JPEG + ResNet50 fp32 every step",
    }
    for key in ("end_to_end", "cached"):
        runs = " ".join(f"{r['epoch_seconds']:.2f}" for r in e2e["runs"][key])
        others = max(r["others"] for r in e2e["runs"][key])
        print(
            f"{labels[key]:<40} {runs:>16} {best[key]['epoch_seconds']:7.2f} "
            f"{best[key]['tokens_per_s']:7.0f} {others:6.2f}"
        )
    seed_epoch = epoch_tokens / best["end_to_end"]["tokens_per_s"]
    print(
        f"speedup {e2e['speedup']:.2f}x; train epoch ({epoch_tokens:.0f} tokens): cached "
        f"{cached_epoch_s:.1f} s measured, end to end ~{seed_epoch:.1f} s estimated"
    )


def parse_args() -> argparse.Namespace:
    """Command line; --quick and the defaults fill the sizes left unset."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="N=120, 2 measured rounds, 2 e2e batches, no seed-composition run",
    )
    parser.add_argument("--images", type=int, help="N demo images (default 300, quick 120)")
    parser.add_argument("--rounds", type=int, help="measured epoch rounds (default 3, quick 2)")
    parser.add_argument("--e2e-batches", type=int, help="batches timed end to end (3, quick 2)")
    parser.add_argument("--child-rss", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.images = args.images or (120 if args.quick else 300)
    args.rounds = args.rounds or (2 if args.quick else 3)
    args.e2e_batches = args.e2e_batches or (2 if args.quick else 3)
    return args


def measure(args: argparse.Namespace, tmp: Path) -> dict:
    """Every measurement of the benchmark; prints as it goes, returns the JSON report."""
    start = time.perf_counter()
    cache = make_cache(tmp / "n", args.images)
    cache["rows"] = args.images
    big = make_copies_cache(cache, tmp, 4)
    print(
        f"data: {args.images} demo images extracted ({cache['precision']}, "
        f"{cache['extract_images_per_s']:.1f} img/s) and a 4N cache of {big['rows']} rows, "
        f"in {time.perf_counter() - start:.0f} s; {os.cpu_count()} cpus, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads",
        flush=True,
    )
    modes = {
        "in memory": (True, 0),
        "streamed, workers 0": (False, 0),
        "streamed, workers 2": (False, 2),
    }
    trainers = {
        name: make_trainer(
            bench_config(cache["features"], cache["captions"], tmp / "runs", f"m{i}", mem, workers)
        )
        for i, (name, (mem, workers)) in enumerate(modes.items())
    }
    first = trainers["in memory"]
    m, t = first.config.model, first.config.train
    print(
        f"decoder: configs/demo.toml ({m.attention} attention, embed {m.embed_dim}, hidden "
        f"{m.hidden_dim}, attention {m.attention_dim}, vocab {len(first.vocab)}), batch_size "
        f"{t.batch_size} captions ({t.batching!r} batching), Adam lr {t.lr}, "
        f"CPU fp32; train split {len(first.train_split.image_names)} images / "
        f"{first.train_split.num_captions} captions",
        flush=True,
    )
    records = alternate_epochs(trainers, args.rounds + 1)
    encoder = FeatureEncoder(build_backbone(resolve_weights("none"), CPU), CPU, "fp32", "float32")
    per_batch = len(plan_epoch(first.train_split, t.batch_size, "images", None)[0][0])  # images
    e2e = [end_to_end(first, cache["images"], encoder, per_batch * args.e2e_batches, "images", 2)]
    if not args.quick:
        e2e.append(end_to_end(first, cache["images"], encoder, t.batch_size, "random", 2))
    rss = {
        "stream_n": peak_rss(cache, tmp / "runs", "rss1", False, RSS_WORKERS),
        "stream_4n": peak_rss(big, tmp / "runs", "rss2", False, RSS_WORKERS),
        "memory_n": peak_rss(cache, tmp / "runs", "rss3", True, 0),
        "memory_4n": peak_rss(big, tmp / "runs", "rss4", True, 0, subset=0.25),
    }
    return report(records, e2e, rss, t.batch_size, time.perf_counter() - start)


def streamed_workers(records: dict[str, list[dict]]) -> int:
    """train.workers (0 or 2) of the faster streamed mode."""
    return max((0, 2), key=lambda w: best_of(records[f"streamed, workers {w}"])["tokens_per_s"])


def max_others(records: dict[str, list[dict]], e2e: list[dict]) -> float:
    """The most CPU other processes took during any timing that counts (cores)."""
    timings = [r for recs in records.values() for r in recs[1:]]
    timings += [r for item in e2e for runs in item["runs"].values() for r in runs]
    return max(r["others"] for r in timings)


def report(records: dict, e2e: list[dict], rss: dict, batch_size: int, seconds: float) -> dict:
    """Print the tables; return the JSON fields."""
    print_epochs(records)
    memory = best_of(records["in memory"])
    streamed = {w: best_of(records[f"streamed, workers {w}"]) for w in (0, 2)}
    workers = streamed_workers(records)
    ratios = {w: streamed[w]["tokens_per_s"] / memory["tokens_per_s"] for w in (0, 2)}
    print(f"streamed / in memory (tok/s): workers 0 {ratios[0]:.3f}, workers 2 {ratios[2]:.3f}")
    epoch_tokens = memory["tokens_per_s"] * memory["epoch_seconds"]
    for item in e2e:
        print_end_to_end(item, epoch_tokens, memory["epoch_seconds"])
    print(
        "\nmemory of one training epoch, own subprocess: main VmRSS before the epoch / main "
        "VmHWM / largest worker's private memory (sampled):"
    )
    for key, label in (
        ("stream_n", f"streamed, workers {RSS_WORKERS}, N"),
        ("stream_4n", f"streamed, workers {RSS_WORKERS}, 4N"),
        ("memory_n", "in memory, N"),
        ("memory_4n", "in memory, 4N (data.subset 0.25)"),
    ):
        r = rss[key]
        print(
            f"  {label:<34} cache {r['rows']:>5} rows, {r['train_images']:>4} train images: "
            f"{r['before_epoch_mb']:5.0f} / {r['main_mb']:5.0f} / {r['workers_mb']:4.0f} MB  "
            f"({r['epoch_seconds']:.1f} s)"
        )
    print(f"total {seconds:.0f} s")
    # The headline is the seed's way (its batches: ResNet50 + decoder for every caption);
    # --quick measures only the same-batches comparison, which then stands in for it.
    seed_batches = e2e[1]["speedup"] if len(e2e) > 1 else e2e[0]["speedup"]
    return {
        "speedup_cached_vs_end_to_end": round(seed_batches, 2),
        "speedup_cached_vs_end_to_end_same_batches": round(e2e[0]["speedup"], 2),
        "epoch_s_cached": round(memory["epoch_seconds"], 2),
        "epoch_s_end_to_end_est": round(
            epoch_tokens / e2e[0]["best"]["end_to_end"]["tokens_per_s"], 1
        ),
        "ratio_streamed_vs_in_memory": round(ratios[workers], 3),
        "ratio_streamed_w0_vs_in_memory": round(ratios[0], 3),
        "ratio_streamed_w2_vs_in_memory": round(ratios[2], 3),
        "streamed_workers": workers,
        "tokens_per_s": round(memory["tokens_per_s"], 1),
        "tokens_per_s_source": "cached, in memory",
        "tokens_per_s_streamed": round(streamed[workers]["tokens_per_s"], 1),
        "rss_mb_n": round(rss["stream_n"]["main_mb"], 1),
        "rss_mb_4n": round(rss["stream_4n"]["main_mb"], 1),
        "rss_worker_private_mb_n": round(rss["stream_n"]["workers_mb"], 1),
        "rss_worker_private_mb_4n": round(rss["stream_4n"]["workers_mb"], 1),
        "rss_mb_in_memory_n": round(rss["memory_n"]["main_mb"], 1),
        "rss_mb_in_memory_4n": round(rss["memory_4n"]["main_mb"], 1),
        "n_images": rss["stream_n"]["rows"],
        "batch_size": batch_size,
        "threads": torch.get_num_threads(),
        "max_others": round(max_others(records, e2e), 2),
        "seconds": round(seconds, 1),
    }


def main() -> None:
    args = parse_args()
    if args.child_rss:
        child_rss(json.loads(args.child_rss))
        return
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        result = measure(args, Path(tmp))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
