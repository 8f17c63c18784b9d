"""Query smoothing (paper appendix C, eq. 17; docs/method.md, section 3c) and window token grids."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


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
    pos = (off[:, 0, None, None] + row_idx[None, :, None]) * width + (
        off[:, 1, None, None] + col_idx[None, None, :]
    )
    pos = pos.reshape(-1)
    flat = keys.reshape(n_windows * n_tokens, dim)
    scene_sum = torch.zeros(height * width, dim, dtype=keys.dtype, device=keys.device)
    scene_sum.index_add_(0, pos, flat)
    scene_count = torch.bincount(pos, minlength=height * width)
    others = scene_sum[pos] - flat
    others_count = scene_count[pos] - 1

    mean = (box + others) / (box_count + others_count).to(keys.dtype)[:, None]
    return mean.view(n_windows, n_tokens, dim)
