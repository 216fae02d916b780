"""Extraction under torchrun: one shard of the image list per rank, joined without a copy.

Rank r extracts the r-th contiguous slice of the (sorted) image list into its own feature
file, `OUT.shard-RRR-of-WWW`, with exactly the single-process machinery, so each shard is
resumable on its own: a rank killed mid-run leaves shards that the same torchrun command
finishes. Once every rank is done, rank 0 writes OUT whose per-row datasets (`features`,
`image_ids`, `status`, the image stamps) are HDF5 virtual datasets mapping the shards in
order (by file name, relative to OUT's folder), plus `failed` and the attrs, and renames it
into place. Finishing reads no grid and writes a few KB whatever N is; the shards must stay
next to OUT. `consolidate_file` (`captioner extract --consolidate`) turns such a file into
one self-contained file, atomically, and then deletes the shards.
"""

from __future__ import annotations

import os
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import h5py
import numpy as np

from pipeline import contract, distributed, output
from pipeline.capacity import require_space
from pipeline.errors import UserError
from pipeline.extract.extractor import (
    ExtractJob,
    ExtractResult,
    check_output,
    feature_attrs,
    final_size,
    run_extraction,
)
from pipeline.rank_files import rank_file, rank_files

COPY_BLOCK = 256  # rows copied per h5py call while consolidating
WAIT_FOR_RANKS = timedelta(hours=72)  # ranks that finish early wait for the slowest shard


def shard_bounds(count: int, world_size: int) -> list[tuple[int, int]]:
    """Contiguous, balanced [start, stop) slices of `count` rows for each rank."""
    edges = np.linspace(0, count, world_size + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]


def shard_path(out: Path, rank: int, world_size: int) -> Path:
    """Where rank `rank` of `world_size` writes its shard of `out`."""
    return rank_file(out, "shard", rank, world_size)


def shard_job(job: ExtractJob, rank: int, world_size: int) -> ExtractJob:
    """The part of `job` that rank `rank` of `world_size` extracts into its shard file."""
    start, stop = shard_bounds(len(job.names), world_size)[rank]
    return replace(job, names=job.names[start:stop], out=shard_path(job.out, rank, world_size))


def shard_files(out: Path) -> dict[int, list[Path]]:
    """The shard files of `out` that exist, by the number of ranks they were made for."""
    return rank_files(out, "shard")


def unfinished_shards(out: Path) -> int | None:
    """The number of ranks of an interrupted torchrun extract whose shards `out` does not
    map yet (`out` not written); None if there is none. Shards of several: UserError."""
    found = shard_files(out)
    if not found or out.exists():
        return None
    if len(found) > 1:
        names = ", ".join(p.name for paths in found.values() for p in paths[:1])
        raise UserError(
            f"{out} has shard files of unfinished torchrun extracts with different numbers "
            f"of ranks ({names}, ...): delete the ones not wanted, or pass --overwrite to "
            "start over (deletes them all)"
        )
    return next(iter(found))


def discard_shards(out: Path) -> None:
    """--overwrite: delete every shard file of `out`, and `out` itself if it maps them."""
    if out.is_file():
        with contract.open_h5(out) as f:
            mapped = contract.FEATURES in f and contract.is_virtual(f)
        if mapped:
            out.unlink()
    for paths in shard_files(out).values():
        for path in paths:
            path.unlink(missing_ok=True)


def run_single_process(job: ExtractJob) -> ExtractResult:
    """Extract `job` without torchrun. The shards an interrupted torchrun extract left are
    finished here, one after the other, and joined; --overwrite deletes them first."""
    if job.overwrite:
        check_output(job, feature_attrs(job))  # refuses an --out that is no feature file
        discard_shards(job.out)
        return run_extraction(job)
    world_size = unfinished_shards(job.out)
    if world_size is None:
        return run_extraction(job)
    output.say(
        f"{job.out}: finishing the {world_size} shard files an interrupted torchrun run left",
        err=True,
    )
    done = [run_extraction(shard_job(job, r, world_size)) for r in range(world_size)]
    return replace(
        join_shards(job, world_size),
        reused=sum(r.total if r.state == "complete" else r.reused for r in done),
        written=sum(r.written for r in done),
        seconds=sum(r.seconds for r in done),
        stale=sum(r.stale for r in done),
    )


def run_sharded_extraction(job: ExtractJob) -> ExtractResult:
    """Extract this rank's shard, wait for all ranks, and (rank 0) join them into `job.out`.

    A UserError on any rank ends every rank with its line (`distributed.process_group`).
    """
    with distributed.process_group(backend="gloo", timeout=WAIT_FOR_RANKS) as dist:
        state = check_output(job, feature_attrs(job))
        if state == "complete":
            return ExtractResult("complete", total=len(job.names))
        if state == "resume":
            raise UserError(
                f"{job.out} is an unfinished single-process file: finish it with "
                "plain `captioner extract` (or pass --overwrite)"
            )
        if job.overwrite:
            distributed.barrier(dist)  # every rank has checked --out
            if dist.is_main:
                discard_shards(job.out)
            distributed.barrier(dist)
        _check_rank_count(job.out, dist.world_size)
        shard = replace(
            shard_job(job, dist.rank, dist.world_size),
            device=distributed.device_for(dist, job.device),
            progress=job.progress and dist.is_main,
        )
        result = run_extraction(shard)
        distributed.barrier(dist)
        if dist.is_main:
            joined = join_shards(job, dist.world_size)
            result = replace(joined, seconds=result.seconds)
        else:
            result = replace(result, state="shard")  # rank 0 reports for the whole job
        distributed.barrier(dist)
        return result


