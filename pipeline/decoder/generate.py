"""Caption many cached images in batches with the one decoding module (pipeline.decoder.decode).

Beam search keeps k rows per image, each holding the image's encoded grid, its state and a
(V,) row of log-probs, so memory grows with images x k. `decode_features` caps k at the
number of words the model may emit and splits a batch into chunks of images whose beam rows
fit `BEAM_MEMORY_BYTES`; each image is decoded independently, so chunking changes nothing
in the result.
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.config import EvalConfig
from pipeline.decoder.decode import Decoded, beam_search, greedy_decode
from pipeline.decoder.vocab import Vocabulary

BEAM_MEMORY_BYTES = 2 * 1024**3  # what one chunk's beam rows may hold
FLOAT_BYTES = 4  # decoding runs in float32


def suppressed_tokens(vocab: Vocabulary, decoding: EvalConfig) -> list[int]:
    """Tokens decoding must never emit: <pad>, <sos>, and <unk> if eval.suppress_unk."""
    return [vocab.pad, vocab.sos] + ([vocab.unk] if decoding.suppress_unk else [])


def effective_beam_size(beam_size: int, vocab: Vocabulary, decoding: EvalConfig) -> int:
    """`beam_size` capped at the number of tokens decoding may emit (words and <eos>)."""
    return max(1, min(beam_size, len(vocab) - len(suppressed_tokens(vocab, decoding))))


def beam_row_bytes(features: torch.Tensor, vocab_size: int, max_steps: int) -> int:
    """Estimated bytes of one beam row: its encoded grid (R x D), ~3 (V,) score rows, alphas."""
    regions, dim = features.shape[1], features.shape[2]
    return FLOAT_BYTES * (regions * dim + 3 * vocab_size + max_steps * regions)


def images_per_chunk(
    features: torch.Tensor,
    beam_size: int,
    vocab_size: int,
    max_steps: int,
    memory_bytes: int = BEAM_MEMORY_BYTES,
) -> int:
    """How many images' k beam rows fit `memory_bytes` (at least one)."""
    per_image = beam_size * beam_row_bytes(features, vocab_size, max_steps)
    return max(1, memory_bytes // per_image)


def decode_features(
    model: torch.nn.Module,
    features: torch.Tensor,
    vocab: Vocabulary,
    decoding: EvalConfig,
    beam_size: int,
    memory_bytes: int = BEAM_MEMORY_BYTES,
    keep: int = 1,
) -> list[Decoded]:
    """Decode a batch of grids (B, R, C): greedy for beam 1, else batched beam search.

    `decoding.max_len` counts words; the decoders count steps, <eos> included. The beam is
    capped at the emittable vocabulary and run on chunks of images within `memory_bytes`.
    `keep` > 1 (beam search only): each result's `others` holds up to keep - 1 runners-up.
    """
    suppress = suppressed_tokens(vocab, decoding)
    steps = decoding.max_len + 1
    k = effective_beam_size(beam_size, vocab, decoding)
    with torch.inference_mode():
        if k == 1:
            return greedy_decode(model, features, vocab.sos, vocab.eos, steps, suppress=suppress)
        chunk = images_per_chunk(features, k, len(vocab), steps, memory_bytes)
        results: list[Decoded] = []
        for start in range(0, features.shape[0], chunk):
            results.extend(
                beam_search(
                    model,
                    features[start : start + chunk],
                    vocab.sos,
                    vocab.eos,
                    k,
                    steps,
                    length_penalty=decoding.length_penalty,
                    suppress=suppress,
                    keep=keep,
                )
            )  # (chunk, R, C) in
        return results


def decode_rows(
    model: torch.nn.Module,
    store,
    rows: np.ndarray,
    vocab: Vocabulary,
    decoding: EvalConfig,
    beam_size: int,
    device: torch.device,
) -> list[Decoded]:
    """Decode the cached images at feature `rows`, `decoding.batch_size` images at a time."""
    was_training = model.training
    model.eval()
    results: list[Decoded] = []
    for start in range(0, len(rows), decoding.batch_size):
        batch_rows = rows[start : start + decoding.batch_size]
        features = store.gather(batch_rows).to(device)  # (b, R, C)
        results.extend(decode_features(model, features, vocab, decoding, beam_size))
    model.train(was_training)
    return results
