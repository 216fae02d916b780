"""Caption images with a checkpoint, a few or millions: `captioner caption`.

Images are encoded exactly as the checkpoint's feature file was made: the checkpoint records
that file's fingerprint (weights, preprocessing policy, precision, storage dtype) and
`FeatureEncoder.from_attrs` rebuilds that extractor, so an image captioned here gets the very
features `extract` would have written for it. (Preprocessing that differs between training and
inference is the classic cause of "the same caption for every image".) `--features F.h5`
captions a feature file's rows instead, with no CNN; the file must be made like the
checkpoint's (its image list may differ).

A run streams: the source is iterated (caption_sources), the planner keeps this rank's
images not yet in the output, each once (caption_plan), DataLoader workers decode images
while the CNN and the decoder run on earlier batches (caption_batches), and each batch's
lines are appended to OUT and fsynced, or printed (caption_output); attention maps and a
bounded HTML gallery come from the same batches (caption_pictures). Nothing grows with the
number of images but the planner's 16-byte keys.

Under torchrun each rank captions its share into its own part, and rank 0 joins the parts.
Every phase ends with a barrier; a mistake any rank finds (a refused output, a full disk)
ends every rank with the same one line (`distributed.process_group`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch
import torchvision.transforms.functional as TF
from tqdm import tqdm

from pipeline import contract, distributed, output
from pipeline.checksum import file_sha256
from pipeline.config import EvalConfig, FeaturesConfig, validate, with_flags
from pipeline.dataset.experiment import check_cache
from pipeline.decoder.checkpoint import LoadedModel, load_model
from pipeline.decoder.decode import Decoded
from pipeline.decoder.generate import decode_features
from pipeline.device import resolve_device
from pipeline.distributed import DistInfo
from pipeline.errors import UserError
from pipeline.extract.extractor import FeatureEncoder, check_policy, torch_threads
from pipeline.extract.images import Preprocessing, preprocessing_of
from pipeline.extract.sharded import WAIT_FOR_RANKS
from pipeline.infer.caption_batches import GridBatch, file_grids, image_grids
from pipeline.infer.caption_output import (
    LineFile,
    Scan,
    TerminalLines,
    caption_record,
    error_record,
    join_parts,
    open_for_append,
    output_settings,
    part_path,
    prepare_output,
    scan_output,
)
from pipeline.infer.caption_pictures import Crop, Pictures
from pipeline.infer.caption_plan import Planner
from pipeline.infer.caption_sources import Input, Source
from pipeline.infer.gallery import load_crop
from pipeline.infer.selection import HTML_LIMIT
from pipeline.launch import launched_by_torchrun

CHECKPOINT_ID_HEX = 16  # digits of the checkpoint's sha256 that identify it in the output
FEATURES_ADVICE = (
    "caption a feature file made like the checkpoint's (same weights, preprocessing, "
    "precision and dtype)"
)


@dataclass
class CaptionJob:
    """Everything one `caption` run needs (see `pipeline/infer/cli.py`)."""

    source: Source
    checkpoint: Path
    beam_size: int | None = None  # None: the checkpoint's eval.beam_size
    max_len: int | None = None  # words; None: the checkpoint's eval.max_len
    keep_beams: int = 0  # write the top K hypotheses of each image (0: none)
    out: Path | None = None  # JSON lines; None: print to the terminal
    overwrite: bool = False
    attention_dir: Path | None = None
    html_path: Path | None = None
    html_limit: int = HTML_LIMIT
    batch_size: int = FeaturesConfig.batch_size
    workers: int = FeaturesConfig.workers
    device: str = "auto"
    device_decode: bool | None = None  # JPEGs decoded on the device; None: on CUDA only
    progress: bool = True


@dataclass
class CaptionResult:
    """What a run did (summed over the ranks on rank 0)."""

    captioned: int = 0  # images captioned by this run
    failed: int = 0  # images that failed in this run
    already: int = 0  # inputs skipped: already in the output
    duplicates: int = 0  # inputs skipped: the same image listed before
    lines: int = 0  # lines the output holds now (with --out)
    failed_lines: int = 0  # of which failed images
    seconds: float = 0.0
    html: Path | None = None

    @property
    def images_per_s(self) -> float:
        """Images captioned or failed per second of the captioning loop."""
        return (self.captioned + self.failed) / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Setup:
    """The loaded pieces a run shares between its phases."""

    loaded: LoadedModel
    device: torch.device
    decoding: EvalConfig  # the checkpoint's eval section with the job's beam_size, max_len
    identity: dict  # the checkpoint's path and content id, on every caption line
    pictures: Pictures
    encoder: FeatureEncoder | None  # None for --features
    images_root: str  # where a feature file's images were (crops for the pictures)
    pre: Preprocessing  # the checkpoint's backbone's preprocessing (its crops)


def run_caption(job: CaptionJob) -> CaptionResult:
    """Caption every input of `job` (under torchrun, this rank's share; rank 0 reports the
    whole job). KeyboardInterrupt propagates: every line written so far stays."""
    check_job(job)
    with distributed.process_group(backend="gloo", timeout=WAIT_FOR_RANKS) as dist:
        return _run(job, dist)


def check_job(job: CaptionJob) -> None:
    """UserError for options that cannot work together."""
    if job.beam_size is not None:  # else checked once the checkpoint's beam size is known
        check_keep_beams(job.keep_beams, job.beam_size)
    if job.out is None and (job.overwrite or job.keep_beams):
        raise UserError("--overwrite and --keep-beams go with --out")
    if launched_by_torchrun():
        if job.out is None:
            raise UserError("under torchrun, pass --out: each rank writes its own part of it")
        if not job.source.rereadable:
            raise UserError(
                "under torchrun every rank reads the list: write it to a file for --list"
            )


def check_keep_beams(keep_beams: int, beam_size: int) -> None:
    """UserError when more hypotheses are to be kept than the beam holds."""
    if keep_beams > beam_size:
        raise UserError(f"--keep-beams {keep_beams} needs --beam-size {keep_beams} or more")


def _run(job: CaptionJob, dist: DistInfo) -> CaptionResult:
    """The phases, each ended on every rank before the next begins (rank 0 has prepared OUT
    before any rank opens its part; every part is complete before rank 0 joins them)."""
    setup = _setup(job, dist)
    distributed.barrier(dist)
    lines, scan = _open_lines(job, dist)
    distributed.barrier(dist)
    try:
        result = _caption_all(job, setup, lines, scan, dist)
    finally:
        lines.close()
    distributed.barrier(dist)
    if job.out is not None and dist.world_size > 1 and dist.is_main:
        join_parts(job.out, dist.world_size)
    gathered = setup.pictures.gather(dist)  # (a collective: rank 0 has joined the parts)
    html = _write_page(setup, gathered, job, dist)
    return replace(_summed(distributed.all_gather(result, dist)), html=html)


def _write_page(setup: Setup, gathered: tuple, job: CaptionJob, dist: DistInfo) -> Path | None:
    """Rank 0 writes the --html page from every rank's sample."""
    if not dist.is_main:
        return None
    return setup.pictures.write_page(gathered, str(setup.loaded.path), setup.decoding.beam_size)


