"""`captioner evaluate` and `captioner caption`."""

import sys
from pathlib import Path

import click

from pipeline.config import DEVICES, SPLITS
from pipeline.infer.selection import GALLERY_SIZE


@click.command("evaluate")
@click.argument("checkpoints", nargs=-1, required=True, metavar="RUN_OR_CHECKPOINT...")
@click.option("--split", default="test", show_default=True, type=click.Choice(SPLITS))
@click.option(
    "--beam-size",
    default=3,
    show_default=True,
    type=click.IntRange(min=1),
    help="Capped at the vocabulary size; images are decoded in chunks that fit memory.",
)
@click.option(
    "--out",
    default="evaluations",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder for per-run predictions.json/metrics.json/report.html, and "
    "table.md/table.csv/comparison.html for several runs.",
)
@click.option(
    "--features",
    "features_path",
    type=click.Path(dir_okay=False),
    help="Feature file to read (default: the one in each run's config).",
)
@click.option("--examples", default=5, show_default=True, type=click.IntRange(min=0))
@click.option(
    "--gallery",
    default=GALLERY_SIZE,
    show_default=True,
    type=click.IntRange(min=0),
    help="Images in each of the report's best / worst / random groups.",
)
@click.option("--device", default="auto", show_default=True, type=click.Choice(DEVICES))
def evaluate_command(checkpoints, split, beam_size, out, features_path, examples, gallery, device):
    """Caption a split from the cache with each checkpoint and score it (BLEU, METEOR, ROUGE-L,
    CIDEr); a run folder means its best.pt. Writes a self-contained report.html per run."""
    from pipeline.infer.evaluate import evaluate_many

    evaluate_many(
        list(checkpoints), split, beam_size, Path(out), features_path, examples, device, gallery
    )


@click.command("caption")
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option(
    "--checkpoint",
    required=True,
    type=click.Path(),
    help="A checkpoint file or a run folder (its best.pt).",
)
@click.option("--beam-size", default=3, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--attention-dir",
    type=click.Path(file_okay=False),
    help="Write IMAGE_STEM.png (attention per word) and IMAGE_STEM.npy (T, 49).",
)
@click.option(
    "--html",
    "html_path",
    type=click.Path(dir_okay=False),
    help="Write a self-contained HTML page: thumbnail, caption, attention strip.",
)
@click.option("--device", default="auto", show_default=True, type=click.Choice(DEVICES))
def caption_command(images, checkpoint, beam_size, attention_dir, html_path, device):
    """Caption new images: extract each grid exactly as the checkpoint's features were made,
    then beam-search a caption. Exits 1 if any image failed."""
    from pipeline.infer.caption import caption_images

    failures = caption_images(
        [Path(p) for p in images],
        checkpoint,
        beam_size,
        Path(attention_dir) if attention_dir else None,
        device,
        Path(html_path) if html_path else None,
    )
    if failures:
        sys.exit(1)
