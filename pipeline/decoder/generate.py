"""Caption many cached images in batches with the one decoding module (pipeline.decoder.decode)."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.config import EvalConfig
from pipeline.decoder.decode import Decoded, beam_search, greedy_decode
from pipeline.decoder.vocab import Vocabulary


def suppressed_tokens(vocab: Vocabulary, decoding: EvalConfig) -> list[int]:
    """Tokens decoding must never emit: <pad>, <sos>, and <unk> if eval.suppress_unk."""
    return [vocab.pad, vocab.sos] + ([vocab.unk] if decoding.suppress_unk else [])


def decode_features(model: torch.nn.Module, features: torch.Tensor, vocab: Vocabulary,
                    decoding: EvalConfig, beam_size: int) -> list[Decoded]:
    """Decode a batch of grids (B, 49, 2048): greedy for beam 1, else batched beam search.

    `decoding.max_len` counts words; the decoders count steps, <eos> included.
    """
    suppress = suppressed_tokens(vocab, decoding)
    with torch.inference_mode():
        if beam_size == 1:
            return greedy_decode(model, features, vocab.sos, vocab.eos, decoding.max_len + 1,
                                 suppress=suppress)
        return beam_search(model, features, vocab.sos, vocab.eos, beam_size, decoding.max_len + 1,
                           length_penalty=decoding.length_penalty, suppress=suppress)


def decode_rows(model: torch.nn.Module, store, rows: np.ndarray, vocab: Vocabulary,
                decoding: EvalConfig, beam_size: int, device: torch.device) -> list[Decoded]:
    """Decode the cached images at feature `rows`, `decoding.batch_size` images at a time."""
    was_training = model.training
    model.eval()
    results: list[Decoded] = []
    for start in range(0, len(rows), decoding.batch_size):
        grids = store.read(rows[start:start + decoding.batch_size])
        features = torch.from_numpy(grids).to(device)  # (b, 49, 2048)
        results.extend(decode_features(model, features, vocab, decoding, beam_size))
    model.train(was_training)
    return results
