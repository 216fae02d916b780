"""Self-critical training: sampling, baselines, the policy-gradient step, --init and resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pipeline import contract
from pipeline.cli import main
from pipeline.config import ModelConfig, ScstConfig
from pipeline.decoder.build import build_decoder
from pipeline.decoder.decode import greedy_decode
from pipeline.decoder.loss import target_mask
from pipeline.decoder.sample import sample_captions
from pipeline.decoder.vocab import build_vocabulary
from pipeline.metrics.cider import CiderD
from pipeline.train.scst import BAD_ENDINGS, CaptionReward, Scst, baselines, scst_loss

TINY = ModelConfig(embed_dim=16, hidden_dim=32, attention_dim=16, dropout=0.0)


def cli(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def demo(demo_cache) -> dict:
    """The demo cache's first 8 images: grids (8, 49, 2048), references, a vocabulary."""
    images = json.loads(demo_cache["captions"].read_text())["images"]
    chosen = images[:8]
    with contract.open_h5(demo_cache["features"]) as f:
        row = {name: i for i, name in enumerate(contract.read_image_ids(f))}
        grids = [f[contract.FEATURES][row[image["filename"]]] for image in chosen]
    features = torch.from_numpy(np.stack(grids).astype(np.float32))  # (8, 49, 2048)
    references = [[s["raw"] for s in image["sentences"]] for image in chosen]
    vocab, _ = build_vocabulary(
        [c for image in images for s in image["sentences"] for c in [s["raw"]]], 1
    )
    return {"features": features, "references": references, "vocab": vocab}


TINY_TRANSFORMER = ModelConfig(
    kind="transformer", embed_dim=16, layers=1, heads=2, ff_dim=32, dropout=0.0
)


def tiny_model(vocab, config: ModelConfig = TINY) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_decoder(config, vocab)


@pytest.mark.parametrize("config", [TINY, TINY_TRANSFORMER], ids=["lstm", "transformer"])
def test_sampling_stops_at_eos_and_max_len_and_returns_the_log_probs(demo, config):
    vocab, features = demo["vocab"], demo["features"][:3]
    model = tiny_model(vocab, config)
    suppress = [vocab.pad, vocab.sos]
    samples = sample_captions(
        model,
        features,
        vocab.sos,
        vocab.eos,
        vocab.pad,
        4,
        6,
        suppress,
        torch.Generator().manual_seed(0),
    )
    assert samples.tokens.shape == (12, 6) and samples.log_probs.requires_grad
    for row, length in zip(samples.tokens.tolist(), samples.lengths.tolist(), strict=True):
        eos_at = row.index(vocab.eos) if vocab.eos in row else None
        assert length == (eos_at + 1 if eos_at is not None else 6)
        assert all(t == vocab.pad for t in row[length:])
        assert not set(row[:length]) & set(suppress)
    # the summed log-probs equal a teacher-forced pass over the same tokens
    captions = torch.cat([torch.full((12, 1), vocab.sos), samples.tokens], dim=1)  # (12, 7)
    logits, _ = model(features, torch.arange(3).repeat_interleave(4), captions, samples.lengths + 1)
    logits[:, suppress] = -torch.inf
    targets = captions[:, 1:][target_mask(samples.lengths + 1, 6)]
    picked = torch.log_softmax(logits, dim=1).gather(1, targets[:, None]).squeeze(1)
    per_row = torch.zeros(12).index_add(
        0, torch.arange(12).repeat_interleave(samples.lengths), picked
    )
    torch.testing.assert_close(samples.log_probs, per_row, rtol=1e-5, atol=1e-5)


