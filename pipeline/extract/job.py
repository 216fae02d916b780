"""From a config (plus command-line overrides) to a finished extraction: no click here.

`job_from_config` resolves and validates everything a run needs into an `ExtractJob`;
`run_job` runs it (sharded under torchrun, else in this process), reports on stderr
(pipeline/output.py), and returns the exit status. `captioner extract` and `captioner demo`
both call these.
"""

from __future__ import annotations

from pathlib import Path

from pipeline import output
from pipeline.config import Config
from pipeline.device import resolve_device
from pipeline.errors import UserError
from pipeline.extract.backbone import resolve_weights
from pipeline.extract.extractor import (
    ExtractJob,
    ExtractResult,
    list_images,
    resolve_grid,
    resolve_precision,
)
from pipeline.extract.sharded import run_sharded_extraction, run_single_process
from pipeline.launch import launched_by_torchrun

EXIT_OK = 0
EXIT_STRICT = 1
SHOW_FAILURES = 10
DEVICE_DECODE = {"auto": None, "device": True, "cpu": False}  # features.decode -> ExtractJob


def job_from_config(
    config: Config,
    *,
    images: str | None = None,
    captions: str | None = None,
    out: str | None = None,
    weights: str | None = None,
    device: str | None = None,
    precision: str | None = None,
    dtype: str | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    fmt: str | None = None,
    overwrite: bool = False,
    strict: bool = False,
    progress: bool = True,
) -> ExtractJob:
    """The job for `config` ([data], [features]); a non-None keyword overrides its key.

    Lists the images (reading the caption file; its statistics are printed).
    """
    data, feat = config.data, config.features
    images = images or data.images
    captions = captions if captions is not None else data.captions
    if not images:
        raise UserError("no images folder: pass --images DIR or set data.images in the config")
    names, rejected = list_images(images, captions or None, fmt or data.format)
    device_ = resolve_device(device or feat.device)
    return ExtractJob(
        images_root=Path(images),
        names=names,
        out=Path(out or feat.path),
        weights=resolve_weights(weights or feat.weights, feat.backbone),
        device=device_,
        precision=resolve_precision(precision or feat.precision, device_),
        dtype=dtype or feat.dtype,
        backbone=feat.backbone,
        grid=resolve_grid(feat.backbone, feat.grid),
        class_token=feat.class_token,
        batch_size=batch_size or feat.batch_size,
        workers=feat.workers if workers is None else workers,
        overwrite=overwrite,
        progress=progress,
        strict=strict,
        device_decode=DEVICE_DECODE[feat.decode],
        rejected=rejected,
    )


def run_job(job: ExtractJob) -> int:
    """Run `job` (one shard per rank under torchrun) and report; EXIT_STRICT when `job.strict`
    and images failed or caption names were rejected, else EXIT_OK.

    KeyboardInterrupt propagates (what was computed is saved; the same job resumes).
    """
    for name, reason in job.rejected[:SHOW_FAILURES]:
        output.warn(f"caption image name {name!r} skipped: {reason}")
    if len(job.rejected) > SHOW_FAILURES:
        output.warn(f"... and {len(job.rejected) - SHOW_FAILURES} more unsafe caption image names")
    output.say(
        f"extract: {len(job.names)} images -> {job.out} ({job.backbone} "
        f"{job.shape.describe()}, weights {job.weights.tag}, {job.device.type} "
        f"{job.precision}, stored {job.dtype})",
        err=True,
    )
    if launched_by_torchrun():
        result = run_sharded_extraction(job)
    else:
        result = run_single_process(job)
    if result.state == "shard":
        return EXIT_OK  # ranks other than 0 under torchrun: rank 0 reports for the whole job
    report(result, job)
    if job.strict and (result.failed or job.rejected):
        output.say(
            f"error: --strict: {len(result.failed)} images failed and {len(job.rejected)} "
            f"caption names were rejected (the file {job.out} is complete and keeps the rest)",
            err=True,
        )
        return EXIT_STRICT
    return EXIT_OK


def decode_note(result: ExtractResult, job: ExtractJob) -> str:
    """The summary's words on device decoding: the decoder and how many JPEGs it failed on
    (decoded on the CPU instead; not counted across torchrun shards); "" when JPEGs were
    decoded on the CPU."""
    if not job.decodes_on_device:
        return ""
    from pipeline.extract.device_decode import jpeg_decoder  # chosen at first use

    note = f"; JPEGs decoded on {job.device.type} by {jpeg_decoder().name}"
    if result.decode is None:
        return note
    return f"{note}, {result.decode.fallbacks} fell back to the CPU"


def report(result: ExtractResult, job: ExtractJob) -> None:
    """End-of-run summary: counts, speed, and the failures."""
    if result.state == "complete":
        output.say(
            f"{job.out} is already complete ({result.total} images, {len(result.failed)} "
            "failed): nothing to do (--overwrite recomputes it)",
            err=True,
        )
        return
    ok = result.total - len(result.failed)
    stale = f", {result.stale} of them because their image changed" if result.stale else ""
    output.say(
        f"done: {ok}/{result.total} images in {job.out} ({result.written} extracted now"
        f"{stale}, {result.reused} from an earlier run; {result.images_per_s:.1f} images/s"
        f"{decode_note(result, job)})",
        err=True,
    )
    if result.failed:
        lines = [f"  {name}: {reason}" for name, reason in result.failed[:SHOW_FAILURES]]
        if len(result.failed) > SHOW_FAILURES:
            lines.append(f"  ... and {len(result.failed) - SHOW_FAILURES} more")
        output.warn(
            f"{len(result.failed)} images failed (listed in the file's 'failed' "
            "dataset; training skips them):\n" + "\n".join(lines)
        )
