"""ProxyCLIP + GLA attention at a cost linear in the scene (``GLAConfig(algorithm="scalable")``).

Pure tensor functions.  The entry point is :func:`attend_scalable`; ``geogla.gla.attend``
dispatches to it (:func:`geogla.gla.choose_algorithm`), and a run's attend stage uses
:class:`ScalableAttention` on windows read from its store.

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
   :mod:`geogla.gla._kernels` (proxy rounds, counts, mask, softmax, ``A V``) runs over the keys of
   the near windows, exactly (weight 1), plus the representatives outside them, each weighted by the
   far tokens it stands for (1 for a central one; its stratum's far share for a sampled one; those
   inside the near windows are near keys already and take no column). Counts ``|P_i|``, proxy sums,
   softmax numerators and denominators are weighted sums; the far parts of the proxy sums and of the
   numerators get a control-variate correction per stratum that makes them exact for strata wholly
   inside or outside a query's positives; the proxy sums and counts a second one per anchor that
   makes them exact where a query's far positives are an anchor's (:class:`FarEstimator`, built for
   each group by :func:`far_estimator`) (on the hard synthetic scene at 16 windows it halves the
   changed labels: 1.13% -> 0.62%).  *Isolated* queries, those whose first proxy round finds fewer
   than ``_FEW_FAR_POSITIVES`` far positives among the representatives, redo that round with their
   far keys from the summary's wide sample, 16 times the representatives, scanning the quarter of
   its strata most similar to them (:class:`WideSample`, :func:`wide_rounds`; all isolated queries
   of a call together, between the first proxy round of every group and the later ones): a key with
   a handful of similar keys far away is moved toward them and on to its mode by exact attention,
   and a sample that misses them leaves it behind (on the context-bias scenes at 64 windows, 3
   seeds, 4096 representatives, it cut the changed labels from 0.23 / 0.43 / 0.26% to 0.05 /
   0.19 / 0.07% and the Boundary Error Rate from +28 / +4 / +39% of exact attention's to -3 / -8 /
   +4%).
4. Exact whatever the sample: the row means ``m_i = max(0, q_i . mean_j k_j)`` over all ``T``
   keys (linearity), ``u`` from the true ``L``, every near key, the query smoothing (all windows
   covering a position are near).

Cost: ``O(T (n_near + far_samples) D)``, ``n_near`` about 4 windows of tokens at half-window
stride and radius 0, plus ``O(T prototypes D)`` for the summary, plus about ``4 far_samples D``
for each isolated query: linear in ``T``.  Work memory:
``far_samples + n_near`` keys and values, one budgeted block, ``O(T)`` integers, once per torch
thread on a CPU (groups run on threads of their own, one torch thread each: thin products spread
over torch's threads would wait on each other at every operation); independent of the scene's
size otherwise (inputs and output are ``O(T D)``).  With ``far_samples >= T`` every
key represents itself with weight 1 and the result is exact; so is it when the near windows of
every query are all windows.  Deterministic: the same inputs and ``seed`` give the same output.

Limits (benchmarks/bench_scalable.py).  The far part is an estimate.  Where ``u m_i`` is close
to the row maximum, exact attention itself jumps between keeping one key and keeping
thousands, and which single key is kept depends on tiny differences of the proxy; there labels
change under any perturbation (also under rounding the keys to float16), and the scalable
estimate changes more of them than elsewhere.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from geogla.gla._kernels import (
    Buffers,
    aggregate,
    attention_rows,
    key_matrix,
    mark_positives,
    padded_width,
    proxy_rounds,
    row_sum,
    rows_per_block,
    shift_factor,
)
from geogla.gla.config import GLAConfig
from geogla.gla.precision import compute_dtypes
from geogla.gla.prototypes import FarSample, anchor_positives, summarize
from geogla.gla.smoothing import smooth_queries, token_grid
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
#: A query whose first proxy round finds fewer far positives than this among the representatives
#: is *isolated*: its far positives are too rare for the representatives to estimate their sum (a
#: sampled one stands for tens of far keys, or none is found), and its round is redone against the
#: wide sample (:class:`WideSample`).
_FEW_FAR_POSITIVES = 2
#: An isolated query scans the wide sample's strata (:class:`WideSample`) whose prototypes are most
#: similar to it: this fraction of them (one in so many), rounded up.
_WIDE_STRATA_SHARE = 4


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
    candidates = _meeting(off_t, q_off, extent, radius)
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


def group_queries(group: NearGroup, near_keys: Tensor, offsets: Tensor, grid: tuple[int, int],
                  smoothing: bool) -> tuple[Tensor, Tensor]:
    """The normalised starting queries and the own keys (the empty-P fallback) ``(Q, D)`` of
    ``group``'s queries, from its near windows' keys ``(W, N, D)``; ``offsets`` are the windows'
    token offsets, indexed by window id.  With ``smoothing`` the queries are smoothed over the
    near windows, which hold every window covering a query's position."""
    dim = near_keys.shape[2]
    local = group.local.to(near_keys.device)
    self_keys = near_keys.reshape(-1, dim)[local]
    start = self_keys
    if smoothing:
        # relative offsets: the scene grid smooth_queries builds spans the near windows only
        near_off = offsets[group.windows.to(offsets.device)].to(near_keys.device)
        start = smooth_queries(near_keys, near_off - near_off.amin(dim=0), grid).reshape(-1, dim)[local]
    return F.normalize(start, dim=-1), self_keys


