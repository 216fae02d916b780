"""Greedy and beam decoding on random decoders of both kinds and on a hand-built chain model."""

import itertools
import math

import numpy
import pytest
import torch
from torch import nn

from pipeline.config import ModelConfig
from pipeline.decoder.decode import beam_search, greedy_decode
from pipeline.decoder.lstm import CaptionDecoder, Encoded
from pipeline.decoder.transformer import TransformerDecoder

PAD, SOS, EOS = 0, 1, 2
FEATURE_DIM, REGIONS = 32, 49


def random_model(vocab=20, eos_bias=0.0, seed=0, attention="additive", kind="lstm"):
    """A small random decoder in eval mode; `eos_bias` makes captions end at varied lengths."""
    torch.manual_seed(seed)
    config = ModelConfig(
        kind=kind,
        attention=attention,
        embed_dim=16,
        hidden_dim=24,
        attention_dim=12,
        dropout=0.5,
        layers=2,
        heads=4,
        ff_dim=32,
        tied_output=False,
        init="xavier",  # the LSTM's Xavier embedding and default output layer
    )
    decoder = CaptionDecoder if kind == "lstm" else TransformerDecoder
    model = decoder(vocab, config, feature_dim=FEATURE_DIM, pad_index=PAD).eval()
    with torch.no_grad():
        model.output.weight.mul_(5.0)  # peaked distributions, like a trained model
        model.output.bias[EOS] += eos_bias
        for layer in getattr(model, "layers", ()):  # a strong image signal: varied captions
            layer.cross_out.weight.mul_(6.0)
    return model


def random_features(n, seed=1):
    return torch.randn(n, REGIONS, FEATURE_DIM, generator=torch.Generator().manual_seed(seed))


def assert_same(a, b, exact=False):
    assert a.tokens == b.tokens and a.finished == b.finished
    assert a.attention.shape == b.attention.shape == (len(a.tokens), REGIONS)
    if exact:
        assert a.score == b.score and numpy.array_equal(a.attention, b.attention)
    else:
        assert a.score == pytest.approx(b.score, abs=1e-4)
        numpy.testing.assert_allclose(a.attention, b.attention, atol=1e-5)


class ChainModel(nn.Module):
    """Next word depends on the previous word only, through a fixed transition table."""

    def __init__(self, table):
        super().__init__()
        self.log_table = torch.log(torch.tensor(table) + 1e-9)  # (V, V)

    def encode(self, features):
        return Encoded(features.float(), features.float()[..., :1])

    def init_state(self, encoded):
        zeros = torch.zeros(encoded.features.shape[0], 1)
        return zeros, zeros

    def step(self, words, state, encoded):
        alpha = torch.full(encoded.features.shape[:2], 1.0 / encoded.features.shape[1])
        return self.log_table[words], alpha, state


#            pad  sos  eos   a     b     c
CHAIN = [
    [1.0, 0.0, 0.00, 0.00, 0.00, 0.00],  # pad
    [0.0, 0.0, 0.00, 0.55, 0.45, 0.00],  # sos -> a (greedy's pick) or b
    [1.0, 0.0, 0.00, 0.00, 0.00, 0.00],  # eos
    [0.0, 0.0, 0.35, 0.00, 0.32, 0.33],  # a -> eos: a total of 0.55 * 0.35 = 0.1925
    [0.0, 0.0, 0.90, 0.05, 0.00, 0.05],  # b -> eos: a total of 0.45 * 0.90 = 0.405
    [0.0, 0.0, 1.00, 0.00, 0.00, 0.00],
]  # c


def test_beam_finds_the_better_sequence_that_greedy_misses():
    model = ChainModel(CHAIN)
    features = random_features(2)
    greedy = greedy_decode(model, features, SOS, EOS, max_len=5)
    beam = beam_search(model, features, SOS, EOS, beam_size=2, max_len=5)
    for g, b in zip(greedy, beam, strict=True):
        assert g.tokens == [3] and g.finished and g.score == pytest.approx(math.log(0.1925))
        assert b.tokens == [4] and b.finished and b.score == pytest.approx(math.log(0.405))
        assert b.attention.shape == (1, REGIONS)


