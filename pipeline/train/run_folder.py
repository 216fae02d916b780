"""A run folder belongs to one training: created exclusively, locked while training.

- A new run creates its folder with a plain `mkdir` (never `exist_ok`): two trainings with
  the same `train.name` cannot share it. Default names are `<config>-<timestamp>`, with a
  `-2`, `-3`... suffix when another run took that name in the same second.
- While training, the process holds an exclusive `flock` on `RUN/.lock`; a second training
  or a `--resume` of a live run is refused. The kernel drops the lock when the process dies,
  so a killed run's folder resumes without any manual cleanup.
- On every start, temporary checkpoint files a killed run left behind are removed, and
  `metrics.jsonl` is cut back to the epochs the checkpoint holds (a torn last line included).
- A run that died before its first checkpoint leaves only its start files (`START_FILES`):
  a new run of that name reuses the folder, and `--resume` starts it over from its config.toml.
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from pipeline import output
from pipeline.atomic import write_text_atomic
from pipeline.config import Config, load_config, save_config
from pipeline.decoder.checkpoint import RUN_CONFIG, TEMP_PATTERN, temp_path
from pipeline.decoder.vocab import Vocabulary
from pipeline.errors import UserError

LOCK_FILE = ".lock"
METRICS_FILE = "metrics.jsonl"
SPLITS_FILE = "splits.json"
CHECKPOINTS = ("last.pt", "best.pt")
# What a run writes before its first checkpoint (tensorboard/ after its first epoch's record).
START_FILES = (RUN_CONFIG, "vocab.json", SPLITS_FILE, METRICS_FILE, LOCK_FILE, "tensorboard")


@dataclass
class RunLock:
    """An open, flock-ed `RUN/.lock`; released by `release()` or when the process ends."""

    run_dir: Path
    handle: object

    def release(self) -> None:
        """Drop the lock (the lock file stays: it is not what marks a run as live)."""
        if not self.handle.closed:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()


def default_run_name(config: Config) -> str:
    """`<config name>-<timestamp>`; `create_run_dir` adds a suffix if it is taken."""
    return f"{config.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def create_run_dir(config: Config) -> tuple[Path, RunLock]:
    """Create a new run folder exclusively and lock it; refuse one that already exists."""
    out_dir = Path(config.train.out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {out_dir}: {exc.strerror}") from None
    if config.train.name:
        run_dir = out_dir / config.train.name
        return run_dir, _make_exclusive(run_dir)
    base = default_run_name(config)
    for attempt in range(1, 1000):
        run_dir = out_dir / (base if attempt == 1 else f"{base}-{attempt}")
        try:
            run_dir.mkdir()
        except FileExistsError:
            continue
        except OSError as exc:
            raise UserError(f"cannot create run folder {run_dir}: {exc.strerror}") from None
        return run_dir, lock_run(run_dir)
    raise UserError(f"too many runs named {base}* in {out_dir}")


def _make_exclusive(run_dir: Path) -> RunLock:
    """Create `run_dir` and lock it; an existing folder is reused only when it holds no
    checkpoint and nothing but a run's start files (a run that died in its first epoch)."""
    try:
        run_dir.mkdir()
        return lock_run(run_dir)
    except FileExistsError:
        pass
    except OSError as exc:
        raise UserError(f"cannot create run folder {run_dir}: {exc.strerror}") from None
    if any((run_dir / name).exists() for name in CHECKPOINTS):
        raise UserError(
            f"{run_dir} already holds a run: resume it with `captioner train --resume "
            f"{run_dir}` or choose another train.name"
        )
    lock = lock_run(run_dir)  # refuses a live run still in its first epoch
    foreign = sorted(
        path.name
        for path in run_dir.iterdir()
        if path.name not in START_FILES and not path.match(TEMP_PATTERN)
    )
    if foreign:
        lock.release()
        raise UserError(
            f"{run_dir} already exists and holds files that are not a run's "
            f"({', '.join(foreign[:3])}): choose another train.name"
        )
    remove_leftovers(run_dir)
    output.say(f"reusing {run_dir}: it holds no checkpoint (its run stopped in its first epoch)")
    return lock


def restart_config(run_dir: Path, overrides: tuple[str, ...] = ()) -> Config:
    """The config to start a checkpoint-less run folder over with: its config.toml (plus
    `--set` overrides), writing into that same folder."""
    if not (run_dir / RUN_CONFIG).is_file():
        raise UserError(f"nothing to resume: {run_dir} holds no last.pt and no {RUN_CONFIG}")
    output.say(
        f"{run_dir} has no checkpoint yet (its run stopped in its first epoch): "
        f"starting it over from its {RUN_CONFIG}"
    )
    config = load_config(run_dir / RUN_CONFIG, overrides)
    config.train.out_dir, config.train.name = str(run_dir.parent), run_dir.name
    return config


def lock_run(run_dir: Path) -> RunLock:
    """Take `RUN/.lock` exclusively (non-blocking); a live training holding it is refused."""
    path = Path(run_dir) / LOCK_FILE
    try:
        handle = open(path, "a+", encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot lock run folder {run_dir}: {exc.strerror}") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise UserError(
            f"{run_dir} is in use by a running training ({holder}): wait for it "
            "to finish, or stop it, before resuming"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}\n")
    handle.flush()
    return RunLock(Path(run_dir), handle)


def remove_leftovers(run_dir: Path) -> list[str]:
    """Delete temporary checkpoint files of a killed run (call only while holding the lock)."""
    removed = []
    for path in sorted(Path(run_dir).glob(TEMP_PATTERN)):
        path.unlink(missing_ok=True)
        removed.append(path.name)
    if removed:
        output.say(
            f"removed {len(removed)} temporary file(s) left by an interrupted run: "
            f"{', '.join(removed)}"
        )
    return removed


def start_run(config: Config, vocab: Vocabulary, splits: dict) -> tuple[Path, RunLock]:
    """Create and lock a new run folder, then write config.toml, vocab.json, splits.json
    (the frozen image lists) and an empty metrics log."""
    run_dir, lock = create_run_dir(config)
    try:
        save_config(config, run_dir / "config.toml")
        vocab.save(run_dir / "vocab.json")
        write_text_atomic(
            run_dir / SPLITS_FILE,
            json.dumps(splits, indent=1) + "\n",
            temp_path(run_dir / SPLITS_FILE),
        )
        (run_dir / METRICS_FILE).write_text("")
    except OSError as exc:
        lock.release()
        raise UserError(f"cannot write the run files in {run_dir}: {exc.strerror}") from None
    except BaseException:
        lock.release()
        raise
    return run_dir, lock


def append_metrics(run_dir: Path, record: dict) -> None:
    """One JSON line per epoch in RUN/metrics.jsonl."""
    with open(Path(run_dir) / METRICS_FILE, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def truncate_metrics(run_dir: Path, epochs_done: int) -> None:
    """Keep the metric lines of the epochs the checkpoint holds; drop torn or later ones.

    A crash can leave a torn last line or lines of an epoch whose checkpoint was never
    written: the checkpoint is the truth, the log follows it.
    """
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return
    kept, torn = [], 0
    for line in path.read_text("utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            epoch = int(record["epoch"])
        except (ValueError, TypeError, KeyError):
            torn += 1
            continue
        if epoch <= epochs_done:
            kept.append(line)
    if torn:
        output.warn(f"dropped {torn} unreadable line(s) of {path} (left by an interrupted run)")
    write_text_atomic(path, "".join(line + "\n" for line in kept), temp_path(path))
