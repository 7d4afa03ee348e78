"""Faults of prediction from the December reliability report: runaway tiles, bad arguments, silent wrong results.

Each test builds its own small inputs; the report's numbers are quoted where a test stands for one of its cases.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_dinounet.engine import normalize
from napari_dinounet.engine.errors import InputError
from napari_dinounet.engine.predict import predict
from napari_dinounet.engine.progress import drain


class Recording(torch.nn.Module):
    """A 1x1 conv (2 classes) that records the shape of every batch of tiles it is given."""

    def __init__(self, in_channels: int = 1, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = torch.nn.Conv2d(in_channels, 2, 1)
        self.batches: list[tuple[int, ...]] = []

    def forward(self, x):
        self.batches.append(tuple(x.shape))
        return self.conv(x)


def blobs(shape, seed=0) -> np.ndarray:
    """Smooth float32 blobs in [0, 1]: a pointwise net gives a non-trivial segmentation of them."""
    from scipy.ndimage import gaussian_filter

    field = gaussian_filter(np.random.default_rng(seed).normal(size=shape), 3)
    return ((field - field.min()) / (field.max() - field.min())).astype(np.float32)


def run(model, img, **kwargs):
    return drain(predict(model, img, **kwargs))


# --------------------------------------------------------------------------------------------------
# Silent wrong results: float64 beyond float32, a 'ct' normalisation that cannot work


def test_a_float64_image_beyond_float32_segments_like_the_same_image_unscaled():
    img = blobs((96, 96)).astype(np.float64) * 4000
    huge = img * 1e300  # API-f64 1e300: overflowed to inf in float32 and was normalised to zeros
    mean, std = normalize.image_statistics(huge[None])
    reference = normalize.image_statistics(img[None])
    np.testing.assert_allclose(mean, reference[0] * 1e300, rtol=1e-12)
    np.testing.assert_allclose(std, reference[1] * 1e300, rtol=1e-12)
    norm = normalize.Normalization("zscore")
    np.testing.assert_allclose(normalize.apply(huge[None], norm, (mean, std)),
                               normalize.apply(img[None], norm, reference), atol=1e-6)
    model = Recording()
    labels = run(model, huge, patch_size=64)
    assert 0.2 < labels.mean() < 0.8  # a real segmentation, not one class everywhere
    np.testing.assert_array_equal(labels, run(model, img, patch_size=64))


def test_ordinary_statistics_are_unchanged_by_the_overflow_guard():
    img = blobs((3, 50, 60)).astype(np.float64) * 1000 - 7
    mean, std = normalize.image_statistics(img)
    flat = img.reshape(3, -1)
    np.testing.assert_array_equal(mean, flat.sum(1) / flat.shape[1])
    np.testing.assert_allclose(std, flat.std(1), rtol=1e-9)
    rgb_mean, rgb_std = normalize.image_statistics(img, "rgb")
    assert rgb_mean == pytest.approx(np.full(3, img.mean()), rel=1e-15)
    assert rgb_std == pytest.approx(np.full(3, img.std()), rel=1e-9)


@pytest.mark.parametrize(
    "fields, named",
    [
        ({"std": 0.0}, "std=0.0"),  # H-predict-norm_ct_std0: divide-by-zero, garbage labels before
        ({"std": -2.0}, "std=-2.0"),
        ({"std": float("inf")}, "std=inf"),
        ({"mean": float("nan")}, "mean=nan"),
        ({"clip": (0.0, float("inf"))}, r"clip=\(0.0, inf\)"),
        ({"clip": (5.0, 1.0)}, r"clip=\(5.0, 1.0\)"),
        ({"clip": (1.0,)}, r"clip=\(1.0,\)"),
        ({"std": "1"}, "std='1'"),
    ],
)
def test_a_ct_normalization_with_unusable_numbers_is_refused_when_built(fields, named):
    good = {"scheme": "ct", "clip": (-100.0, 300.0), "mean": 40.0, "std": 25.0}
    with pytest.raises(InputError, match=rf"'ct' normalisation has {named}:.*fit_ct"):
        normalize.Normalization(**{**good, **fields})
    with pytest.raises(InputError, match=named):
        normalize.Normalization.from_dict({**good, **fields})
    assert normalize.Normalization(**good).std == 25.0
