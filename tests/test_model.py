"""Both decoder kinds, caption_loss and load_word_vectors on small real tensors and files."""

import pytest
import torch
import torch.nn.functional as F

from pipeline.config import ModelConfig
from pipeline.decoder.build import DECODERS
from pipeline.decoder.embeddings import load_word_vectors
from pipeline.decoder.loss import caption_loss
from pipeline.decoder.lstm import CaptionDecoder
from pipeline.errors import UserError

VOCAB, FEATURE_DIM, REGIONS = 30, 32, 49
PAD, SOS, EOS = 0, 1, 2


def make_model(attention="additive", gate=True, dropout=0.0, seed=0, **kwargs):
    torch.manual_seed(seed)
    config = ModelConfig(
        attention=attention,
        embed_dim=16,
        hidden_dim=24,
        attention_dim=12,
        dropout=dropout,
        gate=gate,
        **kwargs,
    )
    return CaptionDecoder(VOCAB, config, feature_dim=FEATURE_DIM, pad_index=PAD)


def make_decoder(kind, dropout=0.0, seed=0, **kwargs):
    """A small decoder of `kind` (the LSTM with additive attention)."""
    if kind == "lstm":
        return make_model(dropout=dropout, seed=seed, **kwargs)
    torch.manual_seed(seed)
    config = ModelConfig(
        kind=kind, embed_dim=16, layers=2, heads=4, ff_dim=32, dropout=dropout, **kwargs
    )
    return DECODERS[kind](VOCAB, config, feature_dim=FEATURE_DIM, pad_index=PAD)


