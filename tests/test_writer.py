"""The labels writer: TIFF (+ resolution), PNG, NIfTI (+ affine), read back; also through napari's save path."""

from __future__ import annotations

import napari
import nibabel as nib
import npe2
import numpy as np
import pytest
import skimage.io
import tifffile

from napari_dinounet._writer import export_refusals, formats_for, write_labels
from napari_dinounet.engine.bundled_data import load_mni152_slices
from napari_dinounet.engine.errors import InputError
from napari_dinounet.engine.io import file_name_for, read_image, with_extension


def _labels(shape, high=4, seed=0):
    return np.random.default_rng(seed).integers(0, high, shape).astype(np.uint16 if high > 256 else np.uint8)


def test_tiff_2d_keeps_values_and_resolution(tmp_path):
    labels = _labels((40, 60), high=1000)  # > 255: must stay uint16, not be clipped
    path = tmp_path / "labels.tif"
    assert write_labels(str(path), labels, {"scale": (0.5, 0.25), "units": ("micrometer", "micrometer")}) == [str(path)]
    back = read_image(path)
    np.testing.assert_array_equal(back.data, labels)
    assert back.data.dtype == np.uint16
    assert back.spacing == pytest.approx((0.5, 0.25)) and back.unit == "um"
    with tifffile.TiffFile(path) as tif:  # pixels per unit, x then y
        assert tif.pages.first.resolution == pytest.approx((4.0, 2.0))


def test_tiff_stack_converts_z_spacing_to_the_in_plane_unit(tmp_path):
    labels = _labels((5, 16, 16))
    path = tmp_path / "stack.tiff"
    write_labels(str(path), labels, {"scale": (2.0, 0.5, 0.5), "units": ("millimeter", "micrometer", "micrometer")})
    back = read_image(path)
    np.testing.assert_array_equal(back.data, labels)
    assert back.spacing == pytest.approx((2000.0, 0.5, 0.5)) and back.unit == "um"


def test_png_2d_and_refused_for_stacks(tmp_path):
    labels = _labels((30, 20))
    path = tmp_path / "slice.png"
    write_labels(str(path), labels, {"scale": (1.0, 1.0)})
    np.testing.assert_array_equal(skimage.io.imread(path), labels)
    with pytest.raises(InputError, match="PNG labels must be 2D"):
        write_labels(str(tmp_path / "stack.png"), _labels((3, 30, 20)), {})


def test_nifti_keeps_the_affine(tmp_path):
    labels = _labels((12, 10, 8))
    affine = [[0.0, 0.0, 1.5, -20.0], [0.0, -1.0, 0.0, 30.0], [2.0, 0.0, 0.0, 5.0], [0.0, 0.0, 0.0, 1.0]]
    path = tmp_path / "labels.nii.gz"
    write_labels(str(path), labels, {"name": "seg", "scale": (2.0, 1.0, 1.5), "metadata": {"affine": affine}})
    image = nib.load(path)
    np.testing.assert_array_equal(np.asarray(image.dataobj), labels)
    np.testing.assert_allclose(image.affine, affine)
    assert image.get_data_dtype() == np.uint8


def test_nifti_needs_an_affine_and_leaves_an_existing_file_alone(tmp_path):
    path = tmp_path / "labels.nii.gz"
    path.write_bytes(b"the user's earlier export")
    with pytest.raises(InputError, match=r"did not come from a NIfTI image.*save it as \.tif"):
        write_labels(str(path), _labels((4, 4, 4)), {"name": "drawn", "metadata": {}})
    with pytest.raises(InputError, match="finite 4x4"):
        write_labels(str(path), _labels((4, 4, 4)), {"metadata": {"affine": np.eye(3)}})
    assert path.read_bytes() == b"the user's earlier export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.nii.gz"]  # no temporary files left


def test_multiscale_writes_level_zero(tmp_path):
    full, half = _labels((32, 32)), _labels((16, 16), seed=1)
    path = tmp_path / "multi.tif"
    write_labels(str(path), [full, half], {"multiscale": True})
    np.testing.assert_array_equal(tifffile.imread(path), full)


def test_formats_and_file_names():
    assert formats_for(2, {}) == ["tiff", "png"]
    assert formats_for(3, {"affine": np.eye(4).tolist()}) == ["tiff", "nifti"]
    assert formats_for(4, {"affine": np.eye(4).tolist()}) == ["tiff"]  # NIfTI labels are 2D or 3D
    refusals = export_refusals(3, {})
    assert refusals["tiff"] is None and "PNG labels must be 2D (these are 3D)" in refusals["png"]
    assert "NIfTI needs the affine" in refusals["nifti"] and set(refusals) == {"tiff", "png", "nifti"}
    assert file_name_for("MNI152 T1 ground truth", "nifti") == "MNI152_T1_ground_truth.nii.gz"
    assert with_extension("/data/a.nii.gz", "tiff").name == "a.tif"
    assert with_extension("/data/A.TIF", "tiff").name == "A.TIF"
    assert with_extension("/data/my.labels", "png").name == "my.labels.png"


