"""decode_features: the beam is capped at the emittable vocabulary and chunked by memory,
and neither changes the captions."""

import pytest
import torch

from pipeline.config import EvalConfig, ModelConfig
from pipeline.decoder.build import build_decoder
from pipeline.decoder.generate import (
    beam_row_bytes,
    decode_features,
    effective_beam_size,
    images_per_chunk,
)
from pipeline.decoder.vocab import SPECIALS, Vocabulary

FEATURE_DIM = 2048
VOCAB = Vocabulary(list(SPECIALS) + ["a", "red", "blue", "circle", "square", "left", "right"])


def small_model() -> torch.nn.Module:
    torch.manual_seed(0)
    config = ModelConfig(
        attention="additive", embed_dim=16, hidden_dim=24, attention_dim=12, dropout=0.0
    )
    model = build_decoder(config, VOCAB).eval()
    with torch.no_grad():
        model.output.weight.mul_(4.0)  # peaked distributions, like a trained model
    return model


def features(n: int) -> torch.Tensor:
    return torch.randn(n, 49, FEATURE_DIM, generator=torch.Generator().manual_seed(1))


def assert_same(a, b):
    assert [d.tokens for d in a] == [d.tokens for d in b]
    assert [d.finished for d in a] == [d.finished for d in b]
    for x, y in zip(a, b, strict=True):
        assert x.score == pytest.approx(y.score, abs=1e-4)
        assert x.attention.shape == y.attention.shape == (len(x.tokens), 49)


def test_chunks_of_one_image_give_the_unchunked_result():
    model, grids, decoding = small_model(), features(6), EvalConfig(max_len=8)
    row = beam_row_bytes(grids, len(VOCAB), decoding.max_len + 1)
    assert images_per_chunk(grids, 3, len(VOCAB), decoding.max_len + 1, 3 * row * 2) == 2
    assert images_per_chunk(grids, 3, len(VOCAB), decoding.max_len + 1, 1) == 1  # never 0

    whole = decode_features(model, grids, VOCAB, decoding, 3)
    one_by_one = decode_features(model, grids, VOCAB, decoding, 3, memory_bytes=1)
    pairs = decode_features(model, grids, VOCAB, decoding, 3, memory_bytes=3 * row * 2)

    assert_same(whole, one_by_one)
    assert_same(whole, pairs)


def test_a_huge_beam_is_capped_at_the_emittable_vocabulary():
    model, grids, decoding = small_model(), features(3), EvalConfig(max_len=6)
    emittable = len(VOCAB) - 3  # <pad>, <sos>, <unk> are suppressed
    assert effective_beam_size(1000, VOCAB, decoding) == emittable
    assert effective_beam_size(2, VOCAB, decoding) == 2

    huge = decode_features(model, grids, VOCAB, decoding, 1000)

    assert_same(huge, decode_features(model, grids, VOCAB, decoding, emittable))
