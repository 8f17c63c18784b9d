"""The sliding-window grid of method.md section 1, on the working image."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class WindowGrid:
    """Windows of ``crop`` x ``crop`` pixels every ``stride`` pixels over a ``height`` x ``width`` image.

    Windows are numbered row-major, ``l = i * cols + j``.  The last row and column are shifted back
    so that they end on the image edge.  An image smaller than ``crop`` on a side is padded up to
    ``crop`` there (``padded_height``/``padded_width``); the padding is cut off after prediction.
    """

    height: int
    width: int
    crop: int
    stride: int

    def __post_init__(self) -> None:
        if self.crop <= 0 or self.stride <= 0:
            raise ValueError(f"crop and stride must be positive, got {self.crop} and {self.stride}")
        if self.stride > self.crop:
            raise ValueError(f"stride {self.stride} larger than crop {self.crop} would leave gaps")
        if self.height <= 0 or self.width <= 0:
            raise ValueError(f"image size must be positive, got {self.height} x {self.width}")

    @property
    def padded_height(self) -> int:
        return max(self.height, self.crop)

    @property
    def padded_width(self) -> int:
        return max(self.width, self.crop)

    @property
    def rows(self) -> int:
        return max(self.padded_height - self.crop + self.stride - 1, 0) // self.stride + 1

    @property
    def cols(self) -> int:
        return max(self.padded_width - self.crop + self.stride - 1, 0) // self.stride + 1

    def __len__(self) -> int:
        return self.rows * self.cols

    def window(self, index: int) -> tuple[int, int, int, int]:
        """Return ``(y1, x1, y2, x2)`` of window ``index`` in padded-image pixels."""
        if not 0 <= index < len(self):
            raise IndexError(index)
        i, j = divmod(index, self.cols)
        y2 = min(i * self.stride + self.crop, self.padded_height)
        x2 = min(j * self.stride + self.crop, self.padded_width)
        return max(y2 - self.crop, 0), max(x2 - self.crop, 0), y2, x2

    def boxes(self) -> np.ndarray:
        """All windows as an ``(L, 4)`` int64 array of ``(y1, x1, y2, x2)``."""
        return np.array([self.window(k) for k in range(len(self))], dtype=np.int64).reshape(-1, 4)

    def token_offsets(self, tokens_per_side: int) -> np.ndarray:
        """Each window's top-left ``(row, col)`` on the scene's token grid, ``(L, 2)`` int64.

        Offsets are in units of one token (``crop / tokens_per_side`` pixels), rounded down; with
        the default protocol (stride a multiple of the token size) they are exact.
        """
        boxes = self.boxes()
        return (boxes[:, :2] * tokens_per_side) // self.crop

    def windows_intersecting(self, y1: int, x1: int, y2: int, x2: int) -> np.ndarray:
        """Indices of the windows that overlap the pixel block ``[y1:y2, x1:x2]``."""
        b = self.boxes()
        hit = (b[:, 0] < y2) & (b[:, 2] > y1) & (b[:, 1] < x2) & (b[:, 3] > x1)
        return np.nonzero(hit)[0]

    def edges(self) -> tuple[np.ndarray, np.ndarray]:
        """Window edges inside the image: ``(row_edges, col_edges)``.

        An edge at row ``e`` separates pixel rows ``e - 1`` and ``e``; only edges with
        ``0 < e < height`` (or width) count.  Used by the Boundary Error Rate.
        """
        b = self.boxes()
        rows = np.unique(np.concatenate([b[:, 0], b[:, 2]]))
        cols = np.unique(np.concatenate([b[:, 1], b[:, 3]]))
        return rows[(rows > 0) & (rows < self.height)], cols[(cols > 0) & (cols < self.width)]

    def edges_on(self, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`edges` mapped onto a raster of ``height`` x ``width`` covering the same image
        (the file's grid, a label's), rounded to the nearest pixel boundary."""
        rows, cols = self.edges()
        return (np.round(rows * (height / self.height)).astype(np.int64),
                np.round(cols * (width / self.width)).astype(np.int64))
