"""Summaries of all keys of a scene for scalable attention: k-means strata and a stratified sample.

Pure tensor functions over a :class:`geogla.gla.source.WindowSource`.  :func:`summarize` reads
every window twice, in batches, and once more only the windows holding the chosen tokens; it
never holds anything of the size of the scene (no ``O(T)`` array), so a store-backed source
summarises a scene of any size in bounded memory.

It picks a fixed number of representative tokens from all ``T = L * N`` keys.  Up to half are
*central*: for each mode of the proxy iteration (GLA's proxy rounds run from every spherical
k-means prototype, :func:`proxy_modes`), the keys most similar to it, taken with certainty.  The
rest of the budget (modes share many of their top keys, so often well over half) is a seeded
random sample of the non-central keys, stratified by prototype in proportion to the strata's sizes.
:meth:`FarSample.far_weights` weighs the representatives outside a set of near windows: a central
one stands for itself, a sampled one for its share of the far non-central tokens of its stratum
(post-stratification); those in near windows get weight 0.  Why central members: attention keeps
the keys most similar to a query's proxy, which ends near a mode, and at large ``u m_i`` only the
single most similar key of the whole scene; a random sample would miss it.  The strata's exact
key and value sums (non-central tokens) serve the control variates of geogla/gla/scalable.py.

Randomness without ``O(T)`` state: every token gets a priority, a uniform draw that depends only
on ``(seed, window)`` (:func:`priorities`).  The wide sample is the tokens of lowest priority in
the scene (the k-means fit sample its first ones), and a stratum's sample its tokens of lowest
priority (a bottom-k sample is a uniform random sample); both are kept in running bounded buffers
during a pass.  The same
inputs and seed give the same summary, however the passes are batched.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor

from geogla.gla.config import GLAConfig
from geogla.gla.source import WindowSource

# k-means is fitted on a sample of this many tokens per prototype (capped at T): enough for a
# stable partition, small next to T.
_FIT_PER_PROTOTYPE = 256
_KMEANS_ITERATIONS = 10
# The wide sample (isolated queries' first proxy round, geogla/gla/scalable.py) holds this many
# tokens per representative: it finds a query's rare far positives that many times more often
# than the sampled representatives (on the context-bias scenes at 256 windows, 4096
# representatives, labels changed against exact attention, 3 seeds: 0.24 / 0.14 / 0.25% with 8 per
# representative, 0.22 / 0.12 / 0.23% with 12, 0.20 / 0.12 / 0.21% with 16, whose BER strayed
# further from exact attention's; with 3072 representatives, 16 keeps those 49152 keys: 0.24 /
# 0.15 / 0.24%, where 12 gave 0.26 / 0.16 / 0.25% and a BER 13% above exact attention's on one
# seed; each isolated query scans a quarter of it, geogla/gla/scalable.py).
_WIDE_PER_REPRESENTATIVE = 16
# Up to one representative in this many is central (taken with certainty); on the hard
# synthetic scene (benchmarks/bench_scalable.py) a half changed fewer labels than a quarter.
_CENTRAL_SHARE = 2
# Tokens read per step of a pass over all windows.
_PASS_TOKENS = 16384
# Fixed-point steps (2^-bits) of the summary's sums of keys (unit vectors) and of values: each
# term is rounded to an integer multiple of its step, so that the sums are exact integers,
# whatever the order of their terms (batching of the passes, threads, BLAS blocking).
_KEY_BITS = 36
_VALUE_BITS = 20


def sum_bits(bits: int, dtype: torch.dtype) -> int | None:
    """The fixed-point step (``2^-bits``) of the summary's sums for inputs accumulated in
    ``dtype``: None (plain float64 sums) for float64, whose sums are far finer than float32's and
    serve the tests of the exact limits."""
    return None if dtype == torch.float64 else bits


def sum_terms(x: Tensor, bits: int | None) -> Tensor:
    """``x`` as terms of :func:`exact_sums`: float64 integers, ``x`` rounded to multiples of
    ``2^-bits`` in those units (``bits`` None: ``x`` in float64)."""
    if bits is None:
        return x.to(torch.float64)
    return x.to(torch.float64, copy=True).mul_(2.0**bits).round_()


def exact_sums(weights: Tensor | None, terms: Tensor, bits: int | None) -> Tensor:
    """``weights @ terms`` (``weights`` 0/1 ``(M, n)``; None: the column sums) of
    :func:`sum_terms`, as int64 multiples of ``2^-bits``: the same integers whatever the order in
    which the terms are added (batching, threads, BLAS blocking), because every partial sum is an
    integer below ``2^53`` that float64 holds exactly.  Raises ValueError where the terms are too
    large for that.  ``bits`` None: plain float64 sums."""
    if bits is not None and terms.shape[0]:
        low, high = torch.aminmax(terms)
        largest = max(-float(low), float(high))
        if largest * terms.shape[0] >= 2.0**53:
            raise ValueError(f"{terms.shape[0]} terms up to {largest:.3g} steps are too large for exact sums")
    total = terms.sum(dim=0) if weights is None else weights.to(torch.float64) @ terms
    return total if bits is None else total.to(torch.int64)


def from_exact(total: Tensor, bits: int | None, dtype: torch.dtype) -> Tensor:
    """The sums of :func:`exact_sums` as ``dtype``."""
    scaled = total.to(torch.float64) if bits is None else total.to(torch.float64) * 2.0**-bits
    return scaled.to(dtype)


@dataclass(frozen=True)
class FarSample:
    """Representatives of the keys and values of all windows, and what the far sums need.

    Attributes:
        token: ``(R,)`` int64 flat token index ``l * N + t`` of each representative, ascending
            (:meth:`sampled_first` orders them otherwise).
        window: ``(R,)`` int64 window of each representative.
        stratum: ``(R,)`` int64 prototype (stratum) of each representative.
        central: ``(R,)`` bool, taken with certainty (a mode's most similar keys).
        keys: ``(R, Dk)`` representative keys in the accumulate dtype.
        values: ``(R, Dv)`` representative values in the compute dtype.
        centres: ``(K, Dk)`` unit prototypes in the accumulate dtype; a token's stratum is the
            prototype of largest cosine (:meth:`strata`).
        rest_size: ``(K,)`` int64 number of non-central tokens of every stratum.
        rest_key_sum, rest_value_sum: ``(K, Dk)``, ``(K, Dv)`` sums of the keys and values of
            every stratum's non-central tokens, in the accumulate dtype (exact totals for the
            control variates of :class:`geogla.gla.scalable._Work`).
        key_mean: ``(Dk,)`` mean of all ``T`` keys, accumulate dtype (the row means ``m_i``).
        anchors: ``(M, Dk)`` unit directions, accumulate dtype: the modes of the proxy iteration
            (none without proxy rounds).  Anchor ``m``'s positives are the keys ``j`` with
            ``anchors[m] . k_j > rho``, as a proxy round would take them.
        anchor_count: ``(M,)`` int64 number of every anchor's non-central positives.
        anchor_key_sum: ``(M, Dk)`` sums of their keys, accumulate dtype (exact totals for the
            anchor control variates of :class:`geogla.gla.scalable._Work`).
        wide_window: ``(S,)`` int64 window of each token of the *wide sample*: a uniform random
            sample of ``S = min(T, 12 R)`` tokens (``R = far_samples``), for the first proxy
            round of isolated queries (geogla/gla/scalable.py); empty when every token is a
            representative.
        wide_keys: ``(S, Dk)`` their keys, accumulate dtype.
        n_tokens: tokens per window ``N``.
        n_windows: windows ``L`` of the source summarised (the ``L`` of the shift ``u``).

    Windows are numbered as the source numbers them; :meth:`renumbered` gives a sample whose
    window and token ids follow another numbering (a run store's window ids, or a task's own).
    """

    token: Tensor
    window: Tensor
    stratum: Tensor
    central: Tensor
    keys: Tensor
    values: Tensor
    centres: Tensor
    rest_size: Tensor
    rest_key_sum: Tensor
    rest_value_sum: Tensor
    key_mean: Tensor
    anchors: Tensor
    anchor_count: Tensor
    anchor_key_sum: Tensor
    wide_window: Tensor
    wide_keys: Tensor
    n_tokens: int
    n_windows: int

    def strata(self, keys: Tensor) -> Tensor:
        """``(k, N)`` int64 stratum of every token of ``keys`` ``(k, N, Dk)``.

        The same function serves every pass, so a token is given the same stratum in each.
        """
        return _strata(keys.to(self.centres.dtype), self.centres)

    def window_rest(
        self, windows: Tensor, strata: Tensor, keys: Tensor, values: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Per window and stratum: the number ``(W, K)`` and the key and value sums ``(W, K, Dk)``,
        ``(W, K, Dv)`` (accumulate dtype) of the non-central tokens of ``windows`` ``(W,)``.

        ``strata`` ``(W, N)`` are their tokens' strata (:meth:`strata`), ``keys`` ``(W, N, Dk)``
        and ``values`` ``(W, N, Dv)`` their tokens.  Summed over a set of near windows, they are
        what :meth:`far_weights` and the far sums leave out.
        """
        dtype = self.rest_key_sum.dtype
        onehot = F.one_hot(strata, self.rest_size.numel()).to(dtype)  # (W, N, K)
        onehot.masked_fill_(self._central_in(windows)[..., None], 0.0)
        counts = onehot.sum(dim=1).round().to(torch.int64)
        member = onehot.transpose(1, 2)
        return counts, member @ keys.to(dtype), member @ values.to(dtype)

    def window_anchor_rest(self, windows: Tensor, keys: Tensor, rho: float) -> tuple[Tensor, Tensor]:
        """Per window and anchor: the number ``(W, M)`` and key sum ``(W, M, Dk)`` of the
        non-central tokens of ``windows`` ``(W,)`` (keys ``(W, N, Dk)``) that are the anchor's
        positives (similarity above ``rho``): what the near windows take out of
        :attr:`anchor_count` and :attr:`anchor_key_sum`."""
        dtype = self.anchor_key_sum.dtype
        k = keys.to(dtype)
        positive = anchor_positives(self.anchors, k, rho)  # (W, M, N)
        positive.masked_fill_(self._central_in(windows)[:, None, :], False)
        return positive.sum(dim=2), positive.to(dtype) @ k

    def _central_in(self, windows: Tensor) -> Tensor:
        """``(W, N)`` bool: which tokens of ``windows`` are central representatives."""
        tokens = windows[:, None] * self.n_tokens + torch.arange(self.n_tokens, device=windows.device)
        return torch.isin(tokens, self.token[self.central])

    def renumbered(self, old: Tensor, new: Tensor) -> FarSample:
        """This sample with window ``old[k]`` renamed ``new[k]`` (``old`` ascending int64; a
        token keeps its place in its window).  Representatives of windows not in ``old`` get
        window and token -1: they are never in a near window, so they stay far.  With ``new``
        ascending too, attention from the renumbered sample and a source numbered by ``new`` is
        the same as from this one."""
        old, new = old.to(self.window.device), new.to(self.window.device)

        def renamed(window: Tensor) -> Tensor:
            if old.numel() == 0:
                return torch.full_like(window, -1)
            at = torch.searchsorted(old, window).clamp_max(old.numel() - 1)
            return torch.where(old[at] == window, new[at], -1)

        window = renamed(self.window)
        token = torch.where(window >= 0, window * self.n_tokens + self.token % self.n_tokens, -1)
        return dataclasses.replace(self, window=window, token=token, wide_window=renamed(self.wide_window))

    def sampled_first(self) -> FarSample:
        """This sample with its sampled representatives first and the central ones after them,
        each in token order (the layout of geogla.gla.scalable's far products)."""
        order = torch.argsort(self.central.to(torch.uint8), stable=True)
        return dataclasses.replace(self, token=self.token[order], window=self.window[order],
                                   stratum=self.stratum[order], central=self.central[order],
                                   keys=self.keys[order], values=self.values[order])

    def far_weights(self, near_windows: Tensor, near_count: Tensor) -> Tensor:
        """``(R,)`` weights of the representatives for queries whose near windows are given.

        ``near_count`` ``(K,)`` is the number of non-central tokens of every stratum in the near
        windows (:meth:`window_rest`, summed).  A representative in a near window gets 0 (its key is among
        the exact near keys); a far central one 1; a far sampled one ``F_h / s_h``, where
        ``F_h`` is the number of far non-central tokens of its stratum ``h`` and ``s_h`` the
        number of far sampled representatives of ``h``.  Weighted sums over the representatives
        then estimate sums over all far keys; a stratum's far token count is reproduced exactly
        whenever it has a far sampled representative (its far non-central tokens are lost, with
        their sums, when it has none: strata are sampled in proportion to their size, at least
        once each).  Weights are in ``keys.dtype``.
        """
        near = torch.isin(self.window, near_windows)
        n_far = self.rest_size - near_count
        sampled = ~near & ~self.central
        n_rep = torch.bincount(self.stratum[sampled], minlength=self.rest_size.numel())
        weight = (n_far.to(torch.float64) / n_rep.clamp_min(1).to(torch.float64))[self.stratum]
        weight = torch.where(self.central, torch.ones_like(weight), weight)
        return weight.masked_fill_(near, 0.0).to(self.keys.dtype)

    def to_tensors(self) -> dict[str, Tensor]:
        """Every field as a CPU tensor (``n_tokens`` and ``n_windows`` as 0-d int64), floats as
        float32: what a run store keeps between the summary and the attend tasks (see
        :meth:`from_tensors`)."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            t = torch.tensor(value) if isinstance(value, int) else value.detach().cpu()
            out[f.name] = t.float() if t.is_floating_point() else t
        return out

    @classmethod
    def from_tensors(
        cls, data: dict[str, Tensor], cdtype: torch.dtype, adtype: torch.dtype, device: torch.device
    ) -> FarSample:
        """Rebuild a sample from :meth:`to_tensors`: representative values in ``cdtype``, other
        floats in ``adtype``, everything on ``device`` (lossless for bfloat16 and float32)."""
        kw: dict[str, object] = {}
        for f in fields(cls):
            t = data[f.name]
            if f.type in ("int", int):
                kw[f.name] = int(t)
            elif t.is_floating_point():
                kw[f.name] = t.to(device=device, dtype=cdtype if f.name == "values" else adtype)
            else:
                kw[f.name] = t.to(device)
        return cls(**kw)  # type: ignore[arg-type]


def summary_bytes(total_tokens: int, key_dim: int, value_dim: int, config: GLAConfig) -> int:
    """Bytes of :meth:`FarSample.to_tensors` for a scene of ``total_tokens`` keys, before it is
    computed: ``R = min(far_samples, T)`` representatives (their keys and values in float32, ids,
    stratum and flag), and ``K = prototypes`` strata and at most as many anchors.  ``R`` can
    exceed ``far_samples`` by up to ``K`` when the central keys leave some strata unsampled; the
    wide sample holds ``min(T, 12 R)`` keys (none when every token is a representative)."""
    reps = min(config.far_samples, total_tokens)
    strata = config.prototypes
    per_rep = 4 * (key_dim + value_dim) + 3 * 8 + 1
    per_stratum = 4 * (2 * key_dim + value_dim) + 8
    per_anchor = 4 * 2 * key_dim + 8
    wide_keys = min(_WIDE_PER_REPRESENTATIVE * config.far_samples, total_tokens)
    if config.far_samples >= total_tokens:  # every token a representative: no wide sample
        wide_keys = 0
    wide = wide_keys * (4 * key_dim + 8)
    return reps * per_rep + strata * (per_stratum + per_anchor) + wide + 4 * key_dim + 16


def anchor_positives(anchors: Tensor, keys: Tensor, rho: float) -> Tensor:
    """``(..., M, n)`` bool: which of ``keys`` ``(..., n, D)`` are positives of each anchor
    ``(M, D)`` (similarity above ``rho``).  The one rule for the summary's totals and for the
    representatives and near windows of an attend call, so that the control variates cancel."""
    return (anchors @ keys.transpose(-1, -2)) > rho


def _strata(keys: Tensor, centres: Tensor) -> Tensor:
    # One product for all windows; a token's stratum is the same in every pass (a rounding tie
    # between two prototypes, which could differ with the batch shape, would only move one token).
    return (keys @ centres.T).argmax(dim=-1)


def priorities(seed: int, windows: Sequence[int], n_tokens: int) -> Tensor:
    """``(len(windows), N)`` float64 uniform draws in ``[0, 1)``, one per token.

    A token's draw depends only on ``seed``, its window and its place in the window, so every
    pass over the windows, batched in any way, sees the same draws.
    """
    out = torch.empty(len(windows), n_tokens, dtype=torch.float64)
    gen = torch.Generator()
    for i, w in enumerate(windows):
        gen.manual_seed((int(seed) * 0x9E3779B97F4A7C15 + int(w) * 0xBF58476D1CE4E5B9 + 1) % 2**63)
        out[i] = torch.rand(n_tokens, dtype=torch.float64, generator=gen)
    return out


def _passes(n_windows: int, n_tokens: int) -> list[list[int]]:
    step = max(1, _PASS_TOKENS // n_tokens)
    return [list(range(w0, min(w0 + step, n_windows))) for w0 in range(0, n_windows, step)]


def _tokens_of(windows: Sequence[int], n_tokens: int, device: torch.device) -> Tensor:
    ids = torch.tensor(list(windows), dtype=torch.int64, device=device)
    return (ids[:, None] * n_tokens + torch.arange(n_tokens, device=device)).reshape(-1)


def summarize(
    source: WindowSource, config: GLAConfig, cdtype: torch.dtype, adtype: torch.dtype, device: torch.device
) -> FarSample:
    """The far summary of every window of ``source`` (see the module docstring).

    ``config.far_samples`` representatives ``R`` (every token when ``R >= T``),
    ``config.prototypes`` strata ``K``, seeded by ``config.seed``; the proxy modes follow
    ``config.rho`` and ``config.steps`` when ``config.proxy`` (else the prototypes are the
    modes).  Memory: ``O((9 R + fit sample + K + one pass step) D)`` (the representatives and the
    wide sample), independent of ``T``.
    """
    n_windows, n_tokens = source.n_windows, source.n_tokens
    total = n_windows * n_tokens
    samples, n_proto, seed = config.far_samples, config.prototypes, config.seed
    passes = _passes(n_windows, n_tokens)

    # Pass 1 (keys): the mean key and the wide sample (the lowest-priority tokens), whose first
    # tokens are the k-means fit sample.
    fit_size = min(total, _FIT_PER_PROTOTYPE * n_proto)
    wide_size = min(total, _WIDE_PER_REPRESENTATIVE * samples)
    kept_size = max(fit_size, wide_size)
    key_bits, value_bits = sum_bits(_KEY_BITS, adtype), sum_bits(_VALUE_BITS, adtype)
    key_sum: Tensor | None = None
    lowest_prio = torch.empty(0, dtype=torch.float64, device=device)
    lowest_token = torch.empty(0, dtype=torch.int64, device=device)
    lowest_keys: Tensor | None = None
    for ids in passes:
        keys = source.keys(ids).to(device=device, dtype=adtype)
        flat = keys.reshape(-1, keys.shape[2])
        part = exact_sums(None, sum_terms(flat, key_bits), key_bits)
        key_sum = part if key_sum is None else key_sum + part
        prio = priorities(seed, ids, n_tokens).to(device).reshape(-1)
        tokens = _tokens_of(ids, n_tokens, device)
        if lowest_keys is not None and lowest_prio.numel() >= kept_size:
            low = prio < lowest_prio.max()  # the others cannot enter the sample
            prio, flat, tokens = prio[low], flat[low], tokens[low]
        lowest_prio = torch.cat([lowest_prio, prio])
        lowest_token = torch.cat([lowest_token, tokens])
        lowest_keys = flat if lowest_keys is None else torch.cat([lowest_keys, flat])
        if lowest_prio.numel() > kept_size:
            keep = torch.topk(lowest_prio, kept_size, largest=False).indices
            lowest_prio, lowest_token, lowest_keys = lowest_prio[keep], lowest_token[keep], lowest_keys[keep]
    assert key_sum is not None and lowest_keys is not None
    key_mean = (from_exact(key_sum, key_bits, torch.float64) / total).to(adtype)
    by_priority = torch.argsort(lowest_prio)
    lowest_keys, lowest_token = lowest_keys[by_priority], lowest_token[by_priority]
    wide_keys, wide_window = lowest_keys[:wide_size], lowest_token[:wide_size] // n_tokens
    fit = F.normalize(lowest_keys[:fit_size], dim=1)
    gen = torch.Generator().manual_seed(seed)
    centres = spherical_kmeans(fit, n_proto, gen, _KMEANS_ITERATIONS)
    n_strata = centres.shape[0]
    rho = config.rho if config.proxy else None
    modes = distinct(proxy_modes(centres, fit, rho, config.steps) if rho is not None else centres)
    anchors = modes if rho is not None else modes[:0]

    if samples >= total:
        return _every_token(source, passes, centres, key_mean, anchors, cdtype, adtype, device)

    per_mode = samples // (_CENTRAL_SHARE * modes.shape[0])
    # Stratum sizes estimated from the fit sample (a uniform sample) set each stratum's share of
    # the random part; post-stratified weights later use the true sizes.
    fit_sizes = torch.bincount((fit @ centres.T).argmax(dim=1), minlength=n_strata)
    estimate = (fit_sizes.to(torch.float64) * (total / fit.shape[0])).round().to(torch.int64)
    # Each stratum's reservoir is sized for the whole budget: how many central keys coincide is
    # known only after the pass, and the sample then fills what they leave.
    take = allocate(estimate.clamp_min(1), samples).to(device)

    # Pass 2 (keys and values): strata sizes and sums, each mode's most similar keys, and each
    # stratum's lowest-priority tokens.
    size = torch.zeros(n_strata, dtype=torch.int64, device=device)
    sum_k: Tensor | None = None
    sum_v: Tensor | None = None
    top_score = torch.full((modes.shape[0], per_mode), -math.inf, dtype=adtype, device=device)
    top_token = torch.full((modes.shape[0], per_mode), -1, dtype=torch.int64, device=device)
    res_prio = torch.empty(0, dtype=torch.float64, device=device)
    res_token = torch.empty(0, dtype=torch.int64, device=device)
    res_stratum = torch.empty(0, dtype=torch.int64, device=device)
    anchor_count = torch.zeros(anchors.shape[0], dtype=torch.int64, device=device)
    anchor_sum: Tensor | None = None
    # Keys, values and strata of the current candidates (top and sample tokens), so that no
    # third pass is needed to fetch the chosen ones.
    kept = _Candidates(device, adtype)
    for ids in passes:
        keys = source.keys(ids).to(device=device, dtype=adtype)
        values = source.values(ids).to(device=device, dtype=adtype)
        member = _strata(keys, centres).reshape(-1)
        flat_k = keys.reshape(-1, keys.shape[2])
        onehot_t = F.one_hot(member, n_strata).T
        size += torch.bincount(member, minlength=n_strata)
        terms_k = sum_terms(flat_k, key_bits)
        part_k = exact_sums(onehot_t, terms_k, key_bits)
        sum_k = part_k if sum_k is None else sum_k + part_k
        part_v = exact_sums(onehot_t, sum_terms(values.reshape(flat_k.shape[0], -1), value_bits), value_bits)
        sum_v = part_v if sum_v is None else sum_v + part_v
        tokens = _tokens_of(ids, n_tokens, device)
        mode_score = modes @ flat_k.T  # one product for the anchors (= modes) and the top keys
        if rho is not None:
            positive = mode_score > rho  # anchor_positives(anchors, flat_k, rho)
            anchor_count += positive.sum(dim=1)
            part_a = exact_sums(positive, terms_k, key_bits)
            anchor_sum = part_a if anchor_sum is None else anchor_sum + part_a
        if per_mode:
            score = torch.cat([top_score, mode_score], dim=1)
            token = torch.cat([top_token, tokens.expand(len(modes), -1)], dim=1)
            top_score, pick = torch.topk(score, per_mode, dim=1)
            top_token = torch.gather(token, 1, pick)
        res_prio = torch.cat([res_prio, priorities(seed, ids, n_tokens).to(device).reshape(-1)])
        res_token = torch.cat([res_token, tokens])
        res_stratum = torch.cat([res_stratum, member])
        keep = _lowest_per_stratum(res_stratum, res_prio, take)
        res_prio, res_token, res_stratum = res_prio[keep], res_token[keep], res_stratum[keep]
        wanted = torch.unique(torch.cat([top_token[top_token >= 0], res_token]))
        kept.update(
            wanted, tokens, keys.reshape(tokens.numel(), -1), values.reshape(tokens.numel(), -1), member
        )
    assert sum_k is not None and sum_v is not None

    # The representatives: every mode's top keys with certainty, then the strata samples.
    central_tokens = torch.unique(top_token[top_token >= 0])
    candidate = ~torch.isin(res_token, central_tokens)
    res_token, res_stratum, res_prio = res_token[candidate], res_stratum[candidate], res_prio[candidate]
    # Bottom-k of the non-central tokens of each stratum (a uniform sample of them), k from the
    # budget left by the central keys.
    take = allocate(estimate.clamp_min(1), max(samples - central_tokens.numel(), n_strata)).to(device)
    sampled = res_token[_lowest_per_stratum(res_stratum, res_prio, take)]
    chosen = torch.sort(torch.cat([central_tokens, sampled])).values
    is_central = torch.isin(chosen, central_tokens)
    rep_keys, rep_values, rep_stratum = kept.rows(chosen)
    # The totals leave the central keys out, subtracted in the same fixed point (exact, whatever
    # the threads of the product).
    central_keys = sum_terms(rep_keys[is_central], key_bits)
    central_onehot_t = F.one_hot(rep_stratum[is_central], n_strata).T
    sum_k = sum_k - exact_sums(central_onehot_t, central_keys, key_bits)
    sum_v = sum_v - exact_sums(central_onehot_t, sum_terms(rep_values[is_central], value_bits), value_bits)
    if rho is not None:
        central_positive = anchor_positives(anchors, rep_keys[is_central], rho)
        anchor_count -= central_positive.sum(dim=1)
        if anchor_sum is not None:
            anchor_sum = anchor_sum - exact_sums(central_positive, central_keys, key_bits)
    anchor_sum = (torch.zeros_like(anchors) if anchor_sum is None
                  else from_exact(anchor_sum, key_bits, adtype))
    return FarSample(
        token=chosen,
        window=chosen // n_tokens,
        stratum=rep_stratum,
        central=is_central,
        keys=rep_keys,
        values=rep_values.to(cdtype),
        centres=centres,
        rest_size=size - central_onehot_t.sum(dim=1),
        rest_key_sum=from_exact(sum_k, key_bits, adtype),
        rest_value_sum=from_exact(sum_v, value_bits, adtype),
        key_mean=key_mean,
        anchors=anchors,
        anchor_count=anchor_count,
        anchor_key_sum=anchor_sum,
        wide_window=wide_window,
        wide_keys=wide_keys,
        n_tokens=n_tokens,
        n_windows=source.n_windows,
    )


def _lowest_per_stratum(stratum: Tensor, priority: Tensor, take: Tensor) -> Tensor:
    """Indices of the ``take[h]`` tokens of lowest ``priority`` (in ``[0, 1)``) of every stratum ``h``."""
    order = torch.argsort(stratum.to(torch.float64) * 2.0 + priority)
    grouped = stratum[order]
    counts = torch.bincount(grouped, minlength=take.numel())
    rank = torch.arange(order.numel(), device=order.device) - (torch.cumsum(counts, 0) - counts)[grouped]
    return order[rank < take[grouped]]


class _Candidates:
    """Keys, values and strata of a changing set of tokens, kept sorted by token."""

    def __init__(self, device: torch.device, dtype: torch.dtype) -> None:
        self.tokens = torch.empty(0, dtype=torch.int64, device=device)
        self.keys: Tensor | None = None
        self.values: Tensor | None = None
        self.strata = torch.empty(0, dtype=torch.int64, device=device)

    def update(self, wanted: Tensor, tokens: Tensor, keys: Tensor, values: Tensor, strata: Tensor) -> None:
        """Keep exactly the ascending ``wanted`` tokens: those held already, the others taken from
        this pass step's consecutive ``tokens`` (with their ``keys``, ``values``, ``strata``)."""
        old = torch.isin(wanted, self.tokens)
        at_old = torch.searchsorted(self.tokens, wanted[old])
        at_new = wanted[~old] - tokens[0]

        def merge(held: Tensor | None, fresh: Tensor) -> Tensor:
            out = fresh.new_empty((wanted.numel(), *fresh.shape[1:]))
            if held is not None:
                out[old] = held[at_old]
            out[~old] = fresh[at_new]
            return out

        self.keys, self.values = merge(self.keys, keys), merge(self.values, values)
        self.strata = merge(self.strata, strata)
        self.tokens = wanted

    def rows(self, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Keys, values and strata of ``tokens`` (a subset of the kept ones)."""
        assert self.keys is not None and self.values is not None
        at = torch.searchsorted(self.tokens, tokens)
        return self.keys[at], self.values[at], self.strata[at]


def _every_token(
    source: WindowSource,
    passes: list[list[int]],
    centres: Tensor,
    key_mean: Tensor,
    anchors: Tensor,
    cdtype: torch.dtype,
    adtype: torch.dtype,
    device: torch.device,
) -> FarSample:
    """The exact limit (``far_samples >= T``): every token represents itself with weight 1."""
    n_tokens = source.n_tokens
    total = source.n_windows * n_tokens
    keys = torch.cat(
        [source.keys(ids).to(device=device, dtype=adtype).reshape(-1, centres.shape[1]) for ids in passes]
    )
    values = torch.cat(
        [source.values(ids).to(device=device).reshape(len(ids) * n_tokens, -1) for ids in passes]
    )
    token = torch.arange(total, device=device)
    n_strata = centres.shape[0]
    return FarSample(
        token=token,
        window=token // n_tokens,
        stratum=_strata(keys.view(-1, n_tokens, keys.shape[1]), centres).reshape(-1),
        central=torch.ones(total, dtype=torch.bool, device=device),
        keys=keys,
        values=values.to(cdtype),
        centres=centres,
        rest_size=torch.zeros(n_strata, dtype=torch.int64, device=device),
        rest_key_sum=torch.zeros(n_strata, keys.shape[1], dtype=adtype, device=device),
        rest_value_sum=torch.zeros(n_strata, values.shape[1], dtype=adtype, device=device),
        key_mean=key_mean,
        anchors=anchors,
        anchor_count=torch.zeros(anchors.shape[0], dtype=torch.int64, device=device),
        anchor_key_sum=torch.zeros_like(anchors),
        wide_window=torch.zeros(0, dtype=torch.int64, device=device),
        wide_keys=keys[:0],
        n_tokens=n_tokens,
        n_windows=source.n_windows,
    )


def spherical_kmeans(points: Tensor, count: int, generator: torch.Generator, iterations: int = 10) -> Tensor:
    """``count`` unit prototypes of the unit rows of ``points`` ``(M, D)`` by spherical k-means.

    Starts from ``count`` distinct rows drawn with ``generator``; each Lloyd round assigns every
    point to the prototype of largest cosine and replaces each prototype by the normalised sum of
    its members (an empty prototype keeps its place).  Deterministic for a given generator state.
    """
    n_points = points.shape[0]
    count = min(count, n_points)
    start = torch.randperm(n_points, generator=generator)[:count].to(points.device)
    centres = points[start].clone()
    for _ in range(iterations):
        member = (points @ centres.T).argmax(dim=1)
        # member sums as one matrix product (index_add_ is slow on CPU for wide rows)
        onehot = F.one_hot(member, count).to(points.dtype)
        sums = onehot.T @ points
        sizes = torch.bincount(member, minlength=count)
        centres = torch.where((sizes > 0)[:, None], F.normalize(sums, dim=1), centres)
    return centres


def allocate(sizes: Tensor, total: int) -> Tensor:
    """Samples per stratum: ``total`` split in proportion to ``sizes``, at least 1 per non-empty one.

    Largest-remainder rounding, ties broken by stratum index; never more than a stratum holds.
    When ``total`` covers every token, every stratum is taken whole.
    """
    sizes = sizes.to(torch.int64)
    if total >= int(sizes.sum()):
        return sizes.clone()
    nonempty = (sizes > 0).to(torch.int64)
    n_nonempty = int(nonempty.sum())
    if total >= n_nonempty:
        base, rest, share = nonempty, total - n_nonempty, sizes - nonempty
    else:
        base, rest, share = torch.zeros_like(sizes), total, sizes
    exact = share.to(torch.float64) * (rest / max(int(share.sum()), 1))
    floor = exact.floor().to(torch.int64)
    left = rest - int(floor.sum())
    order = torch.sort(-(exact - floor.to(torch.float64)), stable=True).indices
    extra = torch.zeros_like(sizes)
    extra[order[:left]] = 1
    return torch.minimum(base + floor + extra, sizes)


def proxy_modes(centres: Tensor, points: Tensor, rho: float, steps: int) -> Tensor:
    """The proxy iteration of GLA started from each prototype, over sample ``points``.

    ``steps`` rounds of ``c <- normalize(sum {p : c . p > rho})`` (a prototype with no such point
    stays): where the proxies of queries near that prototype go.  ``(K, D)`` unit rows.
    """
    modes = centres
    for _ in range(steps):
        positive = ((modes @ points.T) > rho).to(points.dtype)
        moved = F.normalize(positive @ points, dim=1)
        modes = torch.where((positive.sum(dim=1) > 0)[:, None], moved, modes)
    return modes


def distinct(directions: Tensor, cosine: float = 0.999) -> Tensor:
    """The unit rows of ``directions`` that are not (nearly) a repeat of an earlier row."""
    keep: list[int] = []
    for i in range(directions.shape[0]):
        if not keep or float((directions[keep] @ directions[i]).max()) < cosine:
            keep.append(i)
    return directions[keep]
