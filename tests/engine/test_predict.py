"""Sliding-window prediction: tiling consistency, blending, every input kind, bounded reads, cancelling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_dinounet.engine import normalize
from napari_dinounet.engine.errors import InputError
from napari_dinounet.engine.predict import predict
from napari_dinounet.engine.progress import drain
from napari_dinounet.engine.tiling import tile_starts

# A fixed normalisation makes predictions independent of which pixels the statistics saw, so a slice of
# a stack can be compared with the same slice predicted alone.
FIXED = normalize.Normalization("ct", clip=(-1e9, 1e9), mean=0.0, std=1.0)


class Constant(torch.nn.Module):
    """Outputs the same logits everywhere."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.tensor(logits, dtype=torch.float32))

    def forward(self, x):
        return self.logits.view(1, -1, 1, 1).expand(x.shape[0], -1, *x.shape[2:])


def conv_net(in_channels: int = 1, classes: int = 3, seed: int = 0) -> torch.nn.Module:
    """A small 3x3 conv net (receptive field 5 px), standing in for a segmentation network."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(in_channels, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, classes, 3, padding=1)
    ).eval()


def pointwise_net(in_channels: int = 1, classes: int = 3, seed: int = 0) -> torch.nn.Conv2d:
    """A 1x1 conv: each pixel's logits depend on that pixel only, so results can be computed by hand."""
    torch.manual_seed(seed)
    return torch.nn.Conv2d(in_channels, classes, 1).eval()


def by_hand(net: torch.nn.Conv2d, normalized: np.ndarray) -> np.ndarray:
    """Labels of a pointwise net for normalised pixels (C, H, W), without any tiling."""
    with torch.no_grad():
        return net(torch.from_numpy(normalized)[None].float())[0].argmax(0).numpy()


def image(shape, dtype=np.uint16, seed=0) -> np.ndarray:
    """Smooth random blobs, so neighbouring pixels agree as in real images."""
    rng = np.random.default_rng(seed)
    from scipy.ndimage import gaussian_filter

    field = gaussian_filter(rng.normal(size=shape), 3)
    field = (field - field.min()) / (field.max() - field.min())
    if np.dtype(dtype).kind == "f":
        return (field * 100 - 30).astype(dtype)
    info = np.iinfo(dtype)
    return (info.min + field * (min(info.max, 4000) - info.min)).astype(dtype)


def run(model, img, **kwargs):
    return drain(predict(model, img, **kwargs))


# --------------------------------------------------------------------------------------------------
# Tiling and blending


def test_constant_model_gives_exactly_that_constant_after_blending():
    logits = [0.2, 1.5, -0.7]
    model = Constant(logits)
    img = image((333, 517))
    labels = run(model, img, patch_size=128, step=0.5)
    assert labels.shape == (333, 517) and labels.dtype == np.uint8
    assert np.all(labels == 1)
    probs = run(model, img, patch_size=128, step=0.5, probabilities=True)
    expected = torch.softmax(torch.tensor(logits), 0).numpy()
    assert probs.shape == (3, 333, 517) and probs.dtype == np.float32
    np.testing.assert_allclose(probs, np.broadcast_to(expected[:, None, None], probs.shape), atol=1e-6)


def test_labels_take_the_first_class_on_ties_and_grow_to_uint16_beyond_256_classes():
    img = image((40, 50))
    assert np.all(run(Constant([0.5, 2.0, 2.0]), img, patch_size=32) == 1)
    many = [0.0] * 300
    many[280] = 1.0
    labels = run(Constant(many), img, patch_size=32)
    assert labels.dtype == np.uint16 and np.all(labels == 280)


def test_one_tile_and_many_overlapping_tiles_agree():
    model = conv_net()
    img = image((333, 517))
    whole = run(model, img, patch_size=(352, 544))  # one tile covering the image
    tiled = run(model, img, patch_size=64, step=0.5)  # 9 x 15 overlapping tiles
    assert np.mean(whole == tiled) >= 0.99
    assert len(np.unique(whole)) > 1  # a non-trivial segmentation


