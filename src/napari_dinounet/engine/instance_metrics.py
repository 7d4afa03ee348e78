"""Instance segmentation scores: objects matched by IoU, precision, recall, F1, DSB 2018 AP, panoptic quality.

Inputs are two instance label maps of one shape (0 background, each object its own id; ids need not be
consecutive). A predicted and a true object *match* at threshold ``t`` when their IoU is above ``t``
(strictly, as the DSB 2018 evaluation counts "above the threshold"); each object matches at most one.
Above 0.5 a match is unique by itself (two objects cannot both overlap a third by more than half of their
union), so matching is simply every pair over the threshold; at lower thresholds the pairs are assigned
one to one by the Hungarian algorithm, most matches first, then highest total IoU.

At threshold ``t``, with TP matches, FP unmatched predictions and FN unmatched true objects:
precision TP/(TP+FP), recall TP/(TP+FN), F1 2TP/(2TP+FP+FN), and the DSB 2018 score TP/(TP+FP+FN); the
DSB 2018 "average precision" is that score averaged over ``t`` = 0.50, 0.55, ..., 0.95. Panoptic quality
(Kirillov et al., 2019) at 0.5 is the summed IoU of the matches over TP + FP/2 + FN/2. Two empty maps
score 1 (nothing to find, nothing found wrongly); one empty side scores 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import InputError

DSB_THRESHOLDS = tuple(round(0.5 + 0.05 * k, 2) for k in range(10))


def iou_matrix(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(IoU (n_gt, n_pred) float64, the true ids, the predicted ids) of two instance maps of one shape."""
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise InputError(f"prediction shape {pred.shape} differs from ground truth shape {gt.shape}")
    for name, labels in (("prediction", pred), ("ground truth", gt)):
        if labels.dtype.kind not in "biu":
            raise InputError(f"{name}: instance labels must be integers, got {labels.dtype}")
    gt_ids, gt_index = np.unique(gt.ravel(), return_inverse=True)
    pred_ids, pred_index = np.unique(pred.ravel(), return_inverse=True)
    # pixel counts of every (true id, predicted id) pair, background (id 0) included
    overlap = np.bincount(gt_index * pred_ids.size + pred_index, minlength=gt_ids.size * pred_ids.size).reshape(
        gt_ids.size, pred_ids.size
    )
    keep_gt, keep_pred = gt_ids != 0, pred_ids != 0
    gt_area, pred_area = overlap.sum(axis=1), overlap.sum(axis=0)
    intersection = overlap[np.ix_(keep_gt, keep_pred)].astype(np.float64)
    union = gt_area[keep_gt][:, None] + pred_area[keep_pred][None, :] - intersection
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, intersection / union, 0.0)
    return iou, gt_ids[keep_gt], pred_ids[keep_pred]


def match(iou: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """One-to-one (true index, predicted index) pairs of IoU above ``threshold`` (see the module docstring)."""
    if iou.size == 0:
        return []
    above = iou > threshold
    if threshold >= 0.5:
        return [(int(g), int(p)) for g, p in zip(*np.nonzero(above))]
    from scipy.optimize import linear_sum_assignment

    # most matches first (each worth more than any IoU sum can add), then the highest total IoU
    cost = -(above.astype(np.float64) * (iou.size + 1) + iou * above)
    rows, cols = linear_sum_assignment(cost)
    return [(int(g), int(p)) for g, p in zip(rows, cols) if above[g, p]]


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 1.0


def scores_at(iou: np.ndarray, threshold: float) -> dict:
    """``{tp, fp, fn, precision, recall, f1, dsb, matched_iou}`` at one threshold (``matched_iou``: summed
    IoU of the matches)."""
    n_gt, n_pred = iou.shape
    pairs = match(iou, threshold)
    tp = len(pairs)
    fp, fn = n_pred - tp, n_gt - tp
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "dsb": _ratio(tp, tp + fp + fn),
        "matched_iou": float(sum(iou[g, p] for g, p in pairs)),
    }


def evaluate_instances(pred, gt, thresholds: Sequence[float] = DSB_THRESHOLDS) -> dict:
    """The instance scores of one image: ``{matched, precision, recall, f1, ap, pq, sq, pred_count,
    gt_count}``; matched/precision/recall/f1/pq/sq at IoU 0.5, ``ap`` the mean DSB score over ``thresholds``.
    """
    iou, gt_ids, pred_ids = iou_matrix(pred, gt)
    at_half = scores_at(iou, 0.5)
    tp, fp, fn = at_half["tp"], at_half["fp"], at_half["fn"]
    return {
        "matched": tp,
        "precision": at_half["precision"],
        "recall": at_half["recall"],
        "f1": at_half["f1"],
        "ap": float(np.mean([scores_at(iou, t)["dsb"] for t in thresholds])),
        "pq": _ratio(at_half["matched_iou"], tp + fp / 2 + fn / 2),
        "sq": at_half["matched_iou"] / tp if tp else (1.0 if not (fp or fn) else 0.0),
        "pred_count": int(pred_ids.size),
        "gt_count": int(gt_ids.size),
    }


def mean_instance_scores(results: Sequence[dict]) -> dict:
    """The mean over images of every score of :func:`evaluate_instances` (counts: their sums)."""
    if not results:
        return {}
    summed = ("matched", "pred_count", "gt_count")
    return {
        key: (int(sum(r[key] for r in results)) if key in summed else float(np.mean([r[key] for r in results])))
        for key in results[0]
    }
