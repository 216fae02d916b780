"""What the benchmarks share: one timer, one alternating loop, the demo cache built by the
package's own functions, and the peak memory of a phase measured in a child process.

Imports only what a bare GPU machine has (benchmarks/gpu_run.sh runs gpu_check.py with it).
"""

from __future__ import annotations

import contextlib
import io
import json
import multiprocessing
import os
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch

from pipeline import output
from pipeline.captions.demo_data import generate_demo_data
from pipeline.config import Config, load_config
from pipeline.extract.extractor import ExtractJob, ExtractResult, run_extraction
from pipeline.extract.job import job_from_config
from pipeline.train.trainer import train

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "configs" / "demo.toml"
FLICKR8K = REPO.parent / "shared" / "data" / "flickr8k"  # the real captions, when there
T = TypeVar("T")


# ---------------------------------------------------------------- timing


def timed(fn: Callable[[], T], device: torch.device | None = None) -> tuple[float, T]:
    """(wall seconds, result) of fn(), a CUDA device synchronised before and after."""
    sync = device is not None and device.type == "cuda"
    if sync:
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = fn()
    if sync:
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, result


def alternate(runs: Mapping[str, Callable[[int], T]], rounds: int) -> dict[str, list[T]]:
    """Call every run once per round (with the round's index), the order reversed every other
    round (ABC, CBA, ...): a shared machine's changing load falls on each alike. Returns each
    run's results in round order; keep the best of each (other jobs only ever slow a run)."""
    results: dict[str, list[T]] = {name: [] for name in runs}
    names = list(runs)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            results[name].append(runs[name](r))
    return results


# ---------------------------------------------------------------- the demo cache


@dataclass(frozen=True)
class DemoCache:
    """Demo images, their caption file and feature file, and where runs on them go."""

    images: Path
    captions: Path
    features: Path
    runs: Path

    @classmethod
    def under(cls, root: Path, features: str = "features.h5") -> DemoCache:
        """The layout of `demo_cache`: root/data (generate_demo_data), root/FEATURES, root/runs."""
        data = root / "data"
        return cls(data / "images", data / "dataset.json", root / features, root / "runs")

    def settings(self) -> list[str]:
        """--set overrides pointing a config at these files."""
        return [
            f"data.images={json.dumps(str(self.images))}",
            f"data.captions={json.dumps(str(self.captions))}",
            f"features.path={json.dumps(str(self.features))}",
            f"train.out_dir={json.dumps(str(self.runs))}",
        ]

    def config(self, *settings: str, base: Path = DEMO_CONFIG) -> Config:
        """`base` (configs/demo.toml) pointed at these files, then `settings`."""
        return load_config(base, (*self.settings(), *settings))


def demo_data(root: Path, n_images: int) -> DemoCache:
    """`n_images` demo images and captions under root/data (generate_demo_data, seed 0), reused
    when already there; the cache's layout (its features not made yet)."""
    cache = DemoCache.under(root)
    if not cache.captions.is_file():
        generate_demo_data(cache.captions.parent, n_images=n_images, seed=0, overwrite=True)
    return cache


def extract_cache(cache: DemoCache, *settings: str, **job) -> tuple[ExtractJob, ExtractResult]:
    """The feature file of `cache` as `captioner extract` makes it from configs/demo.toml (plus
    `settings`; `job`: job_from_config's keywords, device "cpu" unless given); a complete file
    is reused."""
    with output.quiet():
        job = job_from_config(
            cache.config(*settings), **{"device": "cpu", "progress": False, **job}
        )
        return job, run_extraction(job)


def demo_cache(root: Path, n_images: int) -> tuple[DemoCache, ExtractJob, ExtractResult]:
    """Demo data under `root` and its features (CPU, configs/demo.toml), each reused."""
    cache = demo_data(root, n_images)
    return cache, *extract_cache(cache)


def train_demo(cache: DemoCache, name: str, *settings: str) -> Path:
    """Train configs/demo.toml (plus `settings`) on `cache` as run `name`, its progress lines
    swallowed; the run folder."""
    config = cache.config(f"train.name={name}", *settings)
    with contextlib.redirect_stdout(io.StringIO()):
        return train(config)


def folder_job(images: Path, out: Path, config: Config | None = None, **job) -> ExtractJob:
    """job_from_config for every image under `images` (no caption file) into `out`: `config`
    (default Config(): resnet50) with random-init weights, the CPU, overwrite, quiet; `job` as
    job_from_config takes it."""
    defaults = {"weights": "none", "device": "cpu", "overwrite": True, "progress": False}
    with output.quiet():
        return job_from_config(
            config or Config(), images=str(images), captions="", out=str(out), **defaults | job
        )


def link_copies(source: Path, target: Path, copies: int, count: int | None = None) -> Path:
    """target/c0 ... c<copies-1>, each with hard links to the first `count` files of `source`
    (all by default); returns `target`."""
    for c in range(copies):
        sub = target / f"c{c}"
        sub.mkdir(parents=True, exist_ok=True)
        for path in sorted(source.iterdir())[:count]:
            os.link(path, sub / path.name)
    return target


# ---------------------------------------------------------------- peak memory


def status_mb(field: str, pid: int | str = "self") -> float:
    """A /proc/<pid>/status memory field (VmRSS, VmHWM) in MB."""
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith(field + ":")) / 1024


def private_mb(pid: int) -> float:
    """Memory only `pid` holds (USS: private clean + dirty pages), MB; 0 once it has exited."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as handle:
            fields = ("Private_Clean:", "Private_Dirty:")
            return sum(int(line.split()[1]) for line in handle if line.startswith(fields)) / 1024
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

    A forked worker's RSS (and its VmHWM and ru_maxrss) counts the pages it shares with the
    main process; its private memory is what it allocated itself (read buffers, batches).
    """

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak_mb = 0.0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.2):
            for pid in child_pids():
                self.peak_mb = max(self.peak_mb, private_mb(pid))


@dataclass
class Peak:
    """What `in_child` measured: fn's result, the child's VmHWM, its largest worker's private
    memory (sampled), in MB."""

    result: object
    main_mb: float
    workers_mb: float


def in_child(fn: Callable[..., object], *args) -> Peak:
    """fn(*args) in a fresh Python process (spawned: nothing inherited); its result and peak
    memory. fn must be importable (a module-level function) and its result picklable.

    VmHWM from /proc/self/status, not ru_maxrss: ru_maxrss survives fork and exec, so a child
    of a big process reports at least its parent's size.
    """
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_measure, args=(send, fn, args))
    process.start()
    send.close()
    try:
        outcome = receive.recv()
    except EOFError:
        outcome = None
    process.join()
    if outcome is None:
        outcome = f"it died (exit code {process.exitcode})"
    if isinstance(outcome, str):
        raise RuntimeError(f"{fn.__name__} failed in its child process:\n{outcome}")
    return outcome


def _measure(send, fn: Callable[..., object], args: tuple) -> None:
    """`in_child`'s child: run fn with its workers sampled; send a Peak, or the traceback."""
    sampler = WorkerMemory()
    sampler.start()
    try:
        result = fn(*args)
    except BaseException:
        send.send(traceback.format_exc()[-3000:])
        raise
    sampler.done.set()
    sampler.join()
    send.send(Peak(result, status_mb("VmHWM"), sampler.peak_mb))