def test_probabilities_equal_monais_sliding_window_inference():
    monai_inferers = pytest.importorskip("monai.inferers")
    model = conv_net()
    img = image((333, 517), np.float32)
    ours = run(model, img, patch_size=128, step=0.5, batch_size=3, probabilities=True)
    norm = normalize.Normalization("zscore")
    x = torch.from_numpy(normalize.apply(img[None], norm, normalize.statistics_for(img[None], norm)))[None]
    with torch.no_grad():
        logits = monai_inferers.sliding_window_inference(
            x, (128, 128), 3, model, overlap=0.5, mode="gaussian", sigma_scale=0.125
        )
    reference = torch.softmax(logits[0], 0).numpy()
    np.testing.assert_allclose(ours, reference, atol=1e-5)
    np.testing.assert_array_equal(run(model, img, patch_size=128), reference.argmax(0))


def test_mirror_tta_averages_the_logits_of_the_four_mirror_images():
    model = conv_net()
    img = image((64, 64), np.float32)
    probs = run(model, img, patch_size=64, tta=True, probabilities=True)  # one tile: blending is the identity
    norm = normalize.Normalization("zscore")
    x = torch.from_numpy(normalize.apply(img[None], norm, normalize.statistics_for(img[None], norm)))[None]
    with torch.no_grad():
        mean = sum(model(x.flip(d)).flip(d) for d in ([], [-1], [-2], [-2, -1])) / 4
    np.testing.assert_allclose(probs, torch.softmax(mean[0], 0).numpy(), atol=1e-5)
    plain = run(model, img, patch_size=64, probabilities=True)
    assert np.abs(plain - probs).max() > 1e-3  # the conv net is not mirror-symmetric: TTA did something


def test_progress_counts_tiles_and_slices():
    events = []
    drain(predict(conv_net(), image((3, 150, 200)), patch_size=64), events.append)
    per_slice = len(tile_starts(150, 64, 0.5)) * len(tile_starts(200, 64, 0.5))  # 5 x 6
    assert {e.total for e in events} == {3 * per_slice}
    done = [e.done for e in events]
    assert done[0] == 0 and done[-1] == 3 * per_slice and done == sorted(done)
    assert events[-1].message == "slice 3/3"


# --------------------------------------------------------------------------------------------------
# Input kinds


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32, np.float64])
def test_every_pixel_type_gives_the_labels_computed_by_hand(dtype):
    model = pointwise_net()
    img = image((70, 90), dtype)
    labels = run(model, img, patch_size=64)
    assert labels.shape == (70, 90) and labels.dtype == np.uint8
    norm = normalize.Normalization("zscore")
    expected = by_hand(model, normalize.apply(img[None], norm, normalize.statistics_for(img[None], norm)))
    np.testing.assert_array_equal(labels, expected)


def test_nan_and_inf_warn_and_are_predicted_as_the_mean():
    model = pointwise_net(seed=3)
    img = image((70, 90), np.float32)
    img[10:20, 10:20] = np.nan
    img[30, 40] = np.inf
    with pytest.warns(RuntimeWarning, match="NaN or infinite"):
        labels = run(model, img, patch_size=64)
    finite = np.isfinite(img)
    mean, std = img[finite].mean(), img[finite].std()
    expected = by_hand(model, np.where(finite, (img - mean) / std, 0.0)[None])
    assert (expected[~finite] == by_hand(model, np.zeros((1, 1, 1)))[0, 0]).all()
    np.testing.assert_array_equal(labels, expected)


def test_rgb_last_axis_equals_channels_first_and_drops_alpha():
    model = conv_net(in_channels=3)
    rgb = image((70, 90, 3), np.uint8)
    labels = run(model, rgb, patch_size=64, normalization="rgb")
    assert labels.shape == (70, 90)
    first = run(model, np.moveaxis(rgb, -1, 0).copy(), patch_size=64, normalization="rgb", channel_axis=0)
    np.testing.assert_array_equal(labels, first)
    rgba = np.concatenate([rgb, np.full((70, 90, 1), 255, np.uint8)], axis=-1)
    np.testing.assert_array_equal(run(model, rgba, patch_size=64, normalization="rgb"), labels)


def test_multichannel_with_channel_axis():
    model = conv_net(in_channels=5)
    img = image((5, 70, 90), np.float32)
    labels = run(model, img, patch_size=64, channel_axis=0)
    assert labels.shape == (70, 90)
    np.testing.assert_array_equal(run(model, np.moveaxis(img, 0, -1).copy(), patch_size=64, channel_axis=-1), labels)