def test_sampling_of_a_model_that_always_or_never_ends(demo):
    vocab, features = demo["vocab"], demo["features"][:3]
    model = tiny_model(vocab)
    suppress = [vocab.pad, vocab.sos]
    with torch.no_grad():  # a model that always says <eos> / never does
        model.output.bias.fill_(0.0)
        model.output.bias[vocab.eos] = 50.0
    short = sample_captions(model, features, vocab.sos, vocab.eos, vocab.pad, 2, 6, suppress)
    assert short.lengths.tolist() == [1] * 6 and short.tokens[:, 0].eq(vocab.eos).all()
    long = sample_captions(
        model, features, vocab.sos, vocab.eos, vocab.pad, 2, 6, [*suppress, vocab.eos]
    )
    assert long.lengths.tolist() == [6] * 6 and not long.tokens.eq(vocab.eos).any()


def test_baselines_compute_what_they_claim():
    rewards = np.array([[1.0, 2.0, 3.0, 6.0], [0.0, 0.0, 4.0, 0.0]])
    np.testing.assert_allclose(
        baselines(rewards, "mean"), [[11 / 3, 10 / 3, 3.0, 2.0], [4 / 3, 4 / 3, 0.0, 4 / 3]]
    )
    np.testing.assert_allclose(
        baselines(rewards, "greedy", np.array([0.5, 2.0])), [[0.5] * 4, [2.0] * 4]
    )


def test_greedy_baseline_is_the_reward_of_the_greedy_caption(demo):
    vocab, features, references = demo["vocab"], demo["features"], demo["references"]
    model = tiny_model(vocab)
    reward = CaptionReward(references, vocab)
    config = Scst(
        reward, ScstConfig(samples=2, baseline="greedy", max_len=8), [vocab.pad, vocab.sos]
    )
    _, stats = scst_loss(model, features, np.arange(8), config, vocab, None)
    greedy = greedy_decode(
        model.eval(), features, vocab.sos, vocab.eos, 9, suppress=[vocab.pad, vocab.sos]
    )
    texts = [vocab.decode(d.tokens) for d in greedy]
    expected = CiderD(references).score_texts(range(8), texts)
    assert stats.baseline == pytest.approx(2 * expected.sum(), abs=1e-9)


def test_reward_of_vocabulary_ids_and_the_bad_ending_penalty(demo):
    vocab, references = demo["vocab"], demo["references"]
    texts = [references[0][0], references[1][2] + " of", "a a"]
    tokens = np.zeros((3, 20), dtype=np.int64)
    for row, text in enumerate(texts):
        ids = [vocab.stoi[w] for w in text.split()] + [vocab.eos]
        tokens[row, : len(ids)] = ids
    plain, bad = CaptionReward(references, vocab)(np.array([0, 1, 2]), tokens)
    expected = CiderD(references).score_texts([0, 1, 2], texts)
    np.testing.assert_allclose(plain, expected, atol=1e-12)
    assert bad.tolist() == [t.split()[-1] in BAD_ENDINGS for t in texts] == [False, True, True]
    penalised, _ = CaptionReward(references, vocab, 0.5)(np.array([0, 1, 2]), tokens)
    np.testing.assert_allclose(penalised, expected - [0.0, 0.5, 0.5], atol=1e-12)


