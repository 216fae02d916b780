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
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.config import Config, checkpoint_config
from pipeline.decoder.build import build_decoder
from pipeline.decoder.vocab import Vocabulary
from pipeline.errors import UserError

CHECKPOINT_FORMAT = "captioner-checkpoint-v1"


TEMP_PATTERN = ".*.tmp-*"  # what `temp_path` names: leftovers of a killed writer


def temp_path(path: Path) -> Path:
    """The temp file a write to `path` goes through: `.NAME.tmp-PID` beside it."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def save_checkpoint(payload: dict, path: str | Path) -> None:
    """Write `payload` to `path` via a temp file + fsync + rename (a kill never corrupts it).

    Non-finite model weights are refused, and a failed write (disk full, file-size limit,
    read-only folder) ends in one UserError: the previous file at `path` is left as it was.
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
            f"The previous {path.name} is unchanged; free some space and resume "
            f"with `captioner train --resume {path.parent}`"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)


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
    config = checkpoint_config(payload["config"])
    vocab = Vocabulary(payload["vocab"], config.vocab.tokenizer)
    model = build_decoder(config.model, vocab)
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