@pytest.mark.parametrize("slice_axis", [0, 1, 2])
def test_stack_is_predicted_slice_by_slice_along_each_axis(slice_axis):
    model = conv_net()
    volume = image((6, 40, 50), np.float32)
    labels = run(model, volume, patch_size=64, slice_axis=slice_axis, normalization=FIXED)
    assert labels.shape == volume.shape
    for index in range(volume.shape[slice_axis]):
        alone = run(model, np.take(volume, index, axis=slice_axis), patch_size=64, normalization=FIXED)
        np.testing.assert_array_equal(np.take(labels, index, axis=slice_axis), alone)


def test_multichannel_stack_probabilities_keep_the_spatial_layout():
    model = conv_net(in_channels=2)
    volume = image((4, 2, 40, 50), np.float32)  # (Z, C, Y, X), as napari holds channels of a stack
    probs = run(model, volume, patch_size=64, channel_axis=1, slice_axis=2, probabilities=True, normalization=FIXED)
    assert probs.shape == (3, 4, 40, 50)
    alone = run(model, volume[:, :, :, 7], patch_size=64, channel_axis=1, probabilities=True, normalization=FIXED)
    np.testing.assert_allclose(probs[:, :, :, 7], alone, atol=1e-6)


@pytest.mark.parametrize("shape", [(20, 17), (333, 517), (31, 200)])
def test_small_and_odd_sizes_are_padded_and_cropped_back(shape):
    model = pointwise_net()
    img = image(shape)
    labels = run(model, img, patch_size=64)
    assert labels.shape == shape
    norm = normalize.Normalization("zscore")
    expected = by_hand(model, normalize.apply(img[None], norm, normalize.statistics_for(img[None], norm)))
    np.testing.assert_array_equal(labels, expected)


class RecordingArray:
    """An array-like that remembers how many pixels each read asked for."""

    def __init__(self, data: np.ndarray):
        self.data, self.shape, self.dtype, self.ndim = data, data.shape, data.dtype, data.ndim
        self.reads: list[int] = []

    def __getitem__(self, key):
        block = self.data[key]
        self.reads.append(block.size)
        return block


def test_lazy_arrays_are_read_band_by_band_never_whole(monkeypatch):
    monkeypatch.setattr(normalize, "_BLOCK_ELEMENTS", 30_000)  # statistics blocks far smaller than the image
    img = image((400, 200))
    source = RecordingArray(img)
    labels = run(conv_net(), source, patch_size=64)
    np.testing.assert_array_equal(labels, run(conv_net(), img, patch_size=64))
    assert max(source.reads) <= 30_000  # statistics in blocks of 150 rows, tiles in bands of 64
    assert sum(1 for n in source.reads if n == 64 * 200) >= 400 // 32 - 1  # one band per row of tiles


def test_dask_input():
    da = pytest.importorskip("dask.array")
    img = image((3, 150, 170), np.float32)
    lazy = da.from_array(img, chunks=(1, 64, 64))
    labels = run(conv_net(), lazy, patch_size=64)
    assert isinstance(labels, np.ndarray) and labels.shape == (3, 150, 170)
    np.testing.assert_array_equal(labels, run(conv_net(), img, patch_size=64))


def test_zarr_input_and_zarr_output_store(tmp_path):
    zarr = pytest.importorskip("zarr")
    img = image((150, 170), np.uint16)
    source = zarr.create_array(store=str(tmp_path / "in.zarr"), shape=img.shape, chunks=(64, 64), dtype=img.dtype)
    source[:] = img
    target = zarr.create_array(store=str(tmp_path / "out.zarr"), shape=img.shape, chunks=(64, 64), dtype="uint8")
    result = run(conv_net(), source, patch_size=64, out=target)
    assert result is target
    reopened = zarr.open_array(str(tmp_path / "out.zarr"), mode="r")
    np.testing.assert_array_equal(reopened[:], run(conv_net(), img, patch_size=64))


