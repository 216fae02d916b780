"""Caption new images: extract grids exactly as the checkpoint's feature file was made.

The checkpoint records the feature file's fingerprint (weights, preprocessing policy,
precision, storage dtype); `FeatureEncoder.from_attrs` rebuilds that extractor, so an image
captioned here gets the very features `extract` would have written for it. (Preprocessing
that differs between training and inference is the classic cause of "the same caption for
every image".)
"""

from __future__ import annotations

from pathlib import Path

import click
import torch
import torchvision.transforms.functional as TF

from pipeline.decoder.checkpoint import load_model
from pipeline.decoder.generate import decode_features
from pipeline.device import resolve_device
from pipeline.extract.extractor import FeatureEncoder
from pipeline.extract.images import ImageError, preprocess_image
from pipeline.infer.attention_maps import render_attention, save_attention_npy

BATCH = 16


def caption_images(paths: list[Path], checkpoint: str | Path, beam_size: int,
                   attention_dir: Path | None = None, device_name: str = "auto") -> list[Path]:
    """Print `path: caption` per image (errors to stderr); returns the images that failed."""
    device = resolve_device(device_name)
    loaded = load_model(checkpoint, device)
    encoder = FeatureEncoder.from_attrs(loaded.features, device)
    if attention_dir is not None:
        attention_dir.mkdir(parents=True, exist_ok=True)
    failed: list[Path] = []
    used_stems: set[str] = set()
    for start in range(0, len(paths), BATCH):
        crops, ok = [], []
        for path in paths[start:start + BATCH]:
            try:
                crops.append(preprocess_image(path))  # (3, 224, 224) uint8
                ok.append(path)
            except ImageError as exc:
                click.echo(f"{path}: error: {exc}", err=True)
                failed.append(path)
        if not ok:
            continue
        grids = torch.from_numpy(encoder.encode(torch.stack(crops))).to(device)  # (b, 49, 2048)
        decoded = decode_features(loaded.model, grids, loaded.vocab, loaded.config.eval,
                                  beam_size)
        for path, crop, result in zip(ok, crops, decoded, strict=True):
            words = [loaded.vocab.itos[t] for t in result.tokens]
            click.echo(f"{path}: {' '.join(words)}")
            if attention_dir is not None:
                stem = unique_stem(path, used_stems)
                render_attention(TF.to_pil_image(crop), words, result.attention,
                                 attention_dir / f"{stem}.png")
                save_attention_npy(attention_dir / f"{stem}.npy", result.attention)
    return failed


def unique_stem(path: Path, used: set[str]) -> str:
    """The image's file stem, suffixed -2, -3... if an earlier image had the same one."""
    stem, n = path.stem, 1
    while stem in used:
        n += 1
        stem = f"{path.stem}-{n}"
    used.add(stem)
    return stem
