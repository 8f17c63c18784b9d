"""GLA bounded to a context radius (geogla/gla/local.py): a piece of a scene gives the whole's
results wherever the radius stays inside it."""

from __future__ import annotations

import pytest
import torch

from geogla.errors import ConfigError
from geogla.gla import GLAConfig, attend, choose_algorithm
from geogla.gla.synthetic import structured_scene


def _inside(offsets: torch.Tensor, piece: torch.Tensor, side: int, radius: int) -> torch.Tensor:
    """Windows of ``piece`` (indices into ``offsets``) whose every context window (extent grown by
    ``radius`` meeting theirs) is in ``piece``."""
    lo = offsets[piece][:, None, :]
    grown_meets = ((offsets[None] - radius < lo + side) & (offsets[None] + side + radius > lo)).all(dim=2)
    in_piece = torch.zeros(offsets.shape[0], dtype=torch.bool)
    in_piece[piece] = True
    return (~grown_meets | in_piece[None]).all(dim=1)


@pytest.mark.parametrize("smoothing", [False, True])
def test_a_piece_gives_the_whole_scenes_results_inside_the_context_radius(smoothing: bool) -> None:
    side, radius = 8, 4  # windows of 8 x 8 tokens at a stride of 4: a radius of one stride
    sc = structured_scene(7, 7, side=side, dim=16, classes=4, seed=1)
    rows, cols = sc.offsets[:, 0] // 4, sc.offsets[:, 1] // 4
    piece = ((rows >= 1) & (rows <= 5) & (cols <= 4)).nonzero().flatten()
    config = GLAConfig(context_radius=radius, smoothing=smoothing)
    whole = attend(sc.keys, sc.values, config, offsets=sc.offsets)
    part = attend(sc.keys[piece], sc.values[piece], config, offsets=sc.offsets[piece])
    inside = _inside(sc.offsets, piece, side, radius)
    assert 0 < int(inside.sum()) < piece.numel()
    # the same kernels on the same keys in the same order: the same bits
    assert torch.equal(part[inside], whole[piece[inside]])
    # near the piece's edge the context differs, and so do results (the comparison can fail)
    assert not torch.equal(part[~inside], whole[piece[~inside]])
    # GLA over the whole extent (no radius) changes with the piece everywhere
    gla = GLAConfig(algorithm="exact", smoothing=smoothing)
    whole_gla = attend(sc.keys, sc.values, gla, offsets=sc.offsets)
    part_gla = attend(sc.keys[piece], sc.values[piece], gla, offsets=sc.offsets[piece])
    assert not torch.equal(part_gla[inside], whole_gla[piece[inside]])


def test_a_radius_that_holds_every_window_is_exact_gla() -> None:
    sc = structured_scene(5, 5, side=8, dim=16, classes=4, seed=0)
    exact = attend(sc.keys, sc.values, GLAConfig(algorithm="exact", precision="float32"), offsets=sc.offsets)
    local = attend(sc.keys, sc.values, GLAConfig(context_radius=100, precision="float32"), offsets=sc.offsets)
    # the same keys in the same order through the same kernels; the row means are q . mean(k)
    # in another product, so allow float32 rounding of values of magnitude ~4
    torch.testing.assert_close(local, exact, rtol=0, atol=1e-5)


def test_context_radius_chooses_local_attention_and_checks_its_value() -> None:
    assert choose_algorithm(GLAConfig(context_radius=0), 10**9) == "local"
    assert choose_algorithm(GLAConfig(context_radius=0, algorithm="exact"), 10) == "local"
    assert choose_algorithm(GLAConfig.proxyclip(context_radius=3), 10) == "window"
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(ConfigError, match="context_radius"):
            GLAConfig(context_radius=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="mean 'row'"):
        GLAConfig(context_radius=2, mean="window")
    sc = structured_scene(2, 2, side=4, dim=8, classes=2, seed=0)
    with pytest.raises(ConfigError, match="offsets"):
        attend(sc.keys, sc.values, GLAConfig(context_radius=2))
