"""ProxyCLIP + GLA attention at a cost linear in the scene (``GLAConfig(memory="scalable")``).

Pure tensor functions.  The entry point is :func:`attend_scalable`; ``geogla.gla.attend``
dispatches to it.

Why this works.  After masking, a query keeps only keys with ``S_ij >= u m_i`` (or only its row
maximum when ``u m_i`` exceeds it) and weighs them by ``exp(w_i S_ij)``: attention goes to the
keys most similar to the query's proxy.  The keys that decide a query's details are its own
window's and the overlap duplicates of its scene position in the other windows that cover it
(near-identical tokens, which matter most at window seams); far keys matter through sums (how
many are similar, ``|P_i|``; their mean, the proxy; their values' weighted mean), which a
weighted sample estimates, and through the few most similar keys of the whole scene, which sit
near the modes of the proxy iteration and are kept with certainty.

How it is computed.

1. Far summary (:mod:`geogla.gla.prototypes`, one pass over all keys): spherical k-means
   prototypes (``prototypes``, fitted on a seeded sample) stratify the ``T`` keys;
   ``far_samples`` representatives are chosen: up to half are the keys closest to the modes of
   the proxy iteration (started from every prototype), the rest a random sample stratified by
   prototype.  The strata's exact key and value sums are kept, and for every mode (an
   *anchor*) the exact count and key sum of its positives (keys above ``rho``).
2. Near groups (:func:`near_groups`): the scene token grid is cut into rectangles on which the
   set of near windows (windows whose extent grown by ``near_radius`` contains the position) is
   constant; all tokens at positions of a rectangle, in every window covering it, form a group of
   queries with the same near windows.
3. Per group, in blocks of query rows under ``memory_budget_mb``: every step of
   :mod:`geogla.gla.attention` (proxy rounds, counts, mask, softmax, ``A V``) runs over the keys
   of the near windows, exactly (weight 1), plus the representatives outside them, each
   weighted by the far tokens it stands for (1 for a central one; its stratum's far share for a
   sampled one; 0 inside the near windows).  Counts ``|P_i|``, proxy sums, softmax numerators
   and denominators are weighted sums; the far parts of the proxy sums and of the numerators get
   a control-variate correction per stratum (``_Work._control_variates``) that makes them exact
   for strata wholly inside or outside a query's positives; the proxy sums and counts a second
   one per anchor (``_Work._anchor_variates``) that makes them exact where a query's far
   positives are an anchor's (on the hard synthetic scene at 16 windows it halves the changed
   labels: 1.13% -> 0.62%).
4. Exact whatever the sample: the row means ``m_i = max(0, q_i . mean_j k_j)`` over all ``T``
   keys (linearity), ``u`` from the true ``L``, every near key, the query smoothing (all windows
   covering a position are near).

Cost: ``O(T (n_near + far_samples) D)``, ``n_near`` about 4 windows of tokens at half-window
stride and radius 0, plus ``O(T prototypes D)`` for the summary: linear in ``T``.  Work memory:
``far_samples + n_near`` keys and values, one budgeted block, ``O(T)`` integers; independent of
the scene's size otherwise (inputs and output are ``O(T D)``).  With ``far_samples >= T`` every
key represents itself with weight 1 and the result is exact; so is it when the near windows of
every query are all windows.  Deterministic: the same inputs and ``seed`` give the same output.

Limits (benchmarks/bench_scalable.py).  The far part is an estimate.  Where ``u m_i`` is close
to the row maximum, exact attention itself jumps between keeping one key and keeping
thousands, and which single key is kept depends on tiny differences of the proxy; there labels
change under any perturbation (also under rounding the keys to float16), and the scalable
estimate changes more of them than elsewhere.
"""

from __future__ import annotations

import functools
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from geogla.errors import ConfigError
from geogla.gla.attention import _Buffers, _round_down, _row_sum, compute_dtypes, smooth_queries, token_grid
from geogla.gla.config import GLAConfig
from geogla.gla.prototypes import FarSample, anchor_positives, summarize
from geogla.gla.source import TensorWindows, WindowSource


@dataclass(frozen=True)
class NearGroup:
    """Queries that share their near windows.

    Attributes:
        windows: ``(W,)`` int64 near windows, ascending; their tokens are the group's near keys,
            window ``windows[a]`` at rows ``a * N .. a * N + N - 1``.
        queries: ``(Q,)`` int64 flat indices ``l * N + t`` of the group's query tokens.
        local: ``(Q,)`` int64 row of each query's own key among the near keys.
    """

    windows: Tensor
    queries: Tensor
    local: Tensor


