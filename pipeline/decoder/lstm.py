"""Show-Attend-Tell style caption decoder over cached backbone grids (pure torch).

The decoder reads a batch of (B, R, C) feature grids (ResNet50: (B, 49, 2048); C is the
feature file's, `feature_dim`), attends over the R regions at every
step and predicts the next word with an LSTM cell. `encode` computes the image side of the
attention once per batch; `step` is one decoding step and is shared by teacher-forced training
(`forward`) and by greedy / beam decoding (`pipeline.decoder.decode`). Device-agnostic (CPU, CUDA)
and safe under `torch.autocast`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.config import ModelConfig
from pipeline.contract import CHANNELS
from pipeline.decoder.embeddings import copy_pretrained
from pipeline.decoder.loss import check_lengths, target_mask
from pipeline.decoder.step_weight import StepWeight, in_autocast_dtype

State = tuple[Tensor, Tensor]  # h, c: each (B, H)
ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu}  # keys: config.ATTENTION_ACTIVATIONS
UNIFORM_INIT = 0.1  # model.init = "uniform": embedding and output weights ~ U(-0.1, 0.1)


@dataclass
class Encoded:
    """A batch of images ready for decoding: the grids and the attention's image side."""

    features: Tensor  # (B, R, D) float32 (the autocast dtype under autocast), R regions
    projected: Tensor  # (B, R, A) additive attention, (B, R, 1) linear attention: W_f·features

    def index_select(self, index: Tensor) -> Encoded:
        """Rows `index` (B',) long, in that order; repeats allowed (beam expansion)."""
        return Encoded(self.features.index_select(0, index), self.projected.index_select(0, index))


@dataclass
class StepProducts:
    """The products a step applies to the previous h and to the context, for one forward."""

    attention: StepWeight  # W_h: h (n, H) -> (n, A) or (n, 1)
    gate: StepWeight | None  # W_β, b_β: h (n, H) -> (n, D)
    hidden: StepWeight  # W_hh: h (n, H) -> (n, 4H)
    context: StepWeight  # the context's share of W_ih: (n, D) -> (n, 4H)


class Attention(nn.Module):
    """Soft attention over the R image regions; returns the context vector and α.

    "linear" (the seed report, equations 1-2): score_i = W·concat(feature_i, h_{t-1}), computed
    as W_f·feature_i + W_h·h_{t-1}, which equals a Linear on the concatenation. The W_h·h term
    is the same for every region, so the softmax cancels it: α depends on the image alone and
    W_h receives no gradient. This is the seed's design, kept faithful; `attention_dim` is unused.

    "additive" (Show-Attend-Tell): score_i = v·act(W_f·feature_i + W_h·h_{t-1}), act = tanh
    (Bahdanau, Xu et al.) or relu (sgrvinod's tutorial), `model.attention_activation`.

    W_f·features is computed once per batch (`project`, called by `CaptionDecoder.encode`);
    only W_h·h is computed at each step.
    """

    def __init__(
        self,
        kind: str,
        feature_dim: int,
        hidden_dim: int,
        attention_dim: int,
        activation: str = "tanh",
    ):
        super().__init__()
        if kind not in ("linear", "additive"):
            raise ValueError(f"unknown attention {kind!r}; expected 'linear' or 'additive'")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown attention activation {activation!r}")
        width = 1 if kind == "linear" else attention_dim
        self.kind = kind
        self.activation = ACTIVATIONS[activation]
        self.feature_proj = nn.Linear(feature_dim, width)  # W_f (holds the one bias)
        self.hidden_proj = nn.Linear(hidden_dim, width, bias=False)  # W_h
        self.score = nn.Linear(attention_dim, 1) if kind == "additive" else None  # v

    def project(self, features: Tensor) -> Tensor:
        """(B, R, D) -> (B, R, A) or (B, R, 1): the per-batch image side W_f·features."""
        return self.feature_proj(features)

    def forward(self, encoded: Encoded, h: Tensor) -> tuple[Tensor, Tensor]:
        """h (B, H) -> context (B, D), alpha (B, R) float32 summing to 1 over the regions."""
        return self.attend(encoded, self.hidden_proj(h))

    def attend(self, encoded: Encoded, hidden: Tensor) -> tuple[Tensor, Tensor]:
        """`forward` given W_h·h (B, A|1) -> context (B, D), alpha (B, R)."""
        hidden = hidden.unsqueeze(1)  # (B, 1, A|1)
        if self.score is None:
            scores = (encoded.projected + hidden).squeeze(2)  # (B, R)
        else:
            scores = self.score(self.activation(encoded.projected + hidden)).squeeze(2)  # (B, R)
        alpha = torch.softmax(scores.float(), dim=1)  # (B, R)
        context = torch.bmm(alpha.unsqueeze(1), encoded.features).squeeze(1)  # (B, D)
        return context, alpha


