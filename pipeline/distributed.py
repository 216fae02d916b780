"""torchrun support for both stages: process group, ranks, collectives.

Plain `captioner train` / `extract` never touch torch.distributed. Under torchrun (RANK,
WORLD_SIZE and LOCAL_RANK set):
- training: each rank takes every world_size-th batch of the epoch's seeded plan (the same
  plan on every rank: a distributed sampler reseeded each epoch), every rank starts from the
  same seeded weights, the training loop all-reduces the gradients after each backward
  (`average_gradients`), only rank 0 logs and writes checkpoints, and only rank 0 prints
  (pipeline/output.py, for every command);
- extraction: each rank extracts a contiguous shard of the image list into its own file and
  rank 0 finishes the file as virtual datasets over the shards (pipeline.extract.sharded);
- captioning (`caption --out`): each rank captions its share of the images into its own part
  file and rank 0 joins the parts (pipeline.infer.caption).
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as torch_dist

from pipeline.errors import UserError
from pipeline.launch import launched_by_torchrun

ERROR_KEY = "captioner/user-error"  # in the job's store: the first UserError a rank ended with


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job; world_size 1 and enabled False without torchrun."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    enabled: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(backend: str | None = None, timeout: timedelta | None = None) -> DistInfo:
    """Join the process group when launched by torchrun: nccl on CUDA, gloo on CPU.

    `backend` forces one (extraction only needs barriers: gloo); `timeout` bounds how long a
    rank waits for the others at a collective (torch's default is 10-30 minutes).
    """
    if not launched_by_torchrun():
        return DistInfo()
    if not torch_dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        torch_dist.init_process_group(backend=backend, timeout=timeout, **_nccl_device(backend))
    return DistInfo(
        rank=torch_dist.get_rank(),
        world_size=torch_dist.get_world_size(),
        local_rank=int(os.environ["LOCAL_RANK"]),
        enabled=True,
    )


@contextlib.contextmanager
def process_group(backend: str | None = None, timeout: timedelta | None = None) -> Iterator:
    """`setup(backend, timeout)` for the body, then `teardown`; a UserError ends every rank.

    A rank ending in a UserError leaves its message in the job's store before it leaves the
    group; a rank whose collective then fails because that rank is gone raises the same
    UserError instead of a traceback, so every rank ends with the same one line.
    """
    dist = setup(backend, timeout)
    try:
        yield dist
    except UserError as exc:
        _leave_error(dist, exc.format_message())
        raise
    except RuntimeError:
        message = _left_error(dist)
        if message is None:
            raise
        raise UserError(message) from None
    finally:
        teardown(dist)


def _error_key() -> str:
    """ERROR_KEY for this attempt (torchrun may restart the workers with the same store)."""
    return f"{ERROR_KEY}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"


def _leave_error(dist: DistInfo, message: str) -> None:
    """Store `message` for the other ranks (the first one stays)."""
    if dist.enabled and torch_dist.is_initialized():
        with contextlib.suppress(RuntimeError):
            store = torch_dist.distributed_c10d._get_default_store()
            if not store.check([_error_key()]):
                store.set(_error_key(), message)


def _left_error(dist: DistInfo) -> str | None:
    """The message another rank left with `_leave_error`, if any."""
    if not (dist.enabled and torch_dist.is_initialized()):
        return None
    try:
        store = torch_dist.distributed_c10d._get_default_store()
        key = _error_key()
        return store.get(key).decode("utf-8") if store.check([key]) else None
    except RuntimeError:
        return None


def _nccl_device(backend: str) -> dict:
    """For nccl: select this rank's GPU (LOCAL_RANK) before the group exists, so NCCL's
    communicators never land on GPU 0 by default, and bind the group to it (`device_id`)
    where this torch's init_process_group takes one. Nothing for other backends."""
    if backend != "nccl":
        return {}
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    torch.cuda.set_device(device)
    if "device_id" in inspect.signature(torch_dist.init_process_group).parameters:
        return {"device_id": device}
    return {}


def barrier(dist: DistInfo) -> None:
    """Wait for every rank (no-op without torchrun)."""
    if dist.enabled:
        torch_dist.barrier()


def teardown(dist: DistInfo) -> None:
    """Leave the process group (no-op without torchrun)."""
    if dist.enabled and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def device_for(dist: DistInfo, device: torch.device) -> torch.device:
    """On CUDA each rank uses the GPU of its LOCAL_RANK."""
    if dist.enabled and device.type == "cuda":
        torch.cuda.set_device(dist.local_rank)
        return torch.device("cuda", dist.local_rank)
    return device


def average_gradients(model: torch.nn.Module, dist: DistInfo) -> None:
    """Mean of every trainable parameter's gradient over the ranks (one flat all-reduce)."""
    if not dist.enabled or dist.world_size == 1:
        return
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    torch_dist.all_reduce(flat)
    flat /= dist.world_size
    offset = 0
    for p in params:
        p.grad.copy_(flat[offset : offset + p.numel()].view_as(p.grad))
        offset += p.numel()


def broadcast_parameters(model: torch.nn.Module, dist: DistInfo) -> None:
    """Rank 0's parameters and buffers on every rank (no-op without torchrun)."""
    if not dist.enabled:
        return
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            torch_dist.broadcast(tensor, src=0)


def shard_plan(plan: list, dist: DistInfo) -> list:
    """This rank's batches: every world_size-th one, padded so all ranks take equal steps."""
    if not dist.enabled or dist.world_size == 1:
        return plan
    per_rank = -(-len(plan) // dist.world_size)
    padded = plan + plan[: per_rank * dist.world_size - len(plan)]
    return padded[dist.rank :: dist.world_size]


def shard_indices(count: int, dist: DistInfo) -> np.ndarray:
    """Positions 0..count-1 that this rank handles (validation decoding)."""
    return np.arange(dist.rank, count, dist.world_size)


def sum_values(values: dict[str, float], dist: DistInfo, device: torch.device) -> dict:
    """Each value added over every rank (as it is without torchrun); every rank must pass
    the same names."""
    if not dist.enabled:
        return values
    names = sorted(values)
    tensor = torch.tensor([values[n] for n in names], dtype=torch.float64, device=device)
    torch_dist.all_reduce(tensor)
    return dict(zip(names, tensor.tolist(), strict=True))


def sum_pair(a: float, b: int, dist: DistInfo, device: torch.device) -> tuple[float, int]:
    """All-reduce a (loss sum, token count) pair."""
    total = sum_values({"a": a, "b": float(b)}, dist, device)
    return total["a"], int(total["b"])


def broadcast_float(value: float, dist: DistInfo, device: torch.device) -> float:
    """Rank 0's value on every rank (the selection metric, for early stopping)."""
    if not dist.enabled:
        return value
    tensor = torch.tensor([value if value is not None else 0.0], dtype=torch.float64, device=device)
    torch_dist.broadcast(tensor, src=0)
    return float(tensor[0])


def all_gather(value: object, dist: DistInfo) -> list:
    """Every rank's `value`, in rank order, on every rank ([value] without torchrun)."""
    if not dist.enabled:
        return [value]
    values: list = [None] * dist.world_size
    torch_dist.all_gather_object(values, value)
    return values


def gather_captions(part: dict[int, str], dist: DistInfo) -> dict[int, str]:
    """Merge every rank's {position: caption} (all ranks receive the union)."""
    if not dist.enabled:
        return part
    parts: list = [None] * dist.world_size
    torch_dist.all_gather_object(parts, part)
    merged: dict[int, str] = {}
    for item in parts:
        merged.update(item)
    return merged
