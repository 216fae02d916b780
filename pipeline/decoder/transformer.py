"""Transformer caption decoder over the grid of cached backbone features (pure torch).

Words attend to earlier words (masked self-attention) and to the R image regions
(cross-attention; ResNet50: a 7x7 grid, 49 regions; the feature file gives the grid and its
channels) in `model.layers` pre-norm decoder layers of width d = `model.embed_dim`:

    x = word embedding + learned position embedding
    per layer: x += SelfAttn(LN(x)); x += CrossAttn(LN(x), regions); x += FF(LN(x))
    logits = LN(x) · E^T + b (tied to the word embedding E) or a Linear (untied)

The regions are LayerNorm(C) (`model.feature_norm`, as the LSTM) -> Linear(C, d)
(+ a learned 2-D position code, row + column over the file's grid x grid cells, and one
vector for a kept class token, if `model.grid_positions`) -> LayerNorm(d).
`encode` computes every layer's cross-attention keys and values once per batch. The decoding
state is the self-attention key/value cache, one (keys, values) pair per layer, each
(B, heads, t, d / heads): a step attends over the cache, so it costs O(t), and greedy and beam
search (`pipeline.decoder.decode`) reorder it with `index_select(0, rows)` like an LSTM's (h, c).
The attention map of a word is the last layer's cross-attention, averaged over heads.
Attention runs in `F.scaled_dot_product_attention` (fused kernels that accumulate in float32),
except that last cross-attention where its weights are read (decoding, attention maps, the
coverage penalty): `attend` computes them with the softmax in float32. Either way the decoder is
safe under fp16/bf16 autocast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.config import ModelConfig
from pipeline.contract import CHANNELS, GRID
from pipeline.decoder.embeddings import copy_pretrained
from pipeline.decoder.loss import check_lengths, pack_steps

State = tuple[Tensor, ...]  # keys_0, values_0, keys_1, ..: each (B, heads, t, d / heads)


@dataclass
class TransformerEncoded:
    """A batch of images ready for decoding: every layer's cross-attention keys and values."""

    keys: Tensor  # (B, L, heads, R, d / heads)
    values: Tensor  # (B, L, heads, R, d / heads)

    def index_select(self, index: Tensor) -> TransformerEncoded:
        """Rows `index` (B',) long, in that order; repeats allowed (beam expansion)."""
        return TransformerEncoded(
            self.keys.index_select(0, index), self.values.index_select(0, index)
        )


