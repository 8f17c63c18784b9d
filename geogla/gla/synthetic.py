"""Synthetic, spatially structured window features for tests and benchmarks (no model needed).

Real VFM keys are not random: tokens of one object are similar, regions are spatially coherent
and the same scene position looks alike in every window that covers it.  :func:`structured_scene`
imitates that so precision and speed can be judged on inputs whose similarity distribution
straddles the proxy threshold the way real ones do.

With ``context_bias`` it also imitates the failure GLA exists to fix: CLIP's value tokens carry,
besides their own content, what their window sees as a whole, so that a window's labels lean
toward its dominant class.  Two overlapping windows with different dominant classes then label
their shared pixels differently, and seams appear at window borders; attention across all
windows averages the windows' biases and makes them agree (the Boundary Error Rate measures it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class SyntheticScene:
    """Keys, values, offsets and ground truth of a synthetic scene.

    Attributes:
        keys: ``(L, N, D)`` L2-normalised keys.
        values: ``(L, N, Dv)`` values.
        offsets: ``(L, 2)`` int64 window top-left positions on the scene token grid.
        labels: ``(L, N)`` int64 ground-truth cluster of every token.
        class_vectors: ``(C, Dv)`` value centre of every cluster; ``argmax(out @ class_vectors.T)``
            labels an attention output.
    """

    keys: Tensor
    values: Tensor
    offsets: Tensor
    labels: Tensor
    class_vectors: Tensor


def structured_scene(
    window_rows: int = 3,
    window_cols: int = 3,
    side: int = 28,
    dim: int = 768,
    dim_v: int | None = None,
    classes: int = 6,
    regions: int = 12,
    objects: int = 6,
    key_noise: float = 0.75,
    window_noise: float = 0.15,
    value_noise: float = 1.0,
    centre_cos: float = 0.3,
    context_bias: float = 0.0,
    seed: int = 0,
) -> SyntheticScene:
    """A scene of ``window_rows x window_cols`` windows of ``side x side`` tokens at half-window stride.

    The scene token grid is cut into ``regions`` Voronoi regions with random classes, plus
    ``objects`` small square objects (2 to 4 tokens a side).  A token's key is its class centre plus
    a per-position noise of norm ``key_noise`` times a factor drawn in [0.4, 1.6] (shared by every
    window covering that position) plus a per-window noise of norm about ``window_noise``, then
    L2-normalised; class centres have pairwise cosine about ``centre_cos``.  With the defaults, two
    keys of one class have cosines spread around the proxy threshold 0.6.  Values are class vectors
    plus noise of norm about ``value_noise`` times theirs, plus, with ``context_bias``, a bias shared
    by every token of a window: ``context_bias`` times the class vector of the window's dominant
    class (the most frequent label among its tokens, the lowest class on a tie).
    """
    gen = torch.Generator().manual_seed(seed)
    dim_v = dim if dim_v is None else dim_v
    stride = max(side // 2, 1)
    height = (window_rows - 1) * stride + side
    width = (window_cols - 1) * stride + side

    # Scene labels: Voronoi regions, then a few small square objects on top.
    seeds = torch.rand(regions, 2, generator=gen) * torch.tensor([height, width])
    region_class = torch.randint(classes, (regions,), generator=gen)
    yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    coords = torch.stack([yy, xx], dim=-1).float()
    nearest = torch.cdist(coords.reshape(-1, 2), seeds).argmin(dim=1).reshape(height, width)
    scene = region_class[nearest]
    for _ in range(objects):
        size = int(torch.randint(2, 5, (1,), generator=gen))
        y0 = int(torch.randint(0, max(height - size, 1), (1,), generator=gen))
        x0 = int(torch.randint(0, max(width - size, 1), (1,), generator=gen))
        scene[y0 : y0 + size, x0 : x0 + size] = int(torch.randint(classes, (1,), generator=gen))

    # Class centres with pairwise cosine about centre_cos.
    shared = F.normalize(torch.randn(dim, generator=gen), dim=0)
    own = F.normalize(torch.randn(classes, dim, generator=gen), dim=1)
    centres = F.normalize(centre_cos**0.5 * shared + (1 - centre_cos) ** 0.5 * own, dim=1)
    # Noise magnitude varies per position so within-class cosines spread over roughly 0.35..0.9.
    spread = 0.4 + 1.2 * torch.rand(height, width, 1, generator=gen)
    position_noise = torch.randn(height, width, dim, generator=gen) * (spread * key_noise / dim**0.5)
    scene_keys = centres[scene] + position_noise
    class_vectors = torch.randn(classes, dim_v, generator=gen)
    scene_values = class_vectors[scene] + torch.randn(height, width, dim_v, generator=gen) * (
        value_noise * class_vectors.norm(dim=1).mean() / dim_v**0.5
    )

    offsets = torch.tensor(
        [[i * stride, j * stride] for i in range(window_rows) for j in range(window_cols)], dtype=torch.int64
    )
    n_windows = len(offsets)
    keys = torch.empty(n_windows, side * side, dim)
    values = torch.empty(n_windows, side * side, dim_v)
    labels = torch.empty(n_windows, side * side, dtype=torch.int64)
    for w, (r, c) in enumerate(offsets.tolist()):
        window_keys = scene_keys[r : r + side, c : c + side].reshape(-1, dim)
        jitter = torch.randn(side * side, dim, generator=gen) * (window_noise / dim**0.5)
        keys[w] = F.normalize(window_keys + jitter, dim=1)
        labels[w] = scene[r : r + side, c : c + side].reshape(-1)
        context = int(torch.bincount(labels[w], minlength=classes).argmax())
        own = scene_values[r : r + side, c : c + side].reshape(-1, dim_v)
        values[w] = own + context_bias * class_vectors[context]
    return SyntheticScene(keys, values, offsets, labels, class_vectors)
