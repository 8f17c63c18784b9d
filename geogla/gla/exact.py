"""Exact ProxyCLIP + GLA attention (docs/method.md, section 3), memory-bounded.

Pure tensor functions.  Every query against all keys of its group: all ``T = L * N`` tokens with
key-value extension (``O(T^2 D)``), else the ``N`` tokens of its own window.  Query rows are
processed in blocks whose size comes from ``GLAConfig.memory_budget_mb``
(geogla/gla/_kernels.py), so the ``T x T`` similarity is never held whole.  With the default two
proxy steps this is six ``T x T x D`` matrix products, the minimum the exact algorithm needs.
Means use linearity, ``mean_j(q . k_j) = q . mean_j(k_j)``: exact, ``O(D)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from geogla.gla._kernels import (
    EXACT,
    Buffers,
    attention_rows,
    key_matrix,
    proxy_rounds,
    rows_per_block,
    shift_factor,
)
from geogla.gla.config import GLAConfig
from geogla.gla.precision import compute_dtypes
from geogla.gla.smoothing import smooth_queries


def attend_exact(keys: Tensor, values: Tensor, config: GLAConfig, offsets: Tensor | None = None,
                 grid: tuple[int, int] | None = None) -> Tensor:
    """``A V`` ``(L, N, Dv)`` of every token, exactly; arguments as :func:`geogla.gla.attend`
    (already checked there).  Without ``config.kv_extension`` each window attends to itself."""
    n_windows, n_tokens, dim_k = keys.shape
    dim_v = values.shape[2]
    total = n_windows * n_tokens
    cdtype, adtype = compute_dtypes(config.precision, keys)

    k_acc = keys.reshape(total, dim_k).to(adtype).contiguous()
    if config.smoothing:
        assert offsets is not None  # checked by attend
        q0 = smooth_queries(k_acc.view(n_windows, n_tokens, dim_k), offsets, grid).reshape(total, dim_k)
    else:
        q0 = k_acc
    q0 = F.normalize(q0, dim=-1)

    # Groups of keys that queries attend to: all T together, or each window alone.
    groups = 1 if config.kv_extension else n_windows
    per_group = total // groups
    plan = BlockPlan.for_budget(groups, per_group, config.memory_budget_mb, cdtype, adtype)
    k_acc_g = k_acc.view(groups, per_group, dim_k)
    mat = key_matrix(k_acc_g, cdtype)
    v_c_g = values.reshape(groups, per_group, dim_v).to(cdtype).contiguous()
    q_g = q0.view(groups, per_group, dim_k)
    buffers = Buffers(plan.block_groups * plan.block_rows, per_group, cdtype, adtype, keys.device)

    # Phase 1: proxy anchors and exact counts |P_i| of the last round.
    counts: Tensor | None = None
    if config.proxy:
        q_fin = torch.empty_like(q_g)
        counts = torch.empty(groups, per_group, dtype=torch.float64, device=keys.device)
        for g0, g1, r0, r1 in plan.blocks():
            z = buffers.weights(g1 - g0, r1 - r0, per_group)
            q, cnt = proxy_rounds(
                q_g[g0:g1, r0:r1], mat[g0:g1], dim_k, k_acc_g[g0:g1, r0:r1], config, z, EXACT
            )
            q_fin[g0:g1, r0:r1] = q
            counts[g0:g1, r0:r1] = cnt
        q_g = q_fin

    # Means by linearity: m_i = max(0, q_i . mean_j k_j), or one scalar per window.
    row_mean = torch.einsum("grd,gd->gr", q_g, k_acc_g.mean(dim=1))
    if config.mean == "window":
        row_mean = row_mean.reshape(n_windows, n_tokens).mean(dim=1, keepdim=True).expand(-1, n_tokens)
    mean = row_mean.reshape(groups, per_group).clamp_min(0.0)
    shift = mean * shift_factor(config, n_windows if config.kv_extension else 1)

    # Phase 2: attention rows, block by block.
    out = torch.empty(groups, per_group, dim_v, dtype=values.dtype, device=values.device)
    for g0, g1, r0, r1 in plan.blocks():
        blk_counts = None if counts is None else counts[g0:g1, r0:r1]
        out[g0:g1, r0:r1] = attention_rows(
            q_g[g0:g1, r0:r1],
            k_acc_g[g0:g1],
            v_c_g[g0:g1],
            shift[g0:g1, r0:r1],
            blk_counts,
            config,
            buffers,
            EXACT,
        )
    return out.view(n_windows, n_tokens, dim_v)


@dataclass(frozen=True)
class BlockPlan:
    """How query rows are cut into blocks: whole groups at a time while a group's rows fit."""

    groups: int
    per_group: int
    rows_fit: int  #: query rows whose work memory over one group's keys fits the budget

    @classmethod
    def for_budget(cls, groups: int, per_group: int, budget_mb: int, cdtype: torch.dtype,
                   adtype: torch.dtype) -> BlockPlan:
        """The plan of ``groups`` groups of ``per_group`` keys (and as many queries) under ``budget_mb``."""
        return cls(groups, per_group, rows_per_block(budget_mb, per_group, cdtype, adtype))

    @property
    def block_rows(self) -> int:
        """Query rows per block (for one group of keys)."""
        return min(self.per_group, self.rows_fit)

    @property
    def block_groups(self) -> int:
        """Whole groups per block when one group's rows fit in a block."""
        if self.block_rows < self.per_group:
            return 1
        return max(1, min(self.groups, self.rows_fit // self.per_group))

    def blocks(self) -> Iterator[tuple[int, int, int, int]]:
        """``(g0, g1, r0, r1)``: groups ``g0:g1``, rows ``r0:r1`` of each."""
        rows, grp = self.block_rows, self.block_groups
        for g0 in range(0, self.groups, grp):
            for r0 in range(0, self.per_group, rows):
                yield g0, min(g0 + grp, self.groups), r0, min(r0 + rows, self.per_group)
