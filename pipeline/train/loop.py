"""The one epoch loop and the one optimizer step, for every training objective.

An objective (`pipeline.train.objectives`) turns a batch into a loss and a few sums; this
module owns everything else, once: the seeded epoch plan and its torchrun share, the loader,
the progress bar, backward (AMP-scaled when the GradScaler is on), the mean of the gradients
across torchrun ranks, clipping, the non-finite stop, the learning-rate warmup, the optimizer
step, and the epoch's means over every rank.

Nothing in a step waits for the device: the sums and the non-finite flag stay on it and are
read every `READ_EVERY` steps and at the epoch's end (every step for an objective that reads
its batch on the host anyway, `host_bound`).
"""

from __future__ import annotations

import time

import numpy as np
import torch
from tqdm import tqdm

from pipeline import distributed
from pipeline.dataset.teacher_forced import make_loader
from pipeline.errors import UserError

READ_EVERY = 50  # steps between the host's reads of the epoch's sums and non-finite flag


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
        config.length_bucket,
    )
    trainer.model.train()
    sums: dict = {}  # name -> float or 0-d device tensor
    watch = NonFiniteWatch(trainer, epoch)
    every = 1 if objective.host_bound else READ_EVERY
    started = time.perf_counter()
    bar = tqdm(
        zip(plan, loader, strict=True),
        total=len(plan),
        desc=f"{objective.name} epoch {epoch + 1}/{config.epochs}",
        disable=None if trainer.dist.is_main else True,
        mininterval=1.0,
        leave=False,
    )
    for count, (key, batch) in enumerate(bar, 1):
        loss, stats = objective.loss(trainer, key, batch)
        optimizer_step(trainer, loss, epoch, watch)
        for name, value in stats.items():
            sums[name] = sums.get(name, 0.0) + value
        if count % every == 0 or count == len(plan):
            watch.check()
            bar.set_postfix_str(objective.progress(read(sums), time.perf_counter() - started))
    totals = distributed.sum_values(read(sums), trainer.dist, trainer.device)
    seconds = time.perf_counter() - started
    return {**objective.record(totals, seconds), "epoch_seconds": seconds}


def read(sums: dict) -> dict[str, float]:
    """The sums as host floats (waits for the device)."""
    return {name: float(value) for name, value in sums.items()}


def optimizer_step(trainer, loss: torch.Tensor, epoch: int, watch=None) -> None:
    """Backward, the mean gradient over the ranks, clipping, the non-finite check, then one
    optimizer step at the warmed-up learning rate.

    `watch` (`NonFiniteWatch`) notes a non-finite step on the device for a later `check`;
    without one the step checks at once and stops before the update.
    """
    optimizer, scaler = trainer.optimizer, trainer.scaler
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    distributed.average_gradients(trainer.model, trainer.dist)
    scaler.unscale_(optimizer)
    norm = torch.nn.utils.clip_grad_norm_(
        trainer.model.parameters(), trainer.config.train.grad_clip or float("inf")
    )
    checked_now = watch is None
    watch = watch or NonFiniteWatch(trainer, epoch)
    watch.observe(loss, norm, trainer.state.step)
    if checked_now:
        watch.check()
    scheduled = [group["lr"] for group in optimizer.param_groups]
    factor = warmup_factor(trainer.state.step, trainer.config.train.warmup_steps)
    for group, lr in zip(optimizer.param_groups, scheduled, strict=True):
        group["lr"] = lr * factor
    scaler.step(optimizer)
    scaler.update()
    for group, lr in zip(optimizer.param_groups, scheduled, strict=True):
        group["lr"] = lr  # the scheduler never sees the warmup
    optimizer.zero_grad(set_to_none=True)  # free before the next forward (CUDA graphs reuse it)
    trainer.state.step += 1


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Linear warmup: the share of the scheduled learning rate used at optimizer step `step`
    (0-based): (step + 1) / warmup_steps during the first `warmup_steps` steps, then 1."""
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, (step + 1) / warmup_steps)


class NonFiniteWatch:
    """The first optimizer step of an epoch with a nan/inf loss or gradient, noted on the
    device (`observe`, no host sync) and turned into the stop on `check` (one host read).

    The gradient norm is taken after the all-reduce, so every rank stops together. Under fp16
    AMP the GradScaler skips steps with inf gradients by design: nothing to stop there.
    A step noted here may already have updated the weights in memory; the stop comes before
    anything of the epoch is saved.
    """

    def __init__(self, trainer, epoch: int):
        self.trainer, self.epoch = trainer, epoch
        self.step = torch.full((), -1, dtype=torch.long, device=trainer.device)  # -1: none yet
        self.loss = torch.zeros((), dtype=torch.bool, device=trainer.device)  # its loss too

    def observe(self, loss: torch.Tensor, grad_norm: torch.Tensor, step: int) -> None:
        """Note optimizer step `step` (0-based, the run's count) if it is the first bad one."""
        if self.trainer.scaler.is_enabled():
            return
        first = ~torch.isfinite(grad_norm) & (self.step < 0)
        self.step = torch.where(first, step, self.step)
        self.loss = torch.where(first, ~torch.isfinite(loss.detach()), self.loss)

    def check(self) -> None:
        """Stop with one UserError naming epoch and step if a bad step was noted."""
        step = int(self.step)
        if step < 0:
            return
        trainer = self.trainer
        what = "loss" if bool(self.loss) else "gradient"
        saved = trainer.state.epoch
        kept = f"last saved epoch: {saved}" if saved else "no checkpoint yet, resume starts over"
        raise UserError(
            f"training stopped: non-finite {what} at epoch {self.epoch + 1}, step "
            f"{step + 1}; nothing of it was saved ({kept}): lower train.lr or "
            f"check the features and word vectors, then `captioner train --resume "
            f"{trainer.run_dir}`"
        )