def _meeting(offsets: Tensor, query: Tensor, extent: Tensor, radius: int) -> list[int]:
    """Windows (rows of ``offsets``) whose extent grown by ``radius`` meets one of the ``query``
    windows' extents: the only ones that can be near one of their tokens.  Tested per query window,
    not against their bounding box: a call's windows may span a row's end and the next row's
    start, and windows near neither must not enter."""
    meets = torch.zeros(offsets.shape[0], dtype=torch.bool)
    for q0 in range(0, query.shape[0], 64):
        q = query[q0:q0 + 64, None, :]
        hit = (offsets[None] - radius < q + extent) & (offsets[None] + extent + radius > q)
        meets |= hit.all(dim=2).any(dim=0)
    return meets.nonzero().flatten().tolist()


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
    keys: Tensor, values: Tensor, config: GLAConfig, offsets: Tensor, grid: tuple[int, int] | None = None
) -> Tensor:
    """``A V`` like :func:`geogla.gla.attend`, near keys exactly and far keys from a sample.

    Args and result as :func:`geogla.gla.attend` (inputs already checked there); ``offsets`` is
    required.  Needs ``config.kv_extension`` (without it attention is per window: use exact).
    The inputs are in memory here; a run streams them from its store through
    :func:`geogla.gla.prototypes.summarize` and :class:`ScalableAttention` instead.

    Raises:
        ValueError: the token grid does not fit the windows, or ``kv_extension`` is off.
    """
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

    Build it from the :class:`FarSample` of all windows and the ``offsets`` ``(W, 2)`` of the
    windows of the source it will be called with, numbered as the sample numbers them: all the
    scene's windows, or a part of the scene (a task's query windows and every window near them)
    with the sample :meth:`~geogla.gla.prototypes.FarSample.renumbered` to the part's numbering.
    Each call computes ``A V`` for some query windows, reading only the windows near them from
    the source.  Results do not depend on how the windows are split into calls or parts.
    """

    def __init__(self, sample: FarSample, offsets: Tensor, config: GLAConfig, cdtype: torch.dtype,
                 adtype: torch.dtype, grid: tuple[int, int] | None = None) -> None:
        if not config.kv_extension:
            raise ValueError(
                "scalable attention is for kv_extension; per-window attention is exact and linear"
            )
        self.grid = token_grid(sample.n_tokens, grid)
        # central representatives last: the far products that only the sampled ones enter skip them
        sample = sample.sampled_first()
        self.sample, self.config, self.cdtype, self.adtype = sample, config, cdtype, adtype
        self.device = sample.keys.device
        self.offsets = offsets.to(device=self.device, dtype=torch.int64)
        self.u = shift_factor(config, sample.n_windows)  # all the scene's windows, not the part's
        # Which representatives are positives of each anchor (proxy mode), for the anchor
        # control variates of the proxy sums; none without proxy rounds.
        anchors = sample.anchors if config.proxy else sample.anchors[:0]
        self.anchor_positive = anchor_positives(anchors, sample.keys, config.rho).to(adtype)  # (M, R)
        with one_torch_thread():  # sums over thousands of rows, which threads could split
            self.sampled_sums = SampledSums.of(sample, self.anchor_positive)
        self.wide = WideSample.of(sample, cdtype) if config.proxy else None
        self._workspaces: list[_Workspace] = []

    def near_windows(self, source: WindowSource, windows: Sequence[int]) -> NearWindows:
        """Windows ``windows`` of ``source`` with what the far estimate leaves out of them."""
        return NearWindows.read(self.sample, source, windows, self.config.rho, self.device)

    def far_estimator(self, group: NearGroup, near: NearWindows) -> FarEstimator:
        """The far representatives' weights and corrections for the queries of ``group``
        (``near`` holds its near windows)."""
        return far_estimator(self.sample, self.anchor_positive, self.sampled_sums,
                             group.windows.to(self.device), near.rest(near.slots(group.windows.tolist())))

    def __call__(self, source: WindowSource, windows: Sequence[int]) -> Tensor:
        """``(len(windows), N, Dv)`` ``A V`` of the query ``windows`` (indices into the scene's
        windows), in the accumulate dtype."""
        query = [int(w) for w in windows]
        n_tokens, config = self.sample.n_tokens, self.config
        groups = near_groups(self.offsets, self.grid, config.near_radius, query)
        near = self.near_windows(source, sorted({int(w) for g in groups for w in g.windows.tolist()}))
        max_near = max((int(g.windows.numel()) for g in groups), default=1) * n_tokens
        threads = torch.get_num_threads() if config.mean == "row" and self.device.type == "cpu" else 1
        threads = max(1, min(threads, len(groups)))
        if not self._workspaces or self._workspaces[0].max_near < max_near:
            self._workspaces = []
        while len(self._workspaces) < threads:
            self._workspaces.append(_Workspace(
                self.sample, self.offsets, max_near, config, self.cdtype, self.adtype, self.grid
            ))
        call = _Call(self, groups, near, self._workspaces[:threads])
        total = len(query) * n_tokens
        first = self._first_round(call, total) if config.proxy else None
        key_mean = self.sample.key_mean
        window_mean: Tensor | None = None
        if config.mean == "window":
            # One mean per window needs every proxy of the window first: a pass that keeps only the
            # scalar q_i . mean(k) per token (proxies are recomputed below).
            row_dot = torch.empty(total, dtype=self.adtype, device=self.device)

            def dot(i: int, work: _Workspace) -> None:
                queries = groups[i].queries.to(self.device)
                state = call.load(i, work, first is None)
                for r0, r1 in work.blocks(state):
                    q, _ = work.proxies(state, r0, r1, _rows(first, queries[r0:r1]))
                    row_dot[queries[r0:r1]] = q[0] @ key_mean

            call.each_group(dot)
            window_mean = row_dot.view(len(query), n_tokens).mean(dim=1)

        out = torch.empty(total, near.values.shape[2], dtype=self.adtype, device=self.device)

        def attend_group(i: int, work: _Workspace) -> None:
            queries = groups[i].queries.to(self.device)
            state = call.load(i, work, first is None)
            for r0, r1 in work.blocks(state):
                q, counts = work.proxies(state, r0, r1, _rows(first, queries[r0:r1]))
                mean = q[0] @ key_mean if window_mean is None else window_mean[queries[r0:r1] // n_tokens]
                shift = (mean.clamp_min(0.0) * self.u)[None]
                out[queries[r0:r1]] = work.attention(state, q, shift, counts)[0]

        call.each_group(attend_group)
        return out.view(len(query), n_tokens, -1)

    def _first_round(self, call: _Call, total: int) -> tuple[Tensor, Tensor]:
        """Every query's first proxy and count ``(total, D)``, ``(total,)`` (float64), the
        isolated queries' redone over the wide sample, all of them together (:func:`wide_rounds`)."""
        dim, groups = int(self.sample.keys.shape[1]), call.groups
        proxy = torch.empty(total, dim, dtype=self.adtype, device=self.device)
        counts = torch.empty(total, dtype=torch.float64, device=self.device)
        found: list[list[tuple[Tensor, ...]]] = [[] for _ in groups]

        def first_round(i: int, work: _Workspace) -> None:
            queries = groups[i].queries.to(self.device)
            state = call.load(i, work, True)
            assert state.start is not None
            for r0, r1 in work.blocks(state):
                rows = queries[r0:r1]
                proxy[rows], counts[rows], isolated, near_sum, near_count = work.first_round(state, r0, r1)
                if self.wide is not None and isolated.numel():
                    found[i].append((rows[isolated], state.start[r0:r1][isolated],
                                     state.self_keys[r0:r1][isolated], near_sum, near_count,
                                     torch.full_like(isolated, i)))

        call.each_group(first_round)
        if self.wide is None or not any(found):
            return proxy, counts
        query, start, self_keys, near_sum, near_count, group = (
            torch.cat(column) for column in zip(*(f for fs in found for f in fs), strict=True)
        )
        near = torch.zeros(len(groups), int(self.offsets.shape[0]) + 1, dtype=torch.bool, device=self.device)
        far_tokens = torch.empty(len(groups), dtype=torch.float64, device=self.device)
        for i, g in enumerate(groups):
            near[i, g.windows.to(self.device) + 1] = True
            far_tokens[i] = (self.sample.n_windows - int(g.windows.numel())) * self.sample.n_tokens
        isolated = IsolatedQueries(query, start, self_keys, near_sum, near_count, group, near, far_tokens)
        proxy[query], counts[query] = wide_rounds(isolated, self.wide, self.config.rho,
                                                  self.config.memory_budget_mb, len(call.workspaces))
        return proxy, counts


