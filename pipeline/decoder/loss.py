"""Teacher-forced caption losses shared by every decoder kind."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def target_mask(lengths: Tensor, width: int) -> Tensor:
    """(B, width) bool: step t of row b predicts a real token (t < lengths[b] - 1).

    Teacher-forced decoders return logits packed in this mask's row-major order, for the
    targets `captions[:, 1:][target_mask(lengths, T - 1)]`.
    """
    steps = torch.arange(width, device=lengths.device)  # (width,)
    return steps.unsqueeze(0) < (lengths - 1).unsqueeze(1)  # (B, width)


def caption_loss(
    logits: Tensor,
    captions: Tensor,
    alphas: Tensor,
    lengths: Tensor,
    doubly_stochastic: float = 0.0,
    label_smoothing: float = 0.0,
    attention_penalty: str = "mean",
) -> tuple[Tensor, Tensor]:
    """Cross-entropy over real tokens plus the doubly stochastic attention penalty.

    logits (N, V) packed (see `target_mask`); captions (B, T); alphas (B, T-1, R) zero at
    padded steps; lengths (B,).
    total = CE (mean over the N targets, optional label smoothing)
            + λ · mean_over_batch  agg_i (1 − Σ_t α_ti)², the sum over t on real steps only,
    where agg_i (`attention_penalty`, `model.attention_penalty`) is "sum" over the R regions
    (Xu et al.'s equation) or "mean" over them (= sum / R: the same λ means 49× less here).
    Returns (total, cross_entropy).
    """
    targets = captions[:, 1:][target_mask(lengths.to(captions.device), captions.shape[1] - 1)]
    cross_entropy = F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)
    if doubly_stochastic == 0:
        return cross_entropy, cross_entropy
    coverage = alphas.float().sum(dim=1)  # (B, R) Σ_t α_ti
    per_region = (1.0 - coverage) ** 2  # (B, R)
    if attention_penalty == "sum":
        penalty = per_region.sum(dim=1).mean()  # scalar
    elif attention_penalty == "mean":
        penalty = per_region.mean()  # scalar
    else:
        raise ValueError(f"unknown attention_penalty {attention_penalty!r}")
    return cross_entropy + doubly_stochastic * penalty, cross_entropy
