"""Caption new images: extract grids exactly as the checkpoint's feature file was made.

The checkpoint records the feature file's fingerprint (weights, preprocessing policy,
precision, storage dtype); `FeatureEncoder.from_attrs` rebuilds that extractor, so an image
captioned here gets the very features `extract` would have written for it. (Preprocessing
that differs between training and inference is the classic cause of "the same caption for
every image".)

Outputs go through `OutputFolder`: `--attention-dir` gets STEM.png and STEM.npy per image,
`--html` one self-contained page; a file of that name that captioner did not write is
refused before any image is captioned.
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
from pipeline.infer.attention_maps import attention_npy, attention_png
from pipeline.infer.files import OutputFolder
from pipeline.infer.gallery import Card
from pipeline.infer.report import caption_report

BATCH = 16


def caption_images(
    paths: list[Path],
    checkpoint: str | Path,
    beam_size: int,
    attention_dir: Path | None = None,
    device_name: str = "auto",
    html_path: Path | None = None,
) -> list[Path]:
    """Print `path: caption` per image (errors to stderr); returns the images that failed."""
    stems = unique_stems(paths)
    maps = OutputFolder(attention_dir) if attention_dir is not None else None
    for stem in stems if maps else []:
        maps.check(f"{stem}.png")
        maps.check(f"{stem}.npy")
    page = OutputFolder(html_path.parent) if html_path is not None else None
    if page:
        page.check(html_path.name)
    device = resolve_device(device_name)
    loaded = load_model(checkpoint, device)
    encoder = FeatureEncoder.from_attrs(loaded.features, device)
    failed: list[Path] = []
    cards: list[Card] = []
    for start in range(0, len(paths), BATCH):
        crops, ok = [], []
        for position in range(start, min(start + BATCH, len(paths))):
            path = paths[position]
            try:
                crops.append(preprocess_image(path))  # (3, 224, 224) uint8
                ok.append(position)
            except ImageError as exc:
                click.echo(f"{path}: error: {exc}", err=True)
                failed.append(path)
        if not ok:
            continue
        grids = torch.from_numpy(encoder.encode(torch.stack(crops))).to(device)  # (b, 49, 2048)
        decoded = decode_features(loaded.model, grids, loaded.vocab, loaded.config.eval, beam_size)
        for position, crop, result in zip(ok, crops, decoded, strict=True):
            path, stem = paths[position], stems[position]
            words = [loaded.vocab.itos[t] for t in result.tokens]
            caption = loaded.vocab.decode(result.tokens)
            click.echo(f"{path}: {caption}")
            image = TF.to_pil_image(crop)
            if maps:
                maps.write_bytes(f"{stem}.png", attention_png(image, words, result.attention))
                maps.write_bytes(f"{stem}.npy", attention_npy(result.attention))
            cards.append(
                Card(
                    name=str(path),
                    caption=caption,
                    words=words,
                    attention=result.attention,
                    image=image,
                )
            )
    if page:
        html = caption_report(cards, str(loaded.path), beam_size)
        click.echo(f"html: {page.write_text(html_path.name, html)}")
    return failed


def unique_stems(paths: list[Path]) -> list[str]:
    """Each image's file stem, suffixed -2, -3... when an earlier image had the same one."""
    used: set[str] = set()
    stems = []
    for path in paths:
        stem, n = path.stem, 1
        while stem in used:
            n += 1
            stem = f"{path.stem}-{n}"
        used.add(stem)
        stems.append(stem)
    return stems
