"""`captioner evaluate` and `captioner caption`."""

from pathlib import Path

import click

from pipeline import output
from pipeline.config import DEVICES, SPLITS, FeaturesConfig
from pipeline.extract.cli import EXIT_INTERRUPTED
from pipeline.infer.selection import GALLERY_SIZE, HTML_LIMIT
from pipeline.launch import launch_rank


@click.command("evaluate")
@click.argument("checkpoints", nargs=-1, required=True, metavar="RUN_OR_CHECKPOINT...")
@click.option("--split", type=click.Choice(SPLITS), help="Default: each checkpoint's eval.split.")
@click.option(
    "--beam-size",
    type=click.IntRange(min=1),
    help="Default: each checkpoint's eval.beam_size. Capped at the vocabulary size; images "
    "are decoded in chunks that fit memory.",
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
@click.option(
    "--examples",
    type=click.IntRange(min=0),
    help="Images whose captions are printed. Default: each checkpoint's eval.examples.",
)
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
@click.argument("images", nargs=-1, type=click.Path(dir_okay=False))
@click.option(
    "--checkpoint",
    required=True,
    type=click.Path(),
    help="A checkpoint file or a run folder (its best.pt).",
)
@click.option(
    "--images",
    "folder",
    type=click.Path(file_okay=False),
    help="Caption the images in this folder (--recursive: and in its sub-folders).",
)
@click.option("--recursive", is_flag=True, help="With --images: sub-folders too.")
@click.option(
    "--glob",
    "globs",
    multiple=True,
    help="With --images: file-name pattern, repeatable (default: the image suffixes "
    "extract reads).",
)
@click.option("--list", "list_file", help="A file naming one image per line; - for stdin.")
@click.option(
    "--features",
    "features_path",
    type=click.Path(dir_okay=False),
    help="Caption the rows of a feature file made like the checkpoint's (no CNN).",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    help="Write one JSON line per image (resumable: rerun to finish). Default: print.",
)
@click.option("--overwrite", is_flag=True, help="With --out: start the output over.")
@click.option(
    "--beam-size",
    type=click.IntRange(min=1),
    help="Default: the checkpoint's eval.beam_size.",
)
@click.option(
    "--max-len",
    type=click.IntRange(min=1),
    help="Most words per caption. Default: the checkpoint's eval.max_len.",
)
@click.option(
    "--keep-beams",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="With --out: also write the K best hypotheses of each image, with their scores.",
)
@click.option(
    "--attention-dir",
    type=click.Path(file_okay=False),
    help="Write IMAGE_STEM.png (attention per word) and IMAGE_STEM.npy (T, R), R regions "
    "(49 for ResNet50).",
)
@click.option(
    "--html",
    "html_path",
    type=click.Path(dir_okay=False),
    help="Write a self-contained HTML page: thumbnail, caption, attention strip.",
)
@click.option(
    "--html-limit",
    default=HTML_LIMIT,
    show_default=True,
    type=click.IntRange(min=0),
    help="Most images on the --html page (a fixed sample of the images captioned).",
)
@click.option(
    "--batch-size",
    default=FeaturesConfig.batch_size,
    show_default=True,
    type=click.IntRange(min=1),
)
@click.option(
    "--workers",
    default=FeaturesConfig.workers,
    show_default=True,
    type=click.IntRange(min=0),
    help="Image decoding worker processes.",
)
@click.option("--device", default="auto", show_default=True, type=click.Choice(DEVICES))
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
def caption_command(
    ctx: click.Context,
    images,
    checkpoint,
    folder,
    recursive,
    globs,
    list_file,
    features_path,
    out,
    overwrite,
    beam_size,
    max_len,
    keep_beams,
    attention_dir,
    html_path,
    html_limit,
    batch_size,
    workers,
    device,
    quiet,
):
    """Caption images: extract each grid exactly as the checkpoint's features were made,
    then beam-search a caption. Exits 1 if any image failed (with --out: any in the file)."""
    from pipeline.infer.caption import CaptionJob, run_caption
    from pipeline.infer.caption_sources import make_source

    job = CaptionJob(
        source=make_source(images, folder, recursive, globs, list_file, features_path),
        checkpoint=Path(checkpoint),
        beam_size=beam_size,
        max_len=max_len,
        keep_beams=keep_beams,
        out=Path(out) if out else None,
        overwrite=overwrite,
        attention_dir=Path(attention_dir) if attention_dir else None,
        html_path=Path(html_path) if html_path else None,
        html_limit=html_limit,
        batch_size=batch_size,
        workers=workers,
        device=device,
        progress=not quiet,
    )
    try:
        result = run_caption(job)
    except KeyboardInterrupt:
        if out:
            output.say("stopped: rerun the same command to resume where it left off", err=True)
        ctx.exit(EXIT_INTERRUPTED)
    if launch_rank() != 0:
        return  # rank 0 reports (and exits 1 on failures) for the whole torchrun job
    if job.out is not None:
        _report(result, job.out)
    if result.html is not None:
        output.say(f"html: {result.html}")
    if result.failed or result.failed_lines:
        ctx.exit(1)


def _report(result, out: Path) -> None:
    """The end-of-run summary of `caption --out` (stderr)."""
    skipped = [f"{result.already} already there"] if result.already else []
    if result.duplicates:
        skipped.append(f"{result.duplicates} listed twice")
    if result.captioned + result.failed:
        done = f"{result.captioned} captioned now, {result.failed} failed now"
        now = ", ".join([done, *skipped]) + f"; {result.images_per_s:.1f} images/s"
    else:
        now = ", ".join(["nothing new", *skipped])
    output.say(f"caption: {result.lines} images in {out} ({now})", err=True)
    if result.failed_lines:
        output.warn(f"{result.failed_lines} images failed: their lines in {out} say why")
