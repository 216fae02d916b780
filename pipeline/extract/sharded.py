"""Extraction under torchrun: one shard of the image list per rank, merged by rank 0.

Rank r extracts the r-th contiguous slice of the (sorted) image list into its own feature
file, `OUT.shard-RRR-of-WWW`, with exactly the single-process machinery, so each shard is
resumable on its own: a rank killed mid-run leaves shards that the same torchrun command
finishes. Once every rank is done, rank 0 copies the shards in order into `OUT.merging`,
writes `failed`, marks it complete and renames it to OUT (same rows, order and attrs as a
single-process run); the shards are deleted only after that rename.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import numpy as np

from pipeline import contract, distributed
from pipeline.errors import UserError
from pipeline.extract.extractor import (
    ExtractJob,
    ExtractResult,
    check_output,
    feature_attrs,
    run_extraction,
)

MERGE_BLOCK = 256  # rows copied per h5py call while merging
WAIT_FOR_RANKS = timedelta(hours=72)  # ranks that finish early wait for the slowest shard


def shard_bounds(count: int, world_size: int) -> list[tuple[int, int]]:
    """Contiguous, balanced [start, stop) slices of `count` rows for each rank."""
    edges = np.linspace(0, count, world_size + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]


def shard_path(out: Path, rank: int, world_size: int) -> Path:
    """Where rank `rank` of `world_size` writes its shard of `out`."""
    return out.with_name(f"{out.name}.shard-{rank:03d}-of-{world_size:03d}")


def run_sharded_extraction(job: ExtractJob, log: Callable[[str], None]) -> ExtractResult:
    """Extract this rank's shard, wait for all ranks, and (rank 0) merge into `job.out`."""
    dist = distributed.setup(backend="gloo", timeout=WAIT_FOR_RANKS)
    try:
        state = check_output(job, feature_attrs(job))
        if state == "complete":
            return ExtractResult("complete", total=len(job.names))
        if state == "resume":
            raise UserError(f"{job.out} is an unfinished single-process file: finish it with "
                            "plain `captioner extract` (or pass --overwrite)")
        start, stop = shard_bounds(len(job.names), dist.world_size)[dist.rank]
        shard = replace(job, names=job.names[start:stop],
                        device=distributed.device_for(dist, job.device),
                        out=shard_path(job.out, dist.rank, dist.world_size),
                        progress=job.progress and dist.is_main)
        result = run_extraction(shard, log if dist.is_main else (lambda _: None))
        distributed.barrier(dist)
        if dist.is_main:
            merged = merge_shards(job, dist.world_size)
            result = replace(merged, seconds=result.seconds)
        else:
            result = replace(result, state="shard")  # rank 0 reports for the whole job
        distributed.barrier(dist)
        return result
    finally:
        distributed.teardown(dist)


def merge_shards(job: ExtractJob, world_size: int) -> ExtractResult:
    """Copy the complete shards, in rank order, into one file at `job.out`; delete them."""
    shards = [shard_path(job.out, rank, world_size) for rank in range(world_size)]
    with contract.open_complete(shards[0]) as first:
        attrs = {k: v for k, v in contract.read_attrs(first).items()
                 if k not in ("num_images", "complete")}
    merging = job.out.with_name(job.out.name + ".merging")
    contract.create_feature_file(merging, job.names, attrs, job.dtype)
    failed: list[tuple[str, str]] = []
    with contract.open_h5(merging, "r+") as out:
        offset = 0
        for path in shards:
            with contract.open_complete(path) as shard:
                n = shard[contract.FEATURES].shape[0]
                if contract.read_image_ids(shard) != job.names[offset:offset + n]:
                    raise UserError(f"{path} holds other images than its shard of {job.out}; "
                                    "delete the shards and rerun")
                copy_rows(shard, out, offset, n)
                failed.extend(contract.read_failed(shard).items())
                offset += n
        contract.write_failed_and_complete(out, failed)
    merging.replace(job.out)
    for path in shards:
        path.unlink()
    return ExtractResult("done", total=len(job.names), written=len(job.names) - len(failed),
                         failed=failed)


def copy_rows(source, target, offset: int, count: int) -> None:
    """features and status rows [0, count) of `source` -> [offset, offset + count) of target."""
    for start in range(0, count, MERGE_BLOCK):
        stop = min(start + MERGE_BLOCK, count)
        block = source[contract.FEATURES][start:stop]  # (b, 49, 2048)
        target[contract.FEATURES][offset + start:offset + stop] = block
        target[contract.STATUS][offset + start:offset + stop] = source[contract.STATUS][start:stop]
    target.flush()
