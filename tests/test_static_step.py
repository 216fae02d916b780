"""The training step, static (GPU, compiled) and packed (CPU): the same losses and gradients as
one caption at a time, the bucketed batch widths, and the compiled step equal to the eager one."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.config import Config, ModelConfig
from pipeline.dataset.batches import CaptionBatches, SplitData
from pipeline.dataset.teacher_forced import teacher_forced_loss
from pipeline.decoder.build import DECODERS
from pipeline.decoder.loss import IGNORED, coverage_penalty, dense_caption_loss
from pipeline.device import static_step as static_step_rule

VOCAB, FEATURE_DIM, REGIONS = 30, 32, 49
PAD, SOS, EOS = 0, 1, 2
LAMBDA, SMOOTHING = 0.7, 0.1


def make_decoder(kind: str, attention: str = "additive"):
    torch.manual_seed(0)
    config = ModelConfig(
        kind=kind,
        attention=attention,
        embed_dim=16,
        hidden_dim=24,
        attention_dim=12,
        layers=2,
        heads=4,
        ff_dim=32,
        dropout=0.0,
        tied_output=False,
    )
    return DECODERS[kind](VOCAB, config, feature_dim=FEATURE_DIM, pad_index=PAD).train()


def make_batch(width: int = 9):
    """3 images, 5 captions of 2..7 tokens padded to `width` (more than the longest)."""
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(3, REGIONS, FEATURE_DIM, generator=generator)
    lengths = torch.tensor([5, 3, 7, 2, 6])
    captions = torch.full((5, width), PAD, dtype=torch.long)
    for row, length in enumerate(lengths.tolist()):
        words = torch.randint(3, VOCAB, (length - 2,), generator=generator)
        captions[row, :length] = torch.cat([torch.tensor([SOS]), words, torch.tensor([EOS])])
    return features, torch.tensor([0, 2, 1, 0, 2]), captions, lengths


def one_at_a_time(model, features, image_index, captions, lengths):
    """The reference: each caption alone, unpadded, word by word through `step`.

    Returns the per-token cross-entropies (N,) in row-major order and the batch's total loss
    (mean CE with label smoothing + λ · the coverage penalty over the real steps)."""
    per_token, smoothed, penalties = [], [], []
    for row, length in enumerate(lengths.tolist()):
        encoded = model.encode(features[image_index[row]].unsqueeze(0))
        state = model.init_state(encoded)
        logits, alphas = [], []
        for t in range(length - 1):
            step_logits, alpha, state = model.step(captions[row, t].view(1), state, encoded)
            logits.append(step_logits[0])
            alphas.append(alpha[0])
        logits, targets = torch.stack(logits), captions[row, 1:length]
        per_token.append(F.cross_entropy(logits, targets, reduction="none"))
        smoothed.append(
            F.cross_entropy(logits, targets, reduction="none", label_smoothing=SMOOTHING)
        )
        penalties.append(coverage_penalty(torch.stack(alphas).unsqueeze(0), "mean"))
    total = torch.cat(smoothed).mean() + LAMBDA * torch.stack(penalties).mean()
    return torch.cat(per_token), total


def static_step(model, features, image_index, captions, lengths, mask_padding=True):
    """The training step's computation: every step of the batch, the padded ones masked
    (`mask_padding=False`: a broken control that lets the padding be targets)."""
    logits, alphas = model.teacher_forced(features, image_index, captions)
    if not mask_padding:
        lengths = torch.full_like(lengths, captions.shape[1])
    total, _ = dense_caption_loss(
        logits, captions, alphas, lengths, LAMBDA, SMOOTHING, attention_penalty="mean"
    )
    steps = captions.shape[1] - 1
    targets = captions[:, 1:].masked_fill(
        torch.arange(steps) >= (lengths - 1).unsqueeze(1), IGNORED
    )
    per_token = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
    return per_token[targets.flatten() != IGNORED], total


def gradients(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    "kind,attention", [("lstm", "additive"), ("lstm", "linear"), ("transformer", "additive")]
)
def test_static_step_equals_one_caption_at_a_time(kind, attention):
    model = make_decoder(kind, attention)
    batch = make_batch()
    reference_tokens, reference_total = one_at_a_time(model, *batch)
    reference_grads = gradients(model, reference_total)
    tokens, total = static_step(model, *batch)
    grads = gradients(model, total)
    assert tokens.shape == (int((batch[3] - 1).sum()),)
    torch.testing.assert_close(tokens, reference_tokens, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(total, reference_total, atol=1e-5, rtol=1e-5)
    assert grads.keys() == reference_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, reference_grads[name], atol=1e-5, rtol=1e-4)
    _, unmasked = static_step(model, *batch, mask_padding=False)  # the control fails
    assert abs(float(unmasked.detach()) - float(reference_total.detach())) > 1e-3


def test_the_padded_steps_reach_neither_the_loss_nor_the_gradients():
    """Whatever a padded step computes (here: inf logits), the loss and gradients stay."""
    model = make_decoder("lstm")
    features, image_index, captions, lengths = make_batch()
    logits, alphas = model.teacher_forced(features, image_index, captions)
    padded = torch.arange(captions.shape[1] - 1) >= (lengths - 1).unsqueeze(1)  # (B, T-1)
    poisoned = logits.masked_fill(padded.unsqueeze(2), float("inf"))
    clean, _ = dense_caption_loss(logits, captions, alphas, lengths, LAMBDA, SMOOTHING)
    total, _ = dense_caption_loss(poisoned, captions, alphas, lengths, LAMBDA, SMOOTHING)
    torch.testing.assert_close(total, clean)
    grads = gradients(model, total)
    assert all(bool(torch.isfinite(g).all()) for g in grads.values())


def test_batches_are_padded_to_the_bucket_up_to_the_splits_longest_caption():
    lengths = [3, 4, 9, 13]
    split = SplitData(
        image_names=["a", "b", "c", "d"],
        image_ids=["1", "2", "3", "4"],
        image_rows=np.arange(4),
        captions_of_image=[np.asarray([i]) for i in range(4)],
        caption_image=np.arange(4),
        tokens=[np.asarray([SOS] + [5] * (n - 2) + [EOS]) for n in lengths],
        references=[["x"]] * 4,
    )
    for bucket, widths in ((1, [3, 4, 9, 13]), (8, [8, 8, 13, 13]), (4, [4, 4, 12, 13])):
        batches = CaptionBatches(None, split, PAD, bucket)
        assert [batches.width(n) for n in lengths] == widths


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
def test_compiled_step_equals_the_eager_step(kind):
    """torch.compile (inductor on the CPU) gives the eager step's losses and gradients
    (3 steps: compiling takes most of this test's time)."""
    config = Config()
    config.model.doubly_stochastic, config.train.label_smoothing = LAMBDA, SMOOTHING
    cpu = torch.device("cpu")
    features, image_index, captions, lengths = make_batch()
    batch = (features, image_index, captions[:, :4], lengths.clamp(max=4))
    eager, compiled = teacher_forced_loss(config, cpu), teacher_forced_loss(config, cpu, True)
    model = make_decoder(kind)
    expected_total, expected_ce = eager(model, *batch)
    expected = gradients(model, expected_total)
    total, ce = compiled(model, *batch)
    torch.testing.assert_close((total, ce), (expected_total, expected_ce))
    grads = gradients(model, total)
    assert grads.keys() == expected.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected[name], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "kind,attention", [("lstm", "additive"), ("lstm", "linear"), ("transformer", "additive")]
)
def test_the_cpu_step_packed_equals_one_caption_at_a_time(kind, attention):
    """On a CPU without compiling the step is the packed `forward` (the LSTM's batch shrinks
    step by step): the same total loss and gradients as the reference, and the static path."""
    config = Config()
    config.model.doubly_stochastic, config.train.label_smoothing = LAMBDA, SMOOTHING
    assert not static_step_rule(torch.device("cpu"), False)
    assert static_step_rule(torch.device("cpu"), True) and static_step_rule(
        torch.device("cuda"), False
    )
    model = make_decoder(kind, attention)
    batch = make_batch()
    _, reference_total = one_at_a_time(model, *batch)
    reference_grads = gradients(model, reference_total)
    total, _ = teacher_forced_loss(config, torch.device("cpu"))(model, *batch)
    torch.testing.assert_close(total, reference_total, atol=1e-5, rtol=1e-5)
    grads = gradients(model, total)
    assert grads.keys() == reference_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, reference_grads[name], atol=1e-5, rtol=1e-4)
    _, static_total = static_step(model, *batch)
    torch.testing.assert_close(total, static_total, atol=1e-5, rtol=1e-5)