def test_keep_gives_the_runners_up_best_first_and_leaves_the_best_alone():
    model, features = ChainModel(CHAIN), random_features(2)
    kept = beam_search(model, features, SOS, EOS, beam_size=3, max_len=5, keep=3)
    plain = beam_search(model, features, SOS, EOS, beam_size=3, max_len=5)
    for best, alone in zip(kept, plain, strict=True):
        assert_same(best, alone, exact=True) and alone.others == []
        assert best.tokens == [4]  # b <eos>: 0.405, then a <eos>: 0.1925, a c <eos>: 0.1815
        assert [h.tokens for h in best.others] == [[3], [3, 5]]
        scores = [h.score for h in best.others]
        assert scores == pytest.approx([math.log(0.1925), math.log(0.55 * 0.33)])
        assert all(h.finished for h in best.others)
    model, features = random_model(kind="transformer"), random_features(7)
    options = dict(beam_size=3, max_len=10, length_penalty=0.7, suppress=[PAD, SOS])
    kept = beam_search(model, features, SOS, EOS, keep=3, **options)
    for best, alone in zip(kept, beam_search(model, features, SOS, EOS, **options), strict=True):
        assert_same(best, alone)
        ranked = [best.score / ((5 + len(best.tokens)) / 6) ** 0.7] + [
            h.score / ((5 + len(h.tokens)) / 6) ** 0.7 for h in best.others
        ]
        assert ranked == sorted(ranked, reverse=True) and len(best.others) <= 2
    assert sum(len(best.others) == 2 for best in kept) >= 2


def test_length_penalty_keeps_the_search_going_while_a_longer_caption_can_win():
    """<sos> -> <eos> 0.6 | w1 0.38 | w8 0.02; w1 -> w2 -> .. -> w7 -> <eos> almost surely;
    w8 loops on itself. The empty caption finishes first; with α = 1 the 7-word caption
    (score log 0.38, normalised log 0.38 / 2) beats it (log 0.6 / (5/6)), so the search must
    not stop while a live beam can still reach that."""
    vocab = 11  # pad, sos, eos, w1..w7 = 3..9, w8 = 10
    table = [[0.0] * vocab for _ in range(vocab)]
    table[PAD][PAD] = table[EOS][PAD] = 1.0
    table[SOS][EOS], table[SOS][3], table[SOS][10] = 0.6, 0.38, 0.02
    for word in range(3, 9):
        table[word][word + 1] = 1.0
    table[9][EOS] = 1.0
    table[10][10], table[10][EOS] = 0.9, 0.1
    model, features = ChainModel(table), random_features(1)
    long = beam_search(model, features, SOS, EOS, beam_size=2, max_len=8, length_penalty=1.0)[0]
    assert long.finished and long.tokens == list(range(3, 10))
    assert long.score == pytest.approx(math.log(0.38), abs=1e-5)
    short = beam_search(model, features, SOS, EOS, beam_size=2, max_len=8)[0]
    assert short.finished and short.tokens == [] and short.attention.shape == (0, REGIONS)


