"""Which dtypes geogla computes in (``--precision``): the one rule for the encoders, and what the
device supports.  Attention's own dtypes follow :func:`geogla.gla.precision.compute_dtypes`."""

from __future__ import annotations

import torch

from geogla.gla.config import PRECISIONS


def bfloat16_is_fast(device: torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices natively (CUDA, AVX512-BF16 or AMX CPUs)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        check = getattr(torch.cpu, probe, None)
        try:
            if check is not None and bool(check()):
                return True
        except RuntimeError:  # probe unavailable in this build
            continue
    return False


def encoder_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The dtype of the encoders' weights and activations for ``precision`` on ``device``.

    ``auto``: bfloat16 on CUDA (float16 where bfloat16 is not supported) and on CPUs that compute
    bfloat16 natively, where converting the weights ran the default encoders faster than
    float32 (benchmarks/bench_encoders.py: 1.9x on 2 AVX512-BF16 cores; ``torch.autocast`` was slower
    than float32 there, 3x slower for CLIP);
    float32 elsewhere (CPUs without native bfloat16 emulate it, MPS).
    """
    if precision == "float32":
        return torch.float32
    if precision == "bfloat16":
        return torch.bfloat16
    if precision == "float16":
        return torch.float16
    if precision != "auto":
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if bfloat16_is_fast(device) else torch.float32
