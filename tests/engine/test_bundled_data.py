"""Sample data: shapes, dtypes, scale, class names and the MNI152 derivation (labels rule, affine)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import nibabel as nib
import npe2
import numpy as np
import pytest

from napari_dinounet._sample_data import mni152_sample, mni152_volume_sample, nuclei_sample
from napari_dinounet.engine.bundled_data import load_mni152_slices, load_mni152_volume, load_nuclei

TOOL = Path(__file__).parents[2] / "tools" / "make_mni152_sample.py"


def _by_type(layer_data: list[tuple]) -> dict[str, tuple]:
    return {layer_type: (data, meta) for data, meta, layer_type in layer_data}


def test_nuclei_sample_is_image_plus_semantic_labels():
    layers = _by_type(nuclei_sample())
    image, image_meta = layers["image"]
    labels, labels_meta = layers["labels"]
    _, instances = load_nuclei()
    assert image.shape == labels.shape == (512, 512)
    assert image.dtype == np.uint16 and labels.dtype == np.uint8
    assert set(np.unique(labels).tolist()) == {0, 1}
    np.testing.assert_array_equal(labels, instances > 0)
    assert image_meta["scale"] == labels_meta["scale"] == (1.0, 1.0)
    assert labels_meta["metadata"]["class_names"] == ["background", "nuclei"]
    assert 0.05 < labels.mean() < 0.5  # nuclei cover a real share of the field, not a few pixels


def test_mni152_sample_shapes_scale_classes():
    layers = _by_type(mni152_sample())
    image, image_meta = layers["image"]
    labels, labels_meta = layers["labels"]
    assert image.shape == labels.shape == (20, 188, 151)
    assert image.dtype == labels.dtype == np.uint8
    assert image_meta["scale"] == labels_meta["scale"] == (1.0, 1.0, 1.0)
    assert labels_meta["metadata"]["class_names"] == ["background", "grey matter", "white matter", "other brain"]
    counts = np.bincount(labels.ravel(), minlength=4)
    assert counts.size == 4 and (counts[1:] > 20_000).all()  # GM, WM and other brain all present in bulk
    assert np.asarray(labels_meta["metadata"]["affine"]).shape == (4, 4)


def test_mni152_labels_follow_the_documented_rule():
    """Other brain = T1 > 0.2 of the maximum; background never inside that mask (template max is 255)."""
    sample = load_mni152_slices()
    threshold = 0.2 * 255
    assert (sample.image[sample.labels == 3] > threshold).all()
    assert (sample.image[sample.labels == 0] <= threshold).all()
    # grey matter is darker than white matter on a T1 image
    assert sample.image[sample.labels == 1].mean() + 30 < sample.image[sample.labels == 2].mean()


def test_mni152_affine_is_1mm_rigid_and_starts_at_z10():
    affine = load_mni152_slices().affine
    rotation = affine[:3, :3]
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(3))
    # slice 0 lies at MNI z = +10 mm, each further slice 1 mm higher
    assert affine[2] @ [0, 0, 0, 1] == pytest.approx(10.0)
    assert affine[2] @ [19, 5, 7, 1] == pytest.approx(29.0)


def test_mni152_volume_is_the_whole_brain_at_2mm_in_the_slices_frame():
    layers = _by_type(mni152_volume_sample())
    image, image_meta = layers["image"]
    labels, labels_meta = layers["labels"]
    assert image.shape == labels.shape == (80, 95, 77) and image.dtype == labels.dtype == np.uint8
    assert image_meta["scale"] == labels_meta["scale"] == (2.0, 2.0, 2.0)
    assert labels_meta["metadata"]["class_names"] == ["background", "grey matter", "white matter", "other brain"]
    volume, slices = load_mni152_volume(), load_mni152_slices()
    counts = np.bincount(volume.labels.ravel(), minlength=4)
    assert (counts[1:] > 10_000).all()  # grey matter, white matter and other brain in bulk
    rotation = volume.affine[:3, :3]
    np.testing.assert_allclose(rotation @ rotation.T, 4.0 * np.eye(3))  # 2 mm voxels, same axes as the slices
    np.testing.assert_allclose(rotation, 2.0 * slices.affine[:3, :3])
    # a 2 mm voxel holds the mean of the 1 mm voxels it covers: compare with the slices sample where both exist
    to_volume = np.linalg.inv(volume.affine) @ slices.affine
    grid = np.stack(np.meshgrid(*map(np.arange, slices.image.shape), indexing="ij"), -1).reshape(-1, 3)
    index = np.rint(np.c_[grid, np.ones(len(grid))] @ to_volume.T)[:, :3].astype(int)
    means = np.bincount(np.ravel_multi_index(index.T, volume.image.shape), slices.image.ravel(), volume.image.size)
    counts = np.bincount(np.ravel_multi_index(index.T, volume.image.shape), minlength=volume.image.size)
    full = counts == 8  # 2 mm voxels whose eight 1 mm voxels all lie in the slices sample
    assert full.sum() > 10_000
    np.testing.assert_allclose(volume.image.ravel()[full], means[full] / 8, atol=0.51)


def _load_tool():
    spec = importlib.util.spec_from_file_location("make_mni152_sample", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_derivation_tool_on_a_synthetic_template(tmp_path):
    """The tool's labels and affine on a small RAS volume whose answer is known voxel by voxel."""
    rng = np.random.default_rng(0)
    shape = (30, 34, 26)
    t1 = np.zeros(shape, np.uint8)
    t1[4:26, 5:29, 3:23] = rng.integers(40, 256, (22, 24, 20), dtype=np.uint8)
    gm = np.where(t1 > 0, rng.integers(0, 256, shape), 0).astype(np.uint8)
    wm = np.where((gm > 127) | (gm < 64), 0, 255 - gm).astype(np.uint8)  # gm < 64: neither class
    affine = np.array([[1.0, 0, 0, -15], [0, 1, 0, -17], [0, 0, 1, -13], [0, 0, 0, 1]])
    for name, volume in (("t1", t1), ("gm", gm), ("wm", wm)):
        nib.save(nib.Nifti1Image(volume, affine), tmp_path / f"{name}.nii.gz")

    out = tmp_path / "out"
    assert _load_tool().main([str(tmp_path), "--out", str(out), "--first-slice", "6", "--slices", "5"]) == 0
    with np.load(out / "slices.npz", allow_pickle=False) as npz:
        image, labels, stack_affine = npz["image"], npz["labels"], npz["affine"]
    assert image.shape[0] == 5 and image.dtype == labels.dtype == np.uint8
    to_voxel = np.linalg.inv(affine) @ stack_affine
    for index in np.ndindex(image.shape):
        x, y, z = np.rint(to_voxel @ [*index, 1]).astype(int)[:3]
        assert image[index] == t1[x, y, z]
        expected = 1 if gm[x, y, z] > 127 else 2 if wm[x, y, z] > 127 else 3 if t1[x, y, z] > 0.2 * 255 else 0
        assert labels[index] == expected
    assert labels.max() == 3 and (labels == 1).any() and (labels == 2).any()


def test_samples_open_through_napari():
    from napari.components import ViewerModel

    npe2.PluginManager.instance().discover()  # what napari does at start-up (no app-model registration)
    viewer = ViewerModel()
    viewer.open_sample("napari-dinounet", "nuclei")
    viewer.open_sample("napari-dinounet", "mni152")
    layers = {layer.name: layer for layer in viewer.layers}
    assert layers["nuclei ground truth"].data.shape == (512, 512)
    assert type(layers["MNI152 T1 ground truth"]).__name__ == "Labels"
    np.testing.assert_array_equal(layers["MNI152 T1"].scale, [1.0, 1.0, 1.0])
    assert [str(unit) for unit in layers["MNI152 T1 ground truth"].units] == ["millimeter"] * 3
    assert layers["MNI152 T1 ground truth"].metadata["class_names"][2] == "white matter"