@pytest.mark.parametrize(
    "attention,kind,seed",
    [("linear", "lstm", 1), ("additive", "lstm", 0), ("additive", "transformer", 0)],
)
def test_beam_size_one_is_exactly_greedy(attention, kind, seed):
    model = random_model(attention=attention, kind=kind, seed=seed)
    features = random_features(8)
    greedy = greedy_decode(model, features, SOS, EOS, max_len=12, suppress=[PAD, SOS])
    beam = beam_search(model, features, SOS, EOS, beam_size=1, max_len=12, suppress=[PAD, SOS])
    assert len(greedy) == len(beam) == 8
    assert len({len(g.tokens) for g in greedy}) > 1  # rows leave the batch at different steps
    for g, b in zip(greedy, beam, strict=True):
        assert_same(g, b, exact=True)
        numpy.testing.assert_allclose(g.attention.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
@pytest.mark.parametrize("length_penalty", [0.0, 0.7])
def test_batched_beam_equals_beam_on_each_image_alone(length_penalty, kind):
    model = random_model(kind=kind)
    features = random_features(7)
    batched = beam_search(
        model,
        features,
        SOS,
        EOS,
        beam_size=3,
        max_len=10,
        length_penalty=length_penalty,
        suppress=[PAD, SOS],
    )
    assert {d.finished for d in batched} == {True, False}  # both endings are exercised
    for i, result in enumerate(batched):
        alone = beam_search(
            model,
            features[i : i + 1],
            SOS,
            EOS,
            beam_size=3,
            max_len=10,
            length_penalty=length_penalty,
            suppress=[PAD, SOS],
        )
        assert_same(result, alone[0])
        with torch.no_grad():  # score and attention are those of the returned words
            score, alphas = teacher_forced(
                model, features[i : i + 1], result.tokens, result.finished
            )
        assert result.score == pytest.approx(float(score), abs=1e-4)
        if result.tokens:
            numpy.testing.assert_allclose(result.attention, alphas[0].numpy(), atol=1e-5)


def teacher_forced(model, features, words, finished=True):
    """Summed log-probs (B,) of `words` (+ <eos> if finished) and the α at each word (B, n, R)."""
    encoded = model.encode(features)
    state = model.init_state(encoded)
    targets = [*words, EOS] if finished else list(words)
    total, alphas = torch.zeros(features.shape[0]), []
    for previous, target in zip([SOS, *words][: len(targets)], targets, strict=True):
        logits, alpha, state = model.step(
            torch.full((features.shape[0],), previous), state, encoded
        )
        total += torch.log_softmax(logits, dim=1)[:, target]
        alphas.append(alpha)
    return total, torch.stack(alphas[: len(words)], dim=1) if words else None


@pytest.mark.parametrize(
    "kind,eos_bias,length_penalty",
    [
        ("lstm", 0.0, 0.0),
        ("lstm", -6.0, 1.0),
        ("transformer", 0.0, 0.0),
        ("transformer", -30.0, 1.0),
    ],
)
def test_wide_beam_equals_exhaustive_search(kind, eos_bias, length_penalty):
    """With k above the number of candidates, beam search (incl. its early stop) is exact."""
    model = random_model(vocab=6, eos_bias=eos_bias, seed=7, kind=kind)
    features = random_features(3, seed=4)
    max_len = 4  # finished captions have at most 3 words from {3, 4, 5}
    best = [(-math.inf, None)] * 3
    with torch.no_grad():
        for length in range(max_len):
            for words in itertools.product([3, 4, 5], repeat=length):
                scores, _ = teacher_forced(model, features, list(words))
                norm = scores / ((5 + length) / 6) ** length_penalty
                best = [
                    max(b, (float(s), list(words)), key=lambda x: x[0])
                    for b, s in zip(best, norm, strict=True)
                ]
    if length_penalty:  # the penalty must matter here: a long caption beats the empty one
        assert any(len(words) == 3 for _, words in best)
    beam = beam_search(
        model,
        features,
        SOS,
        EOS,
        beam_size=120,
        max_len=max_len,
        length_penalty=length_penalty,
        suppress=[PAD, SOS],
    )
    for (norm, words), result in zip(best, beam, strict=True):
        assert result.finished and result.tokens == words
        lp = ((5 + len(words)) / 6) ** length_penalty
        assert result.score / lp == pytest.approx(norm, abs=1e-5)


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
def test_no_finished_beam_falls_back_to_best_unfinished(kind):
    model = random_model(kind=kind)
    features = random_features(4)
    suppress = [PAD, SOS, EOS]  # <eos> can never be generated
    for result in beam_search(
        model, features, SOS, EOS, beam_size=3, max_len=3, suppress=suppress
    ) + greedy_decode(model, features, SOS, EOS, max_len=3, suppress=suppress):
        assert not result.finished
        assert len(result.tokens) == 3 and result.attention.shape == (3, REGIONS)
        assert math.isfinite(result.score) and result.score < 0
        assert result.attention.dtype == numpy.float32


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
def test_suppressed_tokens_never_appear(kind):
    model = random_model(eos_bias=0.0, kind=kind)
    features = random_features(6)
    plain = greedy_decode(model, features, SOS, EOS, max_len=8) + beam_search(
        model, features, SOS, EOS, beam_size=3, max_len=8
    )
    counts = numpy.bincount([t for d in plain for t in d.tokens], minlength=20)
    common = [int(t) for t in numpy.argsort(-counts)[:3] if counts[t] > 0]
    assert common
    suppress = [PAD, SOS, *common]
    suppressed = greedy_decode(
        model, features, SOS, EOS, max_len=8, suppress=suppress
    ) + beam_search(model, features, SOS, EOS, beam_size=3, max_len=8, suppress=suppress)
    assert not {t for d in suppressed for t in d.tokens} & set(suppress)
    assert [d.tokens for d in suppressed] != [d.tokens for d in plain]


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
def test_half_precision_autocast_and_arguments(kind):
    model = random_model(kind=kind)
    features = random_features(2)
    half = beam_search(model, features.half(), SOS, EOS, beam_size=2, max_len=5)
    assert len(half) == 2 and all(d.attention.shape == (len(d.tokens), REGIONS) for d in half)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = beam_search(model, features, SOS, EOS, beam_size=2, max_len=5) + greedy_decode(
            model, features, SOS, EOS, max_len=5
        )
    assert all(math.isfinite(d.score) and d.attention.dtype == numpy.float32 for d in mixed)
    with pytest.raises(ValueError):
        beam_search(model, features, SOS, EOS, beam_size=0, max_len=5)
    with pytest.raises(ValueError):
        greedy_decode(model, features, SOS, EOS, max_len=0)
