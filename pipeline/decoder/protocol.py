"""What every caption decoder offers: the interface greedy, beam search and sampling use.

A decoder reads a batch of cached grids, encodes it once, then predicts one word per step.
Decoding code (`pipeline.decoder.decode`) is written once against this protocol; a decoder
kind (LSTM, Transformer) plugs in by implementing it. Shapes: B rows (images, or images x
beams), R regions of D channels (the feature file's: ResNet50's 49 x 2048), V = vocabulary
size.

The recurrent state is a tuple of tensors whose first dimension is the batch: decoding
selects, repeats and reorders rows of it with `index_select(0, rows)` alone. An LSTM keeps
(h, c); a Transformer keeps its per-layer key/value cache there, so a step costs O(t).
"""

from __future__ import annotations

from typing import Protocol, Self, runtime_checkable

from torch import Tensor

State = tuple[Tensor, ...]  # each (B, ...): batch first


class EncodedBatch(Protocol):
    """A batch of images ready for decoding (grids plus whatever the decoder precomputes)."""

    def index_select(self, index: Tensor) -> Self:
        """Rows `index` (B',) long, in that order; repeats allowed (beam expansion)."""
        ...


@runtime_checkable
class CaptionDecoderProtocol(Protocol):
    """The decoding interface of every decoder kind."""

    vocab_size: int

    def encode(self, features: Tensor) -> EncodedBatch:
        """features (B, R, D) float16/32 -> the encoded batch (computed once per batch)."""
        ...

    def init_state(self, encoded: EncodedBatch) -> State:
        """The state before the first word (`<sos>` is fed at step 0)."""
        ...

    def step(
        self, words: Tensor, state: State, encoded: EncodedBatch
    ) -> tuple[Tensor, Tensor, State]:
        """words (B,) long -> logits (B, V), alpha (B, R) attention over regions, next state."""
        ...

    def forward(
        self, features: Tensor, image_index: Tensor, captions: Tensor, lengths: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Teacher forcing.

        features (n_img, R, D); image_index (B,) long row of `features` for each caption;
        captions (B, T) long `<sos> w1 .. wn <eos> <pad>..`; lengths (B,) = n + 2.
        Returns packed logits (N, V) for the N real targets
        `captions[:, 1:][target_mask(lengths, T - 1)]` (row-major, the caller's row order) and
        alphas (B, T-1, R), zero at padded steps.
        """
        ...

    def teacher_forced(
        self, features: Tensor, image_index: Tensor, captions: Tensor, alphas: bool = True
    ) -> tuple[Tensor, Tensor | None]:
        """Teacher forcing with static shapes (the training step): as `forward`, but the
        outputs of every step, padded ones included: logits (B, T-1, V), alphas (B, T-1, R)
        (None is allowed when `alphas` is False). `dense_caption_loss` masks the padding."""
        ...
