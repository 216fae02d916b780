"""The CUDA precision choice (as a function of the compute capability), train.precision on the
CPU, and the LSTM's grid cast once per batch under autocast (bf16 autocast runs on the CPU)."""

from __future__ import annotations

import pytest
import torch

from pipeline.config import ModelConfig, load_config
from pipeline.decoder.lstm import CaptionDecoder
from pipeline.device import capability_has_native_bf16, grad_scaler_enabled, training_precision

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    "capability, native",
    [((6, 1), False), ((7, 0), False), ((7, 5), False), ((8, 0), True), ((8, 9), True)]
    + [((9, 0), True), ((12, 0), True)],
)
def test_bf16_is_native_from_ampere_on(capability, native):
    assert capability_has_native_bf16(capability) is native


def test_auto_precision_on_the_cpu_is_fp32_and_fp16_has_a_scaler():
    auto = load_config(None)
    assert training_precision(auto, CPU) == "fp32" and not grad_scaler_enabled(auto, CPU)
    fp16 = load_config(None, ["train.precision=fp16"])
    assert training_precision(fp16, CPU) == "fp16" and grad_scaler_enabled(fp16, CPU)


def test_the_lstm_casts_the_grid_once_under_autocast():
    torch.manual_seed(0)
    config = ModelConfig(embed_dim=8, hidden_dim=12, attention_dim=6, dropout=0.0)
    model = CaptionDecoder(20, config, feature_dim=16)
    grids = torch.randn(3, 49, 16)  # (B, R, D)
    assert model.encode(grids).features.dtype == torch.float32
    captions = torch.tensor([[1, 4, 5, 2], [1, 6, 2, 0], [1, 7, 8, 2]])  # (B, T)
    lengths = torch.tensor([4, 3, 4])
    plain, _ = model(grids, torch.arange(3), captions, lengths)  # (N, V)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.encode(grids).features.dtype == torch.bfloat16
        mixed, _ = model(grids, torch.arange(3), captions, lengths)  # (N, V)
    assert mixed.shape == plain.shape
    assert torch.allclose(mixed.float(), plain, atol=0.1)