def _check_rank_count(out: Path, world_size: int) -> None:
    """UserError when the shards an interrupted run left were made for other ranks."""
    found = unfinished_shards(out)
    if found not in (None, world_size):
        raise UserError(
            f"{out}: {shard_path(out, 0, found).name}... are the shards of an unfinished "
            f"extract over {found} ranks: rerun it over {found} ranks, or without torchrun "
            "to finish it in one process, or pass --overwrite to start over (deletes them)"
        )


def join_shards(job: ExtractJob, world_size: int) -> ExtractResult:
    """Write `job.out` as virtual datasets over the complete shards, in rank order."""
    shards = [shard_path(job.out, rank, world_size) for rank in range(world_size)]
    sizes, failed, attrs = [], [], {}
    offset = 0
    for path in shards:
        with contract.open_complete(path) as shard:
            n = shard[contract.FEATURES].shape[0]
            if contract.read_image_ids(shard) != job.names[offset : offset + n]:
                raise UserError(
                    f"{path} holds other images than its shard of {job.out}; "
                    "delete the shards and rerun"
                )
            attrs = attrs or {
                k: v
                for k, v in contract.read_attrs(shard).items()
                if k not in ("num_images", "complete")
            }
            failed.extend(contract.read_failed(shard).items())
            sizes.append(n)
            offset += n
    joining = job.out.with_name(job.out.name + ".joining")
    shape = contract.feature_shape(attrs)
    with h5py.File(joining, "w") as out:
        for name in contract.PER_ROW:
            _virtual_dataset(out, name, shards, sizes, job.dtype, shape)
        for key, value in attrs.items():
            out.attrs[key] = contract.encode_attr(value)
        out.attrs["num_images"] = len(job.names)
        contract.write_failed_and_complete(out, failed)
    joining.replace(job.out)
    return ExtractResult(
        "done", total=len(job.names), written=len(job.names) - len(failed), failed=failed
    )


def _virtual_dataset(
    out: h5py.File,
    name: str,
    shards: list[Path],
    sizes: list[int],
    dtype: str,
    shape: contract.FeatureShape,
) -> None:
    """Dataset `name` of `out` = the concatenation of the shards' `name` (mapped, not copied);
    `features` rows are (R, C) of `shape`."""
    tail = (shape.regions, shape.channels) if name == contract.FEATURES else ()
    kinds = {
        contract.FEATURES: np.dtype(dtype),
        contract.IMAGE_IDS: contract.STRING_DTYPE,
        contract.STATUS: np.dtype(np.int8),
    }
    layout = h5py.VirtualLayout(shape=(sum(sizes), *tail), dtype=kinds.get(name, np.int64))
    offset = 0
    for path, n in zip(shards, sizes, strict=True):
        layout[offset : offset + n] = h5py.VirtualSource(path.name, name, shape=(n, *tail))
        offset += n
    out.create_virtual_dataset(name, layout)


def consolidate_file(path: Path) -> None:
    """Replace a sharded (virtual) feature file by one self-contained file; delete its shards.

    The copy is written under a temporary name and renamed over `path` (atomic); the shards
    are deleted only after that. A self-contained file is left as it is.
    """
    with contract.open_complete(path) as f:
        if not contract.is_virtual(f):
            output.say(f"{path} is already self-contained: nothing to do", err=True)
            return
        shards = sorted(
            {
                contract.source_path(path, s.file_name)
                for s in f[contract.FEATURES].virtual_sources()
            }
        )
        ids, dtype = contract.read_image_ids(f), str(f[contract.FEATURES].dtype)
        attrs = {
            k: v for k, v in contract.read_attrs(f).items() if k not in ("num_images", "complete")
        }
        failed = list(contract.read_failed(f).items())
        final = final_size(len(ids), dtype, contract.feature_shape(attrs))
        require_space(path, final, final)
        copying = path.with_name(path.name + ".consolidating")
        try:
            contract.create_feature_file(copying, ids, attrs, dtype)
            with contract.open_h5(copying, "r+") as out:
                _copy_rows(f, out, len(ids))
                contract.write_failed_and_complete(out, failed)
        except OSError as exc:
            copying.unlink(missing_ok=True)
            raise UserError(f"consolidating {path} failed ({exc}); it is unchanged") from None
    os.replace(copying, path)
    for shard in shards:
        shard.unlink(missing_ok=True)
    output.say(f"{path} now holds all {len(ids)} rows; deleted {len(shards)} shard files", err=True)


def _copy_rows(source: h5py.File, target: h5py.File, count: int) -> None:
    """Every per-row dataset but the ids (already written), COPY_BLOCK rows per call."""
    names = [n for n in (contract.FEATURES, contract.STATUS, *contract.STAMPS) if n in source]
    for start in range(0, count, COPY_BLOCK):
        stop = min(start + COPY_BLOCK, count)
        for name in names:
            target[name][start:stop] = source[name][start:stop]  # (b, ...) rows
    target.flush()
