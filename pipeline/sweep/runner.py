"""Running a sweep: every (variant, seed) trained through the real trainer, scored on the split.

Each distinct recipe (resolved config, the identity of its feature and caption files, and the
run it starts from) is one run in
`OUT/<variant>-s<seed>/`: `recipe.json` (what it is), `run/` (the training run), `eval-greedy/`
and `eval-beamK/` (evaluate's outputs), `log.txt` (everything the run printed), and
`result.json` when it is done. Rerunning the same sweep reuses finished runs, resumes a
training that was interrupted (from its last.pt) and redoes only what is missing; a folder
that holds another recipe is refused, never replaced. Runs go `jobs` at a time, each in its
own process with cores / jobs torch threads; a run that starts from another waits for it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import contract, output
from pipeline.atomic import write_text_atomic
from pipeline.checksum import file_sha256
from pipeline.config import Config, config_to_dict, load_config
from pipeline.errors import UserError
from pipeline.sweep.spec import Sweep

RECIPE_FILE = "recipe.json"
RESULT_FILE = "result.json"


@dataclass
class PlannedRun:
    """One training run and the (variant, seed) pairs it serves."""

    key: str  # hash of the recipe
    folder: Path
    config: dict  # resolved config (train.out_dir and train.name set by the runner)
    data: dict  # the identity of its feature and caption files (`data_identity`)
    start: str | None  # key of the run whose best.pt it starts from
    users: list[tuple[str, int]] = field(default_factory=list)


def recipe_of(sweep: Sweep, name: str, seed: int) -> dict:
    """The resolved config of variant `name` at `seed` (validated), as plain data."""
    chain = sweep.chain(name)
    configs = [v.config for v in chain if v.config]
    overrides = [*sweep.extra, *(o for v in chain for o in v.overrides), f"train.seed={seed}"]
    config = config_to_dict(load_config(configs[-1] if configs else sweep.config, overrides))
    config["train"].update(out_dir="", name="")  # the runner's to set
    return config


PATH_KEYS = (("data", "captions"), ("data", "images"), ("features", "path"))  # not identity


def recipe_key(config: dict, data: dict, start: str | None) -> str:
    """A run's identity: its config's values that differ from the defaults (so a release
    that adds a key with its default keeps every finished run), leaving out the data's paths,
    its data's identity instead, and the run it starts from."""
    defaults = config_to_dict(Config())
    changed = {
        section: {
            k: v
            for k, v in values.items()
            if defaults[section].get(k) != v and (section, k) not in PATH_KEYS
        }
        for section, values in config.items()
        if isinstance(values, dict)
    }
    text = json.dumps({"config": changed, "data": data, "start": start}, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def data_identity(config: dict, name: str, known: dict) -> dict:
    """What a recipe's data is, whatever its paths: the feature file's fingerprint and the
    caption file's sha256 (`known` caches them per pair of paths). UserError when missing."""
    features, captions = config["features"]["path"], config["data"]["captions"]
    if (features, captions) not in known:
        for kind, path in (("features.path", features), ("data.captions", captions)):
            if not Path(path).is_file():
                raise UserError(
                    f"{path} ({kind} of variant {name}) does not exist: make it first "
                    "(captioner extract, or captioner testbed), or --set the right path"
                )
        with contract.open_h5(features) as f:
            fingerprint = contract.fingerprint(f)
        known[(features, captions)] = {
            "features": fingerprint,
            "captions_sha256": file_sha256(captions),
        }
    return known[(features, captions)]


def plan_runs(sweep: Sweep, names: list[str], out: Path) -> dict[str, PlannedRun]:
    """key -> run for every (variant, seed) of `names`; variants with one recipe share a run,
    in the folder that already holds it if one does."""
    runs: dict[str, PlannedRun] = {}
    keys: dict[tuple[str, int], str] = {}
    ordered = sorted(names, key=lambda n: len(sweep.chain(n)))  # starts before their users
    known: dict = {}
    existing = finished_folders(out)
    for seed in sweep.seed_list():
        for name in ordered:
            start = sweep.variants[name].start
            config = recipe_of(sweep, name, seed)
            data = data_identity(config, name, known)
            start_key = keys[(start, seed)] if start else None
            key = recipe_key(config, data, start_key)
            keys[(name, seed)] = key
            if key not in runs:
                folder = existing.get(key, out / f"{name}-s{seed}")
                runs[key] = PlannedRun(key, folder, config, data, start_key)
            runs[key].users.append((name, seed))
    return runs


LOCK_FILE = ".sweep.lock"


@contextlib.contextmanager
def lock_out(out: Path):
    """Hold OUT while the block runs (an flock, released on leaving the block, and by the
    kernel if the process dies); a second sweep on the same OUT is refused in one line."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        handle = open(out / LOCK_FILE, "a")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise UserError(f"cannot use {out}: {exc.strerror or exc}") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(
                f"another sweep is running in {out}: wait for it, or use another --out"
            ) from None
        yield


def saved_key(recipe: Path) -> str:
    """The key a run folder's recipe.json was written with: the recipe's identity as it was
    then (a later release's changed default leaves it alone)."""
    saved = json.loads(recipe.read_text("utf-8"))
    return saved.get("key") or recipe_key(
        saved.get("config", {}), saved.get("data"), saved.get("start")
    )


def finished_folders(out: Path) -> dict[str, Path]:
    """recipe key -> the folder under `out` that holds that recipe's run."""
    found = {}
    for recipe in sorted(out.glob(f"*/{RECIPE_FILE}")):
        found.setdefault(saved_key(recipe), recipe.parent)
    return found


def check_folders(runs: dict[str, PlannedRun]) -> None:
    """Refuse before any work when a run folder holds another recipe's run."""
    for run in runs.values():
        recipe = run.folder / RECIPE_FILE
        if run.folder.exists() and not recipe.is_file() and any(run.folder.iterdir()):
            raise UserError(f"{run.folder} holds files that are not a sweep run: use another --out")
        if recipe.is_file():
            if saved_key(recipe) != run.key:
                raise UserError(
                    f"{run.folder} holds a run of another recipe (the sweep file, --set or "
                    "the data changed): use another --out, or delete that folder to redo it"
                )


def execute(
    runs: dict[str, PlannedRun], sweep: Sweep, jobs: int
) -> tuple[dict[str, dict], dict[str, str]]:
    """Train and score every run, `jobs` at a time, starts before the runs that need them.

    Returns key -> result, and key -> why it failed (a failed run's dependants fail too).
    Ctrl-C stops the runs in flight (each resumes from its last epoch) and exits with 130."""
    queue = RunQueue(runs, sweep, max(1, len(os.sched_getaffinity(0)) // jobs))
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(
        jobs, mp_context=context, initializer=ignore_interrupts
    ) as pool:
        try:
            queue.run(pool)
        except KeyboardInterrupt:
            # the runs in flight: an executor has no public way to stop a running task
            for process in list(pool._processes.values()):
                process.kill()
            output.say("sweep interrupted: finished runs are kept; rerun the same command to go on")
            raise SystemExit(130) from None
    return queue.results, queue.failures


def ignore_interrupts() -> None:
    """In a worker: Ctrl-C is the sweep's to handle (it stops the workers itself)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@dataclass
class RunQueue:
    """The runs still to do, those in flight, and what has finished or failed."""

    runs: dict[str, PlannedRun]
    sweep: Sweep
    threads: int  # torch threads per run
    results: dict[str, dict] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)

    def run(self, pool: concurrent.futures.Executor) -> None:
        """Submit every run whose start has finished; collect results until none is left."""
        pending = dict(self.runs)
        active: dict[concurrent.futures.Future, PlannedRun] = {}
        while pending or active:
            for key, run in list(pending.items()):
                if run.start in self.failures:
                    self.failures[key] = f"its start {self.runs[run.start].folder.name} failed"
                    del pending[key]
                elif run.start is None or run.start in self.results:
                    active[pool.submit(train_and_score, *self.job(run))] = run
                    del pending[key]
            if not active:
                continue
            done, _ = concurrent.futures.wait(active, return_when="FIRST_COMPLETED")
            for future in done:
                self.collect(active.pop(future), future)

    def job(self, run: PlannedRun) -> tuple:
        """`train_and_score`'s arguments for `run`."""
        init = self.runs[run.start].folder / "run" / "best.pt" if run.start else None
        split, beam = self.sweep.split, self.sweep.beam_size
        recipe = {"key": run.key, "config": run.config, "data": run.data, "start": run.start}
        return run.folder, recipe, init, split, beam, self.threads

    def collect(self, run: PlannedRun, future: concurrent.futures.Future) -> None:
        """Keep a finished run's result (or why it failed) and say so."""
        try:
            self.results[run.key] = future.result()
        except Exception as error:  # noqa: BLE001 - one run's failure is reported, not raised
            self.failures[run.key] = f"{type(error).__name__}: {error}".splitlines()[0]
            output.say(f"  {run.folder.name}: FAILED ({self.failures[run.key]}; see log.txt)")
            return
        output.say(progress_line(run, self.results[run.key], self.sweep.beam_size))


def progress_line(run: PlannedRun, result: dict, beam: int) -> str:
    """One line per finished run: its test CIDEr greedy and at the beam, and its cost."""
    names = ", ".join(f"{name} seed {seed}" for name, seed in run.users)
    greedy, beamed = result["scores"]["greedy"], result["scores"][f"beam{beam}"]
    return (
        f"  {names}: CIDEr greedy {100 * greedy['CIDEr']:.1f}, beam {beam} "
        f"{100 * beamed['CIDEr']:.1f} (best epoch {result['best_epoch']}, "
        f"{result['epoch_seconds']:.1f} s/epoch, {result['seconds']:.0f} s)"
    )


def train_and_score(
    folder: Path, recipe: dict, init: Path | None, split: str, beam: int, threads: int
) -> dict:
    """One run, in a worker process: train (or resume, or reuse), then evaluate best.pt on
    `split` greedy and with `beam` (a result scored otherwise is scored again); everything
    printed goes to folder/log.txt."""
    import torch

    scoring = {"split": split, "beam": beam}
    result_path = folder / RESULT_FILE
    if result_path.is_file():
        result = json.loads(result_path.read_text("utf-8"))
        if result.get("scoring") == scoring:
            return result
    torch.set_num_threads(threads)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / RECIPE_FILE, {**recipe, "init": str(init or "")})
    started = time.perf_counter()
    with (
        open(folder / "log.txt", "a", encoding="utf-8") as log,
        contextlib.redirect_stdout(log),
        contextlib.redirect_stderr(log),
    ):
        try:
            train_run(folder, recipe["config"], init)
            scores, per_image = score_run(folder / "run" / "best.pt", folder, split, beam)
        except Exception as error:
            print(f"error: {error}", file=log)  # the sweep prints its first line, too
            raise
    result = summary_of_run(folder / "run", scores, per_image, time.perf_counter() - started)
    write_json(result_path, {**result, "scoring": scoring})
    return result


def train_run(folder: Path, config: dict, init: Path | None) -> None:
    """Train folder/run from `config` (starting from `init`), or resume it where it stopped."""
    from pipeline.config import config_from_dict
    from pipeline.train.trainer import train

    run = folder / "run"
    if (run / "last.pt").is_file():
        train(None, resume=run)
        return
    if run.exists():  # died before its first checkpoint: this sweep's own folder
        shutil.rmtree(run)
    resolved = config_from_dict(json.loads(json.dumps(config)))
    resolved.train.out_dir, resolved.train.name = str(folder), "run"
    train(resolved, init=init)


def score_run(
    checkpoint: Path, folder: Path, split: str, beam: int
) -> tuple[dict[str, dict], dict[str, dict[str, float]]]:
    """Scores and per-image CIDEr of `checkpoint` on `split`, greedy and at `beam`."""
    from pipeline.infer.evaluate import evaluate_checkpoint
    from pipeline.metrics.coco import CaptionScorer

    scores, per_image = {}, {}
    with CaptionScorer() as scorer:  # one METEOR start for both decodings
        for decoding, size in (("greedy", 1), (f"beam{beam}", beam)):
            out = folder / f"eval-{decoding}"
            if out.exists():  # a scoring that was interrupted: the sweep's own outputs
                shutil.rmtree(out)
            result = evaluate_checkpoint(checkpoint, split, size, out, examples=0, scorer=scorer)
            scores[decoding] = result["scores"]
            per_image[decoding] = result["per_image_cider"]
    return scores, per_image


def summary_of_run(run: Path, scores: dict, per_image: dict, seconds: float) -> dict:
    """What the sweep keeps of a finished run."""
    from pipeline.decoder.checkpoint import load_checkpoint

    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    payload = load_checkpoint(run / "best.pt")
    parameters = sum(t.numel() for t in payload["model"].values() if t.is_floating_point())
    return {
        "scores": scores,
        "per_image_cider": per_image,
        "epoch_seconds": statistics.mean(h["epoch_seconds"] for h in history),
        "best_epoch": payload["state"]["best_epoch"],
        "parameters": parameters,
        "seconds": seconds,
        "history": history,
    }


def write_json(path: Path, data: dict) -> None:
    """Write `data` as JSON to `path` whole or not at all."""
    write_text_atomic(path, json.dumps(data, indent=1))
