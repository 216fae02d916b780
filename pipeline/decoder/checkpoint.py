"""Checkpoints: plain tensors and Python types only, written atomically, read weights_only.

A checkpoint holds the model, optimizer, scheduler and scaler states, epoch and step, RNG
states, the resolved config, the vocabulary and the feature file's fingerprint. Nothing in
it needs pickle's code-running powers, so `torch.load(path, weights_only=True)` reads it;
this project never loads a checkpoint any other way.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.config import Config, config_from_dict
from pipeline.decoder.build import build_decoder
from pipeline.decoder.vocab import Vocabulary
from pipeline.errors import UserError

CHECKPOINT_FORMAT = "captioner-checkpoint-v1"


def save_checkpoint(payload: dict, path: str | Path) -> None:
    """Write `payload` to `path` via a temp file + fsync + rename (a kill never corrupts it)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            torch.save({"format": CHECKPOINT_FORMAT, **payload}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint with `weights_only=True`; anything else is refused with a UserError.

    A run folder is accepted too and means its `best.pt` (or `last.pt` if no best yet).
    """
    path = resolve_checkpoint(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UserError(f"refusing to load {path}: it holds pickled Python objects, which "
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
    features: dict         # the feature file's fingerprint at training time
    epoch: int
    path: Path


def load_model(path: str | Path, device: torch.device) -> LoadedModel:
    """Rebuild the decoder of a checkpoint (or run folder) in eval mode on `device`."""
    path = resolve_checkpoint(path)
    payload = load_checkpoint(path)
    config = config_from_dict(payload["config"])
    vocab = Vocabulary(payload["vocab"])
    model = build_decoder(config.model, vocab)
    model.load_state_dict(payload["model"])
    model.to(device).eval()
    return LoadedModel(model, vocab, config, payload["features"],
                       int(payload["state"]["epoch"]), path)
