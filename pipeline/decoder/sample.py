"""Multinomial sampling of captions with their log-probabilities, for self-critical training.

Written once against `pipeline.decoder.protocol.CaptionDecoderProtocol` (encode, init_state,
step; a state is a tuple of batch-first tensors), so it serves every decoder kind. Unlike
greedy and beam search it keeps the autograd graph: the summed log-probabilities are what
the policy gradient differentiates. Rows that have sampled `<eos>` leave the batch, so a step
costs only the captions still going.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from pipeline.decoder.protocol import CaptionDecoderProtocol


@dataclass
class Samples:
    """K sampled captions per image, image-major (rows i*K .. i*K+K-1 belong to image i)."""

    tokens: Tensor  # (B*K, T) long: sampled ids, `<eos>` included when sampled, then `pad`
    lengths: Tensor  # (B*K,) long: tokens sampled per row, `<eos>` included
    log_probs: Tensor  # (B*K,) float32: sum of the log-probs of those tokens (differentiable)


def sample_captions(
    model: CaptionDecoderProtocol,
    features: Tensor,
    sos: int,
    eos: int,
    pad: int,
    samples: int,
    max_len: int,
    suppress: Sequence[int] = (),
    generator: torch.Generator | None = None,
) -> Samples:
    """Draw `samples` captions per image from the model's distribution.

    features (B, R, D). Each row feeds `<sos>`, then at every step draws a word from
    softmax(logits) (the `suppress` ids never), stopping after `<eos>` or after `max_len`
    tokens (`<eos>` counted, as in `greedy_decode`; a row cut there has no `<eos>`).
    Runs in the model's current mode with gradients; `generator` makes the draws reproducible.
    """
    if max_len < 1 or samples < 1:
        raise ValueError(f"max_len and samples must be >= 1, got {max_len}, {samples}")
    device = features.device
    rows = features.shape[0] * samples
    encoded = model.encode(features)  # EncodedBatch of B rows
    encoded = encoded.index_select(
        torch.arange(features.shape[0], device=device).repeat_interleave(samples)
    )  # B*K rows
    state = model.init_state(encoded)  # (B*K, ...) each: LSTM (h, c), Transformer k/v cache
    active = torch.arange(rows, device=device)  # (n,) rows still sampling
    words = torch.full((rows,), sos, dtype=torch.long, device=device)  # (n,)
    tokens = torch.full((rows, max_len), pad, dtype=torch.long, device=device)  # (B*K, T)
    lengths = torch.zeros(rows, dtype=torch.long, device=device)  # (B*K,)
    log_probs = torch.zeros(rows, device=device)  # (B*K,)
    for t in range(max_len):
        logits, _, state = model.step(words, state, encoded)  # (n, V)
        step_log_probs = _log_probs(logits, suppress)  # (n, V)
        words = torch.multinomial(step_log_probs.detach().exp(), 1, generator=generator).squeeze(1)
        chosen = step_log_probs.gather(1, words.unsqueeze(1)).squeeze(1)  # (n,)
        log_probs = log_probs.index_add(0, active, chosen)
        tokens[active, t] = words
        lengths[active] += 1
        going = words != eos  # (n,)
        if not bool(going.all()):
            keep = going.nonzero().squeeze(1)  # (n',)
            active, words = active[keep], words[keep]
            state = tuple(s.index_select(0, keep) for s in state)
            encoded = encoded.index_select(keep)
        if not len(active):
            break
    return Samples(tokens, lengths, log_probs)


def _log_probs(logits: Tensor, suppress: Sequence[int]) -> Tensor:
    """(n, V) logits -> float32 log-probs with the `suppress` ids at -inf (differentiable)."""
    logits = logits.float()
    if len(suppress):
        mask = torch.zeros(logits.shape[1], dtype=torch.bool, device=logits.device)
        mask[list(suppress)] = True
        logits = logits.masked_fill(mask, -math.inf)
    return torch.log_softmax(logits, dim=1)