def _setup(job: CaptionJob, dist: DistInfo) -> Setup:
    """Load the checkpoint, check the input against it, prepare OUT (rank 0), build the CNN."""
    pictures = Pictures(job.attention_dir, job.html_path, job.html_limit)  # refuses first
    if job.source.rereadable:  # (stdin: each batch's maps are checked when they are drawn)
        pictures.check(job.source.inputs())
    device = distributed.device_for(dist, resolve_device(job.device))
    loaded = load_model(job.checkpoint, device)
    decoding = with_flags(loaded.config.eval, beam_size=job.beam_size, max_len=job.max_len)
    validate(replace(loaded.config, eval=decoding))  # e.g. --max-len past a Transformer's positions
    check_keep_beams(job.keep_beams, decoding.beam_size)
    images_root = ""
    if job.source.features:
        images_root = check_feature_file(job.source.features, loaded.features)
    else:
        check_policy(loaded.features)  # e.g. a testbed's checkpoint: no CNN makes its grids
    identity = {
        "checkpoint": str(loaded.path),
        "checkpoint_id": file_sha256(loaded.path)[:CHECKPOINT_ID_HEX],
    }
    if job.out is not None and dist.is_main:
        jpeg_decode = "none" if job.source.features else decode_path(job, device)
        settings = output_settings(
            identity, job.source.kind, jpeg_decode, decoding, decoding.beam_size, job.keep_beams
        )
        prepare_output(job.out, settings, job.overwrite, dist.world_size)
    encoder = None
    if not job.source.features:
        encoder = FeatureEncoder.from_attrs(loaded.features, device)
    pre = preprocessing_of(loaded.features)
    return Setup(loaded, device, decoding, identity, pictures, encoder, images_root, pre)


def check_feature_file(path: str, expected: dict) -> str:
    """UserError unless `path` is a complete feature file made like the checkpoint's
    features (`expected`); returns the folder its images were read from ("" if unknown)."""
    with contract.open_complete(path) as f:
        fingerprint = contract.fingerprint(f)
        images_root = str(contract.read_attrs(f).get("images_root") or "")
    check_cache(path, fingerprint, expected, FEATURES_ADVICE)
    return images_root