def attend(queries: Tensor, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
    """Scaled dot-product attention with its weights, softmax in float32.

    queries (B, H, Tq, dh), keys and values (B, H, Tk, dh) -> context (B, H, Tq, dh),
    weights (B, H, Tq, Tk) float32.
    """
    scores = torch.matmul(queries, keys.transpose(-1, -2)).float() / math.sqrt(queries.shape[-1])
    weights = torch.softmax(scores, dim=-1)  # (B, H, Tq, Tk)
    return torch.matmul(weights.to(values.dtype), values), weights


class DecoderLayer(nn.Module):
    """One pre-norm layer: masked self-attention, cross-attention over the regions, feed-forward."""

    def __init__(self, width: int, heads: int, ff_dim: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.self_norm = nn.LayerNorm(width)
        self.self_qkv = nn.Linear(width, 3 * width)
        self.self_out = nn.Linear(width, width)
        self.cross_norm = nn.LayerNorm(width)
        self.cross_query = nn.Linear(width, width)
        self.cross_kv = nn.Linear(width, 2 * width)
        self.cross_out = nn.Linear(width, width)
        self.ff_norm = nn.LayerNorm(width)
        self.ff = nn.Sequential(
            nn.Linear(width, ff_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(ff_dim, width)
        )
        self.dropout = nn.Dropout(dropout)

    def _split(self, x: Tensor) -> Tensor:
        """(B, T, d) -> (B, H, T, d / H)."""
        batch, steps, width = x.shape
        return x.reshape(batch, steps, self.heads, width // self.heads).transpose(1, 2)

    def _merge(self, x: Tensor) -> Tensor:
        """(B, H, T, d / H) -> (B, T, d)."""
        batch, heads, steps, head_dim = x.shape
        return x.transpose(1, 2).reshape(batch, steps, heads * head_dim)

    def memory(self, regions: Tensor) -> tuple[Tensor, Tensor]:
        """regions (B, R, d) -> cross-attention keys, values: each (B, H, R, d / H)."""
        keys, values = self.cross_kv(regions).chunk(2, dim=-1)  # (B, R, d) each
        return self._split(keys), self._split(values)

    def forward(
        self,
        x: Tensor,
        past_keys: Tensor,
        past_values: Tensor,
        memory_keys: Tensor,
        memory_values: Tensor,
        need_weights: bool = False,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """x (B, T, d) at positions t0..t0+T-1 after a cache of t0 positions (B, H, t0, d / H)
        -> x (B, T, d), the cache extended to t0+T positions (keys, values), and (when
        `need_weights`) the cross-attention weights averaged over heads (B, T, R) float32.

        Attention runs in `F.scaled_dot_product_attention` (fused kernels); only weights that
        are read are computed explicitly (`attend`).
        """
        queries, keys, values = (
            self._split(part) for part in self.self_qkv(self.self_norm(x)).chunk(3, dim=-1)
        )
        start = past_keys.shape[2]
        keys = torch.cat([past_keys.to(keys.dtype), keys], dim=2)  # (B, H, t0+T, dh)
        values = torch.cat([past_values.to(values.dtype), values], dim=2)  # (B, H, t0+T, dh)
        context = _self_attention(queries, keys, values, start)  # (B, H, T, dh)
        x = x + self.dropout(self.self_out(self._merge(context)))
        queries = self._split(self.cross_query(self.cross_norm(x)))  # (B, H, T, dh)
        weights = None
        if need_weights:
            context, weights = attend(queries, memory_keys, memory_values)  # (B, H, T, R)
        else:
            context = F.scaled_dot_product_attention(
                queries, memory_keys.to(queries.dtype), memory_values.to(queries.dtype)
            )  # (B, H, T, dh)
        x = x + self.dropout(self.cross_out(self._merge(context)))
        x = x + self.dropout(self.ff(self.ff_norm(x)))
        return x, keys, values, None if weights is None else weights.mean(dim=1)


def _self_attention(queries: Tensor, keys: Tensor, values: Tensor, start: int) -> Tensor:
    """Causal self-attention of T queries at positions start..start+T-1 over start+T keys
    (B, H, *, dh) -> (B, H, T, dh): query i sees keys 0..its own position."""
    steps, total = queries.shape[2], keys.shape[2]
    if steps == 1:  # one query sees the whole cache
        return F.scaled_dot_product_attention(queries, keys, values)
    if start == 0:
        return F.scaled_dot_product_attention(queries, keys, values, is_causal=True)
    mask = torch.ones(steps, total, dtype=torch.bool, device=queries.device).tril(diagonal=start)
    return F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask)


class TransformerDecoder(nn.Module):
    """Pre-norm Transformer decoder over the regions with a key/value cache for decoding."""

    def __init__(
        self,
        vocab_size: int,
        config: ModelConfig,
        feature_dim: int = CHANNELS,
        pad_index: int = 0,
        pretrained_embeddings: Tensor | None = None,
        grid: int = GRID,
        class_token: bool = False,
    ):
        """`pretrained_embeddings` (V, embed_dim) rows aligned to the vocabulary; with
        `config.tied_output` they are the output projection too (frozen if the embedding is).
        `feature_dim` (C), `grid` and `class_token` are the feature file's shape: regions are
        grid * grid cells, row-major, then the class token if kept."""
        super().__init__()
        width = config.embed_dim
        self.vocab_size = vocab_size
        self.heads = config.heads
        self.embedding = nn.Embedding(vocab_size, width)
        self.positions = nn.Parameter(torch.randn(config.max_positions, width) * width**-0.5)
        self._init_embedding(pretrained_embeddings, pad_index)
        self.embedding.weight.requires_grad_(not config.freeze_embeddings)
        # LayerNorm over each region's C channels, no affine part (see lstm.CaptionDecoder).
        self.feature_norm = (
            nn.LayerNorm(feature_dim, elementwise_affine=False) if config.feature_norm else None
        )
        self.region_proj = nn.Linear(feature_dim, width)
        self.grid_rows, self.grid_cols = (
            (
                nn.Parameter(torch.randn(grid, 1, width) * width**-0.5),
                nn.Parameter(torch.randn(1, grid, width) * width**-0.5),
            )
            if config.grid_positions
            else (None, None)
        )
        self.token_position = (
            nn.Parameter(torch.randn(1, width) * width**-0.5)
            if config.grid_positions and class_token
            else None
        )
        self.region_norm = nn.LayerNorm(width)
        self.layers = nn.ModuleList(
            DecoderLayer(width, config.heads, config.ff_dim, config.dropout)
            for _ in range(config.layers)
        )
        self.final_norm = nn.LayerNorm(width)
        self.dropout = nn.Dropout(config.dropout)
        self.output = None if config.tied_output else nn.Linear(width, vocab_size)
        self.output_bias = nn.Parameter(torch.zeros(vocab_size)) if config.tied_output else None

    def _init_embedding(self, pretrained: Tensor | None, pad_index: int) -> None:
        weight = self.embedding.weight  # (V, d)
        with torch.no_grad():
            if pretrained is not None:
                copy_pretrained(weight, pretrained)
            else:
                nn.init.normal_(weight, std=weight.shape[1] ** -0.5)
            weight[pad_index].zero_()

    def encode(self, features: Tensor) -> TransformerEncoded:
        """(B, R, D) float16/32 -> every layer's cross-attention keys and values."""
        features = features.float()  # (B, R, D)
        if self.feature_norm is not None:
            features = self.feature_norm(features)
        regions = self.region_proj(features)  # (B, R, d)
        if self.grid_rows is not None:
            regions = regions + self.region_positions()
        regions = self.dropout(self.region_norm(regions))  # (B, R, d)
        pairs = [layer.memory(regions) for layer in self.layers]  # L x 2 x (B, H, R, dh)
        return TransformerEncoded(
            torch.stack([k for k, _ in pairs], dim=1), torch.stack([v for _, v in pairs], dim=1)
        )

    def region_positions(self) -> Tensor:
        """(R, d): row + column code of each cell, row-major, then the class token's vector."""
        cells = (self.grid_rows + self.grid_cols).flatten(0, 1)  # (grid * grid, d)
        if self.token_position is None:
            return cells
        return torch.cat([cells, self.token_position])  # (grid * grid + 1, d)

    def init_state(self, encoded: TransformerEncoded) -> State:
        """The empty cache: (keys, values) per layer, each (B, H, 0, d / H)."""
        batch, _, heads, _, head_dim = encoded.keys.shape
        empty = encoded.keys.new_zeros(batch, heads, 0, head_dim)
        return (empty,) * (2 * len(self.layers))

    def step(
        self, words: Tensor, state: State, encoded: TransformerEncoded
    ) -> tuple[Tensor, Tensor, State]:
        """words (B,) long, the cache of t positions -> logits (B, V), alpha (B, R), the cache
        of t + 1 positions. Attends over the cache: O(t), no re-run of the prefix."""
        hidden, alphas, state = self.run_positions(words.unsqueeze(1), state, encoded)  # (B, 1, d)
        return self.logits(hidden[:, 0]), alphas[:, 0], state

    def forward(
        self, features: Tensor, image_index: Tensor, captions: Tensor, lengths: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Teacher forcing as `CaptionDecoderProtocol.forward` states (packed logits (N, V),
        alphas (B, T-1, R)): `teacher_forced`, packed."""
        check_lengths(lengths, captions.shape[1])
        return pack_steps(*self.teacher_forced(features, image_index, captions), lengths)

    def teacher_forced(
        self, features: Tensor, image_index: Tensor, captions: Tensor, alphas: bool = True
    ) -> tuple[Tensor, Tensor | None]:
        """Every step at once under the causal mask: features (n_img, R, D); image_index (B,);
        captions (B, T) -> logits (B, T-1, V) and the last layer's alphas (B, T-1, R) (None
        unless `alphas`: every attention then runs fused). Padding sits after the real tokens,
        so the causal mask keeps it out of every real step; the loss masks the padded steps.
        """
        encoded = self.encode(features).index_select(image_index)  # (B, L, H, R, dh)
        hidden, weights, _ = self.run_positions(
            captions[:, :-1], self.init_state(encoded), encoded, alphas
        )  # (B, T-1, d), (B, T-1, R)
        return self.logits(hidden), weights

    def run_positions(
        self, words: Tensor, state: State, encoded: TransformerEncoded, alphas: bool = True
    ) -> tuple[Tensor, Tensor | None, State]:
        """words (B, T) at positions t0..t0+T-1 after a cache of t0 -> hidden (B, T, d) after the
        final norm, last-layer alphas (B, T, R) float32 (None unless `alphas`), the cache of
        t0+T positions."""
        start, steps = state[0].shape[2], words.shape[1]
        if start + steps > self.positions.shape[0]:
            raise ValueError(
                f"position {start + steps - 1} is beyond model.max_positions "
                f"{self.positions.shape[0]}"
            )
        x = self.dropout(self.embedding(words) + self.positions[start : start + steps])  # (B, T, d)
        new_state, weights = [], None
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x, keys, values, weights = layer(
                x,
                state[2 * i],
                state[2 * i + 1],
                encoded.keys[:, i],
                encoded.values[:, i],
                need_weights=alphas and i == last,
            )
            new_state += [keys, values]
        return self.final_norm(x), weights, tuple(new_state)

    def logits(self, hidden: Tensor) -> Tensor:
        """(..., d) -> (..., V)."""
        if self.output is None:
            return F.linear(hidden, self.embedding.weight, self.output_bias)
        return self.output(hidden)

    def parameter_counts(self) -> tuple[int, int]:
        """(total, trainable) number of parameters (a tied matrix counts once)."""
        total = sum(p.numel() for p in self.parameters())
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return total, trainable


class PrefixRecompute:
    """The reference decoding without a cache: each step re-runs the whole prefix.

    Implements the decoding protocol around a `TransformerDecoder` (state = the words so far,
    (B, t) long); its results must equal the cached `step`'s. For tests and benchmarks/decode.py.
    """

    def __init__(self, model: TransformerDecoder):
        self.model = model
        self.vocab_size = model.vocab_size

    def encode(self, features: Tensor) -> TransformerEncoded:
        """As `TransformerDecoder.encode`."""
        return self.model.encode(features)

    def init_state(self, encoded: TransformerEncoded) -> State:
        """No words yet: ((B, 0) long,)."""
        return (
            torch.zeros(encoded.keys.shape[0], 0, dtype=torch.long, device=encoded.keys.device),
        )

    def step(
        self, words: Tensor, state: State, encoded: TransformerEncoded
    ) -> tuple[Tensor, Tensor, State]:
        """Append words (B,) to the prefix and run all of it: O(t^2) attention per step."""
        prefix = torch.cat([state[0], words.unsqueeze(1)], dim=1)  # (B, t+1)
        hidden, alphas, _ = self.model.run_positions(
            prefix, self.model.init_state(encoded), encoded
        )
        return self.model.logits(hidden[:, -1]), alphas[:, -1], (prefix,)