#: Query windows per call of the in-memory entry point (:func:`attend_scalable`).
_CALL_WINDOWS = 256
#: Relative tolerance under which two anchors' estimated differences from a query's positives
#: count as equal (the lower index is taken): far above float32 rounding of the sums, far below
#: a difference that matters to the estimate.
_ANCHOR_TIE = 1e-4
#: Most representatives counted in one column of a compute-dtype product (bfloat16 holds the
#: integers up to 256 exactly).
_SLOT = 256


def near_groups(
    offsets: Tensor, grid: tuple[int, int], radius: int, windows: Sequence[int] | None = None
) -> list[NearGroup]:
    """Group the tokens of the query ``windows`` by their near windows (see the module docstring).

    Args:
        offsets: ``(L, 2)`` int, each window's top-left ``(row, col)`` on the scene token grid;
            any layout (edge windows shifted back, missing windows).
        grid: ``(rows, cols)`` of each window's tokens (``N = rows * cols``).
        radius: a window is near a position when its extent grown by ``radius`` tokens on every
            side contains it.
        windows: the query windows (all ``L`` when None); near windows are taken from all ``L``.

    Returns:
        Groups in a deterministic order; every token ``t`` of the ``p``-th query window is the
        query ``p * N + t`` of exactly one group.
    """
    off_t = offsets.detach().to("cpu", torch.int64)
    query = list(range(off_t.shape[0])) if windows is None else [int(w) for w in windows]
    if not query:
        return []
    q_off = off_t[query]
    extent = torch.tensor(grid, dtype=torch.int64)  # window size in tokens, (rows, cols)
    n_tokens = grid[0] * grid[1]
    lo = q_off.amin(dim=0)
    hi = q_off.amax(dim=0) + extent
    # Only windows whose grown extent meets the query windows can be near one of their tokens.
    meets = ((off_t - radius < hi) & (off_t + extent + radius > lo)).all(dim=1)
    candidates = meets.nonzero().flatten().tolist()
    off = off_t.tolist()
    # Cut each axis where some window's extent or grown extent starts or ends: on every
    # segment the covering and near windows are constant.
    cuts = []
    for axis in (0, 1):
        points: set[int] = set()
        for w in candidates:
            o = off[w]
            side = grid[axis]
            points.update((o[axis], o[axis] + side, o[axis] - radius, o[axis] + side + radius))
        a0, a1 = int(lo[axis]), int(hi[axis])
        cuts.append(sorted(p for p in points if a0 <= p <= a1))

    def span(axis: int, start: int, stop: int) -> range:
        """Segments ``[cuts[i], cuts[i+1])`` inside ``[start, stop)``."""
        c = cuts[axis]
        return range(_bisect(c, start), min(_bisect(c, stop), len(c) - 1))

    near: dict[tuple[int, int], list[int]] = defaultdict(list)
    cover: dict[tuple[int, int], list[int]] = defaultdict(list)
    for w in candidates:
        r, c = off[w]
        for a in span(0, r - radius, r + grid[0] + radius):
            for b in span(1, c - radius, c + grid[1] + radius):
                near[(a, b)].append(w)
    for p, w in enumerate(query):
        r, c = off[w]
        for a in span(0, r, r + grid[0]):
            for b in span(1, c, c + grid[1]):
                cover[(a, b)].append(p)

    # Cells with the same near windows form one group (the queries of every covering window).
    members: dict[tuple[int, ...], list[tuple[int, int]]] = defaultdict(list)
    for cell in sorted(cover):
        members[tuple(near[cell])].append(cell)
    groups = []
    for near_windows, cells in members.items():
        slot = {w: i for i, w in enumerate(near_windows)}
        queries: list[Tensor] = []
        local: list[Tensor] = []
        for a, b in cells:
            r0, r1 = cuts[0][a], cuts[0][a + 1]
            c0, c1 = cuts[1][b], cuts[1][b + 1]
            for p in cover[(a, b)]:
                w = query[p]
                rows = torch.arange(r0 - off[w][0], r1 - off[w][0])
                cols = torch.arange(c0 - off[w][1], c1 - off[w][1])
                tok = (rows[:, None] * grid[1] + cols[None, :]).reshape(-1)
                queries.append(p * n_tokens + tok)
                local.append(slot[w] * n_tokens + tok)
        groups.append(
            NearGroup(torch.tensor(near_windows, dtype=torch.int64), torch.cat(queries), torch.cat(local))
        )
    assert sum(int(g.queries.numel()) for g in groups) == len(query) * n_tokens
    return groups


