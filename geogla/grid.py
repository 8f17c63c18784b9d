"""The sliding-window rule of docs/method.md section 1 on the working image, and the canvas each window
is padded to before the encoders see it."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: The reference pads every window, centred, to a multiple of this many pixels before encoding
#: (ProxyCLIP's proxyclip_segmentor.py, forward_slide: ``pad = self.compute_padsize(H, W, 56)``,
#: followed by ``nn.functional.pad(crop_img, pad)`` on the normalised image, i.e. the mean colour).
REFERENCE_PAD_MULTIPLE = 56


@dataclass(frozen=True)
class Canvas:
    """The padded image a window is encoded as: ``height`` x ``width`` pixels, with the window's
    pixels at rows ``top:top + h`` and columns ``left:left + w`` (centred; the rest is padding)."""

    height: int
    width: int
    top: int
    left: int

    def place(self, pixels: np.ndarray, valid: np.ndarray, fill: Sequence[float]) -> np.ndarray:
        """A window's canvas, float32 ``(bands, height, width)``: ``fill`` (one value per band)
        everywhere but at the window's ``valid`` pixels, which are ``pixels`` ``(bands, h, w)``."""
        bands, h, w = pixels.shape
        out = np.empty((bands, self.height, self.width), dtype=np.float32)
        out[:] = np.asarray(fill, dtype=np.float32)[:, None, None]
        np.copyto(out[:, self.top:self.top + h, self.left:self.left + w], pixels, where=valid[None])
        return out