class _Call:
    """One call of :class:`ScalableAttention`: its near groups, the windows they read, each
    group's far estimator (built at its first load, kept for the later passes) and the
    workspaces of its threads."""

    def __init__(self, attention: ScalableAttention, groups: list[NearGroup], near: NearWindows,
                 workspaces: list[_Workspace]) -> None:
        self.attention, self.groups, self.near, self.workspaces = attention, groups, near, workspaces
        self._estimators: list[FarEstimator | None] = [None] * len(groups)

    def load(self, i: int, work: _Workspace, start: bool) -> _GroupState:
        """Load group ``i`` into ``work`` (``start``: with its starting queries)."""
        estimator = self._estimators[i]
        if estimator is None:  # a group is loaded by one thread at a time
            estimator = self._estimators[i] = self.attention.far_estimator(self.groups[i], self.near)
        return work.load(self.groups[i], self.near, estimator, start)

    def each_group(self, step: Callable[[int, _Workspace], None]) -> None:
        """``step(i, workspace)`` for every group ``i``, each thread with its workspace.

        Threads take the next group when they are free, costliest first (queries times key
        columns): groups' costs differ by half (edge groups have fewer near windows), and a fixed
        deal left one thread idle for a tenth of a pass.  A group's result does not depend on the
        thread that computes it.
        """
        if len(self.workspaces) == 1:
            for i in range(len(self.groups)):
                step(i, self.workspaces[0])
            return
        n_reps, n_tokens = int(self.attention.sample.token.numel()), self.attention.sample.n_tokens
        cost = [int(g.queries.numel()) * (n_reps + int(g.windows.numel()) * n_tokens) for g in self.groups]
        queue = iter(sorted(range(len(self.groups)), key=lambda i: -cost[i]))
        lock = threading.Lock()

        def run(work: _Workspace) -> None:
            while True:
                with lock:
                    i = next(queue, None)
                if i is None:
                    return
                step(i, work)

        _in_parallel([functools.partial(run, work) for work in self.workspaces])


def _rows(first: tuple[Tensor, Tensor] | None, rows: Tensor) -> tuple[Tensor, Tensor] | None:
    """Rows ``rows`` of the first proxies and counts (None: no proxy rounds)."""
    return None if first is None else (first[0][rows], first[1][rows])


def _in_parallel(jobs: Sequence[Callable[[], None]]) -> None:
    """Run every job on its own thread, each with one torch thread.

    Scalable attention is many thin products: spread over torch's threads they wait on each other
    at every operation, and many times longer when other processes share the cores; independent
    groups on independent threads do not.  Every group is computed as it would be alone, on one
    torch thread; a call whose groups run on the caller's thread uses the caller's torch threads,
    which on this project's CPU gave the same bits with 1 to 8 threads (a product can split its sums
    by thread: the far summary's sums are exact fixed-point sums for that reason).
    """
    with one_torch_thread(), ThreadPoolExecutor(len(jobs)) as pool:  # its threads take the setting
        for done in [pool.submit(job) for job in jobs]:
            done.result()


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Torch on one thread inside the block (threads started there too), as before it after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass(frozen=True)
class NearRest:
    """What a set of near windows takes out of the far summary's totals (summed over the windows):
    per stratum the number of non-central tokens and their key and value sums, per anchor the
    number of non-central positives and their key sum."""

    count: Tensor
    key_sum: Tensor
    value_sum: Tensor
    anchor_count: Tensor
    anchor_key_sum: Tensor