def _bisect(values: list[int], x: int) -> int:
    """Index of the first element of sorted ``values`` that is ``>= x``."""
    lo, hi = 0, len(values)
    while lo < hi:
        mid = (lo + hi) // 2
        if values[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    return lo


def attend_scalable(
    keys: Tensor, values: Tensor, config: GLAConfig, offsets: Tensor | None, grid: tuple[int, int] | None = None
) -> Tensor:
    """``A V`` like :func:`geogla.gla.attend`, near keys exactly and far keys from a sample.

    Args and result as :func:`geogla.gla.attend` (inputs already checked there); ``offsets`` is
    required.  Needs ``config.kv_extension`` (without it attention is per window: use exact).
    The inputs are in memory here; a run streams them from its store through
    :func:`geogla.gla.prototypes.summarize` and :class:`ScalableAttention` instead.

    Raises:
        ConfigError: ``offsets`` is missing.
        ValueError: windows are not square, or ``kv_extension`` is off.
    """
    if offsets is None:
        raise ConfigError("scalable attention needs the windows' token offsets; pass offsets=(L, 2).")
    source = TensorWindows(keys, values)
    cdtype, adtype = compute_dtypes(config.precision, keys)
    sample = summarize(source, config, cdtype, adtype, keys.device)
    attention = ScalableAttention(sample, offsets, config, cdtype, adtype, grid)
    # Calls of a bounded number of windows bound the per-call near-window state; the result does
    # not depend on the split.
    n_windows = keys.shape[0]
    parts = [attention(source, range(w0, min(w0 + _CALL_WINDOWS, n_windows)))
             for w0 in range(0, n_windows, _CALL_WINDOWS)]
    return torch.cat(parts).to(values.dtype)


class ScalableAttention:
    """Scalable GLA for any subset of a scene's windows, given the scene's far summary.

    Build it once per process from the :class:`FarSample` of all windows and their offsets; each
    call computes ``A V`` for some query windows, reading only the windows near them from the
    source.  Results do not depend on how the windows are split into calls.
    """

    def __init__(self, sample: FarSample, offsets: Tensor, config: GLAConfig, cdtype: torch.dtype,
                 adtype: torch.dtype, grid: tuple[int, int] | None = None) -> None:
        if not config.kv_extension:
            raise ValueError("scalable attention is for kv_extension; per-window attention is exact and linear")
        self.grid = token_grid(sample.n_tokens, grid)
        self.sample, self.config, self.cdtype, self.adtype = sample, config, cdtype, adtype
        self.device = sample.keys.device
        self.offsets = offsets.to(device=self.device, dtype=torch.int64)
        n_windows = int(offsets.shape[0])
        self.u = 1.0 + config.lambda1 * math.log1p(n_windows) if config.norm == "dynamic" else config.beta
        self._work: _Work | None = None

    def __call__(self, source: WindowSource, windows: Sequence[int]) -> Tensor:
        """``(len(windows), N, Dv)`` ``A V`` of the query ``windows`` (indices into the scene's
        windows), in the accumulate dtype."""
        query = [int(w) for w in windows]
        n_tokens, config = self.sample.n_tokens, self.config
        groups = near_groups(self.offsets, self.grid, config.near_radius, query)
        near_ids = sorted({int(w) for g in groups for w in g.windows.tolist()})
        keys = source.keys(near_ids).to(self.device)
        values = source.values(near_ids).to(self.device)
        ids_t = torch.tensor(near_ids, dtype=torch.int64, device=self.device)
        rest = self.sample.window_rest(ids_t, self.sample.strata(keys), keys, values)
        anchor_rest = self.sample.window_anchor_rest(ids_t, keys, config.rho)
        near = _NearWindows(near_ids, keys, values, *rest, *anchor_rest)
        max_near = max((int(g.windows.numel()) for g in groups), default=1) * n_tokens
        if self._work is None or self._work.max_near < max_near:
            self._work = _Work(self.offsets, self.sample, max_near, config, self.cdtype, self.adtype, self.grid)
        work = self._work
        work.bind(near)
        key_mean = self.sample.key_mean
        total = len(query) * n_tokens
        out = torch.empty(total, values.shape[2], dtype=self.adtype, device=self.device)

        window_mean: Tensor | None = None
        if config.mean == "window":
            # One mean per window needs every proxy of the window first: a pass that keeps only the
            # scalar q_i . mean(k) per token (proxies are recomputed below).
            row_dot = torch.empty(total, dtype=self.adtype, device=self.device)
            for group in groups:
                queries = group.queries.to(self.device)
                work.load(group)
                for r0, r1 in work.blocks():
                    q, _ = work.proxies(r0, r1)
                    row_dot[queries[r0:r1]] = q[0] @ key_mean
            window_mean = row_dot.view(len(query), n_tokens).mean(dim=1)

        for group in groups:
            queries = group.queries.to(self.device)
            work.load(group)
            for r0, r1 in work.blocks():
                q, counts = work.proxies(r0, r1)
                if window_mean is None:
                    mean = q[0] @ key_mean
                else:
                    mean = window_mean[queries[r0:r1] // n_tokens]
                shift = (mean.clamp_min(0.0) * self.u)[None]
                out[queries[r0:r1]] = work.attention(q, shift, counts)[0]
        return out.view(len(query), n_tokens, -1)


@dataclass(frozen=True)
class _NearWindows:
    """The windows one call reads: ids ascending, their keys ``(W, N, Dk)`` and values, and the
    counts and sums of their non-central tokens per stratum (:meth:`FarSample.window_rest`) and
    per anchor (:meth:`FarSample.window_anchor_rest`)."""

    ids: list[int]
    keys: Tensor
    values: Tensor
    rest_count: Tensor
    rest_key_sum: Tensor
    rest_value_sum: Tensor
    anchor_count: Tensor
    anchor_key_sum: Tensor

    @functools.cached_property
    def _index(self) -> dict[int, int]:
        return {w: i for i, w in enumerate(self.ids)}

    def slots(self, windows: list[int]) -> Tensor:
        """Rows of ``windows`` in :attr:`keys` (every group of a call asks; the index is built once)."""
        return torch.tensor([self._index[w] for w in windows], dtype=torch.int64, device=self.keys.device)


def first_near_minimum(values: Tensor, scale: Tensor | float) -> Tensor:
    """Index along the last dim of the first entry within ``_ANCHOR_TIE * scale`` of the minimum.

    The anchor choice, not a bare argmin: differences that are equal (two anchors with the same
    positives among the representatives) come out of a matrix product unequal by rounding that
    depends on the product's shape, and the choice must not.  ``scale`` (broadcast against
    ``values[..., :1]``) is the magnitude of the values.
    """
    close = values <= values.amin(dim=-1, keepdim=True) + _ANCHOR_TIE * scale
    return close.to(torch.uint8).argmax(dim=-1)  # argmax returns the first maximum


def _slots(group: Tensor, n_groups: int) -> tuple[Tensor, Tensor]:
    """Cut groups into slots of at most ``_SLOT`` members.

    ``group`` ``(n,)`` int64 in ``[0, n_groups)``.  Returns the stable order that sorts the members
    by group, and the slot of each member in that order: consecutive from 0, a new one at the
    start of every group and after every ``_SLOT`` members of one group.
    """
    order = torch.argsort(group, stable=True)
    grouped = group[order]
    sizes = torch.bincount(grouped, minlength=n_groups)
    rank = torch.arange(group.numel(), device=group.device) - (torch.cumsum(sizes, 0) - sizes)[grouped]
    return order, torch.cumsum((rank % _SLOT == 0).to(torch.int64), 0) - 1


def rows_per_block(config: GLAConfig, key_count: int, cdtype: torch.dtype, adtype: torch.dtype) -> int:
    """Query rows per block so that a block's work memory over ``key_count`` keys fits the budget.

    Bytes per entry as in exact attention (``GLAConfig.memory_budget_mb``): similarity in the
    accumulate dtype, weights in the compute dtype when it differs, one mask byte.
    """
    entry = torch.empty((), dtype=adtype).element_size() + 1
    if cdtype != adtype:
        entry += torch.empty((), dtype=cdtype).element_size()
    return max(1, config.memory_budget_mb * 2**20 // (key_count * entry))


class _Work:
    """Key, value and work buffers reused by every group; computes one group's query blocks.

    Key rows ``0 .. R - 1`` hold the far representatives (the same for every group, weighted per
    group by :meth:`FarSample.far_weights`, 0 for those in near windows), rows ``R ..`` the
    current group's near keys (weight 1).  Allocated once: ``R + max_near`` keys and values and one
    block of work memory, whatever the number of groups and calls.
    """

    def __init__(
        self,
        offsets: Tensor,
        sample: FarSample,
        max_near: int,
        config: GLAConfig,
        cdtype: torch.dtype,
        adtype: torch.dtype,
        grid: tuple[int, int],
    ) -> None:
        self.offsets, self.sample, self.max_near, self.grid = offsets, sample, max_near, grid
        self.config, self.cdtype, self.adtype = config, cdtype, adtype
        device = sample.keys.device
        self.n_tokens, self.dim = sample.n_tokens, sample.keys.shape[1]
        self.n_far = int(sample.token.numel())
        rows = self.n_far + max_near
        # Compute-dtype keys for the proxy similarities and aggregations; in bfloat16 with a
        # column of ones that makes products come out as S - threshold (see attention.py's
        # _Similarity: rounding is then small exactly where decisions are taken), padded to a
        # multiple of 8 channels.
        self.shifted = torch.empty((), dtype=cdtype).element_size() < 4
        width = (self.dim + 1 + 7) // 8 * 8 if self.shifted else self.dim
        self.mat = torch.zeros(rows, width, dtype=cdtype, device=device)
        if self.shifted:
            self.mat[:, self.dim] = 1.0
        self.mat[: self.n_far, : self.dim] = sample.keys
        # Accumulate-dtype keys: final similarity (mask and softmax exponents) and proxy fallback.
        self.acc = (
            self.mat
            if (cdtype == adtype and not self.shifted)
            else torch.empty(rows, self.dim, dtype=adtype, device=device)
        )
        self.acc[: self.n_far] = sample.keys
        self.vals = torch.empty(rows, sample.values.shape[1], dtype=cdtype, device=device)
        self.vals[: self.n_far] = sample.values
        # Which representatives are positives of each anchor (proxy mode), for the anchor
        # control variates of the proxy sums; none without proxy rounds.
        anchors = sample.anchors if config.proxy else sample.anchors[:0]
        self.anchor_positive = anchor_positives(anchors, sample.keys, config.rho).to(adtype)  # (M, R)
        self.rows = rows_per_block(config, rows, cdtype, adtype)
        self.buffers = _Buffers(min(self.rows, max_near) * rows, cdtype, adtype, device)
        self.tk = rows
        self.n_queries = 0
        self.near: _NearWindows | None = None

    def bind(self, near: _NearWindows) -> None:
        """Use the keys, values and strata of ``near`` (every near window of the coming groups)."""
        self.near = near

    def load(self, group: NearGroup) -> None:
        """Make ``group`` current: its near keys and values, far weights and starting queries."""
        assert self.near is not None
        device = self.mat.device
        windows = group.windows.to(device)
        slots = self.near.slots(group.windows.tolist())
        n, r = self.n_tokens, self.n_far
        self.tk = r + int(windows.numel()) * n
        near_rows = slice(r, self.tk)
        near_keys = self.near.keys[slots].reshape(-1, self.dim)
        self.mat[near_rows, : self.dim] = near_keys
        if self.acc is not self.mat:
            self.acc[near_rows] = near_keys
        self.vals[near_rows] = self.near.values[slots].reshape(-1, self.vals.shape[1])
        near_count = self.near.rest_count[slots].sum(dim=0)
        near_key_sum = self.near.rest_key_sum[slots].sum(dim=0)
        near_value_sum = self.near.rest_value_sum[slots].sum(dim=0)
        self.far_weight = self.sample.far_weights(windows, near_count)  # accumulate dtype: counts
        self.far_weight_c = self.far_weight.to(self.cdtype)  # compute dtype: scales masks, numerators
        if r:
            member, n_far = self._control_variates(near_count, near_key_sum, near_value_sum)
            self._anchor_variates(member, n_far, self.near.anchor_count[slots].sum(dim=0),
                                  self.near.anchor_key_sum[slots].sum(dim=0))

        local = group.local.to(device)
        near = self.acc[near_rows]
        self.self_keys = near[local]  # each query's own key: the empty-P fallback
        if self.config.smoothing:
            # relative offsets: the scene grid smooth_queries builds spans the near windows only
            near_off = self.offsets[windows]
            smooth = smooth_queries(near.view(-1, n, self.dim), near_off - near_off.amin(dim=0), self.grid)
            start = smooth.reshape(-1, self.dim)[local]
        else:
            start = self.self_keys
        self.start = F.normalize(start, dim=-1)
        self.n_queries = int(local.numel())

    def _control_variates(self, near_count: Tensor, near_key_sum: Tensor,
                          near_value_sum: Tensor) -> tuple[Tensor, Tensor]:
        """Per-stratum corrections of the far sums (regression estimator), for the current group.

        The far part of a sum ``sum_j z_ij x_j`` (``z`` a 0/1 positive mask or a softmax
        numerator, ``x`` keys or values) is estimated per stratum ``h`` as
        ``HT_h(z x) + zbar_ih (X_h - HT_h(x))``: ``HT_h`` the weighted sum over the far sampled
        representatives of ``h``, ``X_h`` the exact sum of ``x`` over the far non-central tokens of
        ``h`` and ``zbar_ih = HT_h(z) / F_h`` their estimated mean of ``z``.  Still a weighted
        sample estimate, but exact when ``z`` is constant over a stratum (a cluster entirely
        inside or outside a query's positives), which removes most of the sampling noise.
        ``near_*`` are the counts and sums of the near windows' non-central tokens per stratum.
        Returns each far sampled representative's weight in its stratum ``(R, K)`` and the strata's
        far non-central token counts ``(K,)``.
        """
        sample, adtype = self.sample, self.adtype
        n_strata = sample.rest_size.numel()
        sampled = (self.far_weight > 0) & ~sample.central
        member = torch.zeros(self.n_far, n_strata, dtype=adtype, device=self.mat.device)
        idx = sampled.nonzero().flatten()
        member[idx, sample.stratum[idx]] = self.far_weight[idx]
        n_far = (sample.rest_size - near_count).to(adtype)
        self.cv_keys = (sample.rest_key_sum - near_key_sum) - member.T @ sample.keys
        self.cv_values = (sample.rest_value_sum - near_value_sum) - member.T @ sample.values.to(adtype)
        share = member / n_far.clamp_min(1.0)  # z_far @ share = zbar (r x K)
        self.share_c = share.to(self.cdtype)
        # The far weighted counts and zbar of 0/1 z: the far representatives' weights are equal
        # within a stratum's sampled ones (and 1 for the central ones), so z's far
        # representatives are counted per slot (a stratum's sampled ones or the central ones,
        # at most _SLOT per slot) in a compute-dtype product, exact whatever its shape because
        # every count fits the dtype's integers, and the counts are then weighed in a small one.
        far = (self.far_weight > 0).nonzero().flatten()
        group = torch.where(sample.central[far], n_strata, sample.stratum[far])
        order, slot = _slots(group, n_strata + 1)
        group_sorted = group[order]
        n_slots = int(slot[-1]) + 1 if slot.numel() else 0
        rows = far[order]
        self.slot_onehot = torch.zeros(self.n_far, n_slots, dtype=self.cdtype, device=self.mat.device)
        self.slot_onehot[rows, slot] = 1.0
        # columns: the far count, zbar per stratum, the weighted size on the sampled ones
        weigh = torch.zeros(n_slots, n_strata + 2, dtype=adtype, device=self.mat.device)
        weigh[slot, 0] = self.far_weight[rows]
        sampled_rows = group_sorted < n_strata
        at, stratum = slot[sampled_rows], group_sorted[sampled_rows]
        weigh[at, 1 + stratum] = share[rows[sampled_rows], stratum]
        weigh[at, -1] = self.far_weight[rows[sampled_rows]]
        self.slot_weigh = weigh
        return member, n_far

    def _anchor_variates(self, member: Tensor, n_far: Tensor, near_count: Tensor, near_key_sum: Tensor) -> None:
        """Per-anchor corrections of the far proxy sums and counts, for the current group.

        Write a query's positive mask as ``z = y_m + d``, ``y_m`` anchor ``m``'s positives
        (:attr:`FarSample.anchors`).  The far sum of ``y_m x`` is known exactly (the summary's
        anchor totals less the near windows'), so only ``d`` needs estimating, with the same
        estimator as ``z`` (:meth:`_control_variates`): the estimate becomes that of ``z`` plus
        ``c_m``, the estimator's error on ``y_m`` itself.  Exact where the query's far positives are
        the anchor's; queries take the anchor whose positives differ least from theirs on the
        sampled representatives (or none, ``c = 0``, when none is closer than the empty set).
        ``member`` and ``n_far`` are what :meth:`_control_variates` returns; ``near_*`` the near
        windows' non-central positives per anchor.
        """
        y = self.anchor_positive  # (M, R)
        sampled_weight = member.sum(dim=1)
        per_stratum = y @ member  # (M, K): HT estimates of the anchors' far positives per stratum
        ybar = per_stratum / n_far.clamp_min(1.0)
        far_count = (self.sample.anchor_count - near_count).to(torch.float64)
        far_sum = self.sample.anchor_key_sum - near_key_sum
        zero = torch.zeros(1, self.dim, dtype=self.adtype, device=y.device)
        self.anchor_key_fix = torch.cat([far_sum - (y * sampled_weight) @ self.sample.keys - ybar @ self.cv_keys, zero])
        self.anchor_count_fix = torch.cat([far_count - per_stratum.sum(dim=1).to(torch.float64),
                                           far_count.new_zeros(1)])
        self.anchor_size = per_stratum.sum(dim=1)  # (M,) estimated far positives of each anchor
        self.anchor_scale = self.anchor_size.amax() if self.anchor_size.numel() else 0.0
        # z_far @ this: each anchor's weighted overlap with z (not from the slot counts: whether
        # a representative is an anchor's positive varies within a slot)
        self.anchor_overlap = (y * sampled_weight).T if y.shape[0] else None

    def _far_counts(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Weighted far counts ``(1, r)`` (float64), ``zbar`` ``(1, r, K)`` of 0/1 ``z``, and the
        anchor each row takes (``(1, r)``, M for none; see :meth:`_anchor_variates`)."""
        far_z = z[..., : self.n_far].to(self.cdtype)  # a bool mask without proxy rounds
        far = (far_z @ self.slot_onehot).to(self.adtype) @ self.slot_weigh
        size = far[..., -1:]
        if self.anchor_overlap is None:
            anchor = torch.zeros(size.shape[:-1], dtype=torch.int64, device=size.device)
        else:
            overlap = far_z.to(self.adtype) @ self.anchor_overlap
            differ = torch.cat([size + self.anchor_size - 2 * overlap, size], dim=-1)
            anchor = first_near_minimum(differ, size + self.anchor_scale)
        return far[..., 0].to(torch.float64), far[..., 1:-1], anchor

    def blocks(self) -> list[tuple[int, int]]:
        """Query row ranges ``(r0, r1)`` of the current group, at most ``rows`` rows each."""
        return [(r0, min(r0 + self.rows, self.n_queries)) for r0 in range(0, self.n_queries, self.rows)]

    def _similarity(self, q: Tensor, shift: Tensor, out: Tensor) -> Tensor:
        """``S - s`` into ``out`` ``(1, r, tk)``; returns ``shift - s`` (attention.py's _Similarity)."""
        mat = self.mat[: self.tk]
        if not self.shifted:
            torch.matmul(q.to(self.cdtype), mat.T, out=out)
            return shift
        qa = torch.zeros(*q.shape[:2], mat.shape[1], dtype=self.cdtype, device=q.device)
        qa[..., : self.dim] = q
        s = shift.to(self.cdtype)
        qa[..., self.dim] = -s
        torch.matmul(qa, mat.T, out=out)
        return shift - s.to(shift.dtype)

    def _weighted_count(self, z: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Row sums of 0/1 ``z`` ``(1, r, tk)`` (exact over near keys plus the weighted far sum
        with its anchor correction, float64), the far strata's shares ``zbar`` and each row's
        anchor (both None without far keys)."""
        counts = _row_sum(z[..., self.n_far :], torch.float64)
        if not self.n_far:
            return counts, None, None
        far, share, anchor = self._far_counts(z)
        return counts + (far + self.anchor_count_fix[anchor]).clamp_min(0.0), share, anchor

    def _weigh_far(self, z: Tensor) -> None:
        """Scale the far columns of ``z`` by their representatives' weights, in place."""
        if self.n_far:
            z[..., : self.n_far].mul_(self.far_weight_c)

    def _positive_sums(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Weighted counts ``(1, r)`` (float64) and key sums ``(1, r, D)`` of the positives ``z``
        (0/1, ``(1, r, tk)``, scaled in place): near keys exactly, far ones estimated with the
        strata's and the anchors' control variates."""
        counts, share, anchor = self._weighted_count(z)
        self._weigh_far(z)
        summed = torch.matmul(z, self.mat[: self.tk])[..., : self.dim].to(self.adtype)
        if share is not None and anchor is not None:
            summed += share @ self.cv_keys + self.anchor_key_fix[anchor]
        return counts, summed

    def proxies(self, r0: int, r1: int) -> tuple[Tensor, Tensor | None]:
        """Proxy anchors ``(1, r, D)`` and weighted counts ``|P_i|`` of queries ``r0:r1``.

        Without ``config.proxy``: the starting queries and ``None``.
        """
        config = self.config
        q = self.start[r0:r1][None]
        if not config.proxy:
            return q, None
        r = r1 - r0
        z = self.buffers.weights(1, r, self.tk)
        rho = torch.full((1, r), config.rho, dtype=torch.float64, device=q.device)
        counts = torch.zeros(1, r, dtype=torch.float64, device=q.device)
        for _ in range(config.steps):
            rest = self._similarity(q, rho, z)
            torch.gt(z, _round_down(rest, z.dtype)[..., None], out=z)  # positives as 0/1
            counts, summed = self._positive_sums(z)
            empty = counts == 0
            if bool(empty.any()):
                # P_i = {i}: the token itself.
                _, ri = empty.nonzero(as_tuple=True)
                summed[0, ri] = self.self_keys[r0 + ri]
                counts[0, ri] = 1.0
            q = F.normalize(summed, dim=-1)
        return q, counts

    def attention(self, q: Tensor, shift: Tensor, counts: Tensor | None) -> Tensor:
        """``A V`` ``(1, r, Dv)`` for proxies ``q`` ``(1, r, D)``; ``shift`` is ``u m_i`` ``(1, r)``.

        Mirrors ``geogla.gla.attention._attention_block`` with weighted far columns.
        """
        config = self.config
        adtype = self.adtype
        r = q.shape[1]
        keys = self.acc[: self.tk]
        s = self.buffers.sim(1, r, self.tk)
        m = self.buffers.mask(1, r, self.tk)
        if counts is None and config.norm == "dynamic":
            torch.matmul(q, keys.T, out=s)
            torch.gt(s, _round_down(torch.tensor(config.rho, dtype=torch.float64), adtype), out=m)
            counts = self._weighted_count(m)[0].clamp_min(1.0)  # empty -> {i}
            scale = ((1.0 + config.lambda2 / counts) / config.temperature).to(adtype)
            late_scale: Tensor | None = scale[..., None]
        else:
            if config.norm == "dynamic":
                assert counts is not None
                scale = ((1.0 + config.lambda2 / counts) / config.temperature).to(adtype)
            else:
                scale = torch.full((1, r), config.gamma / config.temperature, dtype=adtype, device=q.device)
            torch.matmul(q * scale[..., None], keys.T, out=s)
            shift = shift * scale
            late_scale = None

        # Mask and softmax numerator as in exact attention (see attention.py), then each far
        # column counts for the far keys its representative stands for (0 for near ones).
        smax = s.amax(dim=-1, keepdim=True)
        torch.lt(s, torch.minimum(smax, shift[..., None]), out=m)
        s.sub_(smax)
        if late_scale is not None:
            s.mul_(late_scale)
        e = self.buffers.weights(1, r, self.tk)
        torch.exp(s, out=e)
        e.masked_fill_(m, 0.0)
        # softmax numerators are not 0/1: their strata means in the compute dtype suffice for
        # the correction term
        share = (e[..., : self.n_far] @ self.share_c).to(adtype) if self.n_far else None
        self._weigh_far(e)
        denom = _row_sum(e, adtype)
        numer = torch.matmul(e, self.vals[: self.tk]).to(adtype)
        if share is not None:
            numer += share @ self.cv_values
        return numer.div_(denom[..., None])
