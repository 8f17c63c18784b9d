"""Summaries of all keys of a scene for scalable attention: k-means strata and a stratified sample.

Pure tensor functions.  :func:`far_sample` picks a fixed number of representative tokens from all
``T = L * N`` keys.  Up to half are *central*: for each mode of the proxy iteration (GLA's proxy
rounds run from every spherical k-means prototype, :func:`proxy_modes`), the keys most similar
to it, taken with certainty.  The rest is a seeded random sample stratified by prototype, in
proportion to the strata's sizes.  :meth:`FarSample.far_weights` weighs the representatives
outside a set of near windows: a central one stands for itself, a sampled one for its share of
the far non-central tokens of its stratum (post-stratification); those in near windows get
weight 0.  Why central members: attention keeps the keys most similar to a query's proxy, which
ends near a mode, and at large ``u m_i`` only the single most similar key of the whole scene; a
random sample would miss it.  The strata's exact key and value sums (non-central tokens) serve
the control variates of geogla/gla/scalable.py.  Every step is seeded, so the same inputs give
the same sample.  Memory: ``O(T)`` integers plus ``O((samples + fit + K) D)``; keys are read in
chunks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

# k-means is fitted on a sample of this many tokens per prototype (capped at T): enough for a
# stable partition, small next to T.
_FIT_PER_PROTOTYPE = 256
_KMEANS_ITERATIONS = 10
# Tokens per chunk when all keys are assigned to their prototype.
_ASSIGN_CHUNK_TOKENS = 65536
# Up to one representative in this many is central (taken with certainty); on the hard
# synthetic scene (benchmarks/bench_scalable.py) a half changed fewer labels than a quarter.
_CENTRAL_SHARE = 2


@dataclass(frozen=True)
class FarSample:
    """Representatives of the keys and values of all windows.

    Attributes:
        token: ``(R,)`` int64 flat token index ``l * N + t`` of each representative, ascending.
        window: ``(R,)`` int64 window of each representative.
        stratum: ``(R,)`` int64 prototype (stratum) of each representative.
        central: ``(R,)`` bool, taken with certainty (a stratum's most central member).
        keys: ``(R, Dk)`` representative keys in the accumulate dtype.
        values: ``(R, Dv)`` representative values in the compute dtype.
        rest_size: ``(K,)`` int64 number of non-central tokens of every stratum.
        rest_hist: ``(L, K)`` int64 number of non-central tokens of window ``l`` in stratum ``h``.
        token_stratum: ``(T,)`` int64 stratum of every token.
        token_central: ``(T,)`` bool, whether every token is a central representative.
        rest_key_sum, rest_value_sum: ``(K, Dk)``, ``(K, Dv)`` sums of the keys and values of
            every stratum's non-central tokens, in the accumulate dtype (exact totals for the
            control variates of :class:`geogla.gla.scalable._Work`).
    """

    token: Tensor
    window: Tensor
    stratum: Tensor
    central: Tensor
    keys: Tensor
    values: Tensor
    rest_size: Tensor
    rest_hist: Tensor
    token_stratum: Tensor
    token_central: Tensor
    rest_key_sum: Tensor
    rest_value_sum: Tensor

    def far_weights(self, near_windows: Tensor) -> Tensor:
        """``(R,)`` weights of the representatives for queries whose near windows are given.

        A representative in a near window gets 0 (its key is among the exact near keys); a far
        central one 1; a far sampled one ``F_h / s_h``, where ``F_h`` is the number of far
        non-central tokens of its stratum ``h`` and ``s_h`` the number of far sampled
        representatives of ``h``.  Weighted sums over the representatives then estimate sums
        over all far keys; a stratum's far token count is reproduced exactly whenever it has a
        far sampled representative (its far non-central tokens are lost, with their sums, when
        it has none: strata are sampled in proportion to their size, at least once each).
        Weights are in ``keys.dtype``.
        """
        near = torch.isin(self.window, near_windows)
        n_far = self.rest_size - self.rest_hist[near_windows].sum(dim=0)
        sampled = ~near & ~self.central
        n_rep = torch.bincount(self.stratum[sampled], minlength=self.rest_size.numel())
        weight = (n_far.to(torch.float64) / n_rep.clamp_min(1).to(torch.float64))[self.stratum]
        weight = torch.where(self.central, torch.ones_like(weight), weight)
        return weight.masked_fill_(near, 0.0).to(self.keys.dtype)

    def far_rest_sums(
        self, near_windows: Tensor, near_keys: Tensor, near_values: Tensor
    ) -> tuple[Tensor, Tensor]:
        """``(K, Dk)`` and ``(K, Dv)`` sums of the far non-central keys and values of every stratum.

        ``near_keys`` ``(W * N, Dk)`` and ``near_values`` are the tokens of ``near_windows``
        (``W`` windows, in that order); their non-central members are subtracted from the totals.
        """
        n_tokens = near_keys.shape[0] // near_windows.numel()
        tokens = (
            near_windows[:, None] * n_tokens + torch.arange(n_tokens, device=near_windows.device)
        ).reshape(-1)
        onehot = F.one_hot(self.token_stratum[tokens], self.rest_size.numel()).to(self.rest_key_sum.dtype)
        onehot.masked_fill_(self.token_central[tokens][:, None], 0.0)
        keys = self.rest_key_sum - onehot.T @ near_keys.to(onehot.dtype)
        values = self.rest_value_sum - onehot.T @ near_values.to(onehot.dtype)
        return keys, values


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


def far_sample(
    keys: Tensor,
    values: Tensor,
    samples: int,
    prototypes: int,
    seed: int,
    adtype: torch.dtype,
    cdtype: torch.dtype,
    rho: float | None = None,
    steps: int = 0,
) -> FarSample:
    """``samples`` representatives of all windows' tokens (see :class:`FarSample`).

    Up to half of them (fewer when modes share tokens) are central: the keys most similar to the
    modes of the proxy iteration, ``samples / (2 M)`` for each of the ``M`` distinct modes.  The
    rest is a random sample stratified by k-means prototype.

    Args:
        keys: ``(L, N, Dk)`` unit keys; ``values``: ``(L, N, Dv)``.
        samples: number of representatives ``R`` (all ``T`` tokens when ``R >= T``).
        prototypes: number of k-means strata ``K``.
        seed: seed of the k-means start and of the draw.
        adtype, cdtype: dtypes of the sampled keys and values (accumulate and compute dtypes).
        rho, steps: the proxy iteration (:func:`proxy_modes`); ``rho=None``: none, the
            prototypes themselves are the modes.
    """
    n_windows, n_tokens, dim = keys.shape
    total = n_windows * n_tokens
    device = keys.device
    flat_keys = keys.reshape(total, dim)
    flat_values = values.reshape(total, -1)
    gen = torch.Generator().manual_seed(seed)
    # One random order of all tokens serves both the k-means fit sample and the stratified
    # draw (within each stratum the first tokens in this order are taken).
    order = torch.randperm(total, generator=gen).to(device)
    fit = F.normalize(flat_keys[order[: min(total, _FIT_PER_PROTOTYPE * prototypes)]].to(adtype), dim=1)
    centres = spherical_kmeans(fit, prototypes, gen, _KMEANS_ITERATIONS)
    n_strata = centres.shape[0]
    modes = distinct(proxy_modes(centres, fit, rho, steps) if rho is not None else centres)
    per_mode = 0 if samples >= total else samples // (_CENTRAL_SHARE * modes.shape[0])

    # One pass over all keys, chunk by chunk: every token's stratum, the strata's key and value
    # sums, and the running top ``per_mode`` keys of every mode.
    stratum = torch.empty(total, dtype=torch.int64, device=device)
    key_sum = torch.zeros(n_strata, dim, dtype=adtype, device=device)
    value_sum = torch.zeros(n_strata, flat_values.shape[1], dtype=adtype, device=device)
    top_score = torch.full((modes.shape[0], per_mode), -math.inf, dtype=adtype, device=device)
    top_token = torch.full((modes.shape[0], per_mode), -1, dtype=torch.int64, device=device)
    step = max(1, _ASSIGN_CHUNK_TOKENS // n_tokens) * n_tokens
    for t0 in range(0, total, step):
        chunk = flat_keys[t0 : t0 + step].to(adtype)
        member = (chunk @ centres.T).argmax(dim=1)
        stratum[t0 : t0 + step] = member
        onehot_t = F.one_hot(member, n_strata).to(adtype).T
        key_sum += onehot_t @ chunk
        value_sum += onehot_t @ flat_values[t0 : t0 + step].to(adtype)
        if per_mode:
            score = torch.cat([top_score, modes @ chunk.T], dim=1)
            token = torch.cat(
                [top_token, torch.arange(t0, t0 + chunk.shape[0], device=device).expand(len(modes), -1)],
                dim=1,
            )
            top_score, pick = torch.topk(score, per_mode, dim=1)
            top_token = torch.gather(token, 1, pick)
    window_of = torch.arange(total, device=device) // n_tokens
    hist = torch.bincount(window_of * n_strata + stratum, minlength=n_windows * n_strata).view(
        n_windows, n_strata
    )
    size = hist.sum(dim=0)

    if samples >= total:
        # Every token represents itself: exact.
        chosen = torch.arange(total, device=device)
        is_central = torch.ones(total, dtype=torch.bool, device=device)
    else:
        central = torch.unique(top_token[top_token >= 0])
        taken = torch.zeros(total, dtype=torch.bool, device=device)
        taken[central] = True
        # The rest: a stratified random sample of the other tokens.
        rest_order = order[~taken[order]]
        rest_size = size - torch.bincount(stratum[central], minlength=n_strata)
        take = allocate(rest_size, samples - central.numel())
        sampled = _first_of_each(rest_order, stratum, rest_size, take)
        chosen, slot = torch.sort(torch.cat([central, sampled]))  # token order: local gathers
        is_central = slot < central.numel()
    central_tokens = chosen[is_central]
    token_central = torch.zeros(total, dtype=torch.bool, device=device)
    token_central[central_tokens] = True
    central_onehot_t = F.one_hot(stratum[central_tokens], n_strata).to(adtype).T
    key_sum -= central_onehot_t @ flat_keys[central_tokens].to(adtype)
    value_sum -= central_onehot_t @ flat_values[central_tokens].to(adtype)
    rest_hist = hist - torch.bincount(
        window_of[central_tokens] * n_strata + stratum[central_tokens], minlength=n_windows * n_strata
    ).view(n_windows, n_strata)
    return FarSample(
        token=chosen,
        window=chosen // n_tokens,
        stratum=stratum[chosen],
        central=is_central,
        keys=flat_keys[chosen].to(adtype),
        values=flat_values[chosen].to(cdtype),
        rest_size=rest_hist.sum(dim=0),
        rest_hist=rest_hist,
        token_stratum=stratum,
        token_central=token_central,
        rest_key_sum=key_sum,
        rest_value_sum=value_sum,
    )


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


def _first_of_each(tokens: Tensor, stratum: Tensor, sizes: Tensor, take: Tensor) -> Tensor:
    """The first ``take[h]`` of ``tokens`` (in their order) of every stratum ``h``.

    ``sizes[h]`` is the number of ``tokens`` in stratum ``h``.
    """
    grouped = tokens[torch.sort(stratum[tokens], stable=True).indices]
    starts = torch.cumsum(sizes, dim=0) - sizes
    first = torch.repeat_interleave(starts - (torch.cumsum(take, dim=0) - take), take)
    return grouped[first + torch.arange(int(take.sum()), device=tokens.device)]
