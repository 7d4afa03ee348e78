"""Segmentation metrics: Dice and HD95 per class, in pixels or in physical units.

Inputs are label maps of one shape (2D or 3D, any integer type); a class ``c`` is the mask
``labels == c``. Unless given, the classes are the non-zero values present in either map
(0 is background and is not scored).

HD95 is the symmetric 95th percentile Hausdorff distance as medpy's ``hd95`` computes it: the surface
of a mask is its pixels removed by one erosion with the face-connected structuring element; the
distances from every prediction surface pixel to the ground-truth surface and from every ground-truth
surface pixel to the prediction surface are pooled, and their 95th percentile is taken. Distances are
Euclidean, scaled per axis by ``spacing`` (physical units) or in pixels when ``spacing`` is None.

Empty masks (per image and class), chosen so that every score is a number:

- both empty: Dice 1.0, HD95 0.0 (nothing to find and nothing found);
- exactly one empty: Dice 0.0, HD95 ``inf`` (there is no surface to measure a distance to).

:func:`mean_scores` averages Dice over every image and HD95 over the images where it is finite,
reporting separately how many were infinite, so one missed structure neither hides in nor swamps
the mean.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
from scipy import ndimage

from .errors import InputError


def classes_present(pred: np.ndarray, gt: np.ndarray) -> list[int]:
    """The sorted non-zero label values found in ``pred`` or ``gt``."""
    return sorted(int(v) for v in np.union1d(np.unique(pred), np.unique(gt)) if v != 0)


def _check_pair(pred, gt, spacing=None) -> tuple[np.ndarray, np.ndarray, tuple[float, ...] | None]:
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise InputError(
            f"prediction shape {pred.shape} differs from ground-truth shape {gt.shape}; "
            "compare label maps of the same image"
        )
    if spacing is not None:
        spacing = tuple(float(s) for s in spacing)
        if len(spacing) != pred.ndim or min(spacing) <= 0:
            raise InputError(f"spacing {spacing} must give one positive size per axis of the {pred.ndim}D label maps")
    return pred, gt, spacing


def binary_dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice of two boolean masks: 2|P∩G| / (|P| + |G|); 1.0 when both are empty."""
    pred, gt = pred.astype(bool, copy=False), gt.astype(bool, copy=False)
    total = int(np.count_nonzero(pred)) + int(np.count_nonzero(gt))
    if total == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(pred & gt)) / total


def _surface(mask: np.ndarray) -> np.ndarray:
    eroded = ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(mask.ndim, 1), iterations=1)
    return mask & ~eroded


def _crop_to_union(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cut to the bounding box of their union plus one pixel.

    Distances and surfaces are unchanged: the margin keeps erosion at the box edge as it was (outside
    pixels are background, or the image border, where erosion also sees background).
    """
    union = pred | gt
    box = []
    for axis in range(union.ndim):
        hits = np.flatnonzero(np.any(union, axis=tuple(a for a in range(union.ndim) if a != axis)))
        box.append(slice(max(hits[0] - 1, 0), hits[-1] + 2))
    return pred[tuple(box)], gt[tuple(box)]


def binary_hd95(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | None = None) -> float:
    """Symmetric 95th percentile Hausdorff distance of two boolean masks (medpy's ``hd95``).

    0.0 when both are empty, ``inf`` when exactly one is; in ``spacing`` units, else pixels.
    """
    pred, gt = pred.astype(bool, copy=False), gt.astype(bool, copy=False)
    has_pred, has_gt = bool(pred.any()), bool(gt.any())
    if not (has_pred or has_gt):
        return 0.0
    if not (has_pred and has_gt):
        return math.inf
    pred, gt = _crop_to_union(pred, gt)
    pred_surface, gt_surface = _surface(pred), _surface(gt)
    to_gt = ndimage.distance_transform_edt(~gt_surface, sampling=spacing)[pred_surface]
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=spacing)[gt_surface]
    return float(np.percentile(np.concatenate([to_gt, to_pred]), 95))


def dice(pred, gt, labels: Iterable[int] | None = None) -> dict[int, float]:
    """Dice per class of two label maps of one shape: ``{class: dice}`` (see the module for empty masks)."""
    pred, gt, _ = _check_pair(pred, gt)
    labels = classes_present(pred, gt) if labels is None else [int(c) for c in labels]
    return {c: binary_dice(pred == c, gt == c) for c in labels}


def hd95(pred, gt, spacing: Sequence[float] | None = None, labels: Iterable[int] | None = None) -> dict[int, float]:
    """HD95 per class of two label maps: ``{class: distance}`` in ``spacing`` units (one per axis) or pixels."""
    pred, gt, spacing = _check_pair(pred, gt, spacing)
    labels = classes_present(pred, gt) if labels is None else [int(c) for c in labels]
    return {c: binary_hd95(pred == c, gt == c, spacing) for c in labels}


def evaluate_pair(
    pred, gt, spacing: Sequence[float] | None = None, classes: Iterable[int] | None = None
) -> dict[str, dict[int, float]]:
    """Dice and HD95 per class for one image: ``{"dice": {class: value}, "hd95": {class: value}}``.

    pred, gt: label maps of one shape; spacing: physical pixel size per axis (HD95 in those units) or
    None (pixels); classes: the classes to score (default: non-zero values in either map).
    """
    pred, gt, spacing = _check_pair(pred, gt, spacing)
    classes = classes_present(pred, gt) if classes is None else [int(c) for c in classes]
    return {"dice": dice(pred, gt, classes), "hd95": hd95(pred, gt, spacing, classes)}


def mean_scores(results: Sequence[dict[str, dict[int, float]]]) -> dict:
    """Per-class means over images, from :func:`evaluate_pair` results.

    Returns ``{"dice": {c: mean}, "hd95": {c: mean of finite values or nan}, "hd95_infinite": {c: count},
    "images": {c: count}, "mean_dice": mean over classes, "mean_hd95": mean over classes with a finite mean}``.
    Dice averages every image that scored the class; HD95 averages only finite values (an infinite HD95
    means one mask was empty, and is counted in ``hd95_infinite`` instead); nan when nothing is left.
    """
    classes = sorted({c for result in results for c in result["dice"]})
    summary: dict = {"dice": {}, "hd95": {}, "hd95_infinite": {}, "images": {}}
    for c in classes:
        dices = [r["dice"][c] for r in results if c in r["dice"]]
        distances = [r["hd95"][c] for r in results if c in r["hd95"]]
        finite = [d for d in distances if math.isfinite(d)]
        summary["dice"][c] = float(np.mean(dices))
        summary["hd95"][c] = float(np.mean(finite)) if finite else math.nan
        summary["hd95_infinite"][c] = len(distances) - len(finite)
        summary["images"][c] = len(dices)
    class_hd95 = [v for v in summary["hd95"].values() if math.isfinite(v)]
    summary["mean_dice"] = float(np.mean(list(summary["dice"].values()))) if classes else math.nan
    summary["mean_hd95"] = float(np.mean(class_hd95)) if class_hd95 else math.nan
    return summary