def _open_lines(job: CaptionJob, dist: DistInfo) -> tuple[LineFile | TerminalLines, Scan]:
    """Where this rank's lines go, and what its output already holds."""
    if job.out is None:
        return TerminalLines(), Scan()
    if dist.world_size == 1:
        return open_for_append(job.out), scan_output(job.out)
    part = part_path(job.out, dist.rank, dist.world_size)
    lines = open_for_append(part)
    scan = scan_output(job.out, dist.rank, dist.world_size)
    return lines, scan_output(part, dist.rank, dist.world_size, into=scan)


def _caption_all(
    job: CaptionJob,
    setup: Setup,
    lines: LineFile | TerminalLines,
    scan: Scan,
    dist: DistInfo,
) -> CaptionResult:
    """The loop: plan, decode and encode images, beam-search, write each batch's lines."""
    planner = Planner(scan.keys, dist.rank, dist.world_size, stems=setup.pictures.stems)
    show = job.progress and job.out is not None and dist.is_main
    total = _count(job.source, planner) if show else None
    bar = tqdm(total=total, unit="img", desc="caption", disable=not show, dynamic_ncols=True)
    result = CaptionResult(lines=scan.lines, failed_lines=scan.failed)
    start = time.perf_counter()
    try:
        with torch_threads(setup.device):
            batches = planner.batches(job.source.inputs(warn=output.warn), job.batch_size)
            for batch in _grids(job, setup, batches):
                records = _caption_batch(batch, job, setup)
                lines.append(records)
                failed = sum("error" in record for record in records)
                result.captioned += len(records) - failed
                result.failed += failed
                if total is not None:
                    bar.total = total - planner.duplicates
                bar.update(len(records))
    finally:
        bar.close()
    result.seconds = time.perf_counter() - start
    result.already, result.duplicates = planner.already, planner.duplicates
    result.lines += result.captioned + result.failed
    result.failed_lines += result.failed
    return result


def _count(source: Source, planner: Planner) -> int | None:
    """How many inputs this rank will caption (duplicates included; None for stdin)."""
    if not source.rereadable:
        return None
    return sum(1 for _ in planner.preview(source.inputs()))


def _grids(job: CaptionJob, setup: Setup, batches: Iterable[list[Input]]) -> Iterator[GridBatch]:
    """The batches' grids: from the feature file, or from images through the CNN."""
    if setup.encoder is None:
        return file_grids(batches, job.source.features)
    on_device = decode_path(job, setup.device) == "device"
    return image_grids(batches, setup.encoder, job.workers, on_device)


def decode_path(job: CaptionJob, device: torch.device) -> str:
    """Where JPEGs are decoded: "device" (the GPU's decoder; by default on CUDA) or "cpu"."""
    on_device = job.device_decode if job.device_decode is not None else device.type == "cuda"
    return "device" if on_device else "cpu"


def _caption_batch(batch: GridBatch, job: CaptionJob, setup: Setup) -> list[dict]:
    """Beam-search the batch's grids; one record per input, in order; draw its pictures."""
    outcomes: dict[int, Decoded | str] = dict(batch.failures)
    if batch.rows:
        grids = torch.from_numpy(batch.grids).to(setup.device)  # (K, R, C)
        model, vocab = setup.loaded.model, setup.loaded.vocab
        keep = max(1, job.keep_beams)
        decoding = setup.decoding
        decoded = decode_features(model, grids, vocab, decoding, decoding.beam_size, keep=keep)
        outcomes.update(zip(batch.rows, decoded, strict=True))
    records, captioned = [], []
    for position, item in enumerate(batch.inputs):
        outcome = outcomes[position]
        if isinstance(outcome, str):
            records.append(error_record(item.image, outcome))
            continue
        records.append(
            caption_record(item.image, outcome, setup.loaded.vocab, setup.identity, job.keep_beams)
        )
        captioned.append((item, outcome, _crop(batch, position, setup)))
    class_token = contract.feature_shape(setup.loaded.features).class_token
    setup.pictures.add(captioned, setup.loaded.vocab, class_token)
    return records


def _crop(batch: GridBatch, position: int, setup: Setup) -> Crop:
    """The crop of the batch's input at `position`, made only when a picture needs it."""
    if batch.images is None:  # a feature file: its image, if its folder is still there
        return lambda: load_crop(setup.images_root, batch.inputs[position].image, setup.pre)
    index = batch.rows.index(position)
    return lambda: TF.to_pil_image(batch.images[index].cpu())  # (3, S, S) uint8


def _summed(results: list[CaptionResult]) -> CaptionResult:
    """Every rank's counts added up (the slowest rank's seconds)."""
    total = CaptionResult()
    for result in results:
        for f in fields(CaptionResult):
            if f.name not in ("seconds", "html"):
                setattr(total, f.name, getattr(total, f.name) + getattr(result, f.name))
        total.seconds = max(total.seconds, result.seconds)
    return total
