"""Choosing the torch device and its precision, for either stage."""

import torch

from pipeline.errors import UserError

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}  # the mixed precisions


def resolve_device(name: str) -> torch.device:
    """ "auto" -> cuda when available, else cpu; "cuda" without a GPU is a UserError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device cuda was asked for but torch sees no CUDA GPU; use cpu or auto")
    return torch.device(name)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX): bf16 autocast pays off."""
    return bool(
        getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
        or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    )
