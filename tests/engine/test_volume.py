"""Volumes (engine/volume.py): planes, resampling grids, tri-planar samples, and the fusion of planes."""

from __future__ import annotations

import dataclasses
import json
import tracemalloc

import numpy as np
import pytest
import torch

from napari_dinounet.engine import volume
from napari_dinounet.engine.checkpoint import HeadsMetadata
from napari_dinounet.engine.errors import InputError
from napari_dinounet.engine.network import SIZES
from napari_dinounet.engine.outputs import Probabilities
from napari_dinounet.engine.predictor import Predictor
from napari_dinounet.engine.progress import drain

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class PixelModel(torch.nn.Module):
    """Logits from each pixel's own value (a 1x1 map): the same voxel gets the same logits along any plane."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.linspace(-1.0, 1.0, classes)[:, None] * 2.0)
        self.bias = torch.nn.Parameter(torch.eye(classes)[1 if classes > 2 else 0])  # class 1 wins near 0

    def forward(self, x):  # (B, C, h, w) -> (B, classes, h, w)
        return torch.einsum("kc,bchw->bkhw", self.weight, x[:, :1]) + self.bias[None, :, None, None]


def pixel_predictor(classes: int = 3) -> Predictor:
    config = dataclasses.replace(SIZES["tiny"], num_classes=classes).to_dict()
    names = ["background"] + [f"class {k}" for k in range(1, classes)]
    return Predictor(PixelModel(classes), HeadsMetadata(config=config, class_names=names, in_channels=1, patch_size=64))


def test_planes_by_name_number_or_all():
    assert volume.parse_planes("all") == (0, 1, 2)
    assert volume.parse_planes("axial,coronal") == (0, 1)
    assert volume.parse_planes("sagittal, axial", z_axis=2) == (0, 2)  # NIfTI (X, Y, Z): x is axis 0
    assert volume.parse_planes("2,0") == (0, 2) and volume.parse_planes([-1]) == (2,)
    for bad in ("axial,axial", "3", "oblique", ""):
        with pytest.raises(InputError, match="plane"):
            volume.parse_planes(bad)


def test_plane_shape_resamples_in_plane_axes_to_the_finest_spacing():
    shape, spacing = (10, 40, 30), (5.0, 1.0, 1.0)  # 5 mm slices of 1 mm pixels
    assert volume.plane_shape(shape, spacing, 0) == (10, 40, 30)  # axial: nothing to do
    assert volume.plane_shape(shape, spacing, 1) == (50, 40, 30)  # coronal: z stretched 5x
    assert volume.plane_shape(shape, spacing, 2) == (50, 40, 30)
    assert volume.plane_shape(shape, (2.0, 2.0, 0.5), 0) == (10, 160, 30)


def test_resampling_round_trip_keeps_the_grid_and_the_affine():
    affine = np.array([[0.0, 0, 2.0, -75.5], [0, -2.0, 0, 76.5], [2.5, 0, 0, -71.5], [0, 0, 0, 1]])
    old, new = (12, 19, 15), (30, 19, 37)
    there = volume.resampled_affine(affine, old, new)
    back = volume.resampled_affine(there, new, old)
    np.testing.assert_allclose(back, affine, atol=1e-12)
    # the field of view (outer voxel edges) is the same on both grids
    for corner in np.ndindex(2, 2, 2):
        edge_old = [-0.5 + c * n for c, n in zip(corner, old)]
        edge_new = [-0.5 + c * n for c, n in zip(corner, new)]
        np.testing.assert_allclose(affine @ [*edge_old, 1], there @ [*edge_new, 1], atol=1e-9)
    # a linear function of world position is resampled exactly where no border value is repeated, and its
    # values sit where resampled_affine says its voxels are
    grid = np.stack(np.meshgrid(*map(np.arange, old), indexing="ij"), -1)
    world = grid @ affine[:3, :3].T + affine[:3, 3]
    field = (world @ [0.3, -0.2, 0.5]).astype(np.float32)
    resampled = volume.resample(field, new, 1)
    grid_new = np.stack(np.meshgrid(*map(np.arange, new), indexing="ij"), -1)
    expected = (grid_new @ there[:3, :3].T + there[:3, 3]) @ [0.3, -0.2, 0.5]
    inner = (slice(3, -3), slice(None), slice(3, -3))
    np.testing.assert_allclose(resampled[inner], expected[inner], atol=1e-4)
    round_trip = volume.resample(resampled, old, 1)
    assert round_trip.shape == old
    np.testing.assert_allclose(round_trip[2:-2, :, 2:-2], field[2:-2, :, 2:-2], atol=1e-4)
    labels = np.random.default_rng(0).integers(0, 4, old).astype(np.uint8)
    up = volume.resample(labels, (24, 38, 30), 0)  # nearest, exact factor 2: every voxel repeated
    assert up.dtype == np.uint8
    np.testing.assert_array_equal(volume.resample(up, old, 0), labels)


def test_volume_samples_from_every_plane_unsquashed():
    rng = np.random.default_rng(1)
    image = rng.normal(size=(6, 20, 16)).astype(np.float32)
    labels = (image > 0.5).astype(np.uint8) + (image > 1.5)
    samples = volume.volume_samples(image, labels, spacing=(4.0, 1.0, 1.0), planes="all", name="vol")
    by_plane = {p: [s for s in samples if s.name.startswith(f"vol:axis{p}[")] for p in range(3)}
    assert [len(by_plane[p]) for p in range(3)] == [6, 20, 16]
    assert by_plane[0][0].shape == (20, 16)  # axial slices as they are
    assert by_plane[1][0].shape == (24, 16) and by_plane[2][0].shape == (24, 20)  # z stretched 4x
    assert {s.group for s in samples} == {"vol"}
    assert all(set(np.unique(s.labels)) <= {0, 1, 2} for s in samples)
    np.testing.assert_array_equal(by_plane[1][3].labels[::4], labels[:, 3])  # nearest: each slice 4 times
    axial = volume.volume_samples(image, labels, planes=[0])
    assert len(axial) == 6 and axial[0].image.shape == (1, 20, 16)


def test_labelled_slices_count_the_rest_is_left_out():
    labels = np.zeros((8, 10, 12), np.uint8)
    labels[2, 3:5, 3:5] = 1
    labels[6, 0, 0] = 2
    mask = volume.labelled_slices_mask(labels)
    assert mask.shape == labels.shape and mask[2].all() and mask[6].all() and not mask[[0, 1, 3, 4, 5, 7]].any()
    image = np.random.default_rng(0).normal(size=labels.shape).astype(np.float32)
    samples = volume.volume_samples(image, labels, mask=mask, planes=[0], num_classes=3)
    assert [s.name for s in samples] == ["volume:axis0[z=2]", "volume:axis0[z=6]"]
    with pytest.raises(InputError, match="no slice holds a label"):
        volume.labelled_slices_mask(np.zeros((3, 4, 4)))


def test_fusing_three_identical_predictions_gives_each_of_them():
    predictor = pixel_predictor()
    image = np.random.default_rng(2).normal(size=(14, 33, 40)).astype(np.float32)
    (single,) = drain(predictor.predict(image, step=1.0, outputs=[Probabilities()]))
    events = []
    labels, fused = drain(volume.predict_planes(predictor, image, probabilities=True, step=1.0), events.append)
    np.testing.assert_allclose(fused, single, atol=1e-6)
    np.testing.assert_array_equal(labels, single.argmax(0))
    assert len(np.unique(labels)) == 3 and labels.dtype == np.uint8
    assert {event.message.split(" (")[0] for event in events} == {"plane 1/3", "plane 2/3", "plane 3/3"}


def test_weighted_fusion_and_anisotropic_planes_come_back_to_the_volume_grid():
    predictor = pixel_predictor()
    image = np.random.default_rng(3).normal(size=(5, 24, 20)).astype(np.float32)
    spacing = (3.0, 1.0, 1.0)
    labels, fused = drain(volume.predict_planes(predictor, image, spacing=spacing, probabilities=True, step=1.0))
    assert fused.shape == (3, 5, 24, 20) and labels.shape == (5, 24, 20)
    np.testing.assert_allclose(fused.sum(0), 1.0, atol=1e-5)
    _, coronal = drain(
        volume.predict_planes(
            predictor, image, spacing=spacing, planes=(0, 1, 2), weights=(0, 1, 0), probabilities=True, step=1.0
        )
    )
    _, only = drain(volume.predict_planes(predictor, image, spacing=spacing, planes=[1], probabilities=True, step=1.0))
    np.testing.assert_allclose(coronal, only, atol=1e-6)
    # a pixel-wise model after linear up- and down-sampling along z stays close to the axial answer
    _, axial = drain(volume.predict_planes(predictor, image, planes=[0], probabilities=True, step=1.0))
    assert 0 < np.abs(only - axial).mean() < 0.1
    with pytest.raises(InputError, match="weights"):
        drain(volume.predict_planes(predictor, image, weights=(1, 1)))
    with pytest.raises(InputError, match="not a volume"):
        drain(volume.predict_planes(predictor, image[0]))
    predictor.metadata.task = "instances"
    with pytest.raises(InputError, match="instances heads cannot be fused"):
        drain(volume.predict_planes(predictor, image))


def test_fusion_memory_is_one_running_sum_on_a_256_cube():
    """Three planes of a 256^3 volume, three classes: the traced NumPy peak stays below two probability
    volumes (one plane's full probabilities held beside the sum would already reach that; three: 3x)."""
    predictor = pixel_predictor(classes=3)
    image = np.random.default_rng(4).integers(0, 255, (256, 256, 256), dtype=np.uint8)
    probability_volume = 3 * image.size * 4  # 192 MiB
    tracemalloc.start()
    try:
        labels = drain(volume.predict_planes(predictor, image, step=1.0, tile=256, batch_size=4))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert labels.shape == image.shape and len(np.unique(labels)) == 3
    assert probability_volume <= peak < 2 * probability_volume, peak / 2**20


def test_heads_record_planes_older_files_read_as_none():
    from napari_dinounet.engine.errors import DinoUNetError

    config = dataclasses.replace(SIZES["tiny"], num_classes=2).to_dict()
    described = HeadsMetadata(config=config, class_names=["a", "b"], spacing=(2.0, 2.0, 4.0), planes=(0, 1, 2))
    again = HeadsMetadata.from_json(described.to_json(), "heads.safetensors")
    assert again.planes == (0, 1, 2) and again.spacing == (2.0, 2.0, 4.0)
    older = {key: value for key, value in json.loads(described.to_json()).items() if key != "planes"}
    assert HeadsMetadata.from_json(json.dumps(older), "old.safetensors").planes is None
    for bad in ((0, 0), (3,), ()):
        with pytest.raises(DinoUNetError, match="planes"):
            HeadsMetadata(config=config, class_names=["a", "b"], planes=bad)
