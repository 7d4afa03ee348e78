"""Uncertainty outputs (engine/uncertainty.py): normalised entropy and the mirrors' disagreement in [0, 1],
and, on real data, higher where the prediction is wrong (AUROC as an error detector)."""

from __future__ import annotations

import numpy as np
import pytest
from _random_heads import random_heads

from napari_dinounet.engine.bundled_data import load_nuclei
from napari_dinounet.engine.outputs import Labels, Probabilities
from napari_dinounet.engine.predictor import Predictor
from napari_dinounet.engine.progress import drain
from napari_dinounet.engine.uncertainty import (
    MirrorDisagreement,
    Uncertainty,
    error_detection_auroc,
    normalized_entropy,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_normalized_entropy_spans_zero_to_one():
    probabilities = np.array([[1.0, 0.5, 1 / 3], [0.0, 0.5, 1 / 3], [0.0, 0.0, 1 / 3]], np.float32)
    np.testing.assert_allclose(normalized_entropy(probabilities), [0.0, np.log(2) / np.log(3), 1.0], atol=1e-6)
    assert normalized_entropy(np.ones((1, 4, 5))).shape == (4, 5)


def test_error_detection_auroc_counts_ranks_and_ties():
    wrong = np.array([True, True, False, False])
    assert error_detection_auroc([0.9, 0.8, 0.1, 0.2], wrong) == 1.0
    assert error_detection_auroc([0.1, 0.2, 0.9, 0.8], wrong) == 0.0
    assert error_detection_auroc([0.5, 0.5, 0.5, 0.5], wrong) == 0.5
    assert error_detection_auroc([0.9, 0.1, 0.5, 0.2], wrong) == 0.5  # one pair in each order of the four
    assert np.isnan(error_detection_auroc([0.1, 0.2], [False, False]))


def test_uncertainty_is_the_entropy_of_the_probabilities_and_grows_with_mirror_disagreement(tiny_backbone):
    predictor = Predictor(*random_heads(tiny_backbone))
    image = load_nuclei()[0][:96, :128]
    probabilities, uncertainty, disagreement = drain(
        predictor.predict(image, outputs=(Probabilities(), Uncertainty(), MirrorDisagreement()))
    )
    assert uncertainty.shape == (96, 128) and uncertainty.dtype == np.float32
    np.testing.assert_allclose(uncertainty, normalized_entropy(probabilities), atol=1e-5)
    assert uncertainty.min() >= 0 and uncertainty.max() <= 1 and uncertainty.std() > 0
    np.testing.assert_allclose(disagreement, 0, atol=1e-6)  # one view: nothing to disagree about
    labels, tta_uncertainty, tta_disagreement = drain(
        predictor.predict(image, mirror=True, outputs=(Labels(), Uncertainty(), MirrorDisagreement()))
    )
    assert 0 < tta_disagreement.max() <= 1 and tta_disagreement.min() >= 0
    # the entropy of the mirrors' mean is their mean entropy plus their disagreement: never below it
    assert np.all(tta_uncertainty >= tta_disagreement - 1e-6)


def test_uncertainty_detects_the_wrong_pixels_on_the_nuclei_test_half(nuclei_left_heads):
    predictor, _ = nuclei_left_heads
    image, instances = load_nuclei()
    labels, uncertainty = drain(predictor.predict(image[:, 256:], tile=128, outputs=(Labels(), Uncertainty())))
    wrong = labels != (instances[:, 256:] > 0)
    auroc = error_detection_auroc(uncertainty, wrong)
    print(f"uncertainty as an error detector on the nuclei right half: AUROC {auroc:.3f} ({wrong.mean():.1%} wrong)")
    assert 0.01 < wrong.mean() < 0.3  # a real prediction with real errors, not a trivial case
    assert auroc >= 0.75
    assert uncertainty[wrong].mean() > 2 * uncertainty[~wrong].mean()
