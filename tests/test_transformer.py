"""The Transformer decoder: cached decoding equals a full re-run, its options, and every command."""

import json

import numpy
import pytest
import torch
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.config import MODEL_KINDS, ModelConfig, load_config
from pipeline.decoder.build import DECODERS
from pipeline.decoder.decode import beam_search, greedy_decode
from pipeline.decoder.sample import sample_captions
from pipeline.decoder.transformer import PrefixRecompute, TransformerDecoder
from pipeline.errors import UserError

VOCAB, FEATURE_DIM, REGIONS = 20, 32, 49
PAD, SOS, EOS = 0, 1, 2
TINY_TRANSFORMER = (
    "model.kind=transformer",
    "model.layers=2",
    "model.heads=4",
    "model.ff_dim=32",
    "model.doubly_stochastic=0.0",
)


def make_model(seed=0, **options):
    torch.manual_seed(seed)
    config = ModelConfig(
        kind="transformer", embed_dim=16, layers=2, heads=4, ff_dim=32, dropout=0.1, **options
    )
    return TransformerDecoder(VOCAB, config, feature_dim=FEATURE_DIM, pad_index=PAD)


def random_model():
    """In eval mode, with peaked distributions (like a trained model) and a strong image
    signal, so that captions end at varied lengths."""
    model = make_model(tied_output=False).eval()
    with torch.no_grad():
        for layer in model.layers:
            layer.cross_out.weight.mul_(6.0)
        model.output.weight.mul_(4.0)
    return model


def features(n, seed=1):
    return torch.randn(n, REGIONS, FEATURE_DIM, generator=torch.Generator().manual_seed(seed))


def assert_same_results(cached, reference):
    for a, b in zip(cached, reference, strict=True):
        assert a.tokens == b.tokens and a.finished == b.finished
        assert a.score == pytest.approx(b.score, abs=1e-4)
        numpy.testing.assert_allclose(a.attention, b.attention, atol=1e-5)


def test_every_config_kind_has_a_decoder():
    assert tuple(DECODERS) == MODEL_KINDS


def test_cached_greedy_and_beam_equal_a_full_rerun_of_the_prefix():
    model, grids = random_model(), features(7)
    options = dict(sos=SOS, eos=EOS, max_len=12, suppress=[PAD, SOS])
    greedy = greedy_decode(model, grids, **options)
    assert len({len(d.tokens) for d in greedy}) > 1  # rows leave the batch at different steps
    assert_same_results(greedy, greedy_decode(PrefixRecompute(model), grids, **options))
    beam = beam_search(model, grids, beam_size=3, length_penalty=0.7, **options)
    assert {d.finished for d in beam} == {True, False}  # both endings are exercised
    assert_same_results(
        beam, beam_search(PrefixRecompute(model), grids, beam_size=3, length_penalty=0.7, **options)
    )
    assert all(d.attention.shape == (len(d.tokens), REGIONS) for d in beam)


def test_the_cache_grows_one_position_per_step():
    model = random_model()
    encoded = model.encode(features(3))
    state = model.init_state(encoded)
    assert len(state) == 2 * 2 and state[0].shape == (3, 4, 0, 4)  # (B, heads, t, d / heads)
    words = torch.full((3,), SOS)
    for t in range(1, 4):
        logits, alpha, state = model.step(words, state, encoded)
        assert logits.shape == (3, VOCAB) and alpha.shape == (3, REGIONS)
        assert all(s.shape == (3, 4, t, 4) for s in state)
        words = logits.argmax(dim=1)


def test_self_critical_sampling_backpropagates_through_the_cache():
    model = make_model().train()
    samples = sample_captions(
        model,
        features(2),
        SOS,
        EOS,
        PAD,
        samples=3,
        max_len=6,
        suppress=[PAD, SOS],
        generator=torch.Generator().manual_seed(0),
    )
    assert samples.tokens.shape == (6, 6) and bool((samples.lengths >= 1).all())
    samples.log_probs.sum().backward()
    for parameter in (
        model.layers[0].self_qkv.weight,
        model.layers[0].cross_kv.weight,
        model.region_proj.weight,
        model.embedding.weight,
    ):
        assert parameter.grad.abs().sum() > 0


