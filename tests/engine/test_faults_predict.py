"""Faults of prediction from the December reliability report: runaway tiles, bad arguments, silent wrong results.

Each test builds its own small inputs; the report's numbers are quoted where a test stands for one of its cases.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_dinounet.engine import normalize
from napari_dinounet.engine.errors import DinoUNetError, InputError
from napari_dinounet.engine.outputs import argmax_classes
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


class Broken(torch.nn.Module):
    """A network whose weights hold NaN or inf, as a damaged file or a diverged training leaves them."""

    def __init__(self, value: float):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 1)
        with torch.no_grad():
            self.conv.weight[0] = value
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.conv(x)


def blobs(shape, seed=0) -> np.ndarray:
    """Smooth float32 blobs in [0, 1]: a pointwise net gives a non-trivial segmentation of them."""
    from scipy.ndimage import gaussian_filter

    field = gaussian_filter(np.random.default_rng(seed).normal(size=shape), 3)
    return ((field - field.min()) / (field.max() - field.min())).astype(np.float32)


def run(model, img, **kwargs):
    return drain(predict(model, img, **kwargs))


# --------------------------------------------------------------------------------------------------
# Defect 17: the tile is clamped to the image, and a step that multiplies the tiles needs force=True


@pytest.mark.parametrize(
    "shape, patch, tile",
    [
        ((128, 128), 2048, (128, 128)),  # M-tile-2048-on-128px: 43 s and 4.95 GB before
        ((100, 40), 2048, (128, 64)),  # per dimension, rounded up to a multiple of 32
        ((128, 128), 1048576, (128, 128)),  # H-predict-patchhuge: an 8 TiB Gaussian was attempted
        ((300, 40), (64, 512), (64, 64)),  # a tile smaller than the image stays as it is
        ((20, 300), 512, (64, 320)),  # never clamped below 64, which a DinoUNet needs
        ((20, 17), 32, (32, 32)),  # but a tile asked for as 32 stays 32
    ],
)
def test_the_tile_is_clamped_to_the_image_rounded_up_to_32(shape, patch, tile):
    model = Recording()
    img = blobs(shape)
    labels = run(model, img, patch_size=patch)
    assert labels.shape == shape
    assert {batch[2:] for batch in model.batches} == {tile}
    np.testing.assert_array_equal(labels, run(Recording(), img, patch_size=tile))


@pytest.mark.parametrize("shape", [(1, 1), (20, 300)])
def test_a_dino_unet_predicts_images_smaller_than_its_tile(tiny_backbone, shape):
    from napari_dinounet.engine.network import build_dinounet

    model = build_dinounet(num_classes=2, backbone=tiny_backbone).eval()
    img = np.random.default_rng(0).integers(0, 255, shape).astype(np.uint8)
    assert run(model, img, patch_size=512).shape == shape  # a 32 tile: InstanceNorm of 1 x 1 features refused


@pytest.mark.parametrize("step, tiles", [(0.01, 201_601), (1e-9, 201_601), (0.1, 5_776)])
def test_a_step_that_multiplies_the_tiles_by_more_than_10_is_refused(step, tiles):
    model = Recording()
    with pytest.raises(InputError, match=rf"step={step} makes {tiles} tiles, \d+ times the 225 at step 0.5.*--force"):
        run(model, np.zeros((512, 512), np.uint8), patch_size=64, step=step)
    assert model.batches == []  # refused before any tile ran


def test_force_runs_a_small_step_and_a_moderate_step_needs_no_force():
    img = blobs((96, 96))
    with pytest.raises(InputError, match="144 tiles, 36 times the 4 at step 0.5"):
        run(Recording(), img, patch_size=64, step=0.05)
    events = []
    labels = drain(predict(Recording(), img, patch_size=64, step=0.05, force=True), events.append)
    assert events[-1].done == events[-1].total == 144 and labels.shape == (96, 96)
    gen = predict(Recording(), np.zeros((512, 512), np.uint8), patch_size=64, step=0.25)  # 841 tiles: 3.7 x 225
    assert next(gen).total == 841
    gen.close()


# --------------------------------------------------------------------------------------------------
# Defect 16: arguments the engine API refused with a raw exception, or too late


@pytest.mark.parametrize(
    "img, message",
    [
        (np.array(5.0), r"shape \(\)"),  # IndexError before
        ([[1.0, 2.0], [3.0, 4.0]], r"not a list: wrap it in np\.asarray"),  # AttributeError before
        (torch.rand(64, 64), r"not a torch tensor: pass tensor\.cpu\(\)\.numpy\(\)"),  # TypeError before
    ],
)
def test_images_that_are_not_arrays_are_input_errors(img, message):
    with pytest.raises(InputError, match=message):
        run(Recording(), img, patch_size=64)


@pytest.mark.parametrize("batch_size", [1.5, "4", True])
def test_a_batch_size_that_is_not_a_whole_number_is_an_input_error(batch_size):
    with pytest.raises(InputError, match=rf"batch_size={batch_size!r} must be a whole number"):
        run(Recording(), blobs((96, 96)), patch_size=64, batch_size=batch_size)


@pytest.mark.parametrize(
    "patch, fix",
    [
        ((64,), r"\(64, 64\)"),
        ((64, 32, 32), r"\(64, 32\)"),
        ((), r"\(512, 512\)"),
        ((48, 100), r"\(64, 96\)"),
        ("abc", r"\(512, 512\)"),
    ],
)
def test_a_bad_tile_suggests_a_valid_one(patch, fix):
    with pytest.raises(InputError, match=rf"must be two positive multiples of 32, e\.g\. {fix}$"):
        run(Recording(), blobs((96, 96)), patch_size=patch)


def test_a_read_only_out_is_refused_before_any_tile(tmp_path):
    zarr = pytest.importorskip("zarr")
    frozen = np.zeros((96, 96), np.uint8)
    frozen.setflags(write=False)
    zarr.create_array(store=str(tmp_path / "out.zarr"), shape=(96, 96), chunks=(32, 32), dtype="uint8")
    for out in (frozen, zarr.open_array(str(tmp_path / "out.zarr"), mode="r")):
        model = Recording()
        with pytest.raises(InputError, match="out is read-only"):
            run(model, blobs((96, 96)), patch_size=64, out=out)
        assert model.batches == []


# --------------------------------------------------------------------------------------------------
# Defect 12: class indices beyond uint16, channels-last arrays with 1 or 2 channels


def test_argmax_beyond_65536_classes_does_not_wrap():
    planes = torch.zeros((70_001, 2, 3))
    planes[70_000, 0, 0] = 1.0
    planes[65_536, 1, 2] = 1.0
    labels = argmax_classes(planes)
    assert labels.dtype == np.uint32 and labels[0, 0] == 70_000 and labels[1, 2] == 65_536  # 4464 and 0 before
    assert argmax_classes(planes[:65_536]).dtype == np.uint16


@pytest.mark.parametrize("channels", [1, 2])
def test_a_channels_last_array_with_few_channels_is_one_multichannel_image(channels):
    model = Recording(in_channels=channels)
    img = blobs((64, 80, channels))
    labels = run(model, img, patch_size=64)  # before: 64 slices of 80 x 2 pixels, labels (64, 80, 2)
    assert labels.shape == (64, 80)
    np.testing.assert_array_equal(labels, run(model, img, patch_size=64, channel_axis=-1))
    stack = np.stack([img, img[::-1]])  # (Z, H, W, C): an InputError asking for channel_axis before
    np.testing.assert_array_equal(run(model, stack, patch_size=64)[0], labels)


def test_a_stack_with_few_columns_stays_a_stack_when_its_slice_axis_is_given():
    model = Recording()
    labels = run(model, blobs((64, 80, 2)), patch_size=64, slice_axis=2)
    assert labels.shape == (64, 80, 2) and {batch[1] for batch in model.batches} == {1}


# --------------------------------------------------------------------------------------------------
# Silent wrong results: float64 beyond float32, a 'ct' normalisation that cannot work, a damaged network


def test_a_float64_image_beyond_float32_segments_like_the_same_image_unscaled():
    img = blobs((96, 96)).astype(np.float64) * 4000
    huge = img * 1e300  # API-f64 1e300: overflowed to inf in float32 and was normalised to zeros
    mean, std = normalize.image_statistics(huge[None])
    reference = normalize.image_statistics(img[None])
    np.testing.assert_allclose(mean, reference[0] * 1e300, rtol=1e-12)
    np.testing.assert_allclose(std, reference[1] * 1e300, rtol=1e-12)
    norm = normalize.Normalization("zscore")
    np.testing.assert_allclose(
        normalize.apply(huge[None], norm, (mean, std)), normalize.apply(img[None], norm, reference), atol=1e-6
    )
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


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_logits_stop_at_the_first_batch_and_leave_out_untouched(value):
    model = Broken(value)
    out = np.full((200, 200), 7, np.uint8)
    with pytest.raises(DinoUNetError, match="NaN/inf.*weights are damaged or the training diverged"):
        run(model, blobs((200, 200)), patch_size=64, batch_size=2, out=out)  # all-background labels before
    assert model.calls == 1
    assert np.all(out == 7)
