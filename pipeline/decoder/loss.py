"""Teacher-forced caption losses shared by every decoder kind."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORED = -100  # the target of a padded step: cross-entropy skips it (its ignore_index)


def target_mask(lengths: Tensor, width: int) -> Tensor:
    """(B, width) bool: step t of row b predicts a real token (t < lengths[b] - 1).

    Teacher-forced decoders return logits packed in this mask's row-major order, for the
    targets `captions[:, 1:][target_mask(lengths, T - 1)]`.
    """
    steps = torch.arange(width, device=lengths.device)  # (width,)
    return steps.unsqueeze(0) < (lengths - 1).unsqueeze(1)  # (B, width)


def check_lengths(lengths: Tensor, width: int) -> None:
    """ValueError when a caption is longer than the batch's `width` (one host read: for the
    packed `forward`, not for the training step)."""
    if lengths.numel() and int(lengths.max()) > width:
        raise ValueError(f"lengths exceed the caption width {width}")


def pack_steps(logits: Tensor, alphas: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
    """Every step's outputs -> the packed form of `CaptionDecoderProtocol.forward`.

    logits (B, T-1, V), alphas (B, T-1, R), lengths (B,) -> logits (N, V) of the real steps
    (row-major, see `target_mask`), alphas (B, T-1, R) zero at the padded steps.
    """
    mask = target_mask(lengths.to(logits.device), logits.shape[1])  # (B, T-1)
    return logits[mask], alphas.masked_fill(~mask.unsqueeze(2), 0.0)


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
    Returns (total, cross_entropy). `dense_caption_loss` is the same loss on every step's
    outputs (static shapes, what training computes).
    """
    targets = captions[:, 1:][target_mask(lengths.to(captions.device), captions.shape[1] - 1)]
    cross_entropy = F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)
    if doubly_stochastic == 0:
        return cross_entropy, cross_entropy
    penalty = coverage_penalty(alphas, attention_penalty)
    return cross_entropy + doubly_stochastic * penalty, cross_entropy


def dense_caption_loss(
    logits: Tensor,
    captions: Tensor,
    alphas: Tensor | None,
    lengths: Tensor,
    doubly_stochastic: float = 0.0,
    label_smoothing: float = 0.0,
    attention_penalty: str = "mean",
) -> tuple[Tensor, Tensor]:
    """`caption_loss` on the outputs of every step: logits (B, T-1, V) and alphas (B, T-1, R)
    (None without the penalty), the padded steps masked out here. Static shapes and no host
    sync: the padded steps' values never reach the loss or the gradients, whatever they are.
    """
    mask = target_mask(lengths, captions.shape[1] - 1)  # (B, T-1)
    targets = captions[:, 1:].masked_fill(~mask, IGNORED)  # (B, T-1)
    cross_entropy = F.cross_entropy(
        logits.flatten(0, 1).float(),
        targets.flatten(),
        ignore_index=IGNORED,
        label_smoothing=label_smoothing,
    )  # the mean over the real targets
    if doubly_stochastic == 0:
        return cross_entropy, cross_entropy
    real = alphas.masked_fill(~mask.unsqueeze(2), 0.0)  # (B, T-1, R)
    penalty = coverage_penalty(real, attention_penalty)
    return cross_entropy + doubly_stochastic * penalty, cross_entropy


def coverage_penalty(alphas: Tensor, attention_penalty: str) -> Tensor:
    """alphas (B, T-1, R), zero at padded steps -> mean over the batch of agg_i (1 − Σ_t α_ti)²
    (`attention_penalty`: "sum" or "mean" over the R regions), a scalar."""
    coverage = alphas.float().sum(dim=1)  # (B, R) Σ_t α_ti
    per_region = (1.0 - coverage) ** 2  # (B, R)
    if attention_penalty == "sum":
        return per_region.sum(dim=1).mean()
    if attention_penalty == "mean":
        return per_region.mean()
    raise ValueError(f"unknown attention_penalty {attention_penalty!r}")