class CaptionDecoder(nn.Module):
    """Attention LSTM decoder: embedding + context -> LSTMCell -> dropout -> vocabulary logits."""

    def __init__(
        self,
        vocab_size: int,
        config: ModelConfig,
        feature_dim: int = CHANNELS,
        pad_index: int = 0,
        pretrained_embeddings: Tensor | None = None,
    ):
        """`pretrained_embeddings` (V, E) rows aligned to the vocabulary (see `load_word_vectors`);
        `config.freeze_embeddings` freezes the embedding whatever its initialisation (so a model
        rebuilt from a checkpoint without the vectors file stays frozen)."""
        super().__init__()
        embed, hidden = config.embed_dim, config.hidden_dim
        self.vocab_size = vocab_size
        self.pad_index = pad_index
        self.embedding = nn.Embedding(vocab_size, embed, padding_idx=pad_index)
        self.init_tanh = config.init_state_tanh
        self.embedding.weight.requires_grad_(not config.freeze_embeddings)
        # LayerNorm over each region's C channels: random-init grids reach |x| ~ 300 and
        # ImageNet ones vary by image; normalised grids keep tanh/sigmoid out of saturation.
        # No affine part: every consumer of the grid is linear (W_f, init_h/c, the LSTM input)
        # and absorbs a scale and shift, and without parameters the (B, R, C) grid needs
        # no gradient (that gradient was ~40% of a CPU epoch).
        self.feature_norm = (
            nn.LayerNorm(feature_dim, elementwise_affine=False) if config.feature_norm else None
        )
        self.attention = Attention(
            config.attention, feature_dim, hidden, config.attention_dim, config.attention_activation
        )
        self.gate = nn.Linear(hidden, feature_dim) if config.gate else None  # W_β
        self.init_h = nn.Linear(feature_dim, hidden)
        self.init_c = nn.Linear(feature_dim, hidden)
        self.lstm = nn.LSTMCell(embed + feature_dim, hidden)
        self.dropout = nn.Dropout(config.dropout)
        self.output = nn.Linear(hidden, vocab_size)
        self._init_weights(config.init, pretrained_embeddings)

    def _init_weights(self, init: str, pretrained: Tensor | None) -> None:
        """model.init "uniform": embedding and output weights U(-0.1, 0.1), output bias 0 (the
        tutorial's); "xavier": Xavier-uniform embedding, PyTorch's default output layer."""
        weight = self.embedding.weight  # (V, E)
        with torch.no_grad():
            if init == "uniform":
                nn.init.uniform_(self.output.weight, -UNIFORM_INIT, UNIFORM_INIT)
                nn.init.zeros_(self.output.bias)
            if pretrained is not None:
                copy_pretrained(weight, pretrained)
            elif init == "uniform":
                nn.init.uniform_(weight, -UNIFORM_INIT, UNIFORM_INIT)
            else:
                nn.init.xavier_uniform_(weight)
            weight[self.pad_index].zero_()

    def encode(self, features: Tensor) -> Encoded:
        """(B, R, D) float16/32 -> Encoded: the grids (float32, or the autocast dtype under
        autocast) and the attention's image side."""
        features = features.float()  # (B, R, D)
        if self.feature_norm is not None:
            features = self.feature_norm(features)  # (B, R, D)
        return Encoded(in_autocast_dtype(features), self.attention.project(features))

    def init_state(self, encoded: Encoded) -> State:
        """h0, c0 = Linear(mean of the regions), each (B, H), through tanh if
        `model.init_state_tanh` (Xu et al. use an MLP; the tutorial no tanh)."""
        mean = encoded.features.mean(dim=1)  # (B, D)
        h, c = self.init_h(mean), self.init_c(mean)  # (B, H) each
        return (torch.tanh(h), torch.tanh(c)) if self.init_tanh else (h, c)

    def step(self, words: Tensor, state: State, encoded: Encoded) -> tuple[Tensor, Tensor, State]:
        """One step: words (B,) long, state 2 x (B, H) -> logits (B, V), alpha (B, R), new state."""
        products = self._products()
        context, alpha = self._attend(encoded, state[0], products)  # (B, D), (B, R)
        word_gates = self._word_gates(self.embedding(words))  # (B, 4H)
        h, c = self._cell(word_gates, context, state, products)  # (B, H) each
        return self.output(self.dropout(h)), alpha, (h, c)

    def _products(self, deferred: bool = False) -> StepProducts:
        """One forward pass's step products. `deferred` (the training passes, eager): each
        weight's gradient formed once over all the steps (`StepWeight`). The context's share of
        W_ih is sliced here, once: every slice of a parameter costs a full-size zero-filled
        gradient in backward."""
        gate = self.gate
        context_weight = self.lstm.weight_ih[:, self.embedding.embedding_dim :]  # (4H, D)
        return StepProducts(
            attention=StepWeight(self.attention.hidden_proj.weight, deferred=deferred),
            gate=None if gate is None else StepWeight(gate.weight, gate.bias, deferred),
            hidden=StepWeight(self.lstm.weight_hh, deferred=deferred),
            context=StepWeight(context_weight, deferred=deferred),
        )

    def _attend(self, encoded: Encoded, h: Tensor, products: StepProducts) -> tuple[Tensor, Tensor]:
        """h (B, H) -> gated context (B, D), alpha (B, R)."""
        context, alpha = self.attention.attend(encoded, products.attention(h))  # (B, D), (B, R)
        if products.gate is not None:
            context = torch.sigmoid(products.gate(h)) * context  # β (B, D) scales the context
        return context, alpha

    def _word_gates(self, embedded: Tensor) -> Tensor:
        """The embedding's share of the LSTM gates plus both biases: (..., E) -> (..., 4H).

        The LSTM input is [embedding; context], so W_ih splits into an embedding part and a
        context part; teacher forcing computes this part for every step in one matmul.
        """
        weight = self.lstm.weight_ih[:, : self.embedding.embedding_dim]  # (4H, E)
        return F.linear(embedded, weight, self.lstm.bias_ih + self.lstm.bias_hh)

    def _cell(
        self, word_gates: Tensor, context: Tensor, state: State, products: StepProducts
    ) -> State:
        """nn.LSTMCell's update (gate order i, f, g, o) with the word share precomputed."""
        h, c = state
        gates = word_gates + products.context(context) + products.hidden(h)  # (B, 4H)
        i, f, g, o = gates.chunk(4, dim=1)  # (B, H) each
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c

    def forward(
        self, features: Tensor, image_index: Tensor, captions: Tensor, lengths: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Teacher forcing as `CaptionDecoderProtocol.forward` states (packed logits (N, V),
        alphas (B, T-1, R)) with the fewest FLOPs: rows sorted by length, step t runs the
        LSTM on the rows still active only (one host read of the lengths); the embedding's
        share of the gates and the output projection run once, outside the loop, and so does
        the gradient of each weight the steps apply (`StepWeight`). The CPU's
        training step (`pipeline.device.static_step`); `teacher_forced` is the GPU's.
        """
        batch, width = captions.shape
        check_lengths(lengths, width)
        steps_per_row = lengths.to(captions.device) - 1  # (B,) predictions per caption
        steps_sorted, order = steps_per_row.sort(descending=True, stable=True)  # (B,), (B,)
        active = _active_counts(steps_sorted, width - 1)  # rows alive at each step
        encoded = self.encode(features).index_select(image_index.to(order.device)[order])
        inputs = captions.index_select(0, order)[:, :-1]  # (B, T-1) sorted
        word_gates = self._word_gates(self.embedding(inputs)).unbind(1)  # T-1 x (B, 4H)
        h, c = self.init_state(encoded)  # (B, H) each
        products = self._products(deferred=True)
        hiddens, alphas = [], []
        for t, n in enumerate(active):
            head = Encoded(encoded.features[:n], encoded.projected[:n])  # the n longest rows
            context, alpha = self._attend(head, h[:n], products)  # (n, D), (n, R)
            h, c = self._cell(word_gates[t][:n], context, (h[:n], c[:n]), products)
            hiddens.append(h)
            alphas.append(alpha)
        mask = target_mask(lengths.to(captions.device), width - 1)  # (B, T-1) caller order
        regions = encoded.features.shape[1]
        alphas_out = features.new_zeros(batch, max(width - 1, 0), regions, dtype=torch.float32)
        if not hiddens:  # no caption has a step to predict
            return features.new_zeros(0, self.vocab_size, dtype=torch.float32), alphas_out
        index = _row_major_index(active, order.argsort(), mask)  # (N,)
        packed = torch.cat(hiddens).index_select(0, index)  # (N, H) caller row-major
        alphas_out[mask] = torch.cat(alphas).float().index_select(0, index)  # (N, R)
        return self.output(self.dropout(packed)), alphas_out  # (N, V), (B, T-1, R)

    def teacher_forced(
        self, features: Tensor, image_index: Tensor, captions: Tensor, alphas: bool = True
    ) -> tuple[Tensor, Tensor]:
        """Teacher forcing with static shapes: every row runs all T-1 steps (a padded step
        too, masked by the loss: `dense_caption_loss`), so no sort, no shrinking batch, no host
        sync; only the recurrence runs step by step. The embedding's share of the gates and
        the output projection run once, outside the loop, and, when eager, so does the
        gradient of each weight the steps apply (`StepWeight`).

        features (n_img, R, D); image_index (B,); captions (B, T) -> logits (B, T-1, V),
        alphas (B, T-1, R) at every step (computed whatever `alphas` asks: the context needs
        them).
        """
        encoded = self.encode(features).index_select(image_index)  # (B, R, *)
        embedded = self.embedding(captions[:, :-1])  # (B, T-1, E)
        word_gates = self._word_gates(embedded).unbind(1)  # T-1 x (B, 4H)
        h, c = self.init_state(encoded)  # (B, H) each
        products = self._products(deferred=not torch.compiler.is_compiling())
        hiddens, weights = [], []
        for gates in word_gates:
            context, alpha = self._attend(encoded, h, products)  # (B, D), (B, R)
            h, c = self._cell(gates, context, (h, c), products)  # (B, H) each
            hiddens.append(h)
            weights.append(alpha)
        hidden = torch.stack(hiddens, dim=1)  # (B, T-1, H)
        return self.output(self.dropout(hidden)), torch.stack(weights, dim=1)

    def parameter_counts(self) -> tuple[int, int]:
        """(total, trainable) number of parameters."""
        total = sum(p.numel() for p in self.parameters())
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return total, trainable


def _active_counts(steps_sorted: Tensor, width: int) -> list[int]:
    """Descending steps per row (B,) -> number of active rows at each step t (one host read)."""
    t = torch.arange(width, device=steps_sorted.device).unsqueeze(1)  # (T-1, 1)
    counts = (steps_sorted.unsqueeze(0) > t).sum(dim=1).tolist()  # (T-1,)
    return [n for n in counts if n > 0]


def _row_major_index(active: list[int], rank: Tensor, mask: Tensor) -> Tensor:
    """Positions in the step-major packed outputs of each real (row, step), row-major.

    Step t's outputs hold the `active[t]` longest rows, sorted; `rank` (B,) is each caller
    row's place in that sort and `mask` (B, T-1) marks its real steps.
    """
    starts = [0]
    for n in active[:-1]:
        starts.append(starts[-1] + n)
    starts += [0] * (mask.shape[1] - len(starts))  # steps no row reaches (masked out)
    offsets = torch.tensor(starts, device=mask.device)  # (T-1,)
    return (offsets.unsqueeze(0) + rank.to(mask.device).unsqueeze(1))[mask]  # (N,)
