"""Which dtypes attention computes in (``GLAConfig.precision``)."""

from __future__ import annotations

import torch
from torch import Tensor

from geogla.gla.config import Precision
from geogla.precision import bfloat16_is_fast


def compute_dtypes(precision: Precision, like: Tensor) -> tuple[torch.dtype, torch.dtype]:
    """``(compute, accumulate)`` dtypes for ``precision`` and inputs like ``like``.

    The compute dtype is that of the large matrix products and of the similarity buffer; the
    accumulate dtype (float32, or float64 for float64 inputs) holds queries, means, counts'
    consequences and softmax sums.
    """
    adtype = torch.float64 if like.dtype == torch.float64 else torch.float32
    if precision == "bfloat16":
        return torch.bfloat16, adtype
    if precision == "float16":
        return torch.float16, adtype
    if precision == "auto" and adtype == torch.float32 and bfloat16_is_fast(like.device):
        return torch.bfloat16, adtype
    return adtype, adtype
