"""Show-Attend-Tell style caption decoder over cached ResNet50 grids (pure torch).

The decoder reads a batch of (B, 49, 2048) feature grids, attends over the 49 regions at every
step and predicts the next word with an LSTM cell. `encode` computes the image side of the
attention once per batch; `step` is one decoding step and is shared by teacher-forced training
(`forward`) and by greedy / beam decoding (`pipeline.infer.decode`). Device-agnostic (CPU, CUDA)
and safe under `torch.autocast`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.config import ModelConfig
from pipeline.errors import UserError

State = tuple[Tensor, Tensor]  # h, c: each (B, H)


@dataclass
class Encoded:
    """A batch of images ready for decoding: the grids and the attention's image side."""

    features: Tensor  # (B, R, D) float32, R = 49 regions
    projected: Tensor  # (B, R, A) additive attention, (B, R, 1) linear attention: W_f·features

    def index_select(self, index: Tensor) -> Encoded:
        """Rows `index` (B',) long, in that order; repeats allowed (beam expansion)."""
        return Encoded(self.features.index_select(0, index), self.projected.index_select(0, index))

    def head(self, n: int) -> Encoded:
        """The first `n` rows, as views (no copy): the active rows of a length-sorted batch."""
        return Encoded(self.features[:n], self.projected[:n])


class Attention(nn.Module):
    """Soft attention over the R image regions; returns the context vector and α.

    "linear" (the seed report, equations 1-2): score_i = W·concat(feature_i, h_{t-1}), computed
    as W_f·feature_i + W_h·h_{t-1}, which equals a Linear on the concatenation. The W_h·h term
    is the same for every region, so the softmax cancels it: α depends on the image alone and
    W_h receives no gradient. This is the seed's design, kept faithful; `attention_dim` is unused.

    "additive" (Show-Attend-Tell): score_i = v·tanh(W_f·feature_i + W_h·h_{t-1}).

    W_f·features is computed once per batch (`project`, called by `CaptionDecoder.encode`);
    only W_h·h is computed at each step.
    """

    def __init__(self, kind: str, feature_dim: int, hidden_dim: int, attention_dim: int):
        super().__init__()
        if kind not in ("linear", "additive"):
            raise ValueError(f"unknown attention {kind!r}; expected 'linear' or 'additive'")
        width = 1 if kind == "linear" else attention_dim
        self.kind = kind
        self.feature_proj = nn.Linear(feature_dim, width)  # W_f (holds the one bias)
        self.hidden_proj = nn.Linear(hidden_dim, width, bias=False)  # W_h
        self.score = nn.Linear(attention_dim, 1) if kind == "additive" else None  # v

    def project(self, features: Tensor) -> Tensor:
        """(B, R, D) -> (B, R, A) or (B, R, 1): the per-batch image side W_f·features."""
        return self.feature_proj(features)

    def forward(self, encoded: Encoded, h: Tensor) -> tuple[Tensor, Tensor]:
        """h (B, H) -> context (B, D), alpha (B, R) float32 summing to 1 over the regions."""
        hidden = self.hidden_proj(h).unsqueeze(1)  # (B, 1, A|1)
        if self.score is None:
            scores = (encoded.projected + hidden).squeeze(2)  # (B, R)
        else:
            scores = self.score(torch.tanh(encoded.projected + hidden)).squeeze(2)  # (B, R)
        alpha = torch.softmax(scores.float(), dim=1)  # (B, R)
        context = torch.bmm(alpha.unsqueeze(1), encoded.features).squeeze(1)  # (B, D)
        return context, alpha


