"""The training recipe: batching modes of plan_epoch, the penalty's normalisation, decoder options."""

import numpy as np
import pytest
import torch

from pipeline.config import ModelConfig, config_from_dict
from pipeline.dataset.batches import SplitData, plan_epoch
from pipeline.decoder.loss import caption_loss
from pipeline.decoder.lstm import CaptionDecoder
from pipeline.errors import UserError


def make_split(n_images=300, seed=0) -> SplitData:
    """n_images images with 3 to 5 captions each (no grids needed to plan batches)."""
    counts = np.random.default_rng(seed).integers(3, 6, n_images)
    owners = np.repeat(np.arange(n_images), counts)  # (n_captions,)
    groups = [np.flatnonzero(owners == i) for i in range(n_images)]
    return SplitData(
        image_names=[f"{i}.jpg" for i in range(n_images)],
        image_ids=[str(i) for i in range(n_images)],
        image_rows=np.arange(n_images),
        captions_of_image=groups,
        caption_image=owners,
        tokens=[np.array([1, 2])] * len(owners),
        references=[["a"] * int(c) for c in counts],
    )


@pytest.mark.parametrize("mode", ["captions", "images"])
def test_every_caption_exactly_once_per_epoch(mode):
    split = make_split()
    plan = plan_epoch(split, 32, mode, np.random.default_rng(1))
    captions = np.concatenate([c for _, c in plan])
    assert sorted(captions.tolist()) == list(range(split.num_captions))
    for images, batch_captions in plan:  # each batch carries exactly its captions' images
        assert set(images.tolist()) == set(split.caption_image[batch_captions].tolist())
        assert len(np.unique(images)) == len(images)


def test_caption_batches_span_about_batch_size_images_whole_image_batches_few():
    split = make_split()
    rng = np.random.default_rng(2)
    captions = plan_epoch(split, 32, "captions", rng)
    images = plan_epoch(split, 32, "images", rng)
    assert all(len(c) == 32 for _, c in captions[:-1])
    distinct = np.mean([len(i) for i, _ in captions[:-1]])  # ~30.4 expected for 300 images
    assert 28 <= distinct <= 32
    assert np.mean([len(i) for i, _ in images[:-1]]) <= 9  # whole images: 32 / 4 captions each
    for image_positions, batch_captions in images:  # all captions of each image, together
        assert sorted(batch_captions.tolist()) == sorted(
            np.concatenate([split.captions_of_image[i] for i in image_positions]).tolist()
        )


def test_random_batching_takes_one_caption_of_each_image():
    split = make_split()
    plan = plan_epoch(split, 32, "random", np.random.default_rng(3))
    images = np.concatenate([i for i, _ in plan])
    captions = np.concatenate([c for _, c in plan])
    assert sorted(images.tolist()) == list(range(len(split.image_names)))
    assert (split.caption_image[captions] == images).all()


@pytest.mark.parametrize("mode", ["captions", "images", "random"])
def test_plans_are_seeded(mode):
    split = make_split()

    def plan(seed):
        return [
            (i.tolist(), c.tolist())
            for i, c in plan_epoch(split, 32, mode, np.random.default_rng(seed))
        ]

    assert plan(5) == plan(5)
    assert plan(5) != plan(6)
    ordered = plan_epoch(split, 32, mode, None)  # no rng: table order
    first_images = np.concatenate([i for i, _ in ordered])
    assert (np.diff(np.unique(first_images, return_index=True)[1]) > 0).all()
    assert first_images[0] == 0


def test_batching_config_and_the_old_key():
    assert config_from_dict({"train": {"batching": "images"}}).train.batching == "images"
    with pytest.raises(UserError, match="train.batching must be one of captions, images, random"):
        config_from_dict({"train": {"batching": "all"}})
    old = {"train": {"captions_per_image": "all"}}  # a checkpoint written before the rename
    assert config_from_dict(old).train.batching == "images"
    assert config_from_dict({"train": {"captions_per_image": "random"}}).train.batching == "random"


def alphas_and_batch():
    """2 captions (3 and 2 predicted steps), 4 regions; alphas zero at the padded step."""
    alphas = torch.tensor(
        [
            [[0.7, 0.1, 0.1, 0.1], [0.1, 0.7, 0.1, 0.1], [0.1, 0.1, 0.7, 0.1]],
            [[0.25, 0.25, 0.25, 0.25], [0.5, 0.5, 0.0, 0.0], [0, 0, 0, 0]],
        ]
    )
    lengths = torch.tensor([4, 3])  # <sos> w w <eos>: 3 targets; <sos> w <eos>: 2
    captions = torch.tensor([[1, 5, 6, 2], [1, 7, 2, 0]])
    logits = torch.zeros(5, 8)  # (N = 3 + 2, V = 8): uniform predictions
    return logits, captions, alphas, lengths