def test_numpy_out_is_filled_and_returned():
    img = image((70, 90))
    out = np.zeros((3, 70, 90), np.float32)
    result = run(conv_net(), img, patch_size=64, probabilities=True, out=out)
    assert result is out
    np.testing.assert_allclose(out, run(conv_net(), img, patch_size=64, probabilities=True), atol=0)


# --------------------------------------------------------------------------------------------------
# Cancelling and errors


@pytest.mark.parametrize("store", ["numpy", "zarr"])
def test_closing_midway_leaves_out_untouched(store, tmp_path, monkeypatch):
    import tempfile

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where a zarr out's private buffer goes
    img = image((300, 300))
    if store == "numpy":
        out = np.full((300, 300), 7, np.uint8)
    else:
        zarr = pytest.importorskip("zarr")
        out = zarr.create_array(store=str(tmp_path / "out.zarr"), shape=(300, 300), chunks=(64, 64), dtype="uint8")
        out[:] = 7
    model = conv_net().train()
    gen = predict(model, img, patch_size=64, out=out)
    for _ in range(5):  # statistics, then four batches: several rows of tiles are final by now
        event = next(gen)
    assert 0 < event.done < event.total
    assert len(list(scratch.iterdir())) == (store == "zarr")  # the private buffer of a zarr out
    gen.close()
    assert np.all(out[:] == 7)
    assert model.training  # the model's mode is restored
    assert list(scratch.iterdir()) == []


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"patch_size": 100}, "multiples of 32"),
        ({"step": 0}, "step=0"),
        ({"slice_axis": 0}, "is 2D"),
        ({"channel_axis": 5}, "does not exist"),
        ({"out": np.zeros((10, 10), np.uint8)}, "out must be"),
        ({"out": np.zeros((70, 90), np.float32)}, "out must be integer"),
    ],
)
def test_bad_options_are_input_errors(kwargs, message):
    with pytest.raises(InputError, match=message):
        run(conv_net(), image((70, 90)), **kwargs)


def test_bad_images_are_input_errors():
    with pytest.raises(InputError, match="channel_axis"):
        run(conv_net(), np.zeros((2, 3, 40, 50, 2), np.float32), patch_size=64)
    with pytest.raises(InputError, match="dtype"):
        run(conv_net(), np.zeros((40, 50), np.complex64), patch_size=64)
    with pytest.raises(InputError, match="turned tiles"):
        run(torch.nn.Conv2d(1, 2, 3), image((70, 90)), patch_size=64)  # no padding: the output shrinks


def test_dino_unet_with_a_channel_map_on_a_multichannel_image(tiny_backbone):
    from napari_dinounet.engine.network import build_dinounet

    torch.manual_seed(0)
    model = build_dinounet(num_classes=3, backbone=tiny_backbone, channels=(0, 2, 4)).eval()
    img = image((64, 64, 5), np.float32)  # channels last, as napari and TIFF samples hold them
    probs = run(model, img, patch_size=64, channel_axis=-1, probabilities=True)  # one tile: no blending
    norm = normalize.Normalization("zscore")
    planar = np.moveaxis(img, -1, 0)
    x = torch.from_numpy(normalize.apply(planar, norm, normalize.statistics_for(planar, norm)))[None]
    with torch.no_grad():
        reference = torch.softmax(model(x)[0], 0).numpy()
    assert probs.shape == (3, 64, 64)
    np.testing.assert_allclose(probs, reference, atol=1e-5)
    shuffled = img[..., [0, 3, 2, 1, 4]]  # channels the map leaves out do not matter
    again = run(model, shuffled, patch_size=64, channel_axis=-1, probabilities=True)
    np.testing.assert_allclose(again, probs, atol=1e-5)


def test_the_caller_keeps_gradients_on_between_events_and_after_a_dropped_run():
    """Widgets run predictions in pooled worker threads; a generator suspended inside no_grad turned gradients
    off for whatever ran next in that thread (a Fine-tune after a Segment failed with 'does not require grad')."""
    run_ = predict(conv_net(), image((3, 96, 96)), patch_size=64, step=0.5)
    next(run_)
    assert torch.is_grad_enabled()
    next(run_)
    assert torch.is_grad_enabled()
    del run_  # dropped mid-run, as a cancelled worker's generator may be
    assert torch.is_grad_enabled()
