"""`captioner extract`: cache ResNet50 grids of a folder of images in one HDF5 file.

Values come from the defaults, then `--config FILE` ([data] captions/images/format and
[features]), then `--set section.key=value`, then the explicit flags (highest priority).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from pipeline.config import CAPTION_FORMATS, DEVICES, FEATURE_DTYPES, PRECISIONS, load_config
from pipeline.device import resolve_device
from pipeline.distributed import launch_rank, launched_by_torchrun
from pipeline.errors import UserError
from pipeline.extract.backbone import resolve_weights
from pipeline.extract.extractor import (
    ExtractJob,
    ExtractResult,
    list_images,
    resolve_precision,
    run_extraction,
)
from pipeline.extract.sharded import run_sharded_extraction

EXIT_INTERRUPTED = 130
EXIT_STRICT = 1
SHOW_FAILURES = 10


def _echo(message: str) -> None:
    """Progress and warnings on stderr; under torchrun only rank 0 speaks."""
    if launch_rank() == 0:
        click.echo(message, err=True)


@click.command("extract")
@click.option("--images", help="Images folder (image names in captions are relative to it).")
@click.option("--captions", help="Caption file: extract only the images it names.")
@click.option("--out", help="Output feature file (.h5). Default: features.path.")
@click.option("--weights", help="imagenet | none | PATH to a resnet50 state_dict.")
@click.option("--device", type=click.Choice(DEVICES), help="auto: cuda when available.")
@click.option("--precision", type=click.Choice(PRECISIONS),
              help="auto: bf16 on CPU (when native), fp16 on CUDA.")
@click.option("--dtype", type=click.Choice(FEATURE_DTYPES), help="Stored feature dtype.")
@click.option("--batch-size", type=click.IntRange(min=1))
@click.option("--workers", type=click.IntRange(min=0), help="Decode worker processes.")
@click.option("--format", "fmt", type=click.Choice(CAPTION_FORMATS), help="Caption file format.")
@click.option("--overwrite", is_flag=True, help="Replace an existing feature file.")
@click.option("--strict", is_flag=True,
              help="Exit 1 if any image failed or a caption image name was unsafe (file kept).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="TOML config ([data], [features]).")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Override a config key (repeatable).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
def extract_command(ctx: click.Context, images, captions, out, weights, device, precision, dtype,
                    batch_size, workers, fmt, overwrite, strict, config_path, overrides,
                    quiet) -> None:
    """Run a frozen ResNet50 once over every image; write (N, 49, 2048) grids to HDF5.

    Rerunning the same command finishes an interrupted file; a complete one is left as is.
    """
    config = load_config(config_path, overrides)
    data, feat = config.data, config.features
    images = images or data.images
    captions = captions if captions is not None else data.captions
    if not images:
        raise UserError("no images folder: pass --images DIR or set data.images in the config")
    names, rejected = list_images(images, captions or None, fmt or data.format, log=_echo)
    device_ = resolve_device(device or feat.device)
    job = ExtractJob(
        images_root=Path(images), names=names, out=Path(out or feat.path),
        weights=resolve_weights(weights or feat.weights), device=device_,
        precision=resolve_precision(precision or feat.precision, device_),
        dtype=dtype or feat.dtype, batch_size=batch_size or feat.batch_size,
        workers=feat.workers if workers is None else workers, overwrite=overwrite,
        progress=not quiet)
    for name, reason in rejected[:SHOW_FAILURES]:
        _echo(f"warning: caption image name {name!r} skipped: {reason}")
    if len(rejected) > SHOW_FAILURES:
        _echo(f"warning: ... and {len(rejected) - SHOW_FAILURES} more unsafe caption image names")
    _echo(f"extract: {len(names)} images -> {job.out} (weights {job.weights.tag}, "
          f"{job.device.type} {job.precision}, stored {job.dtype})")
    try:
        if launched_by_torchrun():  # one shard per rank, merged by rank 0
            result = run_sharded_extraction(job, log=_echo)
        else:
            result = run_extraction(job, log=_echo)
    except KeyboardInterrupt:
        _echo("stopped: rerun the same command to resume where it left off")
        sys.stdout.flush()
        ctx.exit(EXIT_INTERRUPTED)
    if result.state == "shard":
        return  # ranks other than 0 under torchrun: rank 0 reports for the whole job
    _report(result, job)
    if strict and (result.failed or rejected):
        _echo(f"error: --strict: {len(result.failed)} images failed and {len(rejected)} caption "
              f"names were rejected (the file {job.out} is complete and keeps the rest)")
        ctx.exit(EXIT_STRICT)


def _report(result: ExtractResult, job: ExtractJob) -> None:
    """End-of-run summary on stderr: counts, speed, and the failures."""
    if result.state == "complete":
        _echo(f"{job.out} is already complete ({result.total} images): nothing to do "
              "(--overwrite recomputes it)")
        return
    ok = result.total - len(result.failed)
    _echo(f"done: {ok}/{result.total} images in {job.out} ({result.written} extracted now, "
          f"{result.reused} from an earlier run; {result.images_per_s:.1f} images/s)")
    if result.failed:
        _echo(f"warning: {len(result.failed)} images failed (listed in the file's 'failed' "
              "dataset; training skips them):")
        for name, reason in result.failed[:SHOW_FAILURES]:
            _echo(f"  {name}: {reason}")
        if len(result.failed) > SHOW_FAILURES:
            _echo(f"  ... and {len(result.failed) - SHOW_FAILURES} more")
