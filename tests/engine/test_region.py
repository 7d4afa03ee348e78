"""Predicting a region (``Predictor.predict(image, region=...)``): the result of the region's shape equals a
whole-image run inside it, only the tiles that overlap it run, and bad regions are refused."""

from __future__ import annotations

import numpy as np
import pytest
from _random_heads import random_heads

from napari_dinounet.engine.bundled_data import load_mni152_slices, load_nuclei
from napari_dinounet.engine.errors import InputError
from napari_dinounet.engine.outputs import Labels, MirrorVariance, Probabilities
from napari_dinounet.engine.predictor import Predictor
from napari_dinounet.engine.progress import drain
from napari_dinounet.engine.tiling import tile_starts

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def predictor(tiny_backbone):
    """Random tiny heads (3 classes, 64-pixel tiles): a region must match whatever the network computes."""
    model, metadata = random_heads(tiny_backbone)
    return Predictor(model, metadata)


def _crop(array, rows, cols):
    return array[..., rows[0] : rows[1], cols[0] : cols[1]]


IMAGE_SHAPE = (150, 170)  # 64-pixel tiles at step 0.5: 4 x 5 tiles, the last of each axis flush with its end


@pytest.fixture(scope="module")
def whole_run(predictor):
    image = load_nuclei()[0][: IMAGE_SHAPE[0], : IMAGE_SHAPE[1]]
    return image, drain(predictor.predict(image, outputs=(Probabilities(), Labels())))


@pytest.mark.parametrize(
    "region",
    [((37, 101), (50, 140)), ((0, 150), (0, 170)), ((140, 150), (3, 9)), ((100, 150), (150, 170)), ((0, 1), (0, 1))],
)
def test_a_region_equals_the_whole_image_run_inside_it(predictor, whole_run, region):
    image, (whole_probabilities, whole_labels) = whole_run
    events = []
    probabilities, labels = drain(
        predictor.predict(image, region=region, outputs=(Probabilities(), Labels())), events.append
    )
    (rows, cols) = region
    assert labels.shape == (rows[1] - rows[0], cols[1] - cols[0]) and probabilities.shape == (3, *labels.shape)
    np.testing.assert_allclose(probabilities, _crop(whole_probabilities, rows, cols), atol=1e-6)
    np.testing.assert_array_equal(labels, _crop(whole_labels, rows, cols))
    # only the whole-image tiles overlapping the region ran
    overlap = [
        sum(1 for s in tile_starts(size, 64, 0.5) if s < stop and s + 64 > start)
        for size, (start, stop) in zip(image.shape, region)
    ]
    assert events[-1].total == overlap[0] * overlap[1] <= 4 * 5


def test_a_stack_region_applies_to_each_slice_or_picks_slices_with_mirrors(predictor):
    stack = load_mni152_slices().image[8:10, 40:140, 20:120]  # (2, 100, 100)
    whole_labels, whole_variance = drain(predictor.predict(stack, mirror=True, outputs=(Labels(), MirrorVariance())))
    labels, variance = drain(
        predictor.predict(stack, mirror=True, region=((20, 70), (40, 100)), outputs=(Labels(), MirrorVariance()))
    )
    assert labels.shape == (2, 50, 60) and variance.shape == (3, 2, 50, 60)
    np.testing.assert_array_equal(labels, whole_labels[:, 20:70, 40:100])
    np.testing.assert_allclose(variance, whole_variance[:, :, 20:70, 40:100], atol=1e-6)
    assert variance.max() > 0  # the mirrors disagree somewhere: the comparison is not of zeros
    (picked,) = drain(predictor.predict(stack, mirror=True, region=((1, 2), (20, 70), (40, 100))))
    assert picked.shape == (1, 50, 60)
    np.testing.assert_array_equal(picked[0], whole_labels[1, 20:70, 40:100])


@pytest.mark.parametrize(
    "region, message",
    [
        (((0, 300), (0, 10)), "rows .* <= 150"),
        (((10, 10), (0, 10)), "start < stop"),
        (((0, 10),), r"\(\(y0, y1\), \(x0, x1\)\)"),
        (((0, 10), ("a", 3)), "start, stop"),
        (((0, 1), (0, 10), (0, 10)), r"\(\(y0, y1\), \(x0, x1\)\)"),  # three pairs on a 2D image
    ],
)
def test_bad_regions_are_refused_before_any_tile(predictor, region, message):
    with pytest.raises(InputError, match=message):
        next(predictor.predict(np.zeros(IMAGE_SHAPE, np.uint16), region=region))
