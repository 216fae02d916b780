"""Checkpoints: plain tensors and Python types only, written atomically, read weights_only.

A checkpoint holds the model, optimizer, scheduler and scaler states, epoch and step, the
resolved config, the vocabulary, the frozen splits and the feature file's fingerprint (no RNG
state: every epoch reseeds from (train.seed, epoch)). Nothing in
it needs pickle's code-running powers, so `torch.load(path, weights_only=True)` reads it;
this project never loads a checkpoint any other way.
"""

from __future__ import annotations

import os
import pickle
import tomllib
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.config import SECTIONS, Config, checkpoint_config
from pipeline.contract import feature_shape
from pipeline.decoder.build import build_decoder
from pipeline.decoder.vocab import Vocabulary
from pipeline.errors import UserError

CHECKPOINT_FORMAT = "captioner-checkpoint-v1"
ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
RUN_CONFIG = "config.toml"  # a run folder's resolved config, written once when the run starts
# What no `--resume --set` may change: compared for checkpoints saved before "run" existed.
IDENTITY_KEYS = ("model.", "train.name", "train.objective")


TEMP_PATTERN = ".*.tmp-*"  # what `temp_path` names: leftovers of a killed writer


def temp_path(path: Path) -> Path:
    """The temp file a write to `path` goes through: `.NAME.tmp-PID` beside it."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def save_checkpoint(payload: dict, path: str | Path) -> None:
    """Write `payload` to `path` via a temp file + fsync + rename (a kill never corrupts it).

    Non-finite model weights are refused, and a failed write (disk full, file-size limit,
    read-only folder) ends in one UserError: a file already at `path` is left as it was.
    """
    path = Path(path)
    check_finite_weights(payload["model"], path)
    tmp = temp_path(path)
    try:
        tmp.unlink(missing_ok=True)
        with open(tmp, "xb") as handle:
            torch.save({"format": CHECKPOINT_FORMAT, **payload}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise UserError(
            f"could not save {path} ({reason.splitlines()[0]}): is the disk full? "
            f"{_kept(path)}; free some space and resume "
            f"with `captioner train --resume {path.parent}`"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)


def _kept(path: Path) -> str:
    """What a failed save of `path` leaves: the previous file, or the run's start files."""
    if path.is_file():
        return f"The previous {path.name} is unchanged"
    return f"No {path.name} was written (the run folder keeps its config, which resume restarts)"


def run_record(run_dir: Path) -> dict:
    """What a checkpoint records of its run: the folder's name and the config it started with
    (RUN/config.toml's sections; None where that cannot be read)."""
    return {"name": run_dir.name, "config": _started_config(run_dir)}


def check_run(payload: dict, path: Path) -> None:
    """Refuse a checkpoint lying in a run folder (one holding config.toml) of another run: a
    last.pt or best.pt copied in from a run with another config, model kind or name."""
    started = _started_config(path.parent)
    if started is None:
        return  # no run folder (a loose checkpoint), or nothing to compare with
    record = payload.get("run") if isinstance(payload.get("run"), dict) else {}
    theirs = record.get("config")
    differences = _differences(theirs if isinstance(theirs, dict) else payload["config"], started)
    if not isinstance(theirs, dict):  # saved before checkpoints recorded their run
        differences = [d for d in differences if d.startswith(IDENTITY_KEYS)]
    if differences:
        name = f" ({record['name']})" if isinstance(record.get("name"), str) else ""
        raise UserError(
            f"{path} belongs to another run{name} than {path.parent}: "
            f"{'; '.join(differences[:3])}. Use the checkpoint from its own run folder"
        )