def make_batch(seed=1):
    """3 images, 5 captions of different lengths; the last caption column is all padding."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(3, REGIONS, FEATURE_DIM, generator=generator).half()  # (3, 49, 32)
    lengths = torch.tensor([5, 3, 7, 2, 6])  # tokens incl. <sos>/<eos>
    captions = torch.full((5, 8), PAD, dtype=torch.long)  # (B, T)
    for row, length in enumerate(lengths.tolist()):
        words = torch.randint(3, VOCAB, (length - 2,), generator=generator)
        captions[row, :length] = torch.cat([torch.tensor([SOS]), words, torch.tensor([EOS])])
    image_index = torch.tensor([0, 2, 1, 0, 2])
    return features, image_index, captions, lengths


def active_mask(lengths, steps):
    """(B, steps) True where a prediction is made (t < length - 1)."""
    return torch.arange(steps).unsqueeze(0) < (lengths - 1).unsqueeze(1)


def naive_forward(model, features, image_index, captions):
    """Every row at every step through `step`, no sorting or shrinking."""
    encoded = model.encode(features).index_select(image_index)
    state = model.init_state(encoded)
    logits, alphas = [], []
    for t in range(captions.shape[1] - 1):
        step_logits, alpha, state = model.step(captions[:, t], state, encoded)
        logits.append(step_logits)
        alphas.append(alpha)
    return torch.stack(logits, dim=1), torch.stack(alphas, dim=1)


@pytest.mark.parametrize(
    "kind,attention", [("lstm", "linear"), ("lstm", "additive"), ("transformer", None)]
)
def test_forward_shapes_alpha_sums_and_padding(kind, attention):
    model = (make_model(attention) if kind == "lstm" else make_decoder(kind)).eval()
    features, image_index, captions, lengths = make_batch()
    logits, alphas = model(features, image_index, captions, lengths)
    active = active_mask(lengths, 7)
    assert logits.shape == (int(active.sum()), VOCAB) and alphas.shape == (5, 7, REGIONS)
    assert logits.dtype == torch.float32
    sums = alphas.sum(dim=2)  # (B, T-1)
    torch.testing.assert_close(sums[active], torch.ones(int(active.sum())))
    assert (alphas[~active] == 0).all()
    assert (logits.abs().sum(dim=1) > 0).all()


@pytest.mark.parametrize(
    "attention,gate",
    [
        ("linear", True),
        ("additive", True),
        ("additive", False),
        ("transformer", None),
        ("transformer-untied", None),
    ],
)
def test_forward_equals_naive_steps(attention, gate):
    """Teacher forcing (LSTM: sorted, shrinking; Transformer: all steps at once under the
    causal mask) equals feeding each row word by word through `step`."""
    if attention.startswith("transformer"):
        model = make_decoder("transformer", tied_output=attention == "transformer").eval()
    else:
        model = make_model(attention, gate=gate).eval()
    features, image_index, captions, lengths = make_batch()
    logits, alphas = model(features, image_index, captions, lengths)
    naive_logits, naive_alphas = naive_forward(model, features, image_index, captions)
    active = active_mask(lengths, 7)
    torch.testing.assert_close(logits, naive_logits[active], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alphas[active], naive_alphas[active], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("attention", ["linear", "additive", "transformer"])
def test_gradients_reach_every_trainable_parameter(attention):
    model = (
        make_decoder("transformer", dropout=0.1)
        if attention == "transformer"
        else make_model(attention, doubly_stochastic=1.0)
    ).train()
    features, image_index, captions, lengths = make_batch()
    logits, alphas = model(features, image_index, captions, lengths)
    total, _ = caption_loss(logits, captions, alphas, lengths, doubly_stochastic=1.0)
    total.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        if attention == "linear" and name == "attention.hidden_proj.weight":
            # documented property: softmax cancels the region-constant W_h·h term
            assert parameter.grad.abs().max() < 1e-6, name
        else:
            assert parameter.grad.abs().sum() > 0, name


def test_linear_attention_alpha_ignores_hidden_state_additive_does_not():
    features = make_batch()[0]
    for attention, independent in (("linear", True), ("additive", False)):
        model = make_model(attention).eval()
        encoded = model.encode(features)
        _, alpha_a = model.attention(encoded, torch.randn(3, 24))
        _, alpha_b = model.attention(encoded, 5 * torch.randn(3, 24))
        assert torch.allclose(alpha_a, alpha_b, atol=1e-6) == independent, attention


def test_gate_scales_context():
    features, image_index, captions, lengths = make_batch()
    gated, plain = make_model(gate=True).eval(), make_model(gate=False).eval()
    assert plain.gate is None
    plain.load_state_dict(
        {k: v for k, v in gated.state_dict().items() if not k.startswith("gate.")}
    )
    total_gated, _ = gated.parameter_counts()
    assert total_gated - plain.parameter_counts()[0] == 24 * FEATURE_DIM + FEATURE_DIM
    with torch.no_grad():
        gated.gate.weight.zero_()
        gated.gate.bias.fill_(50.0)  # β = 1: same as no gate
    open_logits, _ = gated(features, image_index, captions, lengths)
    plain_logits, _ = plain(features, image_index, captions, lengths)
    torch.testing.assert_close(open_logits, plain_logits)
    with torch.no_grad():
        gated.gate.bias.fill_(-50.0)  # β = 0: the image is shut out
    closed_logits, _ = gated(features, image_index, captions, lengths)
    assert not torch.allclose(closed_logits, plain_logits, atol=1e-3)


def test_doubly_stochastic_term():
    model = make_model().eval()
    features, image_index, captions, lengths = make_batch()
    logits, alphas = model(features, image_index, captions, lengths)
    total0, ce0 = caption_loss(logits, captions, alphas, lengths, doubly_stochastic=0.0)
    assert total0.item() == ce0.item()
    total, ce = caption_loss(
        logits, captions, alphas, lengths, doubly_stochastic=0.5, attention_penalty="sum"
    )
    assert ce.item() == ce0.item()
    coverage = alphas.sum(dim=1)  # (B, 49): zeros at padded steps add nothing
    expected = ((1 - coverage) ** 2).sum(dim=1).mean()
    assert expected > 0
    torch.testing.assert_close(total - ce, 0.5 * expected)


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
def test_cross_entropy_counts_real_targets_only_and_label_smoothing_changes_it(kind):
    model = make_decoder(kind).eval()
    features, image_index, captions, lengths = make_batch()
    logits, alphas = model(features, image_index, captions, lengths)
    targets = captions[:, 1:]
    active = active_mask(lengths, 7)
    naive_logits, _ = naive_forward(model, features, image_index, captions)  # (B, T-1, V)
    _, ce = caption_loss(logits, captions, alphas, lengths)
    torch.testing.assert_close(
        ce, F.cross_entropy(naive_logits[active], targets[active]), atol=1e-5, rtol=1e-5
    )
    _, smoothed = caption_loss(logits, captions, alphas, lengths, label_smoothing=0.1)
    torch.testing.assert_close(
        smoothed, F.cross_entropy(logits, targets[active], label_smoothing=0.1)
    )
    assert abs(smoothed.item() - ce.item()) > 1e-4


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
def test_frozen_pretrained_embeddings_stay_frozen(kind):
    pretrained = torch.randn(VOCAB, 16)
    torch.manual_seed(0)
    config = ModelConfig(
        kind=kind,
        embed_dim=16,
        hidden_dim=24,
        attention_dim=12,
        dropout=0.0,
        freeze_embeddings=True,
        layers=1,
        heads=2,
        ff_dim=8,
        tied_output=False,
    )
    decoder = DECODERS[kind]
    model = decoder(VOCAB, config, feature_dim=FEATURE_DIM, pretrained_embeddings=pretrained)
    weight = model.embedding.weight
    torch.testing.assert_close(weight[1:], pretrained[1:])
    assert (weight[PAD] == 0).all()
    total, trainable = model.parameter_counts()
    assert total == sum(p.numel() for p in model.parameters())
    assert total - trainable == VOCAB * 16
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.1)
    features, image_index, captions, lengths = make_batch()
    logits, alphas = model(features, image_index, captions, lengths)
    caption_loss(logits, captions, alphas, lengths)[0].backward()
    optimizer.step()
    assert torch.equal(model.embedding.weight, before["embedding.weight"])
    assert not torch.equal(model.output.weight, before["output.weight"])
    unfrozen = make_decoder(kind)
    assert unfrozen.parameter_counts()[0] == unfrozen.parameter_counts()[1]
    with pytest.raises(ValueError):
        decoder(VOCAB, config, feature_dim=FEATURE_DIM, pretrained_embeddings=torch.zeros(VOCAB, 8))


def test_load_word_vectors(tmp_path):
    itos = ["<pad>", "<sos>", "<eos>", "<unk>", "dog", "cat", "ice cream", "tree"]
    text = (
        "5 3\n"
        "dog 0.1 0.2 0.3\n"
        "cat -1 -2 -3.5\n"
        "ice cream 7 8 9\n"
        "car 4 4 4\n"
        "dog 9 9 9\n"
    )  # a repeated word keeps its first vector
    path = tmp_path / "vectors.txt"
    path.write_text(text, encoding="utf-8")
    matrix, coverage = load_word_vectors(path, itos, 3)
    assert matrix.shape == (8, 3)
    assert coverage == pytest.approx(3 / 8)
    torch.testing.assert_close(matrix[4], torch.tensor([0.1, 0.2, 0.3]))
    torch.testing.assert_close(matrix[5], torch.tensor([-1.0, -2.0, -3.5]))
    torch.testing.assert_close(matrix[6], torch.tensor([7.0, 8.0, 9.0]))
    assert matrix[7].abs().sum() > 0 and matrix[7].abs().max() <= (6 / (8 + 3)) ** 0.5
    glove = tmp_path / "glove.txt"  # no header
    glove.write_text("tree 1 2 3\n", encoding="utf-8")
    matrix, coverage = load_word_vectors(glove, itos, 3)
    assert coverage == pytest.approx(1 / 8)
    torch.testing.assert_close(matrix[7], torch.tensor([1.0, 2.0, 3.0]))


@pytest.mark.parametrize(
    "text,message",
    [
        ("dog 1 2 3\n", "dimension 3, but model.embed_dim is 4"),
        ("2 3\ndog 1 2 3\n", "dimension 3, but model.embed_dim is 4"),
        ("dog 1 2 3 x\n", "not a number"),
        ("dog 1 2 3 4\ncat 1 2\n", "expected a word and 4 numbers"),
        ("\n", "holds no vectors"),
    ],
)
def test_load_word_vectors_bad_files(tmp_path, text, message):
    path = tmp_path / "vectors.txt"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UserError, match=message):
        load_word_vectors(path, ["<pad>", "dog", "cat"], 4)


def test_load_word_vectors_missing_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_word_vectors(tmp_path / "nope.txt", ["dog"], 4)


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
def test_autocast_forward_and_backward(kind):
    model = make_decoder(kind, dropout=0.1).train()
    features, image_index, captions, lengths = make_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, alphas = model(features, image_index, captions, lengths)
        total, ce = caption_loss(logits, captions, alphas, lengths, doubly_stochastic=1.0)
    assert logits.shape == (18, VOCAB) and torch.isfinite(total)
    total.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert model.embedding.weight.grad.abs().sum() > 0
