"""ProxyCLIP + GLA attention over all windows of a scene (method.md section 3), memory-bounded.

Pure tensor functions: no files, no scheduling.  The entry point is :func:`attend`.

How it is computed.  Every step of the method is row-wise (a query's proxy, its similarity row,
its mean, mask and softmax depend only on that query and on all keys), so query rows are processed
in blocks whose size comes from ``GLAConfig.memory_budget_mb``; the ``T x T`` similarity is never
held whole.  Two phases:

1. proxy anchors: per block, ``steps`` rounds of ``S = Q K^T`` -> 0/1 positives -> ``P K``;
   the final queries and the exact counts ``|P_i|`` of the last round are kept (``T x D``);
2. attention: per block, ``S = Q K^T``, normalisation, masking, softmax numerator and ``E V``.

With the default two proxy steps this is six ``T x T x D`` matrix products, the minimum the exact
algorithm needs.  Means use linearity, ``mean_j(q . k_j) = q . mean_j(k_j)``: exact, ``O(D)``.
Elementwise work is done in place in buffers reused by every block; the softmax is computed as
``exp(c_i (S - max S))`` with masked entries set to 0 and one division by the row sum after
``E V``, and the scale ``c_i = w_i / temperature`` is folded into the query where it is known.

Precision (``GLAConfig.precision``).  In bfloat16 mode the proxy rounds' similarities and all
three aggregations (``P K`` twice, ``E V``) use bfloat16 operands with float32 accumulation; the
proxy similarities come out shifted by ``rho`` (see :class:`_Similarity`) so that the threshold
decisions are as exact as the operands allow.  The final similarity, which sets the mask and the
softmax exponents, is computed in float32.  Counts ``|P_i|`` are exact integers in every mode.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from geogla.errors import ConfigError
from geogla.gla.config import GLAConfig, Precision

_DEFAULT_CONFIG = GLAConfig()
# Row sums are taken over chunks of this many entries in the compute dtype (accumulated in
# float32 by torch and rounded once), then added in float32/64: 0/1 chunk sums are integers
# <= 256, exact even in bfloat16, so counts are exact for any T; and no T-wide temporary is made.
_SUM_CHUNK = 256


def attend(
    keys: Tensor,
    values: Tensor,
    config: GLAConfig = _DEFAULT_CONFIG,
    offsets: Tensor | None = None,
    grid: tuple[int, int] | None = None,
) -> Tensor:
    """Attention-weighted values of every token of every window (before CLIP's ``out_proj``).

    Args:
        keys: ``(L, N, Dk)`` float, VFM tokens of the ``L`` windows, ``N = n * n`` row-major,
            each row L2-normalised.
        values: ``(L, N, Dv)`` float, CLIP value tokens on the same grid.
        config: the method's switches and constants; ``config.memory_mode(L * N)`` chooses
            exact attention (here) or scalable attention (:mod:`geogla.gla.scalable`).
        offsets: ``(L, 2)`` int, each window's top-left ``(row, col)`` on the scene's token grid;
            needed by query smoothing and by scalable attention.
        grid: ``(rows, cols)`` of each window's tokens, ``rows * cols = N``; None: square windows.
            Used by query smoothing and by scalable attention.

    Returns:
        ``(L, N, Dv)`` tensor ``A V`` in ``values.dtype`` on ``values.device``; one attention map
        serves every head, so heads need not be split.

    Raises:
        ConfigError: ``config.smoothing`` is set, or scalable attention is chosen, but
            ``offsets`` is missing.
        ValueError: shapes, dtypes or devices of the inputs do not fit together.
    """
    _check_inputs(keys, values, offsets, config)
    if config.memory_mode(keys.shape[0] * keys.shape[1]) == "scalable":
        from geogla.gla.scalable import attend_scalable  # imports this module

        return attend_scalable(keys, values, config, offsets, grid)
    n_windows, n_tokens, dim_k = keys.shape
    dim_v = values.shape[2]
    total = n_windows * n_tokens
    cdtype, adtype = compute_dtypes(config.precision, keys)

    k_acc = keys.reshape(total, dim_k).to(adtype).contiguous()
    if config.smoothing:
        assert offsets is not None  # checked above
        q0 = smooth_queries(k_acc.view(n_windows, n_tokens, dim_k), offsets, grid).reshape(total, dim_k)
    else:
        q0 = k_acc
    q0 = F.normalize(q0, dim=-1)

    # Groups of keys that queries attend to: all T together, or each window alone.
    groups = 1 if config.kv_extension else n_windows
    per_group = total // groups
    plan = _Plan(groups, per_group, cdtype, adtype, config.memory_budget_mb)
    k_acc_g = k_acc.view(groups, per_group, dim_k)
    sim = _Similarity(k_acc_g, cdtype)
    v_c_g = values.reshape(groups, per_group, dim_v).to(cdtype).contiguous()
    q_g = q0.view(groups, per_group, dim_k)
    buffers = _Buffers(plan.block_entries, cdtype, adtype, keys.device)

    # Phase 1: proxy anchors and exact counts |P_i| of the last round.
    counts: Tensor | None = None
    if config.proxy:
        q_fin = torch.empty_like(q_g)
        counts = torch.empty(groups, per_group, dtype=torch.int64, device=keys.device)
        for g0, g1, r0, r1 in plan.blocks():
            q, cnt = _proxy_block(q_g[g0:g1, r0:r1], sim, g0, g1, r0, config, buffers)
            q_fin[g0:g1, r0:r1] = q
            counts[g0:g1, r0:r1] = cnt
        q_g = q_fin

    # Means by linearity: m_i = max(0, q_i . mean_j k_j), or one scalar per window.
    row_mean = torch.einsum("grd,gd->gr", q_g, k_acc_g.mean(dim=1))
    if config.mean == "window":
        row_mean = row_mean.reshape(n_windows, n_tokens).mean(dim=1, keepdim=True).expand(-1, n_tokens)
    mean = row_mean.reshape(groups, per_group).clamp_min(0.0)
    if config.norm == "dynamic":
        context_windows = n_windows if config.kv_extension else 1
        u = 1.0 + config.lambda1 * math.log1p(context_windows)
    else:
        u = config.beta
    shift = mean * u  # (groups, per_group): the threshold u * m_i in similarity units

    # Phase 2: attention rows, block by block.
    out = torch.empty(groups, per_group, dim_v, dtype=values.dtype, device=values.device)
    for g0, g1, r0, r1 in plan.blocks():
        blk_counts = None if counts is None else counts[g0:g1, r0:r1]
        out[g0:g1, r0:r1] = _attention_block(
            q_g[g0:g1, r0:r1], k_acc_g[g0:g1], v_c_g[g0:g1], shift[g0:g1, r0:r1], blk_counts, config, buffers
        )
    return out.view(n_windows, n_tokens, dim_v)


def smooth_queries(keys: Tensor, offsets: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
    """Starting queries of query smoothing (paper eq. 17), not yet re-normalised.

    Token ``i`` becomes the mean of itself, its (up to 8) 3 x 3 neighbours inside its own window
    and the tokens at the same scene token-grid position in the other windows that cover it.

    Args:
        keys: ``(L, N, D)`` tokens, ``N = rows * cols`` row-major.
        offsets: ``(L, 2)`` non-negative int, each window's top-left ``(row, col)`` on the
            scene token grid.
        grid: ``(rows, cols)`` of each window's tokens; None: square windows.

    Returns:
        ``(L, N, D)`` means in ``keys.dtype``.
    """
    n_windows, n_tokens, dim = keys.shape
    rows, cols = token_grid(n_tokens, grid)
    if offsets.shape != (n_windows, 2):
        raise ValueError(f"offsets must have shape ({n_windows}, 2), got {tuple(offsets.shape)}")
    off = offsets.to(device=keys.device, dtype=torch.int64)
    if bool((off < 0).any()):
        raise ValueError("window offsets must be non-negative")

    # 3 x 3 box sum inside each window (zero padding), separable: rows then columns.
    spatial = keys.view(n_windows, rows, cols, dim)
    padded = F.pad(spatial, (0, 0, 1, 1, 1, 1))
    vert = padded[:, :-2] + padded[:, 1:-1] + padded[:, 2:]
    box = (vert[:, :, :-2] + vert[:, :, 1:-1] + vert[:, :, 2:]).reshape(n_windows * n_tokens, dim)
    row_idx = torch.arange(rows, device=keys.device)
    col_idx = torch.arange(cols, device=keys.device)
    row_line = 3 - (row_idx == 0).to(torch.int64) - (row_idx == rows - 1).to(torch.int64)
    col_line = 3 - (col_idx == 0).to(torch.int64) - (col_idx == cols - 1).to(torch.int64)
    box_count = (row_line[:, None] * col_line[None, :]).reshape(1, n_tokens).expand(n_windows, -1).reshape(-1)

    # Tokens at the same scene position in other windows: scatter onto the scene token grid.
    height = int(off[:, 0].max()) + rows
    width = int(off[:, 1].max()) + cols
    pos = (off[:, 0, None, None] + row_idx[None, :, None]) * width + (off[:, 1, None, None] + col_idx[None, None, :])
    pos = pos.reshape(-1)
    flat = keys.reshape(n_windows * n_tokens, dim)
    scene_sum = torch.zeros(height * width, dim, dtype=keys.dtype, device=keys.device)
    scene_sum.index_add_(0, pos, flat)
    scene_count = torch.bincount(pos, minlength=height * width)
    others = scene_sum[pos] - flat
    others_count = scene_count[pos] - 1

    mean = (box + others) / (box_count + others_count).to(keys.dtype)[:, None]
    return mean.view(n_windows, n_tokens, dim)


def token_grid(n_tokens: int, grid: tuple[int, int] | None) -> tuple[int, int]:
    """``(rows, cols)`` of a window's ``n_tokens`` tokens: ``grid`` checked, or the square grid.

    Raises:
        ValueError: ``grid`` does not hold ``n_tokens`` tokens, or None and ``n_tokens`` is not square.
    """
    if grid is None:
        side = math.isqrt(n_tokens)
        if side * side != n_tokens:
            raise ValueError(f"{n_tokens} tokens per window are not a square grid; pass grid=(rows, cols)")
        return side, side
    rows, cols = int(grid[0]), int(grid[1])
    if rows < 1 or cols < 1 or rows * cols != n_tokens:
        raise ValueError(f"a {rows} x {cols} token grid does not hold {n_tokens} tokens per window")
    return rows, cols


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


# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """How query rows are cut into blocks that respect the memory budget."""

    groups: int
    per_group: int
    cdtype: torch.dtype
    adtype: torch.dtype
    budget_mb: int

    @property
    def _entry_bytes(self) -> int:
        # see _Buffers: similarity (accumulate dtype), weights (compute dtype, shared when the
        # dtypes agree) and one mask byte
        size = torch.empty((), dtype=self.adtype).element_size() + 1
        if self.cdtype != self.adtype:
            size += torch.empty((), dtype=self.cdtype).element_size()
        return size

    @property
    def block_rows(self) -> int:
        """Query rows per block (for one group of keys)."""
        budget = self.budget_mb * 2**20
        return max(1, min(self.per_group, budget // (self.per_group * self._entry_bytes)))

    @property
    def block_groups(self) -> int:
        """Whole groups per block when one group's rows fit in a block."""
        if self.block_rows < self.per_group:
            return 1
        budget = self.budget_mb * 2**20
        return max(1, min(self.groups, budget // (self.per_group * self.per_group * self._entry_bytes)))

    @property
    def block_entries(self) -> int:
        return self.block_groups * self.block_rows * self.per_group

    def blocks(self) -> Iterator[tuple[int, int, int, int]]:
        """``(g0, g1, r0, r1)``: groups ``g0:g1``, rows ``r0:r1`` of each."""
        rows, grp = self.block_rows, self.block_groups
        for g0 in range(0, self.groups, grp):
            for r0 in range(0, self.per_group, rows):
                yield g0, min(g0 + grp, self.groups), r0, min(r0 + rows, self.per_group)


class _Buffers:
    """Work memory of one block, allocated once and reused by every block.

    ``sim``: final similarities in the accumulate dtype; ``weights``: proxy masks and softmax
    numerators in the compute dtype (the same memory as ``sim`` when the dtypes agree);
    ``mask``: booleans.
    """

    def __init__(self, entries: int, cdtype: torch.dtype, adtype: torch.dtype, device: torch.device) -> None:
        self._sim = torch.empty(entries, dtype=adtype, device=device)
        self._weights = self._sim if cdtype == adtype else torch.empty(entries, dtype=cdtype, device=device)
        self._mask = torch.empty(entries, dtype=torch.bool, device=device)

    def sim(self, g: int, r: int, tk: int) -> Tensor:
        return self._sim[: g * r * tk].view(g, r, tk)

    def weights(self, g: int, r: int, tk: int) -> Tensor:
        return self._weights[: g * r * tk].view(g, r, tk)

    def mask(self, g: int, r: int, tk: int) -> Tensor:
        return self._mask[: g * r * tk].view(g, r, tk)


class _Similarity:
    """Products of queries with the keys of their groups, in the compute dtype.

    In float32/float64, ``similarity`` writes ``S = q K^T``.  In bfloat16 the product is
    accumulated in float32 but *stored* with 8 significant bits: a similarity near 0.6 would be
    off by up to 0.002, enough to move tokens across the thresholds ``rho`` and ``u m_i``.  So
    the keys get an extra column of ones and each query the entry ``-s_i`` (``s_i`` = the row's
    threshold, rounded to bfloat16): the product comes out as ``S - s_i``, which is near 0 exactly
    where a decision is taken, so its rounding error there is tiny.  The caller compares with
    the remainder ``shift - s_i`` that :meth:`similarity` returns.
    """

    def __init__(self, keys: Tensor, cdtype: torch.dtype) -> None:
        groups, tk, dim = keys.shape
        self.dim = dim
        self.acc = keys
        self.cdtype = cdtype
        self.shifted = torch.empty((), dtype=cdtype).element_size() < 4
        if self.shifted:
            # Pad to a multiple of 8 channels, which keeps the matrix kernels on their fast path.
            width = (dim + 1 + 7) // 8 * 8
            self.mat = torch.zeros(groups, tk, width, dtype=cdtype, device=keys.device)
            self.mat[..., :dim] = keys
            self.mat[..., dim] = 1.0
        else:
            self.mat = keys if keys.dtype == cdtype else keys.to(cdtype)

    def similarity(self, q: Tensor, shift: Tensor, g0: int, g1: int, out: Tensor) -> Tensor:
        """Write ``S - s`` for queries ``q`` ``(g, r, D)`` into ``out`` ``(g, r, Tk)``.

        ``s`` is ``shift`` ``(g, r)`` rounded to the compute dtype when the product is shifted,
        0 otherwise.  Returns ``shift - s`` in ``q.dtype``: ``S >= shift`` iff ``out >= result``.
        """
        if not self.shifted:
            torch.bmm(q.to(self.cdtype), self.mat[g0:g1].transpose(1, 2), out=out)
            return shift
        qa = torch.zeros(*q.shape[:2], self.mat.shape[2], dtype=self.cdtype, device=q.device)
        qa[..., : self.dim] = q
        s = shift.to(self.cdtype)
        qa[..., self.dim] = -s
        torch.bmm(qa, self.mat[g0:g1].transpose(1, 2), out=out)
        return shift - s.to(shift.dtype)

    def aggregate(self, weights: Tensor, g0: int, g1: int) -> Tensor:
        """``weights @ K`` ``(g, r, D)`` in the accumulate dtype, for ``weights`` ``(g, r, Tk)``."""
        return torch.bmm(weights, self.mat[g0:g1])[..., : self.dim].to(self.acc.dtype)


def _proxy_block(
    q: Tensor, sim: _Similarity, g0: int, g1: int, r0: int, config: GLAConfig, buffers: _Buffers
) -> tuple[Tensor, Tensor]:
    """Proxy rounds for one block: returns normalised proxies ``(g, r, D)`` and counts ``(g, r)``.

    ``q`` are normalised starting queries of rows ``r0:r0+r`` of groups ``g0:g1``; row ``i`` is
    key ``r0 + i`` of its group.
    """
    g, r, _ = q.shape
    tk = sim.mat.shape[1]
    z = buffers.weights(g, r, tk)
    # float64 so that rounding rho to the compute dtype below is exact in every dtype
    rho = torch.full((g, r), config.rho, dtype=torch.float64, device=q.device)
    counts = torch.zeros(g, r, dtype=torch.int64, device=q.device)
    for _ in range(config.steps):
        rest = sim.similarity(q, rho, g0, g1, z)
        # S > rho  <=>  z > rest; rounding rest down to z's dtype keeps that exact.
        torch.gt(z, _round_down(rest, z.dtype)[..., None], out=z)  # positives as 0/1, in place
        counts = _row_sum(z, torch.float64).to(torch.int64)  # exact integer sums
        summed = sim.aggregate(z, g0, g1)
        empty = counts == 0
        if bool(empty.any()):
            # P_i = {i}: the token itself.
            gi, ri = empty.nonzero(as_tuple=True)
            summed[gi, ri] = sim.acc[g0 + gi, r0 + ri]
            counts[gi, ri] = 1
        # normalize(sum / (|P_i| + 1e-6)): the division is a positive per-row scale that the
        # normalisation removes, so it is skipped.
        q = F.normalize(summed, dim=-1)
    return q, counts


def _attention_block(
    q: Tensor,
    keys: Tensor,
    values: Tensor,
    shift: Tensor,
    counts: Tensor | None,
    config: GLAConfig,
    buffers: _Buffers,
) -> Tensor:
    """``A V`` for one block of query rows ``q`` ``(g, r, D)`` against their groups' ``keys``.

    ``keys`` ``(g, Tk, D)`` are in the accumulate dtype (the final similarity decides the mask
    and the softmax exponents, so it is never rounded to bfloat16), ``values`` ``(g, Tk, Dv)`` in
    the compute dtype.  ``shift`` is ``u * m_i`` ``(g, r)``; ``counts`` the last proxy round's
    ``|P_i|`` or ``None`` (then they come from this similarity, as without proxy anchors).
    """
    g, r, _ = q.shape
    tk = keys.shape[1]
    adtype = q.dtype
    s = buffers.sim(g, r, tk)
    m = buffers.mask(g, r, tk)

    if counts is None and config.norm == "dynamic":
        # Counts come from this S, so the scale is known only after it.
        torch.bmm(q, keys.transpose(1, 2), out=s)
        torch.gt(s, _round_down(torch.tensor(config.rho, dtype=torch.float64), adtype), out=m)
        counts = _row_sum(m, torch.float64).to(torch.int64).clamp_min(1)  # empty -> {i}
        scale = (1.0 + config.lambda2 / counts.to(adtype)) / config.temperature
        late_scale: Tensor | None = scale[..., None]
    else:
        if config.norm == "dynamic":
            assert counts is not None
            scale = (1.0 + config.lambda2 / counts.to(adtype)) / config.temperature
        else:
            scale = torch.full((g, r), config.gamma / config.temperature, dtype=adtype, device=q.device)
        # s = c_i S with c_i = w_i / temperature folded into the queries; c_i > 0.
        torch.bmm(q * scale[..., None], keys.transpose(1, 2), out=s)
        shift = shift * scale
        late_scale = None

    # A~ = w (S - u m) < min(max A~, 0)  <=>  S < min(max S, u m)   (w > 0; same with c S).
    smax = s.amax(dim=-1, keepdim=True)
    torch.lt(s, torch.minimum(smax, shift[..., None]), out=m)  # masked entries
    # softmax numerator exp(c (S - max S)) <= 1, zero where masked; the row constant
    # exp(-c max S) cancels in the normalisation.
    s.sub_(smax)
    if late_scale is not None:
        s.mul_(late_scale)
    e = buffers.weights(g, r, tk)
    torch.exp(s, out=e)
    e.masked_fill_(m, 0.0)
    denom = _row_sum(e, adtype)
    numer = torch.bmm(e, values)
    return numer.to(adtype).div_(denom[..., None])


def _row_sum(z: Tensor, dtype: torch.dtype) -> Tensor:
    """Sum of ``z`` over its last dimension, in ``dtype``, without converting ``z`` whole.

    Chunks of ``_SUM_CHUNK`` entries are summed in ``z``'s dtype, the chunk sums in ``dtype``: for
    0/1 entries the result is exact (chunk sums are small integers); otherwise each chunk sum is
    rounded once to ``z``'s dtype.
    """
    *lead, tk = z.shape
    full = tk - tk % _SUM_CHUNK
    out = torch.zeros(lead, dtype=dtype, device=z.device)
    if full:
        strides = (*z.stride()[:-1], _SUM_CHUNK * z.stride()[-1], z.stride()[-1])
        chunks = z.as_strided((*lead, full // _SUM_CHUNK, _SUM_CHUNK), strides)
        out += chunks.sum(dim=-1).sum(dim=-1, dtype=dtype)
    if full < tk:
        out += z[..., full:].sum(dim=-1, dtype=dtype)
    return out


def _round_down(x: Tensor, dtype: torch.dtype) -> Tensor:
    """Largest values of ``dtype`` that are ``<= x``, elementwise.

    Then ``v > x`` iff ``v > result`` for every ``v`` representable in ``dtype``.
    """
    r = x.to(dtype)
    if dtype == x.dtype:
        return r
    high = r.to(x.dtype) > x
    return torch.where(high, torch.nextafter(r, torch.full_like(r, -math.inf)), r)


def _round_up(x: Tensor, dtype: torch.dtype) -> Tensor:
    """Smallest values of ``dtype`` that are ``>= x``, elementwise.

    Then ``v >= x`` iff ``v >= result`` for every ``v`` representable in ``dtype``.
    """
    r = x.to(dtype)
    if dtype == x.dtype:
        return r
    low = r.to(x.dtype) < x
    return torch.where(low, torch.nextafter(r, torch.full_like(r, math.inf)), r)


def _check_inputs(keys: Tensor, values: Tensor, offsets: Tensor | None, config: GLAConfig) -> None:
    if keys.ndim != 3 or values.ndim != 3:
        raise ValueError(
            f"keys and values must be (L, N, D), got shapes {tuple(keys.shape)} and {tuple(values.shape)}"
        )
    if keys.shape[:2] != values.shape[:2]:
        raise ValueError(f"keys {tuple(keys.shape)} and values {tuple(values.shape)} differ in (L, N)")
    if keys.shape[0] < 1 or keys.shape[1] < 1:
        raise ValueError(f"attention needs at least one window and one token, got {tuple(keys.shape)}")
    if not keys.is_floating_point() or not values.is_floating_point():
        raise ValueError(f"keys and values must be floating point, got {keys.dtype} and {values.dtype}")
    if keys.device != values.device:
        raise ValueError(f"keys on {keys.device} and values on {values.device}")
    if config.smoothing and offsets is None:
        raise ConfigError("query smoothing needs the windows' token offsets; pass offsets=(L, 2).")
    total = keys.shape[0] * keys.shape[1]
    if offsets is None and config.memory_mode(total) == "scalable":
        raise ConfigError(
            f"scalable attention (memory={config.memory!r}, {total} tokens, exact_max_tokens="
            f"{config.exact_max_tokens}) needs the windows' token offsets; pass offsets=(L, 2)."
        )
    if offsets is not None and (offsets.shape != (keys.shape[0], 2) or offsets.is_floating_point()):
        raise ValueError(f"offsets must be an integer tensor of shape ({keys.shape[0]}, 2)")