def _started_config(run_dir: Path) -> dict | None:
    """The sections of RUN/config.toml, or None when there is no readable one."""
    try:
        raw = tomllib.loads((run_dir / RUN_CONFIG).read_text("utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    return {section: raw[section] for section in SECTIONS if isinstance(raw.get(section), dict)}


def _differences(theirs: dict, ours: dict) -> list[str]:
    """`section.key = theirs (this folder: ours)` for every key two configs disagree on."""
    out = []
    for section in SECTIONS:
        a, b = theirs.get(section) or {}, ours.get(section) or {}
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                out.append(f"{section}.{key} = {a.get(key)!r} (this folder: {b.get(key)!r})")
    return out


def check_finite_weights(state_dict: dict, path: Path) -> None:
    """Refuse to write weights holding nan or inf."""
    bad = [
        name
        for name, tensor in state_dict.items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]
    if bad:
        raise UserError(f"not saving {path}: non-finite weights in {', '.join(bad[:3])}")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint with `weights_only=True`; anything else is refused with a UserError.

    A run folder is accepted too and means its `best.pt` (or `last.pt` if no best yet).
    """
    path = resolve_checkpoint(path)
    check_is_torch_file(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UserError(
            f"refusing to load {path}: it holds pickled Python objects, which "
            f"could run code (weights_only load failed: {str(exc).splitlines()[0]})"
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise UserError(f"{path} is not a readable checkpoint ({exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} is not a captioner checkpoint")
    return payload


def check_is_torch_file(path: Path) -> None:
    """UserError naming what `path` is when it is not a torch.save archive (read its first bytes)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(len(HDF5_MAGIC))
    except OSError as exc:
        raise UserError(f"{path} is not a readable checkpoint ({exc.strerror})") from None
    if head.startswith(ZIP_MAGIC):
        return
    if not head:
        what = "an empty file"
    elif head.startswith(HDF5_MAGIC):
        what = "an HDF5 file (a feature file?)"
    else:
        what = "not the zip archive torch.save writes"
    raise UserError(f"{path} is not a captioner checkpoint: it is {what}")


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run folder meaning its best.pt (last.pt as a fallback)."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).is_file():
                return path / name
        raise UserError(f"run folder {path} holds no best.pt or last.pt")
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    return path


@dataclass
class LoadedModel:
    """A checkpoint's decoder, ready for inference, with what it was trained with."""

    model: torch.nn.Module
    vocab: Vocabulary
    config: Config
    features: dict  # the feature file's fingerprint at training time
    epoch: int
    path: Path
    splits: dict | None = None  # the run's frozen image lists (None in older checkpoints)


REQUIRED_KEYS = ("model", "config", "vocab", "features", "state")


def load_model(path: str | Path, device: torch.device) -> LoadedModel:
    """Rebuild the decoder of a checkpoint (or run folder) in eval mode on `device`."""
    path = resolve_checkpoint(path)
    payload = load_checkpoint(path)
    missing = [key for key in REQUIRED_KEYS if key not in payload]
    if missing:
        raise UserError(f"{path} is not a complete captioner checkpoint (no {', '.join(missing)})")
    check_run(payload, path)
    config = checkpoint_config(payload["config"])
    vocab = Vocabulary(payload["vocab"], config.vocab.tokenizer)
    # the grid's shape from the features' fingerprint (older checkpoints: 7 x 7 x 2048)
    model = build_decoder(config.model, vocab, shape=feature_shape(payload["features"]))
    load_weights(model, payload["model"], path)
    model.to(device).eval()
    return LoadedModel(
        model,
        vocab,
        config,
        payload["features"],
        int(payload["state"]["epoch"]),
        path,
        payload.get("splits"),
    )


def load_weights(model: torch.nn.Module, state_dict: dict, path: Path, hint: str = "") -> None:
    """`model.load_state_dict(state_dict)`; weights that do not fit end in one UserError.

    The model is built from the checkpoint's config and vocabulary, so a mismatch means a
    vocabulary or a size that disagrees with the stored weights (or a `--set` that changed one).
    """
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()]
        detail = lines[0] if lines else str(exc).splitlines()[0]
        raise UserError(
            f"the weights in {path} do not fit the model built from its config and "
            f"vocabulary ({detail}){hint}"
        ) from None