@dataclass(frozen=True)
class NearWindows:
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

    @classmethod
    def read(cls, sample: FarSample, source: WindowSource, windows: Sequence[int], rho: float,
             device: torch.device) -> NearWindows:
        """Read ``windows`` (ascending) from ``source`` and compute what they take out of ``sample``."""
        ids = [int(w) for w in windows]
        keys = source.keys(ids).to(device)
        values = source.values(ids).to(device)
        ids_t = torch.tensor(ids, dtype=torch.int64, device=device)
        rest = sample.window_rest(ids_t, sample.strata(keys), keys, values)
        anchor_rest = sample.window_anchor_rest(ids_t, keys, rho)
        return cls(ids, keys, values, *rest, *anchor_rest)

    @functools.cached_property
    def _index(self) -> dict[int, int]:
        return {w: i for i, w in enumerate(self.ids)}

    def slots(self, windows: list[int]) -> Tensor:
        """Rows of ``windows`` in :attr:`keys` (every group of a call asks; the index is built once)."""
        return torch.tensor([self._index[w] for w in windows], dtype=torch.int64, device=self.keys.device)

    def rest(self, slots: Tensor) -> NearRest:
        """The totals of the windows at rows ``slots``."""
        return NearRest(self.rest_count[slots].sum(dim=0), self.rest_key_sum[slots].sum(dim=0),
                        self.rest_value_sum[slots].sum(dim=0), self.anchor_count[slots].sum(dim=0),
                        self.anchor_key_sum[slots].sum(dim=0))


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


