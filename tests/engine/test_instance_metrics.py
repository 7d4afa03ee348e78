"""Instance matching and scores against cases worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from napari_dinounet.engine.errors import InputError
from napari_dinounet.engine.instance_metrics import (
    evaluate_instances,
    iou_matrix,
    match,
    mean_instance_scores,
    scores_at,
)


def _two_objects_and_a_stray() -> tuple[np.ndarray, np.ndarray]:
    """Ground truth: A (ids 7) rows 0-1 cols 0-1 (4 px), B (id 30) rows 4-5 cols 4-5 (4 px).
    Prediction: A exactly (id 2); B shifted one column right (id 5: 2 px shared, union 6, IoU 1/3);
    a stray object (id 9, 1 px) where there is nothing."""
    gt = np.zeros((8, 8), np.uint16)
    gt[0:2, 0:2] = 7
    gt[4:6, 4:6] = 30
    pred = np.zeros((8, 8), np.int32)
    pred[0:2, 0:2] = 2
    pred[4:6, 5:7] = 5
    pred[7, 0] = 9
    return pred, gt


def test_iou_matrix_by_hand():
    pred, gt = _two_objects_and_a_stray()
    iou, gt_ids, pred_ids = iou_matrix(pred, gt)
    assert gt_ids.tolist() == [7, 30] and pred_ids.tolist() == [2, 5, 9]
    np.testing.assert_allclose(iou, [[1, 0, 0], [0, 1 / 3, 0]])


def test_scores_by_hand():
    pred, gt = _two_objects_and_a_stray()
    scores = evaluate_instances(pred, gt)
    # at IoU 0.5 only A matches: TP 1, FP 2 (shifted B, stray), FN 1 (B)
    assert scores["matched"] == 1 and scores["pred_count"] == 3 and scores["gt_count"] == 2
    assert scores["precision"] == pytest.approx(1 / 3)
    assert scores["recall"] == pytest.approx(1 / 2)
    assert scores["f1"] == pytest.approx(2 / (2 + 2 + 1))
    # A matches at every threshold 0.5..0.95: TP/(TP+FP+FN) = 1/4 at each
    assert scores["ap"] == pytest.approx(1 / 4)
    # PQ = summed matched IoU / (TP + FP/2 + FN/2) = 1 / 2.5; SQ = 1
    assert scores["pq"] == pytest.approx(0.4) and scores["sq"] == pytest.approx(1.0)


def test_ap_counts_a_match_only_at_the_thresholds_below_its_iou():
    gt = np.zeros((1, 10), np.uint8)
    gt[0, 0:6] = 1  # 6 px
    pred = np.zeros((1, 10), np.uint8)
    pred[0, 0:6] = 1
    pred[0, 6:10] = 1  # 10 px over the 6: IoU 0.6
    scores = evaluate_instances(pred, gt)
    # IoU 0.6 is above 0.50 and 0.55 only: DSB score 1 there, 0 (TP 0, FP 1, FN 1) at the other 8
    assert scores["ap"] == pytest.approx(2 / 10)
    assert scores["f1"] == 1.0 and scores["pq"] == pytest.approx(0.6)
    # strictly above: IoU exactly 0.5 does not match at 0.5
    half = np.zeros((1, 10), np.uint8)
    half[0, 0:3] = 1
    assert evaluate_instances(half, gt)["matched"] == 0  # 3 / 6 = 0.5


def test_low_thresholds_assign_one_to_one_for_the_most_matches():
    # true 0 overlaps pred 0 (0.4) and pred 1 (0.45); true 1 overlaps pred 1 only (0.35): greedy by IoU
    # would give pred 1 to true 0 and leave one match; the assignment finds two
    iou = np.array([[0.4, 0.45], [0.0, 0.35]])
    assert sorted(match(iou, 0.3)) == [(0, 0), (1, 1)]
    assert scores_at(iou, 0.3)["tp"] == 2
    assert match(iou, 0.42) == [(0, 1)]


def test_empty_maps():
    empty = np.zeros((4, 4), np.uint8)
    one = empty.copy()
    one[1:3, 1:3] = 4
    assert evaluate_instances(empty, empty)["f1"] == 1.0 and evaluate_instances(empty, empty)["ap"] == 1.0
    missed = evaluate_instances(empty, one)
    assert missed["f1"] == 0.0 and missed["ap"] == 0.0 and missed["recall"] == 0.0 and missed["gt_count"] == 1


def test_means_and_errors():
    pred, gt = _two_objects_and_a_stray()
    perfect = evaluate_instances(gt, gt)
    mean = mean_instance_scores([perfect, evaluate_instances(pred, gt)])
    assert mean["f1"] == pytest.approx((1 + 0.4) / 2) and mean["matched"] == 3 and mean["gt_count"] == 4
    with pytest.raises(InputError, match="shape"):
        evaluate_instances(pred[:4], gt)
    with pytest.raises(InputError, match="integers"):
        evaluate_instances(pred.astype(float), gt)