@dataclass(frozen=True)
class WindowGrid:
    """Windows of ``crop`` x ``crop`` pixels every ``stride`` pixels over a ``height`` x ``width`` image.

    Windows are numbered row-major, ``l = i * cols + j``.  The last row and column are shifted back
    so that they end on the image edge.  On a side where the image is smaller than ``crop`` every
    window is as long as the image there (:attr:`window_shape`), as in the reference.  Each window
    is encoded as a :attr:`canvas` whose sides are the window's rounded up to a multiple of
    ``pad_to``, the window centred in it (``pad_to = 1``: no padding).
    """

    height: int
    width: int
    crop: int
    stride: int
    pad_to: int = 1

    def __post_init__(self) -> None:
        if self.crop <= 0 or self.stride <= 0 or self.pad_to <= 0:
            raise ValueError(
                f"crop, stride and pad_to must be positive, got {self.crop}, {self.stride}, {self.pad_to}"
            )
        if self.stride > self.crop:
            raise ValueError(f"stride {self.stride} larger than crop {self.crop} would leave gaps")
        if self.height <= 0 or self.width <= 0:
            raise ValueError(f"image size must be positive, got {self.height} x {self.width}")

    @property
    def rows(self) -> int:
        return max(self.height - self.crop + self.stride - 1, 0) // self.stride + 1

    @property
    def cols(self) -> int:
        return max(self.width - self.crop + self.stride - 1, 0) // self.stride + 1

    def __len__(self) -> int:
        return self.rows * self.cols

    @property
    def window_shape(self) -> tuple[int, int]:
        """``(h, w)`` of every window: the crop, or the image's side where it is smaller."""
        return min(self.crop, self.height), min(self.crop, self.width)

    @property
    def canvas(self) -> Canvas:
        """The padded canvas every window is encoded as (see :class:`Canvas`).

        Each side is the window's rounded up to a multiple of ``pad_to``; the padding is split
        with the smaller half before the window (the reference's ``compute_padsize``).
        """
        h, w = self.window_shape
        ph, pw = -(-h // self.pad_to) * self.pad_to, -(-w // self.pad_to) * self.pad_to
        return Canvas(ph, pw, (ph - h) // 2, (pw - w) // 2)

    def token_grid(self, token_size: int) -> tuple[int, int]:
        """``(rows, cols)`` of tokens of ``token_size`` pixels covering the canvas; the canvas
        must be a whole number of tokens on both sides."""
        c = self.canvas
        if c.height % token_size or c.width % token_size:
            raise ValueError(
                f"a {c.height} x {c.width} canvas is not a whole number of {token_size}-pixel tokens"
            )
        return c.height // token_size, c.width // token_size

    def window(self, index: int) -> tuple[int, int, int, int]:
        """Return ``(y1, x1, y2, x2)`` of window ``index`` in image pixels."""
        if not 0 <= index < len(self):
            raise IndexError(index)
        y1, x1, y2, x2 = self.boxes(np.array([index]))[0].tolist()
        return y1, x1, y2, x2

    @functools.cached_property
    def _row_starts(self) -> np.ndarray:
        return _starts(self.rows, self.height, self.crop, self.stride)

    @functools.cached_property
    def _col_starts(self) -> np.ndarray:
        return _starts(self.cols, self.width, self.crop, self.stride)

    def boxes(self, ids: np.ndarray | Sequence[int] | None = None) -> np.ndarray:
        """Windows ``ids`` (all when None) as an ``(n, 4)`` int64 array of ``(y1, x1, y2, x2)``,
        computed from the grid's arithmetic (no per-window loop)."""
        index = np.arange(len(self)) if ids is None else np.asarray(ids, dtype=np.int64).reshape(-1)
        i, j = np.divmod(index, self.cols)
        h, w = self.window_shape
        y1, x1 = self._row_starts[i], self._col_starts[j]
        return np.stack([y1, x1, y1 + h, x1 + w], axis=1).astype(np.int64)

    def token_offsets(self, token_size: int, ids: np.ndarray | Sequence[int] | None = None) -> np.ndarray:
        """Windows ``ids`` (all when None): top-left ``(row, col)`` on the scene's token grid,
        ``(n, 2)`` int64.

        Offsets are in tokens of ``token_size`` pixels, rounded down.  The canvas padding is the
        same for every window, so the offsets place the windows' token grids relative to each
        other; with a stride that is a multiple of the token size they are exact.
        """
        return self.boxes(ids)[:, :2] // token_size

    def windows_intersecting(self, y1: int, x1: int, y2: int, x2: int) -> np.ndarray:
        """Indices (ascending) of the windows that overlap the pixel block ``[y1:y2, x1:x2]``;
        from the window rows' and columns' starts, whatever the number of windows."""
        h, w = self.window_shape
        rows = _overlapping(self._row_starts, h, y1, y2)
        cols = _overlapping(self._col_starts, w, x1, x2)
        ids: np.ndarray = (rows[:, None] * self.cols + cols[None, :]).reshape(-1)
        return ids

    def edges(self) -> tuple[np.ndarray, np.ndarray]:
        """Window edges inside the image: ``(row_edges, col_edges)``.

        An edge at row ``e`` separates pixel rows ``e - 1`` and ``e``; only edges with
        ``0 < e < height`` (or width) count.  Used by the Boundary Error Rate.
        """
        h, w = self.window_shape
        rows = np.unique(np.concatenate([self._row_starts, self._row_starts + h]))
        cols = np.unique(np.concatenate([self._col_starts, self._col_starts + w]))
        return rows[(rows > 0) & (rows < self.height)], cols[(cols > 0) & (cols < self.width)]

    def edges_on(self, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`edges` mapped onto a raster of ``height`` x ``width`` covering the same image
        (the file's grid, a label's), rounded to the nearest pixel boundary."""
        rows, cols = self.edges()
        return (np.round(rows * (height / self.height)).astype(np.int64),
                np.round(cols * (width / self.width)).astype(np.int64))


def _starts(count: int, extent: int, crop: int, stride: int) -> np.ndarray:
    """First pixel of each of ``count`` windows along a side of ``extent`` pixels: every
    ``stride`` pixels, the last ones shifted back to end on the edge (0 where the side is
    shorter than ``crop``)."""
    return np.minimum(np.arange(count, dtype=np.int64) * stride, max(extent - crop, 0))


def _overlapping(starts: np.ndarray, length: int, lo: int, hi: int) -> np.ndarray:
    """Indices of the intervals ``[starts[k], starts[k] + length)`` (``starts`` ascending) that
    meet ``[lo, hi)``."""
    first = int(np.searchsorted(starts + length, lo, side="right"))
    stop = int(np.searchsorted(starts, hi, side="left"))
    return np.arange(first, max(first, stop), dtype=np.int64)