@dataclass(frozen=True)
class FarEstimator:
    """How the far representatives enter the sums of one group of queries (a
    :class:`geogla.gla._kernels.FarTerms`); built by :func:`far_estimator`, immutable.

    Key columns ``0 .. F - 1`` of a block are the representatives outside the group's near windows
    (:attr:`rows`; those inside are among the exact near keys and take no column), the rest near
    keys (exact).  A representative stands for :attr:`weight` far keys.  The far part of a sum
    ``sum_j z_ij x_j`` (``z`` a 0/1 positive mask or a softmax numerator, ``x`` keys or values)
    is estimated per stratum ``h`` as ``HT_h(z x) + zbar_ih (X_h - HT_h(x))``: ``HT_h`` the weighted
    sum over the far sampled representatives of ``h``, ``X_h`` the exact sum of ``x`` over the far
    non-central tokens of ``h`` and ``zbar_ih = HT_h(z) / F_h`` their estimated mean of ``z``
    (regression estimator: exact when ``z`` is constant over a stratum, a cluster entirely inside
    or outside a query's positives).  As ``zbar_ih`` sums ``z_ij w_h / F_h`` over the far sampled
    representatives ``j`` of ``h``, the correction is a sum over them too: each one's key and value
    rows carry, besides ``w_h x_j``, the share ``w_h / F_h`` of its stratum's ``X_h - HT_h(x)``
    (:meth:`weighed_keys`, :meth:`weighed_values`), and the block's products ``z @ rows`` give the
    estimates whole.  For the 0/1 positives a second correction per anchor
    (proxy mode) ``m``: writing ``z = y_m + d`` with ``y_m`` the anchor's positives, whose far sums
    are known exactly, only ``d`` is estimated: exact where a query's far positives are the
    anchor's; each query takes the anchor whose positives differ least from its own on the
    representatives (or none).

    Attributes:
        rows: ``(F,)`` int64 the far representatives, ascending indices into the sample (ordered by
            :meth:`geogla.gla.prototypes.FarSample.sampled_first`): key columns ``0 .. F - 1``.
        n_far: ``F``.
        n_sampled: the sampled ones among them, columns ``0 .. n_sampled - 1`` (the central ones
            follow).
        weight: ``(F,)`` far keys each representative stands for (1 for a central one), accumulate
            dtype; ``weight_c`` the same in the compute dtype (the softmax denominators' column).
        cv_keys, cv_values: ``(K, D)``, ``(K, Dv)`` per stratum ``X_h - HT_h(x)``.
        stratum, share: ``(n_sampled,)`` the far sampled representatives' strata (int64) and
            ``w_h / F_h`` (accumulate dtype).
        counting, slot_weight: the far counts of 0/1 ``z``, counted per slot (a stratum's sampled
            representatives, at most ``_SLOT`` each) in a compute-dtype product of the sampled
            columns of ``z`` with ``counting`` (one-hot: exact whatever their shape because every
            count fits the dtype's integers), then weighed by ``slot_weight`` ``(n_slots,)`` (the
            accumulate-dtype weight of each slot's representatives).  The central ones weigh 1:
            their count is a row sum.  The last ``M`` columns of ``counting`` give each anchor's
            weighted overlap with ``z`` (``anchor_positive * weight`` in the compute dtype: it only
            chooses the anchor).
        anchor_key_fix, anchor_count_fix: ``(M + 1, D)``, ``(M + 1,)`` the estimator's error on
            each anchor's positives (row ``M``: no anchor, 0).
        anchor_size: ``(M,)`` estimated far positives of each anchor; ``anchor_scale`` their largest.
    """

    rows: Tensor
    n_far: int
    n_sampled: int
    weight: Tensor
    weight_c: Tensor
    cv_keys: Tensor
    cv_values: Tensor
    stratum: Tensor
    share: Tensor
    counting: Tensor
    slot_weight: Tensor
    anchor_key_fix: Tensor
    anchor_count_fix: Tensor
    anchor_size: Tensor
    anchor_scale: Tensor | float

    def far_counts(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Weighted far counts ``(g, r)`` (float64) of 0/1 ``z`` (its first ``F`` columns; more
        are ignored), and the anchor each row takes (``M`` for none)."""
        cdtype, adtype = self.weight_c.dtype, self.weight.dtype
        sampled = z[..., : self.n_sampled].to(cdtype)  # a bool mask without proxy rounds
        n_slots = self.slot_weight.shape[0]
        counted = (sampled @ self.counting).to(adtype)
        size = (counted[..., :n_slots] @ self.slot_weight)[..., None]  # the sampled ones'
        central = row_sum(z[..., self.n_sampled : self.n_far], torch.float64)
        if not self.anchor_size.numel():
            anchor = torch.zeros(size.shape[:-1], dtype=torch.int64, device=size.device)
        else:
            overlap = counted[..., n_slots:]
            differ = torch.cat([size + self.anchor_size - 2 * overlap, size], dim=-1)
            anchor = first_near_minimum(differ, size + self.anchor_scale)
        return size[..., 0].to(torch.float64) + central, anchor

    def _counted(self, z: Tensor) -> tuple[Tensor, Tensor | None]:
        counts = row_sum(z[..., self.n_far :], torch.float64)
        if not self.n_far:
            return counts, None
        far, anchor = self.far_counts(z)
        return counts + (far + self.anchor_count_fix[anchor]).clamp_min(0.0), anchor

    def count(self, z: Tensor) -> Tensor:
        """Row counts of 0/1 (or boolean) ``z`` ``(g, r, Tk)``: near keys exactly plus the weighted
        far count with its anchor correction (float64)."""
        return self._counted(z)[0]

    def positives(self, z: Tensor) -> tuple[Tensor, Tensor | None]:
        """Counts of the positives ``z`` (:meth:`count`) and the anchor correction to add to
        ``z @ K`` with the representatives' key rows :meth:`weighed_keys`."""
        counts, anchor = self._counted(z)
        return counts, None if anchor is None else self.anchor_key_fix[anchor]

    def weighed_keys(self, keys: Tensor) -> Tensor:
        """The far representatives' key rows ``(F, D)`` for their keys ``keys``: ``w_j k_j``, plus
        the sampled ones' shares of their strata's corrections (accumulate dtype)."""
        return self._weighed(keys, self.cv_keys)

    def weighed_values(self, values: Tensor) -> Tensor:
        """The far representatives' value rows ``(F, Dv)`` for their values, like :meth:`weighed_keys`."""
        return self._weighed(values, self.cv_values)

    def _weighed(self, x: Tensor, correction: Tensor) -> Tensor:
        rows = x.to(self.weight.dtype) * self.weight[:, None]
        rows[: self.n_sampled] += self.share[:, None] * correction[self.stratum]
        return rows

    def far_found(self, z: Tensor) -> Tensor:
        """Far representatives among the 0/1 positives ``z`` ``(r, Tk)``, per row, float64 (exact)."""
        return row_sum(z[:, : self.n_far], torch.float64)

    def without_anchor_variates(self) -> FarEstimator:
        """The same estimator with the strata's control variates only (for comparisons)."""
        return dataclasses.replace(self, anchor_key_fix=torch.zeros_like(self.anchor_key_fix),
                                   anchor_count_fix=torch.zeros_like(self.anchor_count_fix))


@dataclass(frozen=True)
class SampledSums:
    """Sums over every stratum's sampled (non-central) representatives, in all windows: a group's
    far sums are these less its near windows' few representatives (:func:`far_estimator`), not a
    new ``O(R K D)`` product per group.

    Attributes:
        keys, values: ``(K, D)``, ``(K, Dv)`` per stratum, accumulate dtype.
        anchor_count: ``(M, K)`` how many of them are each anchor's positives.
        anchor_keys: ``(M, K, D)`` the key sums of those.
        rep_values: ``(R, Dv)`` the representatives' values in the accumulate dtype.
    """

    keys: Tensor
    values: Tensor
    anchor_count: Tensor
    anchor_keys: Tensor
    rep_values: Tensor

    @classmethod
    def of(cls, sample: FarSample, anchor_positive: Tensor) -> SampledSums:
        """The sums of ``sample``'s representatives (``anchor_positive`` ``(M, R)`` as in
        :func:`far_estimator`)."""
        adtype = sample.keys.dtype
        n_strata = sample.rest_size.numel()
        member = F.one_hot(sample.stratum, n_strata).to(adtype) * (~sample.central).to(adtype)[:, None]
        rep_values = sample.values.to(adtype)
        # one anchor at a time: an (M, R, K) temporary would be 64 MiB at M = K = 64, R = 4096
        dim = sample.keys.shape[1]
        anchor_keys = torch.stack([(member * y[:, None]).T @ sample.keys for y in anchor_positive]
                                  ) if anchor_positive.shape[0] else member.new_zeros(0, n_strata, dim)
        return cls(member.T @ sample.keys, member.T @ rep_values, anchor_positive @ member, anchor_keys,
                   rep_values)


def far_estimator(
    sample: FarSample, anchor_positive: Tensor, sums: SampledSums, windows: Tensor, rest: NearRest
) -> FarEstimator:
    """The :class:`FarEstimator` of queries whose near windows are ``windows`` (``rest``: what those
    windows take out of the summary's totals; ``anchor_positive`` ``(M, R)``: which representatives
    are positives of each anchor, 0/1 in the accumulate dtype; ``sums``: the representatives'
    sums, :meth:`SampledSums.of`)."""
    near = torch.isin(sample.window, windows)
    rows = (~near).nonzero().flatten()
    weight = sample.far_weights(windows, rest.count)[rows]  # accumulate dtype: counts
    cdtype, adtype = sample.values.dtype, weight.dtype
    n_far = int(rows.numel())
    n_sampled = n_far - int(sample.central[rows].sum())
    if bool(sample.central[rows[:n_sampled]].any()):
        raise ValueError("far_estimator needs the sampled representatives first (FarSample.sampled_first)")
    device = weight.device
    n_strata = sample.rest_size.numel()
    n_anchors = anchor_positive.shape[0]

    # Strata control variates.  A far sampled representative of stratum h weighs w_h (its
    # weight); the weighted far sums per stratum are w_h times the sums over all sampled ones
    # less those in the near windows.
    idx = rows[:n_sampled]  # the far sampled ones
    stratum_of = sample.stratum[idx]
    sampled_weight = weight[:n_sampled]
    stratum_weight = torch.zeros(n_strata, dtype=adtype, device=device)
    stratum_weight[stratum_of] = sampled_weight
    near_idx = (near & ~sample.central).nonzero().flatten()
    near_member = F.one_hot(sample.stratum[near_idx], n_strata).to(adtype)  # (n, K)
    near_keys = sample.keys[near_idx]
    n_far_tokens = (sample.rest_size - rest.count).to(adtype)
    cv_keys = (sample.rest_key_sum - rest.key_sum) - stratum_weight[:, None] * (
        sums.keys - near_member.T @ near_keys)
    cv_values = (sample.rest_value_sum - rest.value_sum) - stratum_weight[:, None] * (
        sums.values - near_member.T @ sums.rep_values[near_idx])
    share = sampled_weight / n_far_tokens.clamp_min(1.0)[stratum_of]  # each one's weight / F_h

    # Slot counts: the far sampled representatives' weights are equal within a stratum, so 0/1
    # z's are counted per slot.
    order, slot = _slots(stratum_of, n_strata)
    n_slots = int(slot[-1]) + 1 if slot.numel() else 0
    counting = torch.zeros(n_sampled, n_slots + n_anchors, dtype=cdtype, device=device)
    counting[order, slot] = 1.0
    slot_weight = torch.zeros(n_slots, dtype=adtype, device=device)
    slot_weight[slot] = sampled_weight[order]

    # Anchor control variates: the estimator's error on each anchor's own far positives.
    y = anchor_positive  # (M, R)
    y_near = y[:, near_idx]
    # (M, K): HT estimates of the anchors' far positives per stratum
    per_stratum = (sums.anchor_count - y_near @ near_member) * stratum_weight
    ybar = per_stratum / n_far_tokens.clamp_min(1.0)
    weighted_keys = (sums.anchor_keys.transpose(1, 2) @ stratum_weight
                     - (y_near * stratum_weight[sample.stratum[near_idx]]) @ near_keys)  # (M, D)
    far_count = (sample.anchor_count - rest.anchor_count).to(torch.float64)
    far_sum = sample.anchor_key_sum - rest.anchor_key_sum
    zero = torch.zeros(1, cv_keys.shape[1], dtype=adtype, device=device)
    anchor_size = per_stratum.sum(dim=1)
    # not from the slot counts: whether a representative is an anchor's positive varies within a slot
    counting[:, n_slots:] = (y[:, idx] * sampled_weight).T
    return FarEstimator(
        rows=rows,
        n_far=n_far,
        n_sampled=n_sampled,
        weight=weight,
        weight_c=weight.to(cdtype),
        cv_keys=cv_keys,
        cv_values=cv_values,
        stratum=stratum_of,
        share=share,
        counting=counting,
        slot_weight=slot_weight,
        anchor_key_fix=torch.cat([far_sum - weighted_keys - ybar @ cv_keys, zero]),
        anchor_count_fix=torch.cat(
            [far_count - per_stratum.sum(dim=1).to(torch.float64), far_count.new_zeros(1)]
        ),
        anchor_size=anchor_size,
        anchor_scale=anchor_size.amax() if anchor_size.numel() else 0.0,
    )


@dataclass(frozen=True)
class WideSample:
    """The summary's wide sample, by stratum, for the first proxy round of isolated queries.

    A query whose starting key has few similar keys in the scene (say five among fifty thousand)
    finds its far positives among the representatives rarely, and then as one sampled key standing
    for tens: its first proxy stays its own key, or is pulled to a stranger, where exact attention
    moves it toward its few far positives and on to a mode.  On the context-bias scenes these
    queries made most of the labels that scalable attention changed.  The wide sample
    (:attr:`geogla.gla.prototypes.FarSample.wide_keys`, a uniform sample several times larger than
    the sampled representatives, every token on small scenes) finds them several times more often.
    A query's positives lie in the strata whose prototypes are most like it, so it scans only
    those (:meth:`nearest_strata`): on the context-bias scenes the 16 most similar of 64 strata
    held 99.8-100% of the isolated queries' wide positives and about a third of the wide keys.

    Attributes:
        mat: ``(S, Wm)`` the wide keys, grouped by stratum, as a compute-dtype key matrix
            (:func:`geogla.gla._kernels.key_matrix`).
        window: ``(S,)`` int64 window of each (-1: outside the part the sample is numbered for).
        bounds: ``K + 1`` column offsets: stratum ``h`` holds columns ``bounds[h]:bounds[h + 1]``.
        centres: ``(K, D)`` float64 prototypes.
        scanned: strata each query scans.
    """

    mat: Tensor
    window: Tensor
    bounds: tuple[int, ...]
    centres: Tensor
    scanned: int

    @classmethod
    def of(cls, sample: FarSample, cdtype: torch.dtype) -> WideSample | None:
        """The wide sample of ``sample`` (None when it has none: every token a representative)."""
        if not sample.wide_window.numel():
            return None
        n_strata = int(sample.centres.shape[0])
        stratum = sample.strata(sample.wide_keys[None])[0]
        order = torch.argsort(stratum, stable=True)
        sizes = torch.bincount(stratum, minlength=n_strata)
        bounds = (0, *torch.cumsum(sizes, 0).tolist())
        return cls(key_matrix(sample.wide_keys[order], cdtype), sample.wide_window[order], bounds,
                   sample.centres.to(torch.float64), -(-n_strata // _WIDE_STRATA_SHARE))

    def nearest_strata(self, start: Tensor) -> Tensor:
        """``(r, scanned)`` int64, ascending: the strata whose prototypes are most similar to each
        of the queries ``start`` ``(r, D)`` (in float64, so that ties do not depend on the rows
        computed together)."""
        similar = start.to(torch.float64) @ self.centres.T
        return torch.topk(similar, min(self.scanned, similar.shape[1]), dim=1).indices.sort(dim=1).values


@dataclass(frozen=True)
class IsolatedQueries:
    """The isolated queries of one call of scalable attention and what their first proxy round
    found among their near keys (:func:`wide_rounds` adds their far positives).

    Attributes:
        query: ``(n,)`` int64 row of each in the call's output.
        start: ``(n, D)`` normalised starting queries, accumulate dtype; ``self_keys`` their own keys.
        near_sum: ``(n, D)`` key sum of their positives among their near keys (accumulate dtype),
            ``near_count`` ``(n,)`` float64 their number.
        group: ``(n,)`` int64 each query's group: its row of ``near`` and ``far_tokens``.
        near: ``(G, L + 1)`` bool, column ``w + 1`` true where window ``w`` is one of the group's
            near windows (column 0: windows outside the part, never near).
        far_tokens: ``(G,)`` float64 the scene's tokens outside each group's near windows, which
            its far wide keys stand for, in equal shares.
    """

    query: Tensor
    start: Tensor
    self_keys: Tensor
    near_sum: Tensor
    near_count: Tensor
    group: Tensor
    near: Tensor
    far_tokens: Tensor


def wide_rounds(isolated: IsolatedQueries, wide: WideSample, rho: float, budget_mb: int, threads: int = 1
                ) -> tuple[Tensor, Tensor]:
    """The first proxy round of ``isolated`` queries with their far keys from ``wide``: normalised
    proxies ``(n, D)`` and float64 counts ``(n,)``.

    A wide key outside a query's near windows, in one of the strata the query scans
    (:meth:`WideSample.nearest_strata`), is a far positive where its similarity, computed as a proxy
    round computes it (:func:`geogla.gla._kernels.mark_positives`), is above ``rho``; it counts its
    share of its group's :attr:`IsolatedQueries.far_tokens`.  A query without positives keeps its own key,
    with count 1, as in :func:`geogla.gla._kernels.proxy_rounds`.  The queries of each stratum
    are taken together, in products of at most ``budget_mb``, stratum after stratum (the queries
    split between ``threads`` threads), so that a query's sums are added in the order of its strata
    and do not depend on the other queries or on the threads.
    """
    start, adtype = isolated.start, isolated.start.dtype
    n_rows, dim = start.shape
    strata = wide.nearest_strata(start)
    scanned, n_strata = int(strata.shape[1]), len(wide.bounds) - 1
    far_sum = torch.zeros(n_rows, dim, dtype=adtype, device=start.device)
    far_count = torch.zeros(n_rows, dtype=torch.float64, device=start.device)
    far = ~isolated.near[:, wide.window + 1]  # (G, S): which wide keys are far from each group
    weight = isolated.far_tokens / far.sum(dim=1).clamp_min(1).to(torch.float64)
    far_column = far.to(wide.mat.dtype)  # a product with it is faster than masked_fill_

    def scan(part: Tensor) -> None:
        """The far sums of rows ``part``, stratum after stratum (each row's in ascending order)."""
        flat = strata[part].reshape(-1)
        order = torch.argsort(flat, stable=True)
        ends = torch.cumsum(torch.bincount(flat, minlength=n_strata), 0).tolist()
        for h, (a, b) in enumerate(zip([0, *ends[:-1]], ends, strict=True)):
            c0, c1 = wide.bounds[h], wide.bounds[h + 1]
            if b == a or c1 == c0:
                continue
            mat = wide.mat[c0:c1]
            step = rows_per_block(budget_mb, c1 - c0, mat.dtype, adtype)
            for r0 in range(a, b, step):
                rows = part[order[r0 : min(r0 + step, b)] // scanned]  # each row once a stratum
                z = torch.empty(1, int(rows.numel()), c1 - c0, dtype=mat.dtype, device=mat.device)
                mark_positives(start[rows][None], mat, dim, rho, z)
                z[0].mul_(far_column[:, c0:c1].index_select(0, isolated.group[rows]))
                count = row_sum(z, torch.float64)[0]
                far_count[rows] += count
                # most rows find no far positive in most of their strata: only the others aggregate
                found = (count > 0).nonzero().flatten()
                if found.numel():
                    far_sum[rows[found]] += aggregate(z[:, found], mat, dim, adtype)[0]

    every = torch.arange(n_rows, device=start.device)
    if threads <= 1 or n_rows < 2:
        scan(every)
    else:
        _in_parallel([functools.partial(scan, part) for part in every.tensor_split(threads)])
    weight = weight[isolated.group]
    summed = isolated.near_sum + far_sum * weight.to(adtype)[:, None]
    count = isolated.near_count + far_count * weight
    empty = count == 0
    summed[empty] = isolated.self_keys[empty]
    return F.normalize(summed, dim=-1), count.masked_fill(empty, 1.0)


@dataclass(frozen=True)
class _GroupState:
    """One group loaded into the workspace: ``tk`` key columns (its far representatives, then its
    near keys), each query's own key and normalised starting query (None when not asked for),
    and its far estimator."""

    tk: int
    start: Tensor | None
    self_keys: Tensor
    terms: FarEstimator


class _Workspace:
    """Work memory of scalable attention (one per thread), allocated once and reused by every
    group and call.

    Key rows ``0 .. F - 1`` hold the group's far representatives (:attr:`FarEstimator.rows`), the
    rows after them its near keys (:meth:`load` writes both); ``R + max_near`` keys and values and
    one block of work memory, whatever the number of groups and calls.  The representatives' rows
    of the matrices that positives and numerators multiply (:attr:`weighted`, :attr:`wvals`) are
    weighed by what each stands for, with their strata's control variates
    (:meth:`FarEstimator.weighed_keys`), once a group, rather than the block's far columns, once a
    block and round.
    """

    def __init__(self, sample: FarSample, offsets: Tensor, max_near: int, config: GLAConfig,
                 cdtype: torch.dtype, adtype: torch.dtype, grid: tuple[int, int]) -> None:
        device = sample.keys.device
        self.offsets, self.config, self.grid, self.max_near = offsets, config, grid, max_near
        self.n_tokens, self.dim = sample.n_tokens, int(sample.keys.shape[1])
        rows = int(sample.token.numel()) + max_near
        # Compute-dtype keys for the proxy similarities and aggregations (with a column of ones
        # in bfloat16: see geogla/gla/_kernels.py); accumulate-dtype keys for the final
        # similarity (mask and softmax exponents) and the empty-positive fallback.
        template = torch.zeros(rows, self.dim, dtype=adtype, device=device)
        self.mat = key_matrix(template, cdtype)
        self.acc = self.mat if self.mat.dtype == adtype and self.mat.shape[1] == self.dim else template
        self.rep_mat, self.rep_keys = key_matrix(sample.keys, cdtype), sample.keys
        # weighed copies: keys for the proxy sums, values with a last column of weights (the
        # softmax denominators)
        self.weighted = torch.zeros_like(self.mat)
        self.dim_v = int(sample.values.shape[1])
        self.wvals = torch.zeros(rows, padded_width(self.dim_v + 1), dtype=cdtype, device=device)
        self.rep_values = sample.values
        self.rows = rows_per_block(config.memory_budget_mb, rows, cdtype, adtype)
        self.buffers = Buffers(min(self.rows, max_near), rows, cdtype, adtype, device)

    def load(self, group: NearGroup, near: NearWindows, terms: FarEstimator, start: bool) -> _GroupState:
        """Write ``group``'s far representatives and its near keys and values (read in ``near``);
        ``start``: compute its starting queries too."""
        slots = near.slots(group.windows.tolist())
        n, n_far = self.n_tokens, terms.n_far
        tk = n_far + int(group.windows.numel()) * n
        far_rows, near_rows = slice(0, n_far), slice(n_far, tk)
        torch.index_select(self.rep_mat, 0, terms.rows, out=self.mat[far_rows])
        near_keys = near.keys[slots].reshape(-1, self.dim)
        self.mat[near_rows, : self.dim] = near_keys
        if self.acc is not self.mat:
            torch.index_select(self.rep_keys, 0, terms.rows, out=self.acc[far_rows])
            self.acc[near_rows] = near_keys
        self.weighted[far_rows, : self.dim] = terms.weighed_keys(self.acc[far_rows, : self.dim])
        self.weighted[near_rows] = self.mat[near_rows]
        self.wvals[far_rows, : self.dim_v] = terms.weighed_values(self.rep_values.index_select(0, terms.rows))
        self.wvals[far_rows, self.dim_v] = terms.weight_c
        self.wvals[near_rows, : self.dim_v] = near.values[slots].reshape(-1, self.dim_v)
        self.wvals[near_rows, self.dim_v] = 1.0
        keys = self.acc[near_rows].view(-1, n, self.dim)
        if not start:
            return _GroupState(tk, None, keys.reshape(-1, self.dim)[group.local.to(keys.device)], terms)
        queries, self_keys = group_queries(group, keys, self.offsets, self.grid, self.config.smoothing)
        return _GroupState(tk, queries, self_keys, terms)

    def blocks(self, state: _GroupState) -> list[tuple[int, int]]:
        """Query row ranges ``(r0, r1)`` of a loaded group, at most ``rows`` rows each."""
        n_queries = int(state.self_keys.shape[0])
        return [(r0, min(r0 + self.rows, n_queries)) for r0 in range(0, n_queries, self.rows)]

    def first_round(self, state: _GroupState, r0: int, r1: int
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """The first proxy round of queries ``r0:r1`` of a group loaded with its starting queries:
        proxies ``(r, D)``, float64 counts ``(r,)``, and, for its isolated queries (fewer than
        ``_FEW_FAR_POSITIVES`` far positives among the representatives), their rows ``(k,)`` among
        the ``r`` and the key sum ``(k, D)`` and float64 number ``(k,)`` of their near positives
        (:func:`wide_rounds` redoes their round)."""
        assert state.start is not None
        tk = state.tk
        z = self.buffers.weights(1, r1 - r0, tk)
        q, counts = proxy_rounds(state.start[r0:r1][None], self.mat[:tk], self.dim,
                                 state.self_keys[r0:r1][None], self.config, z, state.terms, steps=1,
                                 weighted=self.weighted[:tk])
        isolated = (state.terms.far_found(z[0]) < _FEW_FAR_POSITIVES).nonzero().flatten()
        n_far = state.terms.n_far
        near_positive = z[0, isolated, n_far:tk].to(self.acc.dtype)
        near_sum = near_positive @ self.acc[n_far:tk]
        return q[0], counts[0], isolated, near_sum, near_positive.sum(dim=1, dtype=torch.float64)

    def proxies(self, state: _GroupState, r0: int, r1: int, first: tuple[Tensor, Tensor] | None
                ) -> tuple[Tensor, Tensor | None]:
        """Proxy anchors ``(1, r, D)`` and weighted counts ``|P_i|`` of queries ``r0:r1``, from
        their ``first`` proxies and counts (:meth:`first_round`, after :func:`wide_rounds`).

        Without ``config.proxy`` (``first`` None): the starting queries and ``None``.
        """
        if first is None:
            assert state.start is not None
            return state.start[r0:r1][None], None
        q, counts = first[0][None], first[1][None]
        if self.config.steps == 1:
            return q, counts
        # Later rounds start from proxies that have found their neighbourhood, or stay isolated in
        # exact attention too.
        tk = state.tk
        z = self.buffers.weights(1, r1 - r0, tk)
        return proxy_rounds(q, self.mat[:tk], self.dim, state.self_keys[r0:r1][None], self.config, z,
                            state.terms, steps=self.config.steps - 1, weighted=self.weighted[:tk])

    def attention(self, state: _GroupState, q: Tensor, shift: Tensor, counts: Tensor | None) -> Tensor:
        """``A V`` ``(1, r, Dv)`` for proxies ``q`` ``(1, r, D)``; ``shift`` is ``u m_i`` ``(1, r)``."""
        return attention_rows(q, self.acc[: state.tk], self.wvals[: state.tk], shift, counts, self.config,
                              self.buffers, state.terms, denominator=self.dim_v)