class CaptionDecoder(nn.Module):
    """Attention LSTM decoder: embedding + context -> LSTMCell -> dropout -> vocabulary logits."""

    def __init__(self, vocab_size: int, config: ModelConfig, feature_dim: int = 2048,
                 pad_index: int = 0, pretrained_embeddings: Tensor | None = None):
        """`pretrained_embeddings` (V, E) rows aligned to the vocabulary (see `load_word_vectors`);
        `config.freeze_embeddings` freezes the embedding whatever its initialisation (so a model
        rebuilt from a checkpoint without the vectors file stays frozen)."""
        super().__init__()
        embed, hidden = config.embed_dim, config.hidden_dim
        self.vocab_size = vocab_size
        self.pad_index = pad_index
        self.embedding = nn.Embedding(vocab_size, embed, padding_idx=pad_index)
        self._init_embedding(pretrained_embeddings)
        self.embedding.weight.requires_grad_(not config.freeze_embeddings)
        # LayerNorm over each region's 2048 channels: random-init grids reach |x| ~ 300 and
        # ImageNet ones vary by image; normalised grids keep tanh/sigmoid out of saturation.
        # No affine part: every consumer of the grid is linear (W_f, init_h/c, the LSTM input)
        # and absorbs a scale and shift, and without parameters the (B, 49, 2048) grid needs
        # no gradient (that gradient was ~40% of a CPU epoch).
        self.feature_norm = (nn.LayerNorm(feature_dim, elementwise_affine=False)
                             if config.feature_norm else None)
        self.attention = Attention(config.attention, feature_dim, hidden, config.attention_dim)
        self.gate = nn.Linear(hidden, feature_dim) if config.gate else None  # W_β
        self.init_h = nn.Linear(feature_dim, hidden)
        self.init_c = nn.Linear(feature_dim, hidden)
        self.lstm = nn.LSTMCell(embed + feature_dim, hidden)
        self.dropout = nn.Dropout(config.dropout)
        self.output = nn.Linear(hidden, vocab_size)

    def _init_embedding(self, pretrained: Tensor | None) -> None:
        weight = self.embedding.weight  # (V, E)
        with torch.no_grad():
            if pretrained is None:
                nn.init.xavier_uniform_(weight)
            elif tuple(pretrained.shape) != tuple(weight.shape):
                raise ValueError(f"pretrained embeddings have shape {tuple(pretrained.shape)}, "
                                 f"expected {tuple(weight.shape)} (vocab_size, embed_dim)")
            else:
                weight.copy_(pretrained)
            weight[self.pad_index].zero_()

    def encode(self, features: Tensor) -> Encoded:
        """(B, 49, D) float16/32 -> Encoded: float32 grids and the attention's image side."""
        features = features.float()  # (B, R, D)
        if self.feature_norm is not None:
            features = self.feature_norm(features)  # (B, R, D)
        return Encoded(features, self.attention.project(features))  # projected (B, R, A|1)

    def init_state(self, encoded: Encoded) -> State:
        """h0, c0 = tanh(Linear(mean of the regions)), each (B, H)."""
        mean = encoded.features.mean(dim=1)  # (B, D)
        return torch.tanh(self.init_h(mean)), torch.tanh(self.init_c(mean))

    def step(self, words: Tensor, state: State, encoded: Encoded) -> tuple[Tensor, Tensor, State]:
        """One step: words (B,) long, state 2 x (B, H) -> logits (B, V), alpha (B, R), new state."""
        h, c = state
        context, alpha = self.attention(encoded, h)  # (B, D), (B, R)
        if self.gate is not None:
            context = torch.sigmoid(self.gate(h)) * context  # β (B, D) scales the context
        inputs = torch.cat([self.embedding(words), context], dim=1)  # (B, E + D)
        h, c = self.lstm(inputs, (h, c))  # (B, H) each
        logits = self.output(self.dropout(h))  # (B, V)
        return logits, alpha, (h, c)

    def reorder(self, encoded: Encoded, index: Tensor) -> Encoded:
        """Select / repeat rows of `encoded` (index (B',) long); used by beam search."""
        return encoded.index_select(index)

    def forward(self, features: Tensor, image_index: Tensor, captions: Tensor,
                lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Teacher forcing with per-step active-batch shrinking.

        features (n_img, 49, D); image_index (B,) long row of `features` for each caption;
        captions (B, T) long `<sos> w1 .. wn <eos> <pad>..`; lengths (B,) = n + 2.
        Returns logits (B, T-1, V) predicting captions[:, 1:] and alphas (B, T-1, 49), zero at
        padded steps, in the caller's row order. Rows are sorted by length internally and step
        t runs the LSTM on the rows still active only, so padding costs no compute.
        """
        batch, width = captions.shape
        steps_per_row = lengths.to(captions.device) - 1  # (B,) predictions per caption
        if batch and int(steps_per_row.max()) > width - 1:
            raise ValueError(f"lengths exceed the caption width {width}")
        steps_sorted, order = steps_per_row.sort(descending=True, stable=True)  # (B,), (B,)
        active = _active_counts(steps_sorted, width - 1)  # rows alive at each step
        encoded = self.encode(features).index_select(image_index.to(order.device)[order])  # (B, R, D)
        inputs = captions.index_select(0, order)  # (B, T) sorted
        h, c = self.init_state(encoded)  # (B, H) each
        logits_out = alphas_out = None
        for t, n in enumerate(active):
            logits, alpha, (h, c) = self.step(inputs[:n, t], (h[:n], c[:n]), encoded.head(n))
            if logits_out is None:
                logits_out = logits.new_zeros(batch, width - 1, self.vocab_size)  # (B, T-1, V)
                alphas_out = alpha.new_zeros(batch, width - 1, alpha.shape[1])  # (B, T-1, R)
            logits_out[:n, t] = logits  # (n, V)
            alphas_out[:n, t] = alpha  # (n, R)
        if logits_out is None:  # no caption has a step to predict
            logits_out = features.new_zeros(batch, max(width - 1, 0), self.vocab_size).float()
            alphas_out = features.new_zeros(batch, max(width - 1, 0), features.shape[1]).float()
        inverse = order.argsort()  # (B,) back to the caller's order
        return logits_out.index_select(0, inverse), alphas_out.index_select(0, inverse)

    def parameter_counts(self) -> tuple[int, int]:
        """(total, trainable) number of parameters."""
        total = sum(p.numel() for p in self.parameters())
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return total, trainable


def _active_counts(steps_sorted: Tensor, width: int) -> list[int]:
    """Descending steps per row (B,) -> number of active rows at each step t (one host sync)."""
    t = torch.arange(width, device=steps_sorted.device).unsqueeze(1)  # (T-1, 1)
    counts = (steps_sorted.unsqueeze(0) > t).sum(dim=1).tolist()  # (T-1,)
    return [n for n in counts if n > 0]


def caption_loss(logits: Tensor, targets: Tensor, alphas: Tensor, lengths: Tensor,
                 pad_index: int = 0, doubly_stochastic: float = 0.0,
                 label_smoothing: float = 0.0) -> tuple[Tensor, Tensor]:
    """Cross-entropy over real tokens plus the doubly stochastic attention penalty.

    logits (B, T-1, V); targets (B, T-1) = captions[:, 1:]; alphas (B, T-1, R); lengths (B,).
    total = CE (mean over non-pad targets, optional label smoothing)
            + λ · mean_over_batch Σ_i (1 − Σ_t α_ti)², the sum over t on active steps only.
    Returns (total, cross_entropy).
    """
    vocab = logits.shape[-1]
    cross_entropy = F.cross_entropy(logits.reshape(-1, vocab).float(), targets.reshape(-1),
                                    ignore_index=pad_index, label_smoothing=label_smoothing)
    if doubly_stochastic == 0:
        return cross_entropy, cross_entropy
    steps = torch.arange(alphas.shape[1], device=alphas.device)  # (T-1,)
    active = steps.unsqueeze(0) < (lengths.to(alphas.device) - 1).unsqueeze(1)  # (B, T-1)
    coverage = (alphas.float() * active.unsqueeze(2)).sum(dim=1)  # (B, R) Σ_t α_ti
    penalty = ((1.0 - coverage) ** 2).sum(dim=1).mean()  # scalar
    return cross_entropy + doubly_stochastic * penalty, cross_entropy


def load_word_vectors(path: str | Path, vocab_itos: list[str], dim: int) -> tuple[Tensor, float]:
    """Read a word2vec / GloVe text file into a (V, dim) matrix aligned to `vocab_itos`.

    Lines are `word v1 .. v_dim` (a word may itself contain spaces); an optional word2vec header
    line `count dim` is accepted. Vocabulary words absent from the file keep Xavier-uniform rows.
    Returns (matrix, coverage) with coverage = found words / vocabulary size (special tokens
    included). A missing or malformed file, or vectors of another dimension, end in UserError.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"word vectors file not found: {path}")
    rows = {word: i for i, word in enumerate(vocab_itos)}
    matrix = nn.init.xavier_uniform_(torch.empty(len(vocab_itos), dim))  # (V, dim)
    found = torch.zeros(len(vocab_itos), dtype=torch.bool)  # (V,)
    seen_vectors = False
    try:
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                line = line.rstrip()
                if not line or (number == 1 and _is_header(line, path, dim)):
                    continue
                if not seen_vectors:
                    _check_dimension(len(line.split(" ")) - 1, path, dim)
                    seen_vectors = True
                word, values = _split_vector_line(line, path, number, dim)
                row = rows.get(word)
                if row is not None and not found[row]:
                    matrix[row] = _parse_values(values, path, number)
                    found[row] = True
    except UnicodeDecodeError:
        raise UserError(f"word vectors file {path} is not UTF-8 text") from None
    if not seen_vectors:
        raise UserError(f"word vectors file {path} holds no vectors")
    return matrix, float(found.float().mean()) if len(vocab_itos) else 0.0


def _is_header(line: str, path: Path, dim: int) -> bool:
    """True for a word2vec `count dim` header line (checking its dimension)."""
    parts = line.split()
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        return False
    _check_dimension(int(parts[1]), path, dim)
    return True


def _check_dimension(found: int, path: Path, dim: int) -> None:
    if found != dim:
        raise UserError(f"word vectors in {path} have dimension {found}, "
                        f"but model.embed_dim is {dim}")


def _split_vector_line(line: str, path: Path, number: int, dim: int) -> tuple[str, list[str]]:
    parts = line.rsplit(" ", dim)
    if len(parts) != dim + 1 or not parts[0]:
        raise UserError(f"{path}:{number}: expected a word and {dim} numbers")
    return parts[0], parts[1:]


def _parse_values(values: list[str], path: Path, number: int) -> Tensor:
    try:
        return torch.tensor([float(v) for v in values])  # (dim,)
    except ValueError:
        raise UserError(f"{path}:{number}: word vector has a value that is not a number") from None