def test_scst_steps_raise_the_mean_reward_on_a_fixed_batch(demo):
    vocab, features = demo["vocab"], demo["features"]
    model = tiny_model(vocab)
    config = Scst(
        CaptionReward(demo["references"], vocab),
        ScstConfig(samples=5, max_len=12),
        [vocab.pad, vocab.sos, vocab.unk],
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    generator = torch.Generator().manual_seed(0)
    rewards = []
    for _ in range(30):
        loss, stats = scst_loss(model, features, np.arange(8), config, vocab, generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        rewards.append(stats.reward / stats.samples)
    assert np.mean(rewards[-5:]) > np.mean(rewards[:5]) + 0.04, rewards


@pytest.fixture(scope="module")
def xe_run(tmp_path_factory, demo_cache) -> dict:
    """A one-epoch cross-entropy run of the tiny config (shared by the CLI tests below)."""
    from conftest import TINY_CONFIG

    root = tmp_path_factory.mktemp("scst")
    shutil.copy(demo_cache["features"], root / "features.h5")
    shutil.copy(demo_cache["captions"], root / "dataset.json")
    config = root / "tiny.toml"
    config.write_text(
        TINY_CONFIG.format(
            captions=root / "dataset.json",
            images=root / "none",
            features=root / "features.h5",
            runs=root / "runs",
        )
    )
    result = cli("train", "--config", config, "--set", "train.name=xe", "--set", "train.epochs=1")
    assert result.exit_code == 0, result.output
    return {"config": config, "checkpoint": root / "runs" / "xe" / "best.pt", "runs": root / "runs"}


SCST = (
    "--set",
    "train.objective=scst",
    "--set",
    "scst.samples=2",
    "--set",
    "scst.max_len=8",
    "--set",
    "train.lr=0.001",
    "--set",
    "train.batch_size=16",
)


def test_init_with_other_model_sizes_is_one_clear_error(xe_run):
    result = cli(
        "train",
        "--config",
        xe_run["config"],
        "--init",
        xe_run["checkpoint"],
        "--set",
        "model.hidden_dim=48",
        "--set",
        "train.name=bad",
        *SCST,
    )
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert "--init" in result.output and "does not fit this config's model" in result.output
    both = cli("train", "--resume", xe_run["runs"] / "xe", "--init", xe_run["checkpoint"])
    assert both.exit_code == 2 and "cannot be combined" in both.output


def test_scst_from_init_logs_rewards_and_resumes_like_a_straight_run(xe_run):
    common = ("--config", xe_run["config"], "--init", xe_run["checkpoint"], *SCST)
    straight = cli("train", *common, "--set", "train.name=straight", "--set", "train.epochs=2")
    assert straight.exit_code == 0, straight.output
    assert (
        cli("train", *common, "--set", "train.name=stopped", "--set", "train.epochs=1").exit_code
        == 0
    )
    resumed = cli("train", "--resume", xe_run["runs"] / "stopped", "--set", "train.epochs=2")
    assert resumed.exit_code == 0, resumed.output
    a, b = metrics(xe_run["runs"] / "straight"), metrics(xe_run["runs"] / "stopped")
    assert len(a) == len(b) == 2
    for x, y in zip(a, b, strict=True):
        for key in ("train_loss", "reward", "baseline", "sample_length", "val_loss", "CIDEr"):
            assert x[key] == y[key], key
    assert 0 < a[0]["sample_length"] <= 8 and a[0]["reward"] >= 0
    # the run started from the XE weights: its first val loss is near the XE run's
    xe = metrics(xe_run["runs"] / "xe")[-1]
    assert abs(a[0]["val_loss"] - xe["val_loss"]) < 0.5


def test_eos_token_scores_the_end_like_a_word_on_every_caption(demo):
    """With scst.eos_token, the reward equals plain CIDEr-D with one extra word closing every
    reference and every finished caption (and none on a caption cut at the length limit)."""
    vocab, references = demo["vocab"], demo["references"]
    texts = [references[0][0], references[1][2] + " of", "a a"]
    tokens = np.zeros((3, 20), dtype=np.int64)
    for row, text in enumerate(texts):
        ids = [vocab.stoi[w] for w in text.split()] + ([vocab.eos] if row < 2 else [])
        tokens[row, : len(ids)] = ids
    with_end, _ = CaptionReward(references, vocab, eos_token=True)(np.array([0, 1, 2]), tokens)
    closed = [[f"{r} zzend" for r in refs] for refs in references]
    expected = CiderD(closed).score_texts(
        [0, 1, 2], [texts[0] + " zzend", texts[1] + " zzend", texts[2]]
    )
    np.testing.assert_allclose(with_end, expected, atol=1e-12)
    plain, _ = CaptionReward(references, vocab)(np.array([0, 1, 2]), tokens)
    assert not np.allclose(with_end, plain)
