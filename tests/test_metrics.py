"""Tests of geogla.metrics: confusion matrix / mIoU and the Boundary Error Rate."""

from __future__ import annotations

import itertools
import math
import time

import numpy as np
import pytest

from geogla.grid import WindowGrid
from geogla.metrics import BoundaryErrorRate, ConfusionMatrix, boundary_error_counts, boundary_error_rate


def test_perfect_prediction_is_100_miou_and_0_ber() -> None:
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 4, size=(64, 80)).astype(np.uint8)
    cm = ConfusionMatrix(4)
    cm.update(gt, gt)
    assert cm.miou() == 100.0
    assert cm.pixel_accuracy() == 100.0
    rows, cols = WindowGrid(64, 80, crop=32, stride=16).edges()
    assert boundary_error_rate(gt, gt, rows, cols) == 0.0


def test_confusion_matrix_by_hand() -> None:
    gt = np.array([[0, 0, 1, 1], [2, 2, 2, 255]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 7, 3]])
    cm = ConfusionMatrix(3)
    cm.update(pred, gt)
    # gt 0: pred 0, 1; gt 1: pred 1, 1; gt 2: pred 2, 0 and 7 (out of range: a miss); 255 ignored.
    np.testing.assert_array_equal(cm.matrix, [[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    np.testing.assert_array_equal(cm.missed, [0, 0, 1])
    # IoU: class 0: TP 1, gt 2, pred 2 -> 1/3; class 1: TP 2, gt 2, pred 3 -> 2/3;
    # class 2: TP 1, gt 3, pred 1 -> 1/3.
    np.testing.assert_allclose(cm.iou(), [1 / 3, 2 / 3, 1 / 3])
    assert cm.miou() == pytest.approx(100 * (4 / 3) / 3)
    assert cm.pixel_accuracy() == pytest.approx(100 * 4 / 7)


def test_class_absent_everywhere_is_nan_and_skipped() -> None:
    gt = np.array([0, 0, 1, 1])
    pred = np.array([0, 1, 1, 1])
    cm = ConfusionMatrix(3)
    cm.update(pred, gt)
    iou = cm.iou()
    np.testing.assert_allclose(iou[:2], [1 / 2, 2 / 3])
    assert math.isnan(iou[2])
    assert cm.miou() == pytest.approx(100 * (1 / 2 + 2 / 3) / 2)
    # predicted but never in gt: IoU 0, not NaN
    cm2 = ConfusionMatrix(3)
    cm2.update(np.array([2, 0]), np.array([0, 0]))
    np.testing.assert_allclose(cm2.iou()[[0, 2]], [0.5, 0.0])
    assert math.isnan(cm2.iou()[1])


def test_ignore_index_and_accumulation() -> None:
    cm = ConfusionMatrix(2, ignore_index=9)
    cm.update(np.array([1, 1, 0]), np.array([9, 1, 0]))
    cm.update(np.array([[0]]), np.array([[1]]))
    other = ConfusionMatrix(2, ignore_index=9)
    other.update(np.array([1]), np.array([1]))
    cm.merge(other)
    np.testing.assert_array_equal(cm.matrix, [[1, 0], [1, 2]])
    with pytest.raises(ValueError, match="5"):
        cm.update(np.array([0]), np.array([5]))  # gt label out of range and not ignored
    with pytest.raises(ValueError, match="4000000000"):
        cm.update(np.array([0]), np.array([4_000_000_000]))
    negative = ConfusionMatrix(2, ignore_index=-1)
    negative.update(np.array([0, 1, 1]), np.array([-1, 1, 0]))
    np.testing.assert_array_equal(negative.matrix, [[0, 1], [0, 1]])
    with pytest.raises(ValueError, match="-3"):
        negative.update(np.array([0]), np.array([-3]))
    empty = ConfusionMatrix(2)
    empty.update(np.array([0, 1]), np.array([255, 255]))
    assert math.isnan(empty.miou()) and math.isnan(empty.pixel_accuracy())


def test_confusion_matrix_is_fast_on_large_arrays() -> None:
    rng = np.random.default_rng(1)
    gt = rng.integers(0, 7, size=(4000, 4000), dtype=np.uint8)
    pred = rng.integers(0, 7, size=(4000, 4000), dtype=np.uint8)
    start = time.perf_counter()
    cm = ConfusionMatrix(7)
    cm.update(pred, gt)
    elapsed = time.perf_counter() - start
    assert cm.matrix.sum() == 16_000_000
    assert elapsed < 5.0  # about 0.3 s here; 10k x 10k scales linearly


def test_ber_hand_example() -> None:
    # 6 x 6 image, one window edge between columns 2 and 3 (col edge 3), none between rows.
    gt = np.array(
        [
            [0, 0, 0, 0, 1, 1],
            [0, 0, 0, 1, 1, 1],  # across the edge: 0 | 1 -> labels differ, not a pair
            [0, 0, 0, 0, 1, 1],
            [2, 2, 2, 2, 2, 2],
            [2, 2, 2, 2, 2, 2],
            [2, 2, 255, 255, 2, 2],  # ignored -> not a pair
        ]
    )
    pred = gt.copy()
    pred[0, 3] = 5  # row 0: pair (0,0) predicted (0,5): error
    pred[4, 2] = 1  # row 4: pair (2,2) predicted (1,2): error
    pred[1, 3] = 7  # row 1 is not a pair (gt differs): no effect
    pred[2, 0] = 9  # not on the edge: no effect
    # pairs: rows 0, 2, 3, 4 (row 1 differs in gt, row 5 ignored) -> 4 pairs, 2 errors
    assert boundary_error_counts(pred, gt, [], [3]) == (2, 4)
    assert boundary_error_rate(pred, gt, [], [3]) == pytest.approx(50.0)
    # A row edge at 3 (rows 2 | 3) adds no pair: gt differs in every column.  A row edge at 4
    # (rows 3 | 4) adds six equal pairs, one of them an error (column 2).
    assert boundary_error_counts(pred, gt, [3], [3]) == (2, 4)
    assert boundary_error_counts(pred, gt, [4], [3]) == (3, 10)
    # edges outside the image and duplicates are ignored
    assert boundary_error_counts(pred, gt, [0, 4, 4, 6, 9], [3, 3]) == (3, 10)


def test_ber_chunks_sum_to_the_whole_image() -> None:
    rng = np.random.default_rng(2)
    gt = (rng.random((50, 70)) < 0.8).astype(np.uint8)  # mostly 1 so many equal pairs
    gt[rng.random(gt.shape) < 0.05] = 255
    pred = (rng.random(gt.shape) < 0.7).astype(np.uint8)
    rows, cols = WindowGrid(50, 70, crop=16, stride=8).edges()
    whole = boundary_error_counts(pred, gt, rows, cols)
    assert whole[1] > 100
    acc = BoundaryErrorRate()
    # Disjoint chunk cores cut exactly on window edges (the hard case) and elsewhere.
    ys, xs = [0, 8, 23, 50], [0, 16, 31, 70]
    for y0, y1 in itertools.pairwise(ys):
        for x0, x1 in itertools.pairwise(xs):
            top, left = int(y0 > 0), int(x0 > 0)
            sl = np.s_[y0 - top : y1, x0 - left : x1]
            acc.update(pred[sl], gt[sl], rows, cols, origin=(y0 - top, x0 - left), context=(top, left))
    assert (acc.errors, acc.pairs) == whole
    assert acc.value() == pytest.approx(100 * whole[0] / whole[1])
