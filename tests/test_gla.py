"""Tests of geogla.gla: the attention of docs/method.md section 3, pinned with hand-checked cases."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from geogla.errors import ConfigError
from geogla.gla import GLAConfig, _kernels, attend, smooth_queries
from geogla.gla._kernels import Buffers, product_into
from geogla.gla.exact import BlockPlan
from geogla.gla.synthetic import structured_scene

U_L1 = 1.0 + 0.3 * math.log(2.0)  # dynamic shift u for one window


# ---------------------------------------------------------------------------------------------
# An independent, literal reference: everything materialised, float64, loops where clearer.


def _ref_smooth(keys: Tensor, offsets: Tensor) -> Tensor:
    n_windows, n_tokens, _ = keys.shape
    side = math.isqrt(n_tokens)
    out = torch.empty_like(keys)
    offs = offsets.tolist()
    for w in range(n_windows):
        for r in range(side):
            for c in range(side):
                members = []
                for dr in (-1, 0, 1):
                    for dc in (-1, 0, 1):
                        if 0 <= r + dr < side and 0 <= c + dc < side:
                            members.append(keys[w, (r + dr) * side + c + dc])
                gr, gc = offs[w][0] + r, offs[w][1] + c
                for o in range(n_windows):
                    lr, lc = gr - offs[o][0], gc - offs[o][1]
                    if o != w and 0 <= lr < side and 0 <= lc < side:
                        members.append(keys[o, lr * side + lc])
                out[w, r * side + c] = torch.stack(members).mean(dim=0)
    return out


def _ref_group(q0: Tensor, k: Tensor, v: Tensor, cfg: GLAConfig, n_ctx: int, n_tokens: int) -> Tensor:
    """Attention of queries ``q0`` over keys ``k`` (row i of q0 belongs to key i), literally."""
    t = k.shape[0]
    eye = torch.arange(t)
    q = F.normalize(q0, dim=1)

    def positives(s: Tensor) -> Tensor:
        p = s > cfg.rho
        empty = ~p.any(dim=1)
        p[empty, eye[empty]] = True
        return p

    if cfg.proxy:
        for _ in range(cfg.steps):
            p = positives(q @ k.T)
            size = p.sum(dim=1).double()
            q = F.normalize((p.double() @ k) / (size[:, None] + 1e-6), dim=1)
        s = q @ k.T
    else:
        s = q @ k.T
        size = positives(s).sum(dim=1).double()
    if cfg.mean == "row":
        m = s.mean(dim=1)
    else:
        m = torch.stack([s[i : i + n_tokens].mean() for i in range(0, t, n_tokens)]).repeat_interleave(
            n_tokens
        )
    m = m.clamp_min(0.0)
    if cfg.norm == "dynamic":
        u = 1.0 + cfg.lambda1 * math.log(1.0 + n_ctx)
        w = 1.0 + cfg.lambda2 / size
    else:
        u = cfg.beta
        w = torch.full((t,), cfg.gamma, dtype=torch.float64)
    a = w[:, None] * (s - u * m[:, None])
    amax = a.max(dim=1, keepdim=True).values
    a = a.masked_fill(a < torch.clamp(amax, max=0.0), -math.inf)
    return torch.softmax(a / cfg.temperature, dim=1) @ v


def reference(keys: Tensor, values: Tensor, cfg: GLAConfig, offsets: Tensor | None = None) -> Tensor:
    keys, values = keys.double(), values.double()
    n_windows, n_tokens, dim = keys.shape
    q0 = _ref_smooth(keys, offsets) if cfg.smoothing and offsets is not None else keys
    if cfg.kv_extension:
        flat = _ref_group(
            q0.reshape(-1, dim),
            keys.reshape(-1, dim),
            values.reshape(-1, values.shape[2]),
            cfg,
            n_windows,
            n_tokens,
        )
        return flat.view(n_windows, n_tokens, -1)
    return torch.stack([_ref_group(q0[w], keys[w], values[w], cfg, 1, n_tokens) for w in range(n_windows)])


def _clustered(n_windows: int, side: int, dim: int, dv: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """Small float64 inputs with clusters, so positive sets are neither empty nor everything."""
    scene = structured_scene(
        window_rows=1,
        window_cols=n_windows,
        side=side,
        dim=dim,
        dim_v=dv,
        classes=3,
        regions=4,
        objects=1,
        key_noise=0.6,
        seed=seed,
    )
    return scene.keys.double(), scene.values.double(), scene.offsets


def _keys(*rows: tuple[float, ...]) -> Tensor:
    return torch.tensor(rows, dtype=torch.float64)


# ---------------------------------------------------------------------------------------------
# Blocked computation == literal reference.

CONFIGS = {
    "default": GLAConfig(),
    "no_kv_extension": GLAConfig(kv_extension=False),
    "no_proxy": GLAConfig(proxy=False),
    "fixed": GLAConfig(norm="fixed"),
    "window_mean": GLAConfig(mean="window"),
    "steps3_temp": GLAConfig(steps=3, rho=0.5, temperature=0.5),
    "smoothing": GLAConfig(smoothing=True),
    "proxyclip": GLAConfig.proxyclip(),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_attend_matches_reference(name: str) -> None:
    keys, values, offsets = _clustered(3, 4, 16, 5, seed=1)
    cfg = CONFIGS[name]
    want = reference(keys, values, cfg, offsets)
    got = attend(keys, values, cfg, offsets=offsets)
    assert got.dtype == torch.float64 and got.shape == (3, 16, 5)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", ["default", "no_kv_extension", "no_proxy", "window_mean", "smoothing"])
def test_tiny_budget_forces_many_blocks_same_result(name: str) -> None:
    # T = 1024 keys: a 1 MiB budget at 9 bytes per entry gives blocks of 113 rows (10 blocks,
    # the last one partial); without kv extension, one 256 x 256 window per block.
    keys, values, offsets = _clustered(4, 16, 16, 3, seed=2)
    cfg = CONFIGS[name]
    f64 = torch.float64
    tiny = (
        BlockPlan.for_budget(1, 1024, 1, f64, f64)
        if cfg.kv_extension
        else BlockPlan.for_budget(4, 256, 1, f64, f64)
    )
    assert len(list(tiny.blocks())) == (10 if cfg.kv_extension else 4)
    big = attend(keys, values, cfg, offsets=offsets)
    small = attend(keys, values, GLAConfig(**{**cfg.to_json(), "memory_budget_mb": 1}), offsets=offsets)
    torch.testing.assert_close(small, big, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(big, reference(keys, values, cfg, offsets), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("algorithm", ["exact", "scalable"])
def test_masked_numerators_zeroed_in_or_out_of_cache_give_the_same_bits(
    algorithm: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # attention_rows zeroes masked numerators by a product with the mask's bytes for blocks that
    # fit in cache and by masked_fill_ for larger ones: the same numbers either way.
    keys, values, offsets = _clustered(4, 16, 16, 3, seed=5)
    cfg = GLAConfig(algorithm=algorithm, far_samples=96, prototypes=4)  # type: ignore[arg-type]
    in_cache = attend(keys.float(), values.float(), cfg, offsets=offsets)
    monkeypatch.setattr(_kernels, "_CACHED_BLOCK_BYTES", 0)
    assert torch.equal(attend(keys.float(), values.float(), cfg, offsets=offsets), in_cache)


def test_bfloat16_blocked_matches_unblocked() -> None:
    keys, values, _ = _clustered(4, 16, 16, 3, seed=8)
    keys, values = keys.float(), values.float()
    cfg = GLAConfig(precision="bfloat16")
    # 7 bytes per entry (float32 similarity, bfloat16 weights, mask): 146 rows, 8 blocks
    assert len(list(BlockPlan.for_budget(1, 1024, 1, torch.bfloat16, torch.float32).blocks())) == 8
    small = attend(keys, values, GLAConfig(precision="bfloat16", memory_budget_mb=1))
    torch.testing.assert_close(small, attend(keys, values, cfg), rtol=0, atol=1e-3)


def test_float32_inputs_match_reference_closely() -> None:
    keys, values, _ = _clustered(3, 4, 16, 5, seed=3)
    got = attend(keys.float(), values.float(), GLAConfig(precision="float32"))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), reference(keys, values, GLAConfig()), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Hand-checked semantics.


def test_empty_positive_set_falls_back_to_the_token_itself() -> None:
    # rho = 1: no similarity is strictly above it, so every P_i = {i}, |P_i| = 1, w_i = 31 and
    # each proxy is the token's own key.  Without the fallback the proxies would be zero.
    keys = _keys((1.0, 0.0), (0.0, 1.0), (0.6, 0.8))[None]
    values = torch.eye(3, dtype=torch.float64)[None]
    out = attend(keys, values, GLAConfig(rho=1.0))[0]
    # Row 0: S = (1, 0, .6), m = .5333, u m = .6442: only itself is kept.
    torch.testing.assert_close(out[0], torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    # Row 1: S = (0, 1, .8), u m = .7248: keeps 1 and .8 with weights 1 and exp(31 (.8 - 1)).
    e = math.exp(-31 * 0.2)
    torch.testing.assert_close(out[1], torch.tensor([0.0, 1.0, e], dtype=torch.float64) / (1 + e))
    torch.testing.assert_close(out[2], torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))


def test_similarity_exactly_rho_is_not_positive() -> None:
    # Without proxy, |P_i| comes from S = K K^T.  Row 0: S = (1, .6, .9), .6 is exactly rho.
    # Strict ">": P_0 = {0, 2}, w = 16; with lambda1 = 0 (u = 1) m = .8333 keeps (1, .9) with
    # weights 1, exp(16 (.9 - 1)).  Were the tie counted, w = 11 and the weight exp(-1.1).
    keys = _keys((1.0, 0.0), (0.6, 0.8), (0.9, math.sqrt(0.19)))[None]
    values = torch.eye(3, dtype=torch.float64)[None]
    for rho, w in ((0.6, 16.0), (0.6 - 1e-12, 11.0)):
        out = attend(keys, values, GLAConfig(proxy=False, lambda1=0.0, rho=rho))[0]
        e = math.exp(-w * 0.1)
        torch.testing.assert_close(out[0], torch.tensor([1.0, 0.0, e], dtype=torch.float64) / (1 + e))


def test_proxy_step_excludes_ties() -> None:
    # k0 . k1 = .6 exactly.  Strict ">" leaves P_0 = {0}, P_1 = {1}: the proxies are the keys,
    # w = 31 and u m = .966 keeps only the token itself.  Counting the tie would make both
    # proxies the bisector, so both rows would be equal.
    keys = _keys((1.0, 0.0), (0.6, 0.8))[None]
    values = torch.eye(2, dtype=torch.float64)[None]
    out = attend(keys, values, GLAConfig(rho=0.6))[0]
    torch.testing.assert_close(out, torch.eye(2, dtype=torch.float64))
    below = attend(keys, values, GLAConfig(rho=0.6 - 1e-12))[0]
    assert torch.equal(below[0], below[1])


def test_rho_rounding_in_bfloat16_keeps_strict_threshold() -> None:
    # S = 0.625 > rho = 0.624, but 0.624 rounds to 0.625 in bfloat16: a naive comparison would
    # drop the positive.  Kept: both proxies are the bisector, S rows are equal and (fixed
    # norm, low beta keeps both) each row averages both values.  Dropped: proxy = own key,
    # S_0 = (1, .625) and row 0 would be (1, exp(3 (.625 - 1))) / sum = (.76, .24).
    keys = _keys((1.0, 0.0), (0.625, math.sqrt(1 - 0.625**2)))[None]
    values = torch.eye(2, dtype=torch.float64)[None]
    cfg = GLAConfig(rho=0.624, precision="bfloat16", norm="fixed", beta=0.5, gamma=3.0)
    out = attend(keys.float(), values.float(), cfg)[0].double()
    torch.testing.assert_close(out, reference(keys, values, cfg)[0], rtol=0, atol=1e-2)
    torch.testing.assert_close(out, torch.full((2, 2), 0.5, dtype=torch.float64), rtol=0, atol=1e-2)


def test_negative_row_mean_is_clamped_to_zero() -> None:
    # Row 0: S = (1, -1, -1, -.1), mean -.275.  Clamped, u m = 0 keeps only S >= 0: itself.
    # Unclamped (u = beta = 1.2: -.33) it would keep -.1 with weight exp(-1.1) = .33.
    keys = _keys((1.0, 0.0), (-1.0, 0.0), (-1.0, 0.0), (-0.1, math.sqrt(0.99)))[None]
    values = torch.eye(4, dtype=torch.float64)[None]
    out = attend(keys, values, GLAConfig(proxy=False, norm="fixed", gamma=1.0))[0]
    torch.testing.assert_close(out[0], torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64))


def test_row_entirely_below_zero_keeps_its_maximum() -> None:
    # ProxyCLIP: keys a, a, a, b with a . b = .9: s_bar = (9 + 6 * .9 + 1) / 16 = .9625 and
    # beta s_bar = 1.155 exceeds every similarity, so every A~ of every row is negative.  The
    # authors' "mask A~ < 0" would give all -inf (NaN); we keep each row's maximum.
    a, b = (1.0, 0.0), (0.9, math.sqrt(1 - 0.81))
    keys = _keys(a, a, a, b)[None]
    values = torch.eye(4, dtype=torch.float64)[None]
    out = attend(keys, values, GLAConfig.proxyclip())[0]
    assert torch.isfinite(out).all()
    third = torch.tensor([1 / 3, 1 / 3, 1 / 3, 0.0], dtype=torch.float64)
    torch.testing.assert_close(out, torch.stack([third, third, third, torch.eye(4, dtype=torch.float64)[3]]))


def test_single_window_gla_equals_window_local_gla() -> None:
    keys, values, _ = _clustered(1, 4, 16, 5, seed=4)
    one = attend(keys, values, GLAConfig())
    torch.testing.assert_close(one, attend(keys, values, GLAConfig(kv_extension=False)), rtol=0, atol=1e-12)
    torch.testing.assert_close(one, reference(keys, values, GLAConfig()), rtol=1e-9, atol=1e-9)


def test_dynamic_and_fixed_normalisation_values() -> None:
    # Two windows of two tokens; row 0 sees S = (1, .8, 0, .5) over all four keys.
    # Dynamic: |P_0| = 2 (.8 > .6), w = 1 + 30/2 = 16, u = 1 + .3 ln 3, m = .575, u m = .7645
    #   keeps (1, .8): weights 1, exp(16 (.8 - 1)).
    # Fixed (beta .8, gamma 2): u m = .46 keeps (1, .8, .5): weights 1, exp(-.4), exp(-1).
    keys = _keys((1.0, 0.0), (0.8, 0.6), (0.0, 1.0), (0.5, math.sqrt(0.75))).view(2, 2, 2)
    values = torch.eye(4, dtype=torch.float64).view(2, 2, 4)
    dyn = attend(keys, values, GLAConfig(proxy=False)).view(4, 4)[0]
    e = math.exp(16 * -0.2)
    torch.testing.assert_close(dyn, torch.tensor([1.0, e, 0.0, 0.0], dtype=torch.float64) / (1 + e))
    fixed = attend(keys, values, GLAConfig(proxy=False, norm="fixed", beta=0.8, gamma=2.0)).view(4, 4)[0]
    wts = torch.tensor([1.0, math.exp(-0.4), 0.0, math.exp(-1.0)], dtype=torch.float64)
    torch.testing.assert_close(fixed, wts / wts.sum())
    # Temperature divides A~: gamma 2 at temperature 2 is gamma 1.
    warm = attend(keys, values, GLAConfig(proxy=False, norm="fixed", beta=0.8, gamma=2.0, temperature=2.0))
    wts1 = torch.tensor([1.0, math.exp(-0.2), 0.0, math.exp(-0.5)], dtype=torch.float64)
    torch.testing.assert_close(warm.view(4, 4)[0], wts1 / wts1.sum())


def test_proxyclip_uses_one_mean_per_window() -> None:
    # Window 0: S rows (1,.8,0,0) (.8,1,.6,.6) (0,.6,1,1) (0,.6,1,1): s_bar = 10/16, beta s_bar = .75.
    # Row 1 keeps (.8, 1): weights exp(3 (.8 - 1)), 1.  Its own row mean .75 would give
    # 1.2 * .75 = .9 and keep only itself.  Window 1 (four equal keys, s_bar = 1) keeps all.
    w0 = _keys((1.0, 0.0), (0.8, 0.6), (0.0, 1.0), (0.0, 1.0))
    w1 = _keys((1.0, 0.0), (1.0, 0.0), (1.0, 0.0), (1.0, 0.0))
    keys = torch.stack([w0, w1])
    values = torch.eye(4, dtype=torch.float64).expand(2, 4, 4).contiguous()
    out = attend(keys, values, GLAConfig.proxyclip())
    e = math.exp(-0.6)
    torch.testing.assert_close(out[0, 1], torch.tensor([e, 1.0, 0.0, 0.0], dtype=torch.float64) / (1 + e))
    torch.testing.assert_close(out[1], torch.full((4, 4), 0.25, dtype=torch.float64))
    row_mean = attend(keys, values, GLAConfig.proxyclip(mean="row"))
    torch.testing.assert_close(row_mean[0, 1], torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=torch.float64))


def test_without_kv_extension_each_window_is_independent() -> None:
    keys, values, _ = _clustered(3, 4, 16, 5, seed=5)
    together = attend(keys, values, GLAConfig(kv_extension=False))
    alone = torch.cat([attend(keys[w : w + 1], values[w : w + 1], GLAConfig()) for w in range(3)])
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-12)
    # and kv extension really mixes windows
    assert (attend(keys, values, GLAConfig()) - together).abs().max() > 1e-3


def test_smoothing_hand_example() -> None:
    # Two 2 x 2 windows overlapping by one column: offsets (0, 0) and (0, 1).  Token (0, 1) of
    # window 0 sits at scene (0, 1): its in-window neighbours are (0, 0), (1, 0), (1, 1); window 1
    # covers scene (0, 1) with its token (0, 0).  So the mean is of five tokens.
    keys = torch.arange(2 * 4 * 3, dtype=torch.float64).view(2, 4, 3) ** 1.5
    offsets = torch.tensor([[0, 0], [0, 1]])
    got = smooth_queries(keys, offsets)
    want = (keys[0, 1] + keys[0, 0] + keys[0, 2] + keys[0, 3] + keys[1, 0]) / 5
    torch.testing.assert_close(got[0, 1], want)
    # Token (1, 0) of window 0 (scene (1, 0)) is covered by window 0 only: mean of its window.
    torch.testing.assert_close(got[0, 2], keys[0].mean(dim=0))
    torch.testing.assert_close(got, _ref_smooth(keys, offsets))


def test_smoothing_needs_offsets() -> None:
    keys, values, _ = _clustered(2, 2, 8, 3, seed=6)
    with pytest.raises(ConfigError, match="offsets"):
        attend(keys, values, GLAConfig(smoothing=True))


def test_smoothing_on_a_real_window_grid_matches_reference() -> None:
    # 2 x 2 windows of 4 x 4 tokens at stride 2 (the middle token rows are covered 4 times).
    scene = structured_scene(window_rows=2, window_cols=2, side=4, dim=8, dim_v=3, classes=2, seed=7)
    keys, offsets = scene.keys.double(), scene.offsets
    torch.testing.assert_close(smooth_queries(keys, offsets), _ref_smooth(keys, offsets))


# ---------------------------------------------------------------------------------------------
# Precision: bfloat16 matrix products must not change labels on structured inputs.


@pytest.mark.parametrize(
    "scene_args",
    [
        {"seed": 11},
        # harder: class centres closer (cosine .5), noisier keys, many small objects
        {"seed": 12, "centre_cos": 0.5, "key_noise": 0.9, "objects": 20},
    ],
)
def test_bfloat16_and_float32_give_the_same_labels(scene_args: dict[str, float]) -> None:
    # The evidence for GLAConfig's default precision ("auto" = bfloat16 where it is fast):
    # 9 overlapping windows of 20 x 20 tokens, labels = argmax(out @ class_vectors^T).
    # Tolerance: zero changed labels; outputs within 1 % (relative) for 99 % of tokens.
    scene = structured_scene(window_rows=3, window_cols=3, side=20, dim=384, **scene_args)  # type: ignore[arg-type]
    out = {p: attend(scene.keys, scene.values, GLAConfig(precision=p)) for p in ("float32", "bfloat16")}
    assert out["bfloat16"].dtype == torch.float32
    labels = {p: (o @ scene.class_vectors.T).argmax(dim=-1) for p, o in out.items()}
    changed = int((labels["float32"] != labels["bfloat16"]).sum())
    assert changed == 0, f"{changed} of {labels['float32'].numel()} labels changed"
    rel = (out["float32"] - out["bfloat16"]).norm(dim=-1) / out["float32"].norm(dim=-1)
    assert float(torch.quantile(rel.flatten(), 0.99)) < 0.01
    # sanity: the attention does recover the structure
    assert (labels["float32"] == scene.labels).float().mean() > 0.95


# ---------------------------------------------------------------------------------------------
# Configuration.


def test_config_defaults_are_the_papers() -> None:
    cfg = GLAConfig()
    assert (cfg.kv_extension, cfg.proxy, cfg.steps, cfg.rho, cfg.norm, cfg.mean) == (
        True,
        True,
        2,
        0.6,
        "dynamic",
        "row",
    )
    assert (cfg.lambda1, cfg.lambda2, cfg.beta, cfg.gamma, cfg.temperature, cfg.smoothing) == (
        0.3,
        30.0,
        1.2,
        3.0,
        1.0,
        False,
    )
    # bfloat16 where it is fast: justified by test_bfloat16_and_float32_give_the_same_labels
    assert cfg.precision == "auto"
    base = GLAConfig.proxyclip()
    assert (base.kv_extension, base.proxy, base.norm, base.mean, base.beta, base.gamma) == (
        False,
        False,
        "fixed",
        "window",
        1.2,
        3.0,
    )


def test_config_json_round_trip() -> None:
    cfg = GLAConfig(steps=3, norm="fixed", smoothing=True, memory_budget_mb=64, precision="bfloat16")
    data = cfg.to_json()
    assert data["steps"] == 3 and data["precision"] == "bfloat16"
    assert GLAConfig.from_json(data) == cfg
    assert GLAConfig.from_json({}) == GLAConfig()
    with pytest.raises(ConfigError, match="unknown"):
        GLAConfig.from_json({"rh0": 0.5})


@pytest.mark.parametrize(
    "bad",
    [
        {"steps": 0},
        {"steps": 1.5},
        {"rho": math.nan},
        {"norm": "static"},
        {"mean": "scene"},
        {"gamma": 0.0},
        {"temperature": -1.0},
        {"lambda2": -1.0},
        {"memory_budget_mb": 0},
        {"precision": "fp16"},
        {"proxy": "yes"},
    ],
)
def test_config_rejects_bad_values(bad: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        GLAConfig(**bad)  # type: ignore[arg-type]


def test_bad_input_shapes_are_rejected() -> None:
    keys = torch.zeros(2, 4, 3)
    with pytest.raises(ValueError):
        attend(keys, torch.zeros(2, 5, 3))
    with pytest.raises(ValueError):
        attend(keys[0], torch.zeros(4, 3))


@pytest.mark.parametrize("key_matrix_is_batched", [False, True])
def test_products_write_into_padded_block_rows_in_place(key_matrix_is_batched: bool) -> None:
    # 37 keys: each block row of the buffers takes 48 entries (64-byte rows), and the product
    # must land in the first 37 of each, in place (a copy from a temporary would cost as much as
    # the product), leaving the padding alone.
    gen = torch.Generator().manual_seed(0)
    buffers = Buffers(2 * 5, 37, torch.float32, torch.float32, torch.device("cpu"))
    out = buffers.sim(2, 5, 37)
    assert out.stride() == (5 * 48, 48, 1)
    whole = out.as_strided((2, 5, 48), out.stride())
    whole.fill_(7.0)
    a = torch.randn(2, 5, 8, generator=gen)
    b = torch.randn(2, 8, 37, generator=gen) if key_matrix_is_batched else torch.randn(8, 37, generator=gen)
    pointer = out.data_ptr()
    product_into(a, b, out)
    assert out.data_ptr() == pointer
    # float32 sums of 8 products of unit normals, in whatever order the kernel takes them
    torch.testing.assert_close(out, a @ b, rtol=0, atol=1e-5)
    assert bool((whole[..., 37:] == 7.0).all())