def test_four_dimensional_labels_go_to_tiff_and_not_to_nifti(tmp_path):
    labels = _labels((2, 3, 8, 9))  # a (T, Z, Y, X) layer
    write_labels(str(tmp_path / "t.tif"), labels, {"scale": (1.0, 2.0, 0.5, 0.5)})
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "t.tif"), labels)
    with pytest.raises(InputError, match=r"NIfTI labels are 2D or 3D \(these are 4D.*\.tif"):
        write_labels(str(tmp_path / "t.nii.gz"), labels, {"metadata": {"affine": np.eye(4).tolist()}})
    assert not (tmp_path / "t.nii.gz").exists()


def test_napari_save_layers_uses_the_plugin_writer(tmp_path):
    """napari's writer path (npe2 writer contribution): TIFF with resolution and the MNI sample as NIfTI."""
    from napari.layers import Labels

    npe2.PluginManager.instance().discover()  # what napari does at start-up (no app-model registration)
    labels = Labels(_labels((20, 30)), scale=(0.2, 0.2), units="micrometer", name="cells")
    tif = tmp_path / "cells.tif"
    assert napari.save_layers(str(tif), [labels], plugin="napari-dinounet") == [str(tif)]
    back = read_image(tif)
    np.testing.assert_array_equal(back.data, labels.data)
    assert back.spacing == pytest.approx((0.2, 0.2)) and back.unit == "um"

    sample = load_mni152_slices()
    mni = Labels(sample.labels, scale=sample.spacing, metadata={"affine": sample.affine.tolist()})
    nii = tmp_path / "tissue.nii.gz"
    assert napari.save_layers(str(nii), [mni]) == [str(nii)]  # no other writer takes .nii.gz: napari picks ours
    image = nib.load(nii)
    np.testing.assert_array_equal(np.asarray(image.dataobj), sample.labels)
    np.testing.assert_allclose(image.affine, sample.affine)
    # the affine puts the first slice at MNI z = +10 mm, as the sample's NOTICE says
    assert (image.affine @ [0, 0, 0, 1])[2] == pytest.approx(10.0)


def test_nifti_opened_in_napari_exports_back_to_the_same_space(tmp_path):
    """Reader -> labels on it -> writer: the labels file lands on the image's grid (affine and zooms)."""
    from napari.components import ViewerModel
    from napari.layers import Labels

    npe2.PluginManager.instance().discover()
    rng = np.random.default_rng(0)
    volume = rng.normal(100, 20, (14, 12, 9)).astype(np.float32)
    affine = np.array([[-2.0, 0, 0, 40], [0, 1.0, 0, -30], [0, 0, 1.5, -10], [0, 0, 0, 1]])
    source = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(volume, affine), source)

    viewer = ViewerModel()
    (image,) = viewer.open(str(source), plugin="napari-dinounet")
    assert image.name == "scan" and image.data.shape == (14, 12, 9)
    np.testing.assert_allclose(image.data, volume)
    np.testing.assert_allclose(image.scale, [2.0, 1.0, 1.5])  # the zooms
    assert [str(unit) for unit in image.units] == ["millimeter"] * 3
    np.testing.assert_allclose(image.metadata["affine"], affine)

    # what the Segment widget writes: labels on the image's grid carrying its affine
    labels = Labels(
        (image.data > 100).astype(np.uint8), scale=image.scale, metadata={"affine": image.metadata["affine"]}
    )
    out = tmp_path / "scan_labels.nii.gz"
    assert napari.save_layers(str(out), [labels]) == [str(out)]
    written = nib.load(out)
    np.testing.assert_allclose(written.affine, affine)
    np.testing.assert_allclose(written.header.get_zooms(), (2.0, 1.0, 1.5))
    np.testing.assert_array_equal(np.asarray(written.dataobj), volume > 100)


def test_reader_leaves_other_files_to_other_readers(tmp_path):
    from napari_dinounet._reader import get_reader

    assert get_reader(str(tmp_path / "a.tif")) is None
    assert get_reader([str(tmp_path / "a.nii.gz"), str(tmp_path / "b.png")]) is None
    assert get_reader(str(tmp_path / "a.NII.GZ")) is not None
