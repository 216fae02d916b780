"""Teacher-forced passes over a split: the loader, one batch's loss, and a split's mean loss.

Shared by training (every step, and the val loss each epoch) and `evaluate` (the split loss).
"""

from __future__ import annotations

import torch

from pipeline import distributed
from pipeline.config import Config
from pipeline.dataset.batches import CaptionBatches, SplitData, plan_epoch
from pipeline.dataset.store import FeatureStore
from pipeline.decoder.loss import caption_loss
from pipeline.device import training_autocast


def make_loader(
    store: FeatureStore, split: SplitData, plan: list, pad: int, workers: int, device: torch.device
) -> torch.utils.data.DataLoader:
    """Batches of `plan`; workers read HDF5 lazily (none when the cache is held: a worker
    would only copy it); pinned for CUDA unless the grids are already on the device."""
    return torch.utils.data.DataLoader(
        CaptionBatches(store, split, pad),
        batch_size=None,
        sampler=plan,
        num_workers=0 if store.in_memory else workers,
        pin_memory=device.type == "cuda" and store.cache != "device",
    )


def batch_loss(
    model: torch.nn.Module, batch: dict, config: Config, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(total loss, cross-entropy, target tokens) of one batch, computed on `device`."""
    features = batch["features"].to(device, non_blocking=True)  # (n_img, 49, 2048)
    image_index = batch["image_index"].to(device, non_blocking=True)  # (B,)
    captions = batch["captions"].to(device, non_blocking=True)  # (B, T)
    lengths = batch["lengths"].to(device, non_blocking=True)  # (B,)
    with training_autocast(config, device):
        logits, alphas = model(features, image_index, captions, lengths)  # (N, V), (B, T-1, 49)
    total, cross_entropy = caption_loss(
        logits,
        captions,
        alphas,
        lengths,
        config.model.doubly_stochastic,
        config.train.label_smoothing,
        config.model.attention_penalty,
    )
    return total, cross_entropy, int((lengths - 1).sum())


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
    loss_sum, tokens = 0.0, 0
    with torch.inference_mode():
        for batch in make_loader(store, split, plan, pad, config.train.workers, device):
            _, cross_entropy, n_tokens = batch_loss(model, batch, config, device)
            loss_sum += float(cross_entropy) * n_tokens
            tokens += n_tokens
    loss_sum, tokens = distributed.sum_pair(loss_sum, tokens, dist, device)
    return loss_sum / max(tokens, 1)