def test_grid_position_code_breaks_region_order_symmetry():
    """Without the code, attention is blind to where a region is: permuting the 49 regions
    permutes the alphas and leaves the logits alone. With it, the order matters."""
    grids, order = features(2), torch.randperm(REGIONS, generator=torch.Generator().manual_seed(3))
    captions, lengths = torch.tensor([[SOS, 5, 6, EOS], [SOS, 7, 8, EOS]]), torch.tensor([4, 4])
    index = torch.tensor([0, 1])
    for grid_positions in (False, True):
        model = make_model(grid_positions=grid_positions).eval()
        logits, alphas = model(grids, index, captions, lengths)
        permuted_logits, permuted_alphas = model(grids[:, order], index, captions, lengths)
        same = torch.allclose(logits, permuted_logits, atol=1e-5)
        assert same != grid_positions
        if not grid_positions:
            torch.testing.assert_close(permuted_alphas, alphas[:, :, order])


def test_tied_output_shares_the_embedding_matrix():
    tied, untied = make_model(tied_output=True), make_model(tied_output=False)
    assert untied.parameter_counts()[0] - tied.parameter_counts()[0] == VOCAB * 16
    hidden = torch.randn(3, 16)
    with torch.no_grad():
        before = tied.logits(hidden)
        tied.embedding.weight[7] += 1.0
        after = tied.logits(hidden)
    changed = (before - after).abs().sum(dim=0) > 0  # (V,)
    assert changed.tolist() == [i == 7 for i in range(VOCAB)]


def test_positions_beyond_max_positions_are_refused():
    model = make_model(max_positions=3).eval()
    encoded = model.encode(features(1))
    state = model.init_state(encoded)
    for _ in range(3):
        _, _, state = model.step(torch.tensor([SOS]), state, encoded)
    with pytest.raises(ValueError, match="max_positions"):
        model.step(torch.tensor([SOS]), state, encoded)


@pytest.mark.parametrize(
    "override,message",
    [
        ("model.heads=5", "divisible by model.heads"),
        ("model.max_positions=10", "model.max_positions must be >= 31"),
        ("model.layers=0", "model.layers must be >= 1"),
        ("model.kind=gru", "model.kind must be one of lstm, transformer"),
    ],
)
def test_transformer_config_errors(override, message):
    with pytest.raises(UserError, match=message):
        load_config(None, ["model.kind=transformer", override])


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def train(workspace, name, *overrides):
    sets = [
        item for o in (*TINY_TRANSFORMER, f"train.name={name}", *overrides) for item in ("--set", o)
    ]
    return cli("train", "--config", workspace["config"], *sets)


def test_transformer_trains_resumes_evaluates_and_captions(workspace, tmp_path):
    straight = train(workspace, "straight")
    assert straight.exit_code == 0, straight.output
    assert train(workspace, "stopped", "train.epochs=1").exit_code == 0
    resumed = cli("train", "--resume", workspace["runs"] / "stopped", "--set", "train.epochs=2")
    assert resumed.exit_code == 0, resumed.output
    logs = [
        [json.loads(line) for line in (workspace["runs"] / name / "metrics.jsonl").open()]
        for name in ("straight", "stopped")
    ]
    assert [r["train_loss"] for r in logs[0]] == [r["train_loss"] for r in logs[1]]
    assert logs[0][1]["train_loss"] < logs[0][0]["train_loss"]

    run = workspace["runs"] / "straight"
    evaluated = cli("evaluate", run, "--out", tmp_path / "ev", "--beam-size", "2")
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads((tmp_path / "ev" / "straight" / "metrics.json").read_text())
    assert report["num_images"] == 4 and report["loss"] > 0

    image = workspace["images"] / "demo_00000.jpg"
    maps = tmp_path / "maps"
    captioned = cli("caption", image, "--checkpoint", run, "--attention-dir", maps)
    assert captioned.exit_code == 0, captioned.output
    line = next(line for line in captioned.output.splitlines() if line.startswith(f"{image}: "))
    words = line.split(": ", 1)[1].split()
    alphas = numpy.load(maps / "demo_00000.npy")  # (T, 49): one row per word
    assert alphas.shape == (len(words), REGIONS)
    numpy.testing.assert_allclose(alphas.sum(axis=1), 1.0, rtol=1e-4)
    assert (maps / "demo_00000.png").is_file()
