"""GLA with a bounded context (``GLAConfig(context_radius=...)``): each query attends, exactly,
to the keys of the windows within a radius of its scene position and to no other.

Pure tensor functions.  GLA lets every pixel depend on the whole extent processed, so a label
can change when the area grows (docs/benchmarks.md, "extent sensitivity").  With a context radius
``r`` (tokens) a query's keys are those of its *context windows*: the windows whose extent, grown
by ``r`` tokens on every side, contains its scene position (:func:`geogla.gla.scalable.near_groups`
with radius ``r``: every window covering the position is one of them).  Everything GLA computes
over the keys is computed over them, exactly as :mod:`geogla.gla.exact` computes it over all
windows: proxy rounds, counts ``|P_i|``, the row mean ``m_i``, and the shift
``u = 1 + lambda1 ln(1 + L)`` with ``L`` the number of context windows.  A token's result is
therefore a function of its context windows alone: the same whatever else the scene holds, and,
with the windows numbered in the same order, the same bits (the kernels are row-wise).

Cost ``O(T n_context D)`` with ``n_context`` the context windows' tokens: linear in the scene;
no far summary.  Work memory: the keys and values of one call's windows, one budgeted block.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
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
from geogla.gla.scalable import NearGroup, group_queries, near_groups
from geogla.gla.smoothing import token_grid
from geogla.gla.source import TensorWindows, WindowSource


class LocalAttention:
    """GLA bounded to ``config.context_radius`` tokens, for any subset of a scene's windows.

    Build it from the ``offsets`` ``(W, 2)`` of the windows of the source it will be called with
    (all the scene's windows, or a part that holds every window within the radius of the query
    windows), on the device to compute on; each call computes ``A V`` for some query windows,
    reading only their context windows.  Results do not depend on how the windows are split into
    calls or parts.
    """

    def __init__(self, offsets: Tensor, n_tokens: int, config: GLAConfig, cdtype: torch.dtype,
                 adtype: torch.dtype, grid: tuple[int, int] | None = None) -> None:
        if not config.kv_extension or config.context_radius is None:
            raise ValueError("local attention needs kv_extension and a context_radius")
        self.radius = config.context_radius
        self.grid = token_grid(n_tokens, grid)
        self.config, self.cdtype, self.adtype = config, cdtype, adtype
        self.offsets = offsets.to(torch.int64)
        self.device = offsets.device

    def __call__(self, source: WindowSource, windows: Sequence[int]) -> Tensor:
        """``(len(windows), N, Dv)`` ``A V`` of the query ``windows``, in the accumulate dtype."""
        query = [int(w) for w in windows]
        n_tokens = self.grid[0] * self.grid[1]
        groups = near_groups(self.offsets, self.grid, self.radius, query)
        ids = sorted({int(w) for g in groups for w in g.windows.tolist()})
        device = self.device
        keys = source.keys(ids).to(device=device, dtype=self.adtype)
        values = source.values(ids).to(device)
        row = {w: i for i, w in enumerate(ids)}
        out = torch.empty(len(query) * n_tokens, values.shape[2], dtype=self.adtype, device=device)
        if not groups:
            return out.view(0, n_tokens, -1)
        most_keys = max(int(g.windows.numel()) for g in groups) * n_tokens
        rows = rows_per_block(self.config.memory_budget_mb, most_keys, self.cdtype, self.adtype)
        buffers = Buffers(min(rows, most_keys), most_keys, self.cdtype, self.adtype, device)
        for group in groups:
            slots = torch.tensor([row[int(w)] for w in group.windows.tolist()], device=device)
            out[group.queries.to(device)] = self._attend_group(group, keys[slots], values[slots],
                                                               buffers, rows)
        return out.view(len(query), n_tokens, -1)

    def _attend_group(self, group: NearGroup, keys: Tensor, values: Tensor, buffers: Buffers,
                      rows: int) -> Tensor:
        """``A V`` ``(Q, Dv)`` of ``group``'s queries over its context windows' ``keys``
        ``(W, N, Dk)`` (accumulate dtype) and ``values`` ``(W, N, Dv)``."""
        config, dim = self.config, keys.shape[2]
        flat = keys.reshape(-1, dim)
        mat = key_matrix(flat, self.cdtype)
        vals = values.reshape(-1, values.shape[2]).to(self.cdtype)
        start, self_keys = group_queries(group, keys, self.offsets, self.grid, config.smoothing)
        n_queries = start.shape[0]
        key_mean = flat.mean(dim=0)
        u = shift_factor(config, int(group.windows.numel()))
        tk = flat.shape[0]
        out = torch.empty(n_queries, vals.shape[1], dtype=self.adtype, device=flat.device)
        for r0 in range(0, n_queries, rows):
            r1 = min(r0 + rows, n_queries)
            q, counts = start[r0:r1][None], None
            if config.proxy:
                z = buffers.weights(1, r1 - r0, tk)
                q, counts = proxy_rounds(q, mat, dim, self_keys[r0:r1][None], config, z, EXACT)
            shift = ((q[0] @ key_mean).clamp_min(0.0) * u)[None]
            out[r0:r1] = attention_rows(q, flat, vals, shift, counts, config, buffers, EXACT)[0]
        return out


def attend_local(keys: Tensor, values: Tensor, config: GLAConfig, offsets: Tensor,
                 grid: tuple[int, int] | None = None) -> Tensor:
    """``A V`` like :func:`geogla.gla.attend` with ``config.context_radius`` set (inputs already
    checked there; ``offsets`` is required)."""
    cdtype, adtype = compute_dtypes(config.precision, keys)
    attention = LocalAttention(offsets.to(keys.device), keys.shape[1], config, cdtype, adtype, grid)
    return attention(TensorWindows(keys, values), range(keys.shape[0])).to(values.dtype)
