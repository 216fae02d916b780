"""Building a decoder from its config: the one place that maps `model.kind` to a class."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor, nn

from pipeline.capacity import available_memory, byte_count
from pipeline.config import ModelConfig
from pipeline.contract import LEGACY_SHAPE, FeatureShape
from pipeline.decoder.lstm import CaptionDecoder
from pipeline.decoder.transformer import TransformerDecoder
from pipeline.decoder.vocab import Vocabulary
from pipeline.errors import UserError

DECODERS = {"lstm": CaptionDecoder, "transformer": TransformerDecoder}  # keys: config.MODEL_KINDS
SIZE_KEYS = {  # the model.* sizes of each kind, named when a model cannot fit
    "lstm": ("embed_dim", "hidden_dim", "attention_dim"),
    "transformer": ("embed_dim", "layers", "ff_dim", "max_positions"),
}
WEIGHT_BYTES = 4  # an fp32 parameter
TRAINING_COPIES = 4  # what training on the CPU holds per parameter: weight, gradient, 2 moments


def build_decoder(
    config: ModelConfig,
    vocab: Vocabulary,
    pretrained_embeddings: Tensor | None = None,
    shape: FeatureShape = LEGACY_SHAPE,
) -> nn.Module:
    """A fresh decoder of `config.kind` for `vocab` over grids of `shape` (the feature file's;
    pretrained embeddings (V, E) optional)."""
    return DECODERS[config.kind](
        len(vocab),
        config,
        pad_index=vocab.pad,
        pretrained_embeddings=pretrained_embeddings,
        **shape_arguments(config.kind, shape),
    )


def shape_arguments(kind: str, shape: FeatureShape) -> dict:
    """What a decoder of `kind` takes of the grid's shape: its channels (both kinds), and the
    grid with the class token (the Transformer's 2-D position code)."""
    if kind == "transformer":
        return {"feature_dim": shape.channels, "grid": shape.grid, "class_token": shape.class_token}
    return {"feature_dim": shape.channels}


def parameter_count(
    config: ModelConfig, vocab: Vocabulary, shape: FeatureShape = LEGACY_SHAPE
) -> int:
    """How many parameters `build_decoder(config, vocab, shape=shape)` makes, allocating nothing.

    One- and two-layer decoders are built on the meta device; the count is affine in
    `layers`, so any depth is counted without building its modules.
    """
    one, two = (_meta_count(replace(config, layers=layers), vocab, shape) for layers in (1, 2))
    return one + (config.layers - 1) * (two - one)


def _meta_count(config: ModelConfig, vocab: Vocabulary, shape: FeatureShape) -> int:
    with torch.device("meta"):
        model = DECODERS[config.kind](
            len(vocab), config, pad_index=vocab.pad, **shape_arguments(config.kind, shape)
        )
    return model.parameter_counts()[0]


def check_model_fits(
    config: ModelConfig,
    vocab: Vocabulary,
    device: torch.device,
    shape: FeatureShape = LEGACY_SHAPE,
) -> None:
    """UserError, naming the model.* sizes, when the decoder's parameters cannot fit in
    memory: the weights are built on the CPU (`WEIGHT_BYTES` each); training on the CPU also
    holds their gradients and Adam's moments there (`TRAINING_COPIES`)."""
    count = parameter_count(config, vocab, shape)
    copies = TRAINING_COPIES if device.type == "cpu" else 1
    needed, available = count * WEIGHT_BYTES * copies, available_memory()
    if needed > available:
        sizes = ", ".join(f"{key} {getattr(config, key):,}" for key in SIZE_KEYS[config.kind])
        raise UserError(
            f"model.* sizes ({config.kind}: {sizes}) make {count:,} parameters, which need "
            f"{byte_count(needed)} of memory but {byte_count(available)} is available; "
            "choose smaller model.* sizes"
        )