def test_penalty_sums_or_averages_over_regions():
    logits, captions, alphas, lengths = alphas_and_batch()
    # coverage Σ_t α: caption 0 (0.9, 0.9, 0.9, 0.3), caption 1 (0.75, 0.75, 0.25, 0.25)
    per_region = torch.tensor([[0.01, 0.01, 0.01, 0.49], [0.0625, 0.0625, 0.5625, 0.5625]])
    totals = {}
    for mode in ("sum", "mean"):
        total, ce = caption_loss(
            logits, captions, alphas, lengths, doubly_stochastic=2.0, attention_penalty=mode
        )
        torch.testing.assert_close(ce, torch.tensor(float(np.log(8))))
        totals[mode] = total - ce
    torch.testing.assert_close(totals["sum"], 2.0 * per_region.sum(dim=1).mean())
    torch.testing.assert_close(totals["mean"], 2.0 * per_region.mean())
    torch.testing.assert_close(totals["sum"], 4 * totals["mean"])  # R = 4 regions
    with pytest.raises(ValueError, match="attention_penalty"):
        caption_loss(logits, captions, alphas, lengths, 1.0, attention_penalty="max")


def make_decoder(**options) -> CaptionDecoder:
    torch.manual_seed(0)
    config = ModelConfig(embed_dim=16, hidden_dim=24, attention_dim=12, dropout=0.0, **options)
    return CaptionDecoder(40, config, feature_dim=32, pad_index=0)


def test_uniform_init_is_the_tutorials_and_xavier_differs():
    model = make_decoder(init="uniform")
    for weight in (model.embedding.weight, model.output.weight):
        assert weight.abs().max() <= 0.1 and weight.abs().max() > 0.09
    assert (model.output.bias == 0).all() and (model.embedding.weight[0] == 0).all()
    xavier = make_decoder(init="xavier")
    assert xavier.embedding.weight.abs().max() > 0.1  # sqrt(6 / (40 + 16)) = 0.33
    assert (xavier.output.bias != 0).any() and (xavier.embedding.weight[0] == 0).all()


def test_attention_activation_and_tanh_on_the_initial_state_change_the_model():
    features = 3 * torch.randn(2, 49, 32, generator=torch.Generator().manual_seed(1))
    tanh, relu = (
        make_decoder(attention_activation="tanh"),
        make_decoder(attention_activation="relu"),
    )
    relu.load_state_dict(tanh.state_dict())  # same weights, different nonlinearity
    encoded = tanh.encode(features)
    h = torch.randn(2, 24, generator=torch.Generator().manual_seed(2))
    _, alpha_tanh = tanh.attention(encoded, h)
    _, alpha_relu = relu.attention(encoded, h)
    assert not torch.allclose(alpha_tanh, alpha_relu)
    linear_h0 = make_decoder(init_state_tanh=False)
    linear_h0.load_state_dict(tanh.state_dict())
    with torch.no_grad():
        linear_h0.init_h.weight.mul_(50)
    h0, c0 = linear_h0.init_state(linear_h0.encode(features))
    assert h0.abs().max() > 1 and c0.shape == (2, 24)  # no tanh: not squashed into (-1, 1)
    with torch.no_grad():
        tanh.init_h.weight.mul_(50)
    assert tanh.init_state(encoded)[0].abs().max() <= 1


def test_the_demo_sweep_trains_identical_recipes_once(demo_cache):
    from pathlib import Path

    from pipeline.sweep.runner import plan_runs
    from pipeline.sweep.spec import load_sweep, select

    sweep = load_sweep(
        Path(__file__).resolve().parents[1] / "configs" / "sweeps" / "demo.toml",
        (f"features.path={str(demo_cache['features'])!r}",
         f"data.captions={str(demo_cache['captions'])!r}"),
    )  # fmt: skip
    sweep.seeds = 2
    names = select(sweep, ["shipped", "penalty-mean", "images", "transformer", "scst"])
    runs = plan_runs(sweep, names, Path("out"))
    users = sorted(run.users for run in runs.values())
    assert [("shipped", 0), ("penalty-mean", 0)] in users  # one recipe: one run per seed
    assert [("images", 1)] in users and [("transformer", 0)] in users
    assert "tutorial" in names  # it comes along: every variant is compared with it
    assert sorted(pair for group in users for pair in group) == sorted(
        (name, seed) for name in names for seed in (0, 1)
    )
    scst = [run for run in runs.values() if run.users == [("scst", 1)]][0]
    assert runs[scst.start].users == [("shipped", 1), ("penalty-mean", 1)]
    assert scst.config["train"]["objective"] == "scst" and scst.config["train"]["seed"] == 1
