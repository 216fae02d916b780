"""Choosing the torch device and its precision, for either stage.

The "auto" precision rule, stated here once (`features.precision`, `train.precision`):

- extraction (`extract.extractor.resolve_precision`): fp16 on CUDA; on the CPU bf16 where the
  CPU computes it natively (AVX512-BF16 or AMX, `cpu_has_native_bf16`), else fp32;
- training (`training_precision`): bf16 on GPUs that compute it natively (compute capability
  >= 8.0, Ampere on: `cuda_has_native_bf16`), fp16 with a GradScaler on older GPUs, fp32 on the
  CPU (bf16 autocast is slower than fp32 on CPUs without native bf16, and its effect on caption
  quality has not been measured on CPUs with it: ask for "bf16" explicitly).
"""

from __future__ import annotations

import inspect

import torch

from pipeline.config import Config
from pipeline.errors import UserError

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}  # the mixed precisions
NATIVE_BF16_CAPABILITY = (8, 0)  # CUDA compute capability of the first bf16 GPUs (Ampere)


def resolve_device(name: str) -> torch.device:
    """ "auto" -> cuda when available, else cpu; "cuda" without a GPU is a UserError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device cuda was asked for but torch sees no CUDA GPU; use cpu or auto")
    return torch.device(name)


def capability_has_native_bf16(capability: tuple[int, int]) -> bool:
    """Whether a GPU of this CUDA compute capability (major, minor) computes bf16 natively."""
    return tuple(capability) >= NATIVE_BF16_CAPABILITY


def cuda_has_native_bf16(device: torch.device) -> bool:
    """Whether the GPU `device` computes bf16 natively. `torch.cuda.is_bf16_supported()`
    alone also counts emulation (pre-Ampere GPUs), which is slow: not what "auto" wants."""
    probe = torch.cuda.is_bf16_supported
    if "including_emulation" in inspect.signature(probe).parameters:
        with torch.cuda.device(device):
            return bool(probe(including_emulation=False))
    return capability_has_native_bf16(torch.cuda.get_device_capability(device))


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX): bf16 autocast pays off."""
    return bool(
        getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
        or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    )


def training_precision(config: Config, device: torch.device) -> str:
    """train.precision resolved to fp32 | bf16 | fp16 ("auto": the module docstring's rule)."""
    precision = config.train.precision
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if cuda_has_native_bf16(device) else "fp16"
    return "fp32"


def autocast_dtype(config: Config, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of train.precision on `device` (None for fp32)."""
    return AUTOCAST_DTYPES.get(training_precision(config, device))


def autocast_to(device: torch.device, dtype: torch.dtype | None) -> torch.autocast:
    """An autocast context to `dtype` on `device` (disabled for None)."""
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def training_autocast(config: Config, device: torch.device) -> torch.autocast:
    """The autocast context of train.precision on `device` (disabled for fp32)."""
    return autocast_to(device, autocast_dtype(config, device))


def static_step(device: torch.device, compile: bool) -> bool:
    """Whether the training step runs with static shapes (`teacher_forced`: every caption
    every step of its batch, no host sync) rather than packed (`forward`: the LSTM's batch
    shrinks step by step, after one host read of the lengths). Static on CUDA, where launches
    and host syncs are the cost, and when compiling (one graph per shape); packed on a CPU
    without compiling, where a host read is free and the padded steps' FLOPs are the time."""
    return compile or device.type == "cuda"


def compiled(function, device: torch.device):
    """`function` through `torch.compile` (`train.compile`): static shapes (one graph per
    input shape: `train.length_bucket` keeps the widths few), CUDA graphs on CUDA
    ("reduce-overhead": a step is replayed, not launched kernel by kernel), inductor's
    default mode on the CPU."""
    if device.type != "cuda":
        return torch.compile(function, dynamic=False)
    graphed = torch.compile(function, dynamic=False, mode="reduce-overhead")

    def step(*args):
        torch.compiler.cudagraph_mark_step_begin()  # the previous step's outputs are spent
        return graphed(*args)

    return step


def grad_scaler_enabled(config: Config, device: torch.device) -> bool:
    """fp16 needs loss scaling; bf16 and fp32 do not."""
    return training_precision(config, device) == "fp16"
