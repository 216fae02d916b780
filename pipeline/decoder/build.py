"""Building a decoder from its config: the one place that maps `model.kind` to a class."""

from __future__ import annotations

from torch import Tensor, nn

from pipeline.config import ModelConfig
from pipeline.decoder.lstm import CaptionDecoder
from pipeline.decoder.transformer import TransformerDecoder
from pipeline.decoder.vocab import Vocabulary

DECODERS = {"lstm": CaptionDecoder, "transformer": TransformerDecoder}  # keys: config.MODEL_KINDS


def build_decoder(
    config: ModelConfig, vocab: Vocabulary, pretrained_embeddings: Tensor | None = None
) -> nn.Module:
    """A fresh decoder of `config.kind` for `vocab` (pretrained embeddings (V, E) optional)."""
    return DECODERS[config.kind](
        len(vocab), config, pad_index=vocab.pad, pretrained_embeddings=pretrained_embeddings
    )
