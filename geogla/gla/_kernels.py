"""The kernels exact and scalable attention share: one block of query rows at a time.

Pure tensor functions (private to :mod:`geogla.gla`).  A block's queries ``q`` are ``(g, r, D)``:
``g`` groups of ``r`` rows (exact attention: whole windows or one group of all tokens; scalable
attention: ``g = 1``), each group against its own ``Tk`` keys.  Every step of the method is
row-wise, so a block needs only work memory of ``g * r * Tk`` entries (:class:`Buffers`), sized
from the memory budget (:func:`rows_per_block`).

Two phases per block (docs/method.md, section 3b):

1. :func:`proxy_rounds`: ``steps`` rounds of ``S = Q K^T`` -> 0/1 positives -> ``P K``, giving the
   final queries and the counts ``|P_i|`` of the last round;
2. :func:`attention_rows`: ``S = Q K^T``, normalisation, masking, softmax numerator and ``E V``.

Scalable attention's far keys are weighted representatives: its :class:`FarTerms` count their
columns weighted and correct the proxy sums, and the key and value rows they multiply come
weighed; exact attention uses :data:`EXACT` (every key counts once).

Precision.  The compute dtype (float32, or bfloat16: ``cdtype``) is that of the proxy
similarities and of the aggregations ``P K`` and ``E V``; the accumulate dtype (``adtype``:
float32, or float64 for float64 inputs) that of the final similarity, queries, means and softmax
sums.  In bfloat16 the keys carry an extra column of ones (:func:`key_matrix`) so that a product
comes out as ``S - s`` for a per-row threshold ``s`` (:func:`similarity`): near 0 exactly where a
decision is taken, so that rounding to 8 significant bits hardly moves tokens across ``rho``.
Counts are exact integers in every mode.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from geogla.gla.config import GLAConfig

# Each row of a block's buffers starts on a multiple of this many entries (64 bytes in float32):
# MKL's float32 products run about twice as fast into rows so aligned (784 x 7229 entries over 64
# channels: 21 ms, into rows padded to 7232: 10 ms, one thread), and the other kernels do not mind.
_ROW_ALIGN = 16

# Row sums are taken over chunks of this many entries in the compute dtype (accumulated in
# float32 by torch and rounded once), then added in float32/64: 0/1 chunk sums are integers
# <= 256, exact even in bfloat16, so counts are exact for any T; and no T-wide temporary is made.
_SUM_CHUNK = 256

# A block of similarities up to this size stays in the last-level cache between passes (32 MiB
# and more on the CPUs this project runs on); see attention_rows.
_CACHED_BLOCK_BYTES = 24 * 2**20


def entry_bytes(cdtype: torch.dtype, adtype: torch.dtype) -> int:
    """Work-memory bytes per entry of a block (:class:`Buffers`): similarity in the accumulate
    dtype, weights in the compute dtype when it differs, one mask byte."""
    size = torch.empty((), dtype=adtype).element_size() + 1
    if cdtype != adtype:
        size += torch.empty((), dtype=cdtype).element_size()
    return size


def row_stride(key_count: int) -> int:
    """Entries between the rows of a block over ``key_count`` keys (:class:`Buffers`)."""
    return -(-key_count // _ROW_ALIGN) * _ROW_ALIGN


def rows_per_block(budget_mb: int, key_count: int, cdtype: torch.dtype, adtype: torch.dtype) -> int:
    """Query rows per block so that a block's work memory over ``key_count`` keys fits ``budget_mb``."""
    return max(1, budget_mb * 2**20 // (row_stride(key_count) * entry_bytes(cdtype, adtype)))


class Buffers:
    """Work memory of one block, allocated once and reused by every block.

    ``sim``: final similarities in the accumulate dtype; ``weights``: proxy masks and softmax
    numerators in the compute dtype (the same memory as ``sim`` when the dtypes agree);
    ``mask``: booleans.  Views ``(g, r, tk)`` whose rows are :func:`row_stride` entries apart.
    """

    def __init__(self, rows: int, key_count: int, cdtype: torch.dtype, adtype: torch.dtype,
                 device: torch.device) -> None:
        """Room for ``rows`` query rows (all groups together) over at most ``key_count`` keys."""
        entries = rows * row_stride(key_count)
        self._sim = torch.empty(entries, dtype=adtype, device=device)
        self._weights = self._sim if cdtype == adtype else torch.empty(entries, dtype=cdtype, device=device)
        self._mask = torch.empty(entries, dtype=torch.bool, device=device)

    @staticmethod
    def _rows(memory: Tensor, g: int, r: int, tk: int) -> Tensor:
        stride = row_stride(tk)
        return memory[: g * r * stride].view(g, r, stride)[..., :tk]

    def sim(self, g: int, r: int, tk: int) -> Tensor:
        return self._rows(self._sim, g, r, tk)

    def weights(self, g: int, r: int, tk: int) -> Tensor:
        return self._rows(self._weights, g, r, tk)

    def mask(self, g: int, r: int, tk: int) -> Tensor:
        return self._rows(self._mask, g, r, tk)


def is_shifted(cdtype: torch.dtype) -> bool:
    """Whether products in ``cdtype`` come out shifted by a threshold (16-bit compute dtypes)."""
    return torch.empty((), dtype=cdtype).element_size() < 4


def padded_width(columns: int) -> int:
    """``columns`` rounded up to a multiple of 8, which keeps the matrix kernels on their fast path."""
    return -(-columns // 8) * 8


def key_matrix_width(dim: int, cdtype: torch.dtype) -> int:
    """Columns of the compute-dtype key matrix: ``dim``, or, shifted, ``dim`` and a column of ones
    (:func:`padded_width`)."""
    return padded_width(dim + 1) if is_shifted(cdtype) else dim


def key_matrix(keys: Tensor, cdtype: torch.dtype) -> Tensor:
    """Keys ``(..., Tk, D)`` as the compute-dtype matrix of :func:`similarity` and :func:`aggregate`."""
    dim = keys.shape[-1]
    if not is_shifted(cdtype):
        return keys if keys.dtype == cdtype else keys.to(cdtype)
    mat = torch.zeros(*keys.shape[:-1], key_matrix_width(dim, cdtype), dtype=cdtype, device=keys.device)
    mat[..., :dim] = keys
    mat[..., dim] = 1.0
    return mat


def product_into(a: Tensor, b: Tensor, out: Tensor) -> None:
    """``out = a @ b`` for ``a`` ``(g, r, k)`` and ``b`` ``(k, n)`` or ``(g, k, n)``, written in
    place into ``out`` ``(g, r, n)`` whose rows may be padded (:class:`Buffers`).

    ``torch.matmul`` copies into such an ``out`` from a temporary; ``mm`` and ``bmm`` write it
    directly.
    """
    if b.dim() == 2:
        g, r, n = out.shape
        torch.mm(a.reshape(g * r, a.shape[-1]), b, out=out.view(g * r, n))
    else:
        torch.bmm(a, b, out=out)


def similarity(q: Tensor, mat: Tensor, dim: int, shift: Tensor, out: Tensor) -> Tensor:
    """Write ``S - s`` for queries ``q`` ``(g, r, D)`` against key matrix ``mat`` into ``out``.

    ``mat`` is ``(g, Tk, W)`` or ``(Tk, W)`` (:func:`key_matrix`); ``s`` is ``shift`` ``(g, r)``
    rounded to the compute dtype when the matrix is shifted, 0 otherwise.  Returns ``shift - s``
    in ``shift.dtype``: then ``S >= shift`` iff ``out >= result``.
    """
    keys_t = mat.transpose(-1, -2)
    if mat.shape[-1] == dim:
        product_into(q.to(mat.dtype), keys_t, out)
        return shift
    qa = torch.zeros(*q.shape[:-1], mat.shape[-1], dtype=mat.dtype, device=q.device)
    qa[..., :dim] = q
    s = shift.to(mat.dtype)
    qa[..., dim] = -s
    product_into(qa, keys_t, out)
    return shift - s.to(shift.dtype)


def aggregate(weights: Tensor, mat: Tensor, dim: int, dtype: torch.dtype) -> Tensor:
    """``weights @ K`` ``(g, r, D)`` in ``dtype`` for ``weights`` ``(g, r, Tk)`` and key matrix ``mat``."""
    return torch.matmul(weights, mat)[..., :dim].to(dtype)


def row_sum(z: Tensor, dtype: torch.dtype) -> Tensor:
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


def round_down(x: Tensor, dtype: torch.dtype) -> Tensor:
    """Largest values of ``dtype`` that are ``<= x``, elementwise.

    Then ``v > x`` iff ``v > result`` for every ``v`` representable in ``dtype``.
    """
    r = x.to(dtype)
    if dtype == x.dtype:
        return r
    high = r.to(x.dtype) > x
    return torch.where(high, torch.nextafter(r, torch.full_like(r, -math.inf)), r)


def round_up(x: Tensor, dtype: torch.dtype) -> Tensor:
    """Smallest values of ``dtype`` that are ``>= x``, elementwise.

    Then ``v >= x`` iff ``v >= result`` for every ``v`` representable in ``dtype``.
    """
    r = x.to(dtype)
    if dtype == x.dtype:
        return r
    low = r.to(x.dtype) < x
    return torch.where(low, torch.nextafter(r, torch.full_like(r, math.inf)), r)


def shift_factor(config: GLAConfig, context_windows: int) -> float:
    """``u``: the multiple of the row mean ``m_i`` below which similarities are masked.

    Dynamic normalisation: ``1 + lambda1 ln(1 + L)`` with ``L`` the windows a query's keys come
    from; fixed: ``beta``.
    """
    if config.norm == "dynamic":
        return 1.0 + config.lambda1 * math.log1p(context_windows)
    return config.beta


def softmax_scale(config: GLAConfig, counts: Tensor | None, rows: tuple[int, int], dtype: torch.dtype,
                  device: torch.device) -> Tensor:
    """``c_i = w_i / temperature`` ``(g, r)`` in ``dtype``: ``w_i = 1 + lambda2 / |P_i|`` from the
    (float64) ``counts`` with dynamic normalisation, ``gamma`` with fixed normalisation."""
    if config.norm == "dynamic":
        assert counts is not None
        return ((1.0 + config.lambda2 / counts) / config.temperature).to(dtype)
    return torch.full(rows, config.gamma / config.temperature, dtype=dtype, device=device)


class FarTerms(Protocol):
    """How a block's key columns count: every one once (:data:`EXACT`), or, in scalable attention,
    far representatives weighted and their sums corrected (``geogla.gla.scalable.FarEstimator``)."""

    def count(self, z: Tensor) -> Tensor:
        """``(g, r)`` float64 row counts of the 0/1 (or boolean) ``z`` ``(g, r, Tk)``."""
        ...

    def positives(self, z: Tensor) -> tuple[Tensor, Tensor | None]:
        """Row counts of the 0/1 positives ``z`` (float64) and the correction to add to ``z @ K``,
        whose key rows are weighed by what each key stands for (:func:`proxy_rounds`)."""
        ...


class _ExactTerms:
    """Every key column counts once."""

    def count(self, z: Tensor) -> Tensor:
        return row_sum(z, torch.float64)

    def positives(self, z: Tensor) -> tuple[Tensor, Tensor | None]:
        return row_sum(z, torch.float64), None


#: :class:`FarTerms` of exact attention.
EXACT: FarTerms = _ExactTerms()


def mark_positives(q: Tensor, mat: Tensor, dim: int, rho: float, z: Tensor) -> None:
    """Write into the compute-dtype ``z`` ``(g, r, Tk)`` 1 where ``S = q K^T > rho`` and 0
    elsewhere, for queries ``q`` ``(g, r, D)`` and key matrix ``mat`` (:func:`key_matrix`): a proxy
    round's positives, exact at the threshold in every compute dtype."""
    g, r, _ = q.shape
    # float64 so that rounding rho to the compute dtype below is exact in every dtype
    threshold = torch.full((g, r), rho, dtype=torch.float64, device=q.device)
    rest = similarity(q, mat, dim, threshold, z)
    # S > rho  <=>  z > rest; rounding rest down to z's dtype keeps that exact.
    torch.gt(z, round_down(rest, z.dtype)[..., None], out=z)


def proxy_rounds(q: Tensor, mat: Tensor, dim: int, self_keys: Tensor, config: GLAConfig, z: Tensor,
                 terms: FarTerms, steps: int | None = None, weighted: Tensor | None = None
                 ) -> tuple[Tensor, Tensor]:
    """Proxy anchors of one block: normalised proxies ``(g, r, D)`` and float64 counts ``(g, r)``.

    ``q`` are the normalised starting queries, ``mat`` the key matrix of their groups'
    ``Tk`` keys, ``self_keys`` ``(g, r, D)`` each query's own key (its positive set when empty), ``z``
    a ``(g, r, Tk)`` compute-dtype buffer.  ``steps`` rounds (``config.steps`` when None); counts
    are those of the last round, and ``z`` holds its 0/1 positives.  ``weighted``: the key matrix
    whose rows are weighed by what each key stands for (``terms``), which the positives sum
    (``mat`` when None: every key once).
    """
    g, r, _ = q.shape
    counts = torch.zeros(g, r, dtype=torch.float64, device=q.device)
    for _ in range(config.steps if steps is None else steps):
        mark_positives(q, mat, dim, config.rho, z)
        counts, correction = terms.positives(z)
        summed = aggregate(z, mat if weighted is None else weighted, dim, self_keys.dtype)
        if correction is not None:
            summed += correction
        empty = counts == 0
        if bool(empty.any()):
            # P_i = {i}: the token itself.
            gi, ri = empty.nonzero(as_tuple=True)
            summed[gi, ri] = self_keys[gi, ri]
            counts[gi, ri] = 1.0
        # normalize(sum / (|P_i| + 1e-6)): the division is a positive per-row scale that the
        # normalisation removes, so it is skipped.
        q = F.normalize(summed, dim=-1)
    return q, counts


#: The softmax exponents' floor in :func:`attention_rows`: exp(-80) = 1.8e-35 is a normal float32.
EXP_FLOOR = -80.0


def attention_rows(q: Tensor, keys: Tensor, values: Tensor, shift: Tensor, counts: Tensor | None,
                   config: GLAConfig, buffers: Buffers, terms: FarTerms, denominator: int | None = None
                   ) -> Tensor:
    """``A V`` for one block of query rows ``q`` ``(g, r, D)`` against their groups' keys.

    ``keys`` ``(g, Tk, D)`` or ``(Tk, D)`` are in the accumulate dtype (the final similarity
    decides the mask and the softmax exponents, so it is never rounded to bfloat16), ``values``
    ``(..., Tk, Dv)`` in the compute dtype.  ``shift`` is ``u * m_i`` ``(g, r)``; ``counts`` the last
    proxy round's ``|P_i|`` (float64) or ``None`` (then they come from this similarity, as
    without proxy anchors).  ``denominator``: the column of ``values`` that holds what each key
    stands for, whose product with the numerators is the softmax denominator (values' rows then
    weighed by it, and the result has the columns before it); None: every key once.
    """
    g, r, _ = q.shape
    tk = keys.shape[-2]
    adtype = q.dtype
    s = buffers.sim(g, r, tk)
    m = buffers.mask(g, r, tk)
    keys_t = keys.transpose(-1, -2)

    late_scale: Tensor | None = None
    if counts is None and config.norm == "dynamic":
        # Counts come from this S, so the scale is known only after it.
        product_into(q, keys_t, s)
        torch.gt(s, round_down(torch.tensor(config.rho, dtype=torch.float64), adtype), out=m)
        counts = terms.count(m).clamp_min(1.0)  # empty -> {i}
        late_scale = softmax_scale(config, counts, (g, r), adtype, q.device)[..., None]
    else:
        scale = softmax_scale(config, counts, (g, r), adtype, q.device)
        # s = c_i S with c_i = w_i / temperature folded into the queries; c_i > 0.
        product_into(q * scale[..., None], keys_t, s)
        shift = shift * scale

    # A~ = w (S - u m) < min(max A~, 0)  <=>  S < min(max S, u m)   (w > 0; same with c S).
    smax = s.amax(dim=-1, keepdim=True)
    # zero the masked numerators below by a product with the kept entries' 0/1 bytes while the
    # block fits in cache (ten times faster than masked_fill_ there, on this project's CPU), else
    # by masked_fill_ (faster from memory when few entries are kept, exact attention's case);
    # the same bits either way (the numerators are finite)
    in_cache = s.numel() * s.element_size() <= _CACHED_BLOCK_BYTES
    threshold = torch.minimum(smax, shift[..., None])
    if in_cache:
        torch.ge(s, threshold, out=m)  # kept entries
    else:
        torch.lt(s, threshold, out=m)  # masked entries
    # softmax numerator exp(c (S - max S)) <= 1, zero where masked; the row constant
    # exp(-c max S) cancels in the normalisation.
    s.sub_(smax)
    if late_scale is not None:
        s.mul_(late_scale)
    # exp below about -87.3 (a float32 result under the smallest normal) takes a slow path, 10 to
    # 35 times slower on x86; such weights (< 1e-35, against the row maximum's 1) vanish in the
    # row's float32 sums anyway, so they are floored where exp stays fast.
    s.clamp_min_(EXP_FLOOR)
    # exp and the mask in the accumulate dtype, in place, then one conversion: exp writing a
    # 16-bit output converts element by element, three times slower than this.
    s.exp_()
    if in_cache:
        s.mul_(m.view(torch.uint8))
    else:
        s.masked_fill_(m, 0.0)
    e = buffers.weights(g, r, tk)
    if e.data_ptr() != s.data_ptr():
        e.copy_(s)
    if denominator is None:
        denom = row_sum(e, adtype)
        numer = torch.matmul(e, values).to(adtype)
    else:
        full = torch.matmul(e, values).to(adtype)
        numer, denom = full[..., :denominator], full[..., denominator].clone()
    return numer.div_(denom[..., None])
