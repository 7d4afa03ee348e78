"""Dice and HD95: shapes with answers known from geometry, empty masks, and medpy / MONAI as references."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from napari_dinounet.engine.errors import InputError
from napari_dinounet.engine.metrics import (
    binary_dice,
    binary_hd95,
    classes_present,
    dice,
    evaluate_pair,
    hd95,
    mean_scores,
)


def disc(shape, centre, radius):
    yy, xx = np.indices(shape)
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def random_blobs(rng, shape, sigma=3.0, level=0.55):
    """Smooth random masks with several components, often touching the border."""
    field = ndimage.gaussian_filter(rng.random(shape), sigma)
    return field > np.quantile(field, level)


@pytest.mark.parametrize("radius", [10, 20])
@pytest.mark.parametrize("shift", [1, 3, 8])
def test_disc_against_shifted_disc(radius, shift):
    a = disc((96, 96), (48, 40), radius)
    b = disc((96, 96), (48, 40 + shift), radius)
    # Geometry, counted row by row: a row of the disc holds w pixels; shifting it by k keeps w - k of them.
    offsets = np.arange(-radius, radius + 1)
    widths = 2 * np.floor(np.sqrt(radius**2 - offsets**2)).astype(int) + 1
    expected_dice = np.maximum(widths - shift, 0).sum() / widths.sum()
    assert binary_dice(a, b) == pytest.approx(expected_dice, abs=1e-12)
    # ... and close to the continuous lens area of two circles of radius r, k apart.
    lens = 2 * radius**2 * math.acos(shift / (2 * radius)) - shift / 2 * math.sqrt(4 * radius**2 - shift**2)
    assert binary_dice(a, b) == pytest.approx(lens / (math.pi * radius**2), abs=0.02)
    # The extreme left/right boundary points move by exactly k, and they dominate the top 5 %.
    assert binary_hd95(a, b) == pytest.approx(shift)
    assert binary_hd95(b, a) == pytest.approx(shift)


@pytest.mark.parametrize("axis", [0, 1])
def test_square_shift_in_pixels_and_anisotropic_units(axis):
    a = np.zeros((60, 60), bool)
    a[10:40, 15:45] = True
    b = np.roll(a, 4, axis=axis)
    assert binary_dice(a, b) == pytest.approx(26 / 30)  # 26 of 30 rows (or columns) still overlap
    assert binary_hd95(a, b) == pytest.approx(4.0)
    spacing = (2.0, 0.5)
    assert binary_hd95(a, b, spacing) == pytest.approx(4 * spacing[axis])


def test_cube_shift_3d_with_spacing():
    a = np.zeros((20, 30, 30), bool)
    a[5:13, 8:20, 8:20] = True
    b = np.roll(a, 2, axis=0)
    assert binary_dice(a, b) == pytest.approx(6 / 8)
    assert binary_hd95(a, b, (3.0, 0.7, 0.7)) == pytest.approx(6.0)
    assert binary_hd95(a, b) == pytest.approx(2.0)


def test_empty_mask_rules():
    empty = np.zeros((20, 20), bool)
    full = np.zeros((20, 20), bool)
    full[5:10, 5:10] = True
    assert binary_dice(empty, empty) == 1.0 and binary_hd95(empty, empty) == 0.0
    assert binary_dice(full, empty) == 0.0 and binary_hd95(full, empty) == math.inf
    assert binary_dice(empty, full) == 0.0 and binary_hd95(empty, full) == math.inf
    # An explicitly requested class absent from both maps follows the both-empty rule.
    labels = full.astype(np.uint8)
    assert evaluate_pair(labels, labels, classes=[1, 2]) == {"dice": {1: 1.0, 2: 1.0}, "hd95": {1: 0.0, 2: 0.0}}


def test_multiclass_per_class_scores():
    gt = np.zeros((50, 50), np.uint8)
    gt[5:15, 5:15] = 1
    gt[30:45, 30:45] = 3
    pred = np.zeros_like(gt)
    pred[5:15, 7:17] = 1  # shifted 2 columns: Dice 8/10
    pred[20:25, 20:25] = 2  # a class the ground truth lacks
    assert classes_present(pred, gt) == [1, 2, 3]
    result = evaluate_pair(pred, gt)
    assert result["dice"] == {1: pytest.approx(0.8), 2: 0.0, 3: 0.0}
    assert result["hd95"] == {1: pytest.approx(2.0), 2: math.inf, 3: math.inf}
    assert dice(pred, gt, labels=[1]) == {1: pytest.approx(0.8)}
    assert hd95(pred, gt, spacing=(1.0, 0.25), labels=[1]) == {1: pytest.approx(0.5)}


def test_mean_scores_skip_infinite_hd95_and_count_them():
    results = [
        {"dice": {1: 0.8, 2: 0.0}, "hd95": {1: 2.0, 2: math.inf}},
        {"dice": {1: 0.6, 2: 0.5}, "hd95": {1: 4.0, 2: 6.0}},
        {"dice": {1: 1.0}, "hd95": {1: 0.0}},  # class 2 not scored in this image
    ]
    summary = mean_scores(results)
    assert summary["dice"] == {1: pytest.approx(0.8), 2: pytest.approx(0.25)}
    assert summary["hd95"] == {1: pytest.approx(2.0), 2: pytest.approx(6.0)}
    assert summary["hd95_infinite"] == {1: 0, 2: 1}
    assert summary["images"] == {1: 3, 2: 2}
    assert summary["mean_dice"] == pytest.approx(0.525)
    assert summary["mean_hd95"] == pytest.approx(4.0)
    only_missed = mean_scores([{"dice": {1: 0.0}, "hd95": {1: math.inf}}])
    assert math.isnan(only_missed["hd95"][1]) and math.isnan(only_missed["mean_hd95"])


@pytest.mark.parametrize(
    "shape, spacing",
    [((64, 80), None), ((64, 80), (0.8, 1.7)), ((24, 40, 36), None), ((24, 40, 36), (2.5, 0.6, 0.9))],
)
def test_equal_to_medpy_on_random_blobs(shape, spacing):
    from medpy.metric.binary import dc
    from medpy.metric.binary import hd95 as medpy_hd95

    rng = np.random.default_rng(sum(shape))
    for _ in range(4):
        a, b = random_blobs(rng, shape), random_blobs(rng, shape)
        assert binary_dice(a, b) == pytest.approx(dc(a, b), abs=1e-6)
        assert binary_hd95(a, b, spacing) == pytest.approx(medpy_hd95(a, b, voxelspacing=spacing), abs=1e-6)
    # A small object far from the border: the bounding-box crop must not change anything.
    small_a = np.zeros(shape, bool)
    small_b = np.zeros(shape, bool)
    centre = tuple(s // 2 for s in shape)
    small_a[tuple(slice(c - 3, c + 3) for c in centre)] = True
    small_b[tuple(slice(c - 2, c + 5) for c in centre)] = True
    assert binary_hd95(small_a, small_b, spacing) == pytest.approx(
        medpy_hd95(small_a, small_b, voxelspacing=spacing), abs=1e-6
    )


def test_multiclass_scores_equal_to_medpy_per_class():
    from medpy.metric.binary import dc
    from medpy.metric.binary import hd95 as medpy_hd95

    rng = np.random.default_rng(7)
    gt = np.zeros((72, 72), np.int64)
    pred = np.zeros((72, 72), np.int64)
    for value in (1, 2, 3):
        gt[random_blobs(rng, gt.shape, level=0.8)] = value
        pred[random_blobs(rng, gt.shape, level=0.8)] = value
    result = evaluate_pair(pred, gt, spacing=(0.5, 1.5))
    assert sorted(result["dice"]) == [1, 2, 3]
    for c in (1, 2, 3):
        assert result["dice"][c] == pytest.approx(dc(pred == c, gt == c), abs=1e-6)
        assert result["hd95"][c] == pytest.approx(medpy_hd95(pred == c, gt == c, voxelspacing=(0.5, 1.5)), abs=1e-6)


def test_bad_inputs_raise_input_error():
    with pytest.raises(InputError, match="shape"):
        evaluate_pair(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(InputError, match="spacing"):
        hd95(np.ones((4, 4), int), np.ones((4, 4), int), spacing=(1.0,))
    with pytest.raises(InputError, match="spacing"):
        hd95(np.ones((4, 4), int), np.ones((4, 4), int), spacing=(1.0, 0.0))


def test_real_nuclei_mask_against_its_dilation():
    """The bundled DSB 2018 nuclei ground truth against itself grown by one pixel: A is inside B."""
    from medpy.metric.binary import hd95 as medpy_hd95

    from napari_dinounet.engine.bundled_data import load_nuclei

    _, instances = load_nuclei()
    truth = instances > 0
    grown = ndimage.binary_dilation(truth, ndimage.generate_binary_structure(2, 1))
    result = evaluate_pair(grown.astype(np.uint8), truth.astype(np.uint8))
    assert result["dice"][1] == pytest.approx(2 * truth.sum() / (truth.sum() + grown.sum()))
    assert 0.8 < result["dice"][1] < 1.0
    assert result["hd95"][1] == pytest.approx(medpy_hd95(grown, truth), abs=1e-6)
    assert result["hd95"][1] == pytest.approx(1.0)  # every grown boundary pixel is one step from the old one
