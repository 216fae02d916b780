"""`captioner extract`: cache a backbone's grids (features.backbone, ResNet50 by default) of a
folder of images in one HDF5 file.

Values come from the defaults, then `--config FILE` ([data] captions/images/format and
[features]), then `--set section.key=value`, then the explicit flags (highest priority).
The work is done by `job_from_config` and `run_job` (pipeline/extract/job.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from pipeline import output
from pipeline.cli_options import config_options
from pipeline.config import (
    CAPTION_FORMATS,
    DEVICES,
    FEATURE_DTYPES,
    PRECISIONS,
    load_config,
)

EXIT_INTERRUPTED = 130


@click.command("extract")
@click.option("--images", help="Images folder (image names in captions are relative to it).")
@click.option("--captions", help="Caption file: extract only the images it names.")
@click.option("--out", help="Output feature file (.h5). Default: features.path.")
@click.option(
    "--weights",
    help="imagenet | none | PATH to a state_dict of features.backbone's torchvision model.",
)
@click.option("--device", type=click.Choice(DEVICES), help="auto: cuda when available.")
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    help="auto: fp16 on CUDA; on the CPU bf16 where native, else fp32 (pipeline/device.py).",
)
@click.option("--dtype", type=click.Choice(FEATURE_DTYPES), help="Stored feature dtype.")
@click.option("--batch-size", type=click.IntRange(min=1))
@click.option("--workers", type=click.IntRange(min=0), help="Decode worker processes.")
@click.option("--format", "fmt", type=click.Choice(CAPTION_FORMATS), help="Caption file format.")
@click.option("--overwrite", is_flag=True, help="Replace an existing feature file.")
@click.option(
    "--strict",
    is_flag=True,
    help="Exit 1 if any image failed or a caption image name was unsafe (file kept).",
)
@click.option(
    "--consolidate",
    is_flag=True,
    help="Turn a sharded (torchrun) feature file into one self-contained file.",
)
@config_options("TOML config ([data], [features]).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
def extract_command(
    ctx: click.Context,
    images,
    captions,
    out,
    weights,
    device,
    precision,
    dtype,
    batch_size,
    workers,
    fmt,
    overwrite,
    strict,
    consolidate,
    config_path,
    overrides,
    quiet,
) -> None:
    """Run a frozen backbone once over every image; write (N, R, C) grids to HDF5.

    features.backbone picks it (resnet50 by default: 7x7x2048; --set
    features.backbone=convnext_tiny, ...), features.grid the cells per side.

    Rerunning the same command finishes an interrupted file; a complete one is left as is.
    """
    from pipeline.extract.job import job_from_config, run_job  # torch: not for `--help`
    from pipeline.extract.sharded import consolidate_file

    config = load_config(config_path, overrides)
    if consolidate:
        consolidate_file(Path(out or config.features.path))
        return
    job = job_from_config(
        config,
        images=images,
        captions=captions,
        out=out,
        weights=weights,
        device=device,
        precision=precision,
        dtype=dtype,
        batch_size=batch_size,
        workers=workers,
        fmt=fmt,
        overwrite=overwrite,
        strict=strict,
        progress=not quiet,
    )
    try:
        code = run_job(job)
    except KeyboardInterrupt:
        output.say("stopped: rerun the same command to resume where it left off", err=True)
        sys.stdout.flush()
        ctx.exit(EXIT_INTERRUPTED)
    if code:
        ctx.exit(code)
