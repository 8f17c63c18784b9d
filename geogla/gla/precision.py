"""Which dtypes attention computes in (``GLAConfig.precision``)."""

from __future__ import annotations

import torch
from torch import Tensor

from geogla.gla.config import Precision


def compute_dtypes(precision: Precision, like: Tensor) -> tuple[torch.dtype, torch.dtype]:
    """``(compute, accumulate)`` dtypes for ``precision`` and inputs like ``like``.

    The compute dtype is that of the large matrix products and of the similarity buffer; the
    accumulate dtype (float32, or float64 for float64 inputs) holds queries, means, counts'
    consequences and softmax sums.
    """
    adtype = torch.float64 if like.dtype == torch.float64 else torch.float32
    if precision == "bfloat16":
        return torch.bfloat16, adtype
    if precision == "auto" and adtype == torch.float32 and bfloat16_is_fast(like.device):
        return torch.bfloat16, adtype
    return adtype, adtype


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
