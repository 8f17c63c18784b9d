"""Configuration of the attention over windows (docs/method.md section 3)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from geogla.errors import ConfigError

Norm = Literal["dynamic", "fixed"]
Mean = Literal["row", "window"]
#: What ``--precision`` (and ``GLAConfig.precision``) accepts.
Precision = Literal["auto", "float32", "bfloat16", "float16"]
AlgorithmChoice = Literal["exact", "scalable", "auto"]
#: How attention is computed for a config and a scene (:func:`choose_algorithm`).
Algorithm = Literal["window", "exact", "scalable", "local"]

_NORMS = ("dynamic", "fixed")
_MEANS = ("row", "window")
PRECISIONS: tuple[Precision, ...] = ("auto", "float32", "bfloat16", "float16")
_ALGORITHMS = ("exact", "scalable", "auto")


#: The version of how attention is computed for given settings; bumped when a change alters its
#: results, so that a run store's attention results from another version are recomputed (its
#: encoded windows are kept).  2: scalable attention's anchor control variates; 3: their anchor
#: choice breaks rounding-level ties by index, and far counts are weighed from exact counts; 4: the
#: far summary's sums are exact fixed-point sums, the same whatever the batching of its passes; 5:
#: isolated queries' first proxy round from the summary's wide sample; 6: block rows aligned to
#: 64 bytes (other float32 products), isolated queries' round over the far wide keys only; 7: the
#: representatives' key and value rows weighed once a group (not the far columns of every block),
#: their per-stratum sums less the near windows' (not summed anew), the wide sample's near keys
#: masked in place; 8: isolated queries scan the wide sample's strata most similar to them, a wide
#: sample of 12 times the representatives; 9: a group's key columns hold only its far
#: representatives (those in its near windows, weight 0, were columns too); 10: 3072
#: representatives by default (was 4096) and a wide sample of 16 times them (the same 49152 keys),
#: the strata's control variates folded into the representatives' key and value rows.
ATTENTION_VERSION = 10


@dataclass(frozen=True)
class GLAConfig:
    """Every switch and constant of ProxyCLIP + GLA attention; defaults are the paper's.

    Attributes:
        kv_extension: every query attends to the keys of all ``L`` windows (GLA); ``False`` keeps
            everything, proxy mining and means included, inside each window, and the dynamic
            shift then counts one window (``u = 1 + lambda1 ln 2``).
        proxy: replace each query by its proxy anchor (``steps`` rounds of positive mining).
        steps: number of proxy rounds; at least 1 (ignored without ``proxy``).
        rho: positive-set threshold on cosine similarity, strict ``>``.
        norm: ``"dynamic"`` (``u = 1 + lambda1 ln(1 + L)``, ``w_i = 1 + lambda2 / |P_i|``) or
            ``"fixed"`` (``u = beta``, ``w_i = gamma``).
        mean: ``"row"``: ``m_i`` is query ``i``'s own mean similarity over all keys it attends to
            (GLA); ``"window"``: one scalar per window, the mean of every entry of that window's
            similarity rows (ProxyCLIP).  Either mean is clamped at 0.
        lambda1, lambda2: coefficients of the dynamic normalisation.
        beta, gamma: shift and scale of the fixed normalisation.
        temperature: softmax temperature (``A = softmax(A~ / temperature)``).
        smoothing: average each starting query with its 3 x 3 neighbourhood in its window and
            with the tokens at the same scene position in overlapping windows (paper eq. 17),
            then re-normalise; needs the windows' token offsets.  It changes only the starting
            queries (also without ``kv_extension``; without ``proxy`` the final similarity uses
            them).
        memory_budget_mb: bound on the work memory of one block of query rows.  Query rows are
            processed in blocks of ``b`` rows with ``b * T * bytes <= budget``, ``T`` the number
            of keys a query sees and ``bytes`` per similarity entry 5 in float32 (similarity +
            mask byte), 7 in bfloat16 (float32 similarity, bfloat16 weights, mask byte), 9 in
            float64.  Copies of keys, values and queries (a few ``T * D``) come on top.  Speed
            is flat from about 32 MB per block up.  Scalable attention on a CPU works on one
            block per torch thread at once (each with its own work memory).
        precision: dtype of the large matrix products.  ``"float32"``; ``"bfloat16"``: the
            two proxy similarities and the three aggregations (``P K`` twice, ``A V``) take
            bfloat16 operands, while the final similarity (mask and softmax exponents), counts,
            queries, means and softmax sums stay float32 (counts are exact integers in every
            mode); ``"float16"``: the same with float16 operands (the reference's dtype); or
            ``"auto"`` (default): bfloat16 on CUDA and on CPUs with native bfloat16 arithmetic
            (AVX512-BF16 or AMX), float32 elsewhere.  float64 inputs are computed in float64
            unless a 16-bit dtype is asked for explicitly.  bfloat16 is the default
            because on structured inputs it changes no label (tests/test_gla.py); outputs
            differ from float32 by about 0.2 % (relative, median token), so ask for
            ``"float32"`` when comparing against float32 references.
        algorithm: how the global attention (``kv_extension``) is computed.  ``"exact"``: every
            query against all ``T = L * N`` keys, cost ``O(T^2 D)``.  ``"scalable"``
            (geogla/gla/scalable.py): every query against the keys of its *near* windows,
            exactly, plus ``far_samples`` weighted representatives of all other keys (the keys
            closest to the modes of the proxy iteration, and a sample stratified by k-means
            prototype); cost ``O(T (near + far_samples) D)``, linear in the scene; needs the
            windows' offsets.  Row means ``m_i``, ``u`` and the near keys stay exact; the far
            part is an estimate (see the module's limits).  ``"auto"`` (default): exact while
            ``T <= exact_max_tokens``, scalable above.  Without ``kv_extension`` attention is
            per window (already linear) and this option is ignored (:func:`choose_algorithm`).
        exact_max_tokens: the ``"auto"`` rule's threshold on ``T``.  The default 32,768 (41
            windows of 784 tokens) keeps exact attention where it is affordable everywhere
            (about 30 s on two CPU cores; its memory, a few ``T x D`` copies besides the
            budgeted blocks, is small there) and scalable attention would gain less than about
            4x (benchmarks/bench_scalable.py).  Raise it on a GPU: exact is the reference.
        near_radius: scalable mode: a query's near windows are those whose extent, grown by this
            many tokens on every side, contains the query's scene position (0: the windows that
            cover it, which hold its overlap duplicates and spatial neighbours).
        far_samples: scalable mode: number of representatives of the far keys; when it is at
            least ``T`` every key represents itself and the result is exact.  The summary also
            keeps a uniform sample of ``16 far_samples`` keys (the wide sample) for the queries
            whose few similar keys the representatives miss.
        prototypes: scalable mode: number of spherical k-means prototypes that stratify the
            sample and start the proxy modes.
        seed: scalable mode: seed of the k-means initialisation and of the sample; the same
            inputs and seed give the same outputs.
        context_radius: bound on a query's context, in tokens (None: the whole scene, GLA as
            published).  Set, a query attends exactly to the keys of the windows whose extent,
            grown by this many tokens on every side, contains its scene position, and to no
            other (row means ``m_i`` and the ``L`` of ``u`` from those windows too): its result
            depends on those windows only, so a scene processed in pieces gives the labels of the
            whole inside every piece, more than the radius away from the piece's edges
            (:func:`choose_algorithm` gives ``"local"``, geogla/gla/local.py; ``algorithm``,
            ``exact_max_tokens`` and the scalable options are then unused).  Cost
            ``O(T n_context D)``.  Needs ``mean="row"``.
    """

    kv_extension: bool = True
    proxy: bool = True
    steps: int = 2
    rho: float = 0.6
    norm: Norm = "dynamic"
    mean: Mean = "row"
    lambda1: float = 0.3
    lambda2: float = 30.0
    beta: float = 1.2
    gamma: float = 3.0
    temperature: float = 1.0
    smoothing: bool = False
    memory_budget_mb: int = 1024
    precision: Precision = "auto"
    algorithm: AlgorithmChoice = "auto"
    exact_max_tokens: int = 32768
    near_radius: int = 0
    far_samples: int = 3072
    prototypes: int = 64
    seed: int = 0
    context_radius: int | None = None

    def __post_init__(self) -> None:
        _check_fields(self, ("kv_extension", "proxy", "smoothing"), _is_bool, "true or false")
        _check_fields(self, ("steps", "memory_budget_mb", "exact_max_tokens", "far_samples", "prototypes"),
                      lambda v: _is_int(v) and v >= 1, "a whole number of at least 1")
        _check_fields(self, ("near_radius", "seed"), lambda v: _is_int(v) and v >= 0,
                      "a whole number of at least 0")
        _check_fields(self, ("rho", "lambda1", "lambda2", "beta", "gamma", "temperature"),
                      lambda v: _is_number(v) and math.isfinite(v), "a finite number")
        # Positive scales keep A~ increasing in S, which the masking rule relies on.
        _check_fields(self, ("lambda1", "lambda2"), lambda v: v >= 0, "negative", verb="not be")
        _check_fields(self, ("gamma", "temperature"), lambda v: v > 0, "positive")
        for name, allowed in (("norm", _NORMS), ("mean", _MEANS), ("precision", PRECISIONS),
                              ("algorithm", _ALGORITHMS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"GLA option {name} must be one of {', '.join(allowed)}, "
                                  f"got {getattr(self, name)!r}.")
        if self.context_radius is not None:
            _check_fields(self, ("context_radius",), lambda v: _is_int(v) and v >= 0,
                          "a whole number of at least 0 (or null)")
            if self.kv_extension and self.mean != "row":
                raise ConfigError("GLA option context_radius needs mean 'row' (one mean per window "
                                  "would reach beyond the radius).")

    @classmethod
    def proxyclip(cls, **overrides: Any) -> GLAConfig:
        """The ProxyCLIP baseline (docs/method.md 3a): each window alone, no proxy, fixed beta/gamma.

        The mean is one scalar per window (the mean of every entry of ``K_l K_l^T``; it is
        ``|mean_j k_j|^2 >= 0``, so the clamp at 0 never acts) and entries with
        ``gamma (S - beta s_bar) < 0`` are masked.  A row whose every entry is below 0 keeps its
        maximum instead of becoming all ``-inf`` (NaN in the authors' code); for every row with a
        non-negative entry this is exactly "mask below 0".  The baseline is cheap (``N x N`` per
        window), so it computes in float32 by default.  ``overrides`` replace any field.
        """
        base: dict[str, Any] = {
            "kv_extension": False,
            "proxy": False,
            "norm": "fixed",
            "mean": "window",
            "precision": "float32",
        }
        base.update(overrides)
        return cls(**base)

    def to_json(self) -> dict[str, Any]:
        """All fields as a plain JSON-serialisable dict (for run stores)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GLAConfig:
        """Rebuild a config from :meth:`to_json` output; missing fields take their defaults."""
        if not isinstance(data, dict):
            raise ConfigError(f"a GLA configuration must be a mapping, got {type(data).__name__}.")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown GLA option(s): {', '.join(map(str, unknown))}.")
        return cls(**data)


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_fields(config: GLAConfig, names: tuple[str, ...], ok: Callable[[Any], bool], what: str,
                  verb: str = "be") -> None:
    """Raise :class:`ConfigError` naming the first of ``names`` whose value is not ``ok``: "GLA
    option NAME must be WHAT, got VALUE."."""
    for name in names:
        value = getattr(config, name)
        if not ok(value):
            raise ConfigError(f"GLA option {name} must {verb} {what}, got {value!r}.")


def choose_algorithm(config: GLAConfig, total_tokens: int) -> Algorithm:
    """How attention over a scene of ``total_tokens = L * N`` tokens is computed under ``config``:
    the one rule that :func:`geogla.gla.attend` and a run's stages follow.

    ``"window"``: each window alone (no key-value extension; exact and already linear);
    ``"local"``: every query against the keys within ``context_radius`` (when set), exactly
    (geogla/gla/local.py); ``"exact"``: every query against all ``T`` keys, for
    ``algorithm="exact"``, and for ``algorithm="auto"`` while ``total_tokens <= exact_max_tokens``;
    ``"scalable"`` otherwise (geogla/gla/scalable.py).
    """
    if not config.kv_extension:
        return "window"
    if config.context_radius is not None:
        return "local"
    if config.algorithm == "exact" or (
        config.algorithm == "auto" and total_tokens <= config.exact_max_tokens
    ):
        return "exact"
    return "scalable"
