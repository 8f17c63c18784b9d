"""Segmentation metrics: confusion matrix / mIoU and the Boundary Error Rate (docs/method.md section 5).

Everything works on numpy label arrays and accumulates integer counts, so a metric can be built
chunk by chunk and image by image and merged across workers; percentages are computed at the end.

- :class:`ConfusionMatrix`: per-class IoU, mIoU (in percent, like the paper) and pixel accuracy.
- :func:`boundary_error_counts` / :func:`boundary_error_rate` / :class:`BoundaryErrorRate`:
  the Boundary Error Rate of the paper's appendix A over the window edges of a sliding-window grid.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

_CHUNK = 1 << 22  # pixels per bincount pass: bounds temporaries to a few tens of MB


class ConfusionMatrix:
    """Confusion matrix accumulated over any number of ``(pred, gt)`` label arrays.

    ``matrix[g, p]`` counts pixels of ground-truth class ``g`` predicted as ``p``.  Pixels whose
    ground truth is ``ignore_index`` are skipped.  A prediction outside ``0 .. num_classes - 1``
    (for example a nodata value) at a valid ground-truth pixel counts as a miss of the
    ground-truth class and as no class's prediction (``matrix`` does not show it; ``missed`` does).

    Args:
        num_classes: number of classes ``C``; ground-truth labels must be ``0 .. C - 1`` or
            ``ignore_index``.
        ignore_index: ground-truth value that marks unlabelled pixels.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        # Last column: predictions outside the class range.
        self._counts = np.zeros((num_classes, num_classes + 1), dtype=np.int64)

    @property
    def matrix(self) -> NDArray[np.int64]:
        """``(C, C)`` counts, rows ground truth, columns prediction."""
        return self._counts[:, : self.num_classes].copy()

    @property
    def missed(self) -> NDArray[np.int64]:
        """``(C,)`` valid pixels of each class whose prediction was outside the class range."""
        return self._counts[:, self.num_classes].copy()

    def update(self, pred: ArrayLike, gt: ArrayLike) -> None:
        """Add one prediction / ground-truth pair of equal shape (any integer dtype)."""
        p_all = np.asarray(pred).reshape(-1)
        g_all = np.asarray(gt).reshape(-1)
        if np.shape(pred) != np.shape(gt):
            raise ValueError(f"prediction {np.shape(pred)} and ground truth {np.shape(gt)} differ in shape")
        c = self.num_classes
        stride = c + 1
        bins = c * stride
        ignore = self.ignore_index
        for start in range(0, g_all.size, _CHUNK):
            g = g_all[start : start + _CHUNK].astype(np.int64)
            p = p_all[start : start + _CHUNK]
            # Out-of-range predictions go to the extra column c.
            if np.issubdtype(p.dtype, np.unsignedinteger):
                p = np.minimum(p, c)
            else:
                p = np.where((p < 0) | (p > c), c, p)
            index = g * stride
            index += p
            if 0 <= ignore < c or g.min(initial=0) < 0:
                # Rare layouts (negative labels, ignore value inside the class range): explicit mask.
                valid = g != ignore
                bad = valid & ((g < 0) | (g >= c))
                if bad.any():
                    raise ValueError(self._bad_labels(np.unique(g[bad])))
                index = np.where(valid, index, bins)
                self._counts += np.bincount(index, minlength=bins + 1)[:bins].reshape(c, stride)
                continue
            # Usual case (labels >= 0, ignore >= c): ignored pixels land in the ignore row beyond
            # the matrix; anything else beyond it is a ground-truth label out of range.
            if int(g.max(initial=0)) > ignore:  # (also keeps bincount's length bounded)
                raise ValueError(self._bad_labels(np.unique(g[g > ignore])))
            hist = np.bincount(index, minlength=bins)
            beyond = hist[bins:].copy()
            if ignore * stride < hist.size:
                beyond[ignore * stride - bins : (ignore + 1) * stride - bins] = 0
            if beyond.any():
                raise ValueError(self._bad_labels(np.unique((np.flatnonzero(beyond) + bins) // stride)))
            self._counts += hist[:bins].reshape(c, stride)

    def _bad_labels(self, labels: NDArray[np.int64]) -> str:
        shown = ", ".join(str(int(v)) for v in labels[:5])
        return (
            f"ground truth has labels {shown} outside 0..{self.num_classes - 1} and not {self.ignore_index}"
        )

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add another matrix's counts (same classes and ignore index) to this one; returns self."""
        if (other.num_classes, other.ignore_index) != (self.num_classes, self.ignore_index):
            raise ValueError("cannot merge confusion matrices of different classes or ignore index")
        self._counts += other._counts
        return self

    def reset(self) -> None:
        """Forget all counts."""
        self._counts[:] = 0

    def iou(self) -> NDArray[np.float64]:
        """Per-class IoU as a fraction ``TP / (TP + FP + FN)``; NaN where a class is absent from
        both ground truth and prediction."""
        tp = np.diag(self._counts[:, : self.num_classes]).astype(np.float64)
        union = self._counts.sum(axis=1) + self._counts[:, : self.num_classes].sum(axis=0) - tp
        out = np.full(self.num_classes, np.nan)
        np.divide(tp, union, out=out, where=union > 0)
        return out

    def miou(self) -> float:
        """Mean IoU in percent over the classes whose IoU is defined (NaN if none is)."""
        iou = self.iou()
        defined = iou[~np.isnan(iou)]
        return float(100.0 * defined.mean()) if defined.size else float("nan")

    def pixel_accuracy(self) -> float:
        """Correct pixels over valid ground-truth pixels, in percent (NaN if there are none)."""
        total = int(self._counts.sum())
        correct = int(np.trace(self._counts[:, : self.num_classes]))
        return 100.0 * correct / total if total else float("nan")


def boundary_error_counts(
    pred: ArrayLike,
    gt: ArrayLike,
    row_edges: ArrayLike,
    col_edges: ArrayLike,
    ignore_index: int = 255,
    origin: Sequence[int] = (0, 0),
    context: Sequence[int] = (0, 0),
) -> tuple[int, int]:
    """``(errors, pairs)`` of the Boundary Error Rate on one image or one chunk of an image.

    A boundary pair is two 4-adjacent pixels on opposite sides of a window edge: a row edge
    ``e`` pairs pixel rows ``e - 1`` and ``e`` (every column); a column edge pairs columns
    ``e - 1`` and ``e`` (every row).  ``pairs`` counts boundary pairs whose two ground-truth labels
    are equal and not ``ignore_index``; ``errors`` those of them whose predictions differ.

    Args:
        pred, gt: 2-D label arrays of equal shape.
        row_edges, col_edges: window edges in the coordinates of the full image the arrays come
            from (e.g. ``WindowGrid.edges()``, rescaled by the caller if the labels are at another
            size); duplicates are counted once, edges outside the arrays are skipped.
        ignore_index: ground-truth value that marks unlabelled pixels.
        origin: image ``(row, col)`` of the arrays' first pixel, for chunks.
        context: ``(rows, cols)``, each 0 or 1: the arrays' first row / first column belong to the
            neighbouring chunk above / left and are only read.  A pair is counted where its later
            pixel (row ``e`` or column ``e``) lies; to cover an image with disjoint chunks
            ``[y0:y1, x0:x1]`` without missing or double-counting pairs, pass
            ``[y0 - 1:y1, x0 - 1:x1]`` with ``origin=(y0 - 1, x0 - 1)`` and ``context=(1, 1)``
            (0 on the side where ``y0`` or ``x0`` is 0).
    """
    p = np.asarray(pred)
    g = np.asarray(gt)
    if p.ndim != 2 or p.shape != g.shape:
        raise ValueError(f"pred {p.shape} and gt {g.shape} must be 2-D arrays of equal shape")
    top, left = (int(v) for v in context)
    if top not in (0, 1) or left not in (0, 1):
        raise ValueError(f"context must be 0 or 1 rows and columns, got {tuple(context)}")
    height, width = g.shape
    rows = np.unique(np.asarray(row_edges, dtype=np.int64)) - int(origin[0])
    cols = np.unique(np.asarray(col_edges, dtype=np.int64)) - int(origin[1])
    rows = rows[(rows >= 1) & (rows < height)]
    cols = cols[(cols >= 1) & (cols < width)]

    errors = pairs = 0
    if rows.size and width > left:
        errors, pairs = _pair_counts(
            p[rows - 1, left:], p[rows, left:], g[rows - 1, left:], g[rows, left:], ignore_index
        )
    if cols.size and height > top:
        e, n = _pair_counts(p[top:, cols - 1], p[top:, cols], g[top:, cols - 1], g[top:, cols], ignore_index)
        errors, pairs = errors + e, pairs + n
    return errors, pairs


def boundary_error_rate(
    pred: ArrayLike, gt: ArrayLike, row_edges: ArrayLike, col_edges: ArrayLike, ignore_index: int = 255
) -> float:
    """Boundary Error Rate of one image in percent (NaN when no boundary pair shares a label)."""
    errors, pairs = boundary_error_counts(pred, gt, row_edges, col_edges, ignore_index)
    return 100.0 * errors / pairs if pairs else float("nan")


class BoundaryErrorRate:
    """Boundary Error Rate accumulated over chunks and images: the dataset value is
    ``100 * sum(errors) / sum(pairs)`` (pairs pooled, not per-image rates averaged)."""

    def __init__(self, ignore_index: int = 255) -> None:
        self.ignore_index = ignore_index
        self.errors = 0
        self.pairs = 0

    def update(
        self,
        pred: ArrayLike,
        gt: ArrayLike,
        row_edges: ArrayLike,
        col_edges: ArrayLike,
        origin: Sequence[int] = (0, 0),
        context: Sequence[int] = (0, 0),
    ) -> None:
        """Add the counts of one image or chunk (arguments as :func:`boundary_error_counts`)."""
        e, n = boundary_error_counts(pred, gt, row_edges, col_edges, self.ignore_index, origin, context)
        self.errors += e
        self.pairs += n

    def merge(self, other: BoundaryErrorRate) -> BoundaryErrorRate:
        """Add another accumulator's counts; returns self."""
        self.errors += other.errors
        self.pairs += other.pairs
        return self

    def value(self) -> float:
        """BER in percent (NaN when no pair has been counted)."""
        return 100.0 * self.errors / self.pairs if self.pairs else float("nan")


def _pair_counts(
    p_a: NDArray[np.generic],
    p_b: NDArray[np.generic],
    g_a: NDArray[np.generic],
    g_b: NDArray[np.generic],
    ignore_index: int,
) -> tuple[int, int]:
    same = (g_a == g_b) & (g_a != ignore_index)
    return int(np.count_nonzero(same & (p_a != p_b))), int(np.count_nonzero(same))
