"""Teacher-forced passes over a split: the loader, one batch's loss, and a split's mean loss.

Shared by training (every step, and the val loss each epoch) and `evaluate` (the split loss).
On a GPU (or compiled) the loss of a batch is computed with static shapes and no host sync
(`teacher_forced_loss`): every caption runs every step of its batch's width and the padded
steps are masked out, so a step can be compiled (`train.compile`) and queued without waiting
for it; on a CPU the decoder's packed `forward` does fewer FLOPs (`device.static_step`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from pipeline import distributed
from pipeline.config import Config
from pipeline.dataset.batches import CaptionBatches, SplitData, plan_epoch
from pipeline.dataset.store import FeatureStore
from pipeline.decoder.loss import caption_loss, dense_caption_loss
from pipeline.device import autocast_dtype, autocast_to, compiled, static_step

# model, features (n_img, R, D), image_index (B,), captions (B, T), lengths (B,) -> total, CE
LossFunction = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def make_loader(
    store: FeatureStore,
    split: SplitData,
    plan: list,
    pad: int,
    workers: int,
    device: torch.device,
    length_bucket: int,
) -> torch.utils.data.DataLoader:
    """Batches of `plan` padded to `length_bucket` multiples; workers read HDF5 lazily (none
    when the cache is held: a worker would only copy it); pinned for CUDA unless the grids
    are already on the device."""
    return torch.utils.data.DataLoader(
        CaptionBatches(store, split, pad, length_bucket),
        batch_size=None,
        sampler=plan,
        num_workers=0 if store.in_memory else workers,
        pin_memory=device.type == "cuda" and store.cache != "device",
    )


def teacher_forced_loss(
    config: Config, device: torch.device, compile: bool = False
) -> LossFunction:
    """The function (model, features, image_index, captions, lengths) -> (total loss,
    cross-entropy) of one batch on `device` under `train.precision`: `dense_caption_loss` on
    the decoder's static-shape `teacher_forced` outputs, or `caption_loss` on its packed
    `forward` (the rule: `pipeline.device.static_step`). `compile`: through
    `pipeline.device.compiled`.
    """
    model_config, smoothing = config.model, config.train.label_smoothing
    penalty = model_config.doubly_stochastic, smoothing, model_config.attention_penalty
    dtype = autocast_dtype(config, device)

    def static(model, features, image_index, captions, lengths):
        with autocast_to(device, dtype):
            logits, alphas = model.teacher_forced(
                features, image_index, captions, alphas=model_config.doubly_stochastic > 0
            )  # (B, T-1, V), (B, T-1, R)
        return dense_caption_loss(logits, captions, alphas, lengths, *penalty)

    def packed(model, features, image_index, captions, lengths):
        with autocast_to(device, dtype):
            logits, alphas = model(features, image_index, captions, lengths)  # (N, V), (B, T-1, R)
        return caption_loss(logits, captions, alphas, lengths, *penalty)

    if not static_step(device, compile):
        return packed
    return compiled(static, device) if compile else static


def batch_loss(
    loss: LossFunction, model: torch.nn.Module, batch: dict, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(total loss, cross-entropy, target tokens) of one batch: the losses stay on `device`
    (nothing waits for them), the token count comes from the host."""
    total, cross_entropy = loss(
        model,
        batch["features"].to(device, non_blocking=True),  # (n_img, 49, 2048)
        batch["image_index"].to(device, non_blocking=True),  # (B,)
        batch["captions"].to(device, non_blocking=True),  # (B, T)
        batch["lengths"].to(device, non_blocking=True),  # (B,)
    )
    return total, cross_entropy, batch["tokens"]


def split_loss(
    model: torch.nn.Module,
    store: FeatureStore,
    split: SplitData,
    config: Config,
    pad: int,
    device: torch.device,
    dist: distributed.DistInfo | None = None,
) -> float:
    """Mean per-token cross-entropy of a split, teacher forced, without gradients.

    Under torchrun each rank takes every world_size-th batch and the sums are all-reduced.
    """
    dist = dist or distributed.DistInfo()
    model.eval()
    plan = plan_epoch(split, config.train.batch_size, "images", None)[dist.rank :: dist.world_size]
    loss = teacher_forced_loss(config, device)
    loader = make_loader(
        store, split, plan, pad, config.train.workers, device, config.train.length_bucket
    )
    with torch.inference_mode():
        loss_sum, tokens = torch.zeros((), dtype=torch.float64, device=device), 0
        for batch in loader:
            _, cross_entropy, n_tokens = batch_loss(loss, model, batch, device)
            loss_sum += cross_entropy.double() * n_tokens
            tokens += n_tokens
    loss_sum, tokens = distributed.sum_pair(float(loss_sum), tokens, dist, device)
    return loss_sum / max(tokens, 1)
