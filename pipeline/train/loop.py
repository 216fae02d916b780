"""The one epoch loop and the one optimizer step, for every training objective.

An objective (`pipeline.train.objectives`) turns a batch into a loss and a few sums; this
module owns everything else, once: the seeded epoch plan and its torchrun share, the loader,
the progress bar, backward (AMP-scaled when the GradScaler is on), the mean of the gradients
across torchrun ranks, clipping, the non-finite stop, the learning-rate warmup, the optimizer
step, and the epoch's means over every rank.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from tqdm import tqdm

from pipeline import distributed
from pipeline.dataset.teacher_forced import make_loader
from pipeline.errors import UserError


def seed_epoch(seed: int, epoch: int) -> np.random.Generator:
    """Reseed torch for `epoch` and return the batch planner's generator."""
    torch.manual_seed(seed * 100_003 + epoch)
    return np.random.default_rng([seed, epoch])


def train_epoch(trainer, objective, epoch: int) -> dict:
    """One pass of `objective` over the train split (`trainer`: pipeline.train.trainer.Trainer).

    Returns the objective's epoch record (means over every rank's batches) plus
    `epoch_seconds`.
    """
    config = trainer.config.train
    rng = seed_epoch(config.seed, epoch)
    plan = distributed.shard_plan(objective.plan(trainer, epoch, rng), trainer.dist)
    loader = make_loader(
        trainer.data.store,
        trainer.train_split,
        plan,
        trainer.vocab.pad,
        config.workers,
        trainer.device,
    )
    trainer.model.train()
    sums: dict[str, float] = {}
    started = time.perf_counter()
    bar = tqdm(
        zip(plan, loader, strict=True),
        total=len(plan),
        desc=f"{objective.name} epoch {epoch + 1}/{config.epochs}",
        disable=None if trainer.dist.is_main else True,
        mininterval=1.0,
        leave=False,
    )
    for key, batch in bar:
        loss, stats = objective.loss(trainer, key, batch)
        optimizer_step(trainer, loss, epoch)
        for name, value in stats.items():
            sums[name] = sums.get(name, 0.0) + value
        bar.set_postfix_str(objective.progress(sums, time.perf_counter() - started))
    totals = distributed.sum_values(sums, trainer.dist, trainer.device)
    seconds = time.perf_counter() - started
    return {**objective.record(totals, seconds), "epoch_seconds": seconds}


def optimizer_step(trainer, loss: torch.Tensor, epoch: int) -> None:
    """Backward, the mean gradient over the ranks, clipping, the non-finite stop, then one
    optimizer step at the warmed-up learning rate."""
    optimizer, scaler = trainer.optimizer, trainer.scaler
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    distributed.average_gradients(trainer.model, trainer.dist)
    scaler.unscale_(optimizer)
    norm = torch.nn.utils.clip_grad_norm_(
        trainer.model.parameters(), trainer.config.train.grad_clip or float("inf")
    )
    stop_if_non_finite(trainer, loss, norm, epoch)
    scheduled = [group["lr"] for group in optimizer.param_groups]
    factor = warmup_factor(trainer.state.step, trainer.config.train.warmup_steps)
    for group, lr in zip(optimizer.param_groups, scheduled, strict=True):
        group["lr"] = lr * factor
    scaler.step(optimizer)
    scaler.update()
    for group, lr in zip(optimizer.param_groups, scheduled, strict=True):
        group["lr"] = lr  # the scheduler never sees the warmup
    trainer.state.step += 1


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Linear warmup: the share of the scheduled learning rate used at optimizer step `step`
    (0-based): (step + 1) / warmup_steps during the first `warmup_steps` steps, then 1."""
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, (step + 1) / warmup_steps)


def stop_if_non_finite(trainer, loss: torch.Tensor, grad_norm: torch.Tensor, epoch: int) -> None:
    """Stop (before the optimizer step) on a nan/inf loss or gradient, naming epoch and step.

    The gradient norm is taken after the all-reduce, so every rank stops together. Under fp16
    AMP the GradScaler skips steps with inf gradients by design: nothing to stop there.
    """
    if trainer.scaler.is_enabled() or bool(torch.isfinite(grad_norm)):
        return
    what = "loss" if not bool(torch.isfinite(loss)) else "gradient"
    saved = trainer.state.epoch
    kept = f"last saved epoch: {saved}" if saved else "no checkpoint yet, resume starts over"
    raise UserError(
        f"training stopped: non-finite {what} at epoch {epoch + 1}, step "
        f"{trainer.state.step + 1}; nothing of it was saved ({kept}): lower train.lr or "
        f"check the features and word vectors, then `captioner train --resume "
        f"{trainer.run_dir}`"
    )
