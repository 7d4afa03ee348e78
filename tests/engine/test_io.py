"""Image and label file I/O: each format written and read back with its metadata, nnU-Net datasets, errors."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import skimage.io
import tifffile

from napari_dinounet.engine import io
from napari_dinounet.engine.errors import InputError


def labels_like(shape, classes=4, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, classes, size=shape)


# ------------------------------------------------------------------------------------------------ TIFF


def test_tiff_2d_resolution_round_trip(tmp_path):
    image_path = tmp_path / "scan.tif"
    tifffile.imwrite(
        image_path,
        np.arange(20 * 30, dtype=np.uint16).reshape(20, 30),
        resolution=(300.0, 150.0),
        resolutionunit="INCH",
    )
    image = io.read_image(image_path)
    assert image.format == "tiff" and image.data.shape == (20, 30) and image.channel_axis is None
    assert image.spacing == pytest.approx((1 / 150, 1 / 300)) and image.unit == "inch"  # (Y, X)
    labels = labels_like((20, 30))
    out = io.write_labels(tmp_path / "out" / "scan.tif", labels, like=image)
    back = io.read_image(out)
    assert back.data.dtype == np.uint8 and np.array_equal(back.data, labels)
    assert back.spacing == pytest.approx(image.spacing) and back.unit == "inch"
    with tifffile.TiffFile(out) as tif:
        assert tuple(tif.pages.first.resolution) == pytest.approx((300.0, 150.0))
        assert tif.pages.first.resolutionunit == tifffile.RESUNIT.INCH


def test_tiff_imagej_stack_keeps_z_spacing_and_layout(tmp_path):
    image_path = tmp_path / "stack.tif"
    tifffile.imwrite(
        image_path,
        np.zeros((5, 16, 12), np.uint16),
        imagej=True,
        resolution=(1 / 0.25, 1 / 0.5),
        metadata={"spacing": 2.0, "unit": "micron", "axes": "ZYX"},
    )
    image = io.read_image(image_path)
    assert image.spacing == pytest.approx((2.0, 0.5, 0.25)) and image.unit == "um"
    assert image.slice_axis == 0 and image.metadata["imagej"]
    labels = labels_like((5, 16, 12), classes=300)  # does not fit uint8
    back = io.read_image(io.write_labels(tmp_path / "stack_labels.tif", labels, like=image))
    assert back.data.dtype == np.uint16 and np.array_equal(back.data, labels)
    assert back.spacing == pytest.approx((2.0, 0.5, 0.25)) and back.unit == "um" and back.metadata["imagej"]


def test_tiff_rgb_and_multichannel_axes(tmp_path):
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((10, 14, 3), np.uint8), photometric="rgb")
    rgb = io.read_image(tmp_path / "rgb.tif")
    assert rgb.channel_axis == 2 and rgb.spatial_shape == (10, 14) and rgb.spacing is None
    tifffile.imwrite(tmp_path / "rgba.tif", np.full((10, 14, 4), 7, np.uint8), photometric="rgb", extrasamples=[2])
    rgba = io.read_image(tmp_path / "rgba.tif")
    assert rgba.data.shape == (10, 14, 3) and rgba.channel_axis == 2 and rgba.metadata["alpha_dropped"]
    tifffile.imwrite(tmp_path / "zc.tif", np.zeros((4, 2, 10, 14), np.uint16), imagej=True, metadata={"axes": "ZCYX"})
    stack = io.read_image(tmp_path / "zc.tif")
    assert stack.channel_axis == 1 and stack.spatial_shape == (4, 10, 14) and stack.slice_axis == 0
    labels = labels_like((4, 10, 14))
    assert np.array_equal(io.read_image(io.write_labels(tmp_path / "zc_labels.tif", labels, like=stack)).data, labels)


def test_channels_last_arrays_without_axis_metadata_are_guessed_as_predict_does(tmp_path):
    two = np.random.default_rng(1).integers(0, 255, (20, 30, 2), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "two.tif", two)  # stored as 20 pages of 30 x 2 pixels, axes "QYX"
    np.save(tmp_path / "two.npy", two)
    for name in ("two.tif", "two.npy"):  # both were 20 slices of 30 x 2 pixels before
        image = io.read_image(tmp_path / name)
        assert image.channel_axis == 2 and image.spatial_shape == (20, 30) and image.slice_axis is None
        assert np.array_equal(image.data, two)
    np.save(tmp_path / "rgba.npy", np.concatenate([two, two], axis=-1))
    rgba = io.read_image(tmp_path / "rgba.npy")  # as predict() and napari take (H, W, 4)
    assert rgba.data.shape == (20, 30, 3) and rgba.channel_axis == 2 and rgba.metadata["alpha_dropped"]
    np.save(tmp_path / "stack.npy", np.zeros((2, 20, 30), np.uint8))
    assert io.read_image(tmp_path / "stack.npy").channel_axis is None
    tifffile.imwrite(tmp_path / "zyx.tif", two, metadata={"axes": "ZYX"})  # the file says: a stack
    assert io.read_image(tmp_path / "zyx.tif").channel_axis is None
    nib.save(nib.Nifti1Image(two, np.eye(4)), tmp_path / "thin.nii.gz")  # (X, Y, Z): two thin slices
    assert io.read_image(tmp_path / "thin.nii.gz").channel_axis is None
    assert io.channels_last_axis((2, 20, 30, 1)) == 3 and io.channels_last_axis((20, 3, 2)) is None
    assert io.channels_last_axis(()) is None and io.channels_last_axis((2, 3, 3)) == 2  # RGB whatever its size


def test_tiff_large_labels_keep_spacing_without_imagej(tmp_path):
    like = io.ImageFile(
        np.zeros((3, 8, 9)), "tiff", spacing=(4.0, 0.5, 0.5), unit="mm", metadata={"imagej": True, "resolutionunit": 4}
    )
    labels = np.zeros((3, 8, 9), np.int64)
    labels[1, 2, 3] = 70_000  # instance ids beyond uint16: ImageJ cannot hold them
    back = io.read_image(io.write_labels(tmp_path / "big.tif", labels, like=like))
    assert back.data.dtype == np.uint32 and np.array_equal(back.data, labels)
    assert back.spacing == pytest.approx((4.0, 0.5, 0.5)) and back.unit == "mm"


@pytest.mark.parametrize("unit, imagej, code", [("um", True, 1), ("nm", True, 1), ("cm", False, 3), ("inch", False, 2)])
def test_tiff_from_a_non_tiff_like_picks_the_layout_for_its_unit(tmp_path, unit, imagej, code):
    like = io.ImageFile(np.zeros((3, 8, 9)), "nifti", spacing=(2.0, 0.4, 0.3), unit=unit)
    labels = labels_like((3, 8, 9))
    out = io.write_labels(tmp_path / "labels.tif", labels, like=like)
    with tifffile.TiffFile(out) as tif:
        assert tif.is_imagej == imagej and int(tif.pages.first.resolutionunit) == code
    back = io.read_image(out)
    assert np.array_equal(back.data, labels) and back.spacing == pytest.approx((2.0, 0.4, 0.3)) and back.unit == unit


# ----------------------------------------------------------------------------------------------- NIfTI


def test_nifti_round_trip_keeps_affine_zooms_and_header(tmp_path):
    affine = np.array([[-0.9, 0.1, 0.0, 10.0], [0.0, 1.1, 0.05, -20.0], [0.0, 0.0, 2.5, 30.0], [0, 0, 0, 1]])
    source = nib.Nifti1Image(np.random.default_rng(1).random((12, 10, 6)).astype(np.float32), affine)
    source.header.set_xyzt_units("mm")
    source.header.set_qform(np.diag([1.0, 1.2, 2.5, 1.0]), code=1)
    nib.save(source, tmp_path / "ct.nii.gz")
    image = io.read_image(tmp_path / "ct.nii.gz")
    assert image.data.shape == (12, 10, 6) and image.slice_axis == 2  # nibabel's (X, Y, Z)
    assert image.spacing == pytest.approx((1.0, 1.2, 2.5)) and image.unit == "mm"
    labels = labels_like((12, 10, 6))
    out = io.write_labels(tmp_path / "pred" / "ct.nii.gz", labels, like=image)
    written = nib.load(out)
    assert np.array_equal(np.asanyarray(written.dataobj), labels) and written.get_data_dtype() == np.uint8
    assert np.array_equal(written.affine, image.affine)
    assert written.header.get_zooms() == image.metadata["header"].get_zooms()
    assert np.array_equal(written.header.get_qform(), image.metadata["header"].get_qform())
    assert written.header.get_qform(coded=True)[1] == 1 and written.header.get_sform(coded=True)[1] == 2
    assert io.read_image(out).spacing == image.spacing


def test_nifti_4d_is_channels_last_and_plain_nii(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((6, 7, 5, 2), np.float32), np.diag([2.0, 2.0, 3.0, 1.0])), tmp_path / "mr.nii")
    image = io.read_image(tmp_path / "mr.nii")
    assert image.channel_axis == 3 and image.spatial_shape == (6, 7, 5) and image.spacing == (2.0, 2.0, 3.0)
    labels = labels_like((6, 7, 5))
    back = io.read_image(io.write_labels(tmp_path / "mr_labels.nii", labels, like=image))
    assert np.array_equal(back.data, labels) and np.array_equal(back.affine, image.affine)


# -------------------------------------------------------------------------------------- PNG, JPEG, npy


def test_png_and_npy_round_trip(tmp_path):
    labels = labels_like((24, 32))
    png = io.read_image(io.write_labels(tmp_path / "a.png", labels))
    assert png.format == "png" and png.data.dtype == np.uint8 and np.array_equal(png.data, labels)
    big = labels_like((4, 5, 6), classes=1000)
    npy = io.read_image(io.write_labels(tmp_path / "b.npy", big))
    assert npy.format == "npy" and npy.data.dtype == np.uint16 and np.array_equal(npy.data, big)


def test_png_refuses_what_it_cannot_hold_and_jpeg_is_refused(tmp_path):
    with pytest.raises(InputError, match=r"\.tif"):
        io.write_labels(tmp_path / "a.png", np.full((4, 4), 256))
    with pytest.raises(InputError, match=r"\.tif"):
        io.write_labels(tmp_path / "a.png", np.zeros((2, 4, 4), int))
    with pytest.raises(InputError, match="JPEG"):
        io.write_labels(tmp_path / "a.jpg", np.zeros((4, 4), int))
    assert not any(tmp_path.iterdir())


def test_rgb_jpeg_and_rgba_png_read(tmp_path):
    rgb = np.random.default_rng(2).integers(0, 255, (16, 20, 3), dtype=np.uint8)
    skimage.io.imsave(tmp_path / "photo.jpg", rgb, check_contrast=False)
    photo = io.read_image(tmp_path / "photo.jpg")
    assert photo.format == "jpeg" and photo.data.shape == (16, 20, 3) and photo.channel_axis == 2
    rgba = np.concatenate([rgb, np.full((16, 20, 1), 255, np.uint8)], axis=2)
    skimage.io.imsave(tmp_path / "shot.png", rgba, check_contrast=False)
    shot = io.read_image(tmp_path / "shot.png")
    assert np.array_equal(shot.data, rgb) and shot.metadata["alpha_dropped"]
    # A JPEG's labels go to PNG: JPEG compression would change the values.
    assert io.output_path_for(tmp_path / "photo.jpg", tmp_path / "out") == tmp_path / "out" / "photo.png"


def test_label_values_and_shape_are_checked(tmp_path):
    like = io.ImageFile(np.zeros((8, 8, 3)), "png", channel_axis=2)
    with pytest.raises(InputError, match="shape"):
        io.write_labels(tmp_path / "a.png", np.zeros((8, 9), int), like=like)
    with pytest.raises(InputError, match="2D or more"):
        io.write_labels(tmp_path / "a.npy", np.zeros(5, int))
    with pytest.raises(InputError, match=">= 0"):
        io.write_labels(tmp_path / "a.npy", np.full((3, 3), -1))
    with pytest.raises(InputError, match="whole numbers"):
        io.write_labels(tmp_path / "a.npy", np.full((3, 3), 0.5))
    assert io.as_label_array(np.array([[True, False]])).dtype == np.uint8
    assert io.as_label_array(np.array([2.0, 65535.0])).dtype == np.uint16


def test_read_labels_gives_class_values(tmp_path):
    from PIL import Image

    classes = labels_like((10, 12), classes=3)
    palette = Image.fromarray(classes.astype(np.uint8), mode="P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)  # VOC-style colours
    palette.save(tmp_path / "voc.png")
    assert io.read_image(tmp_path / "voc.png").data.shape == (10, 12, 3)  # as an image: its colours
    voc = io.read_labels(tmp_path / "voc.png")
    assert voc.channel_axis is None and voc.data.dtype == np.uint8 and np.array_equal(voc.data, classes)
    skimage.io.imsave(
        tmp_path / "grey_rgb.png", np.stack([classes.astype(np.uint8)] * 3, axis=-1), check_contrast=False
    )
    assert np.array_equal(io.read_labels(tmp_path / "grey_rgb.png").data, classes)
    nib.save(nib.Nifti1Image(classes.astype(np.float32), np.eye(4)), tmp_path / "float.nii.gz")
    as_float = io.read_labels(tmp_path / "float.nii.gz")
    assert as_float.data.dtype == np.uint8 and np.array_equal(as_float.data, classes)
    skimage.io.imsave(
        tmp_path / "photo.png",
        np.random.default_rng(0).integers(0, 255, (10, 12, 3), dtype=np.uint8),
        check_contrast=False,
    )
    with pytest.raises(InputError, match="photo.png: has 3 different channels"):
        io.read_labels(tmp_path / "photo.png")
    np.save(tmp_path / "negative.npy", -classes)
    with pytest.raises(InputError, match="negative.npy: labels must be >= 0"):
        io.read_labels(tmp_path / "negative.npy")


# ------------------------------------------------------------------------------------- errors, atomicity


def test_missing_unsupported_and_corrupt_files(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        io.read_image(tmp_path / "nothing.tif")
    (tmp_path / "notes.bmp").write_bytes(b"BM")
    with pytest.raises(InputError, match=r"unsupported.*\.tif.*\.png.*\.nii\.gz.*\.npy"):
        io.read_image(tmp_path / "notes.bmp")
    for name in ("broken.tif", "broken.nii.gz", "broken.png", "broken.npy", "broken.jpg"):
        (tmp_path / name).write_bytes(b"this is not an image" * 10)
        with pytest.raises(InputError, match="cannot read"):
            io.read_image(tmp_path / name)
    np.save(tmp_path / "strings.npy", np.array(["a", "b"]))
    with pytest.raises(InputError, match="numeric"):
        io.read_image(tmp_path / "strings.npy")


@pytest.mark.parametrize(
    "name, writer", [("old.tif", "tifffile.imwrite"), ("old.npy", "numpy.save"), ("old.nii.gz", "nibabel.save")]
)
def test_interrupted_write_keeps_the_old_file(tmp_path, monkeypatch, name, writer):
    old = labels_like((6, 7, 5), seed=3)
    path = io.write_labels(tmp_path / name, old)
    before = path.read_bytes()
    module, function = writer.rsplit(".", 1)
    real = getattr(__import__(module), function)

    def write_half_then_die(*args, **kwargs):
        real(*args, **kwargs)
        target = Path(next(a for a in args if isinstance(a, (str, Path))))  # nibabel.save takes (image, path)
        target.write_bytes(target.read_bytes()[:50])  # a torn file on disk
        raise KeyboardInterrupt

    monkeypatch.setattr(f"{module}.{function}", write_half_then_die)
    with pytest.raises(KeyboardInterrupt):
        io.write_labels(path, np.ones((6, 7, 5), int))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary file left behind
    monkeypatch.undo()
    assert np.array_equal(io.read_image(path).data, old)


# --------------------------------------------------------------------------------- nnU-Net and folders


def make_nnunet_dataset(root: Path, dataset_json: dict | None = None) -> Path:
    """A 2-channel NIfTI dataset: training cases a and b, test case c."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "imagesTs").mkdir()
    affine = np.diag([0.8, 0.8, 2.0, 1.0])
    rng = np.random.default_rng(4)
    for folder, case in (("imagesTr", "case_a"), ("imagesTr", "case_b"), ("imagesTs", "case_c")):
        for channel in (0, 1):
            volume = rng.random((8, 9, 4)).astype(np.float32) + 10 * channel
            nib.save(nib.Nifti1Image(volume, affine), root / folder / f"{case}_{channel:04d}.nii.gz")
        if folder == "imagesTr":
            nib.save(
                nib.Nifti1Image(labels_like((8, 9, 4), 3).astype(np.uint8), affine),
                root / "labelsTr" / f"{case}.nii.gz",
            )
    info = dataset_json or {
        "channel_names": {"0": "T1", "1": "T2"},
        "labels": {"background": 0, "tumour": 1, "oedema": 2},
        "numTraining": 2,
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(info))
    return root


def test_nnunet_dataset_read_and_found(tmp_path):
    root = make_nnunet_dataset(tmp_path / "Dataset001_Test")
    dataset = io.read_nnunet_dataset(root)
    assert dataset.channel_names == {0: "T1", 1: "T2"}
    assert dataset.labels == {"background": 0, "tumour": 1, "oedema": 2} and dataset.file_ending == ".nii.gz"
    assert [(case.name, [p.name for p in case.paths], label.name) for case, label in dataset.training] == [
        ("case_a", ["case_a_0000.nii.gz", "case_a_0001.nii.gz"], "case_a.nii.gz"),
        ("case_b", ["case_b_0000.nii.gz", "case_b_0001.nii.gz"], "case_b.nii.gz"),
    ]
    assert [case.name for case in dataset.test] == ["case_c"]
    # The dataset root means its test images; imagesTr is grouped the same way.
    assert io.find_images([root]) == dataset.test
    assert [case.name for case in io.find_images([root / "imagesTr"])] == ["case_a", "case_b"]
    image = io.read_case(dataset.test[0])
    assert image.data.shape == (8, 9, 4, 2) and image.channel_axis == 3 and image.spatial_shape == (8, 9, 4)
    assert image.spacing == pytest.approx((0.8, 0.8, 2.0))
    assert image.data[..., 1].min() >= 10 > image.data[..., 0].max()  # channel order kept
    out = io.output_path_for(dataset.test[0], tmp_path / "pred")
    assert out == tmp_path / "pred" / "case_c.nii.gz"
    assert io.output_path_for(root / "imagesTs" / "case_c_0000.nii.gz", tmp_path / "pred") == out
    labels = labels_like((8, 9, 4), 3)
    written = io.read_image(io.write_labels(out, labels, like=image))
    assert np.array_equal(written.data, labels) and np.array_equal(written.affine, image.affine)


def test_nnunet_v1_dataset_json(tmp_path):
    v1 = {"modality": {"0": "MRI", "1": "CT"}, "labels": {"0": "background", "1": "liver"}, "numTraining": 2}
    dataset = io.read_nnunet_dataset(make_nnunet_dataset(tmp_path / "Task01", v1))
    assert dataset.channel_names == {0: "MRI", 1: "CT"} and dataset.labels == {"background": 0, "liver": 1}
    assert len(dataset.training) == 2


def test_nnunet_problems_are_named(tmp_path):
    root = make_nnunet_dataset(tmp_path / "ds")
    (root / "labelsTr" / "case_b.nii.gz").unlink()
    with pytest.raises(InputError, match="no label in labelsTr for case_b"):
        io.read_nnunet_dataset(root)
    (root / "imagesTs" / "case_c_0001.nii.gz").unlink()
    with pytest.raises(InputError, match="case_c.*_0000.*expected _0000 to _0001"):
        io.find_images([root])
    (root / "dataset.json").write_text("{not json")
    with pytest.raises(InputError, match="dataset.json"):
        io.read_nnunet_dataset(root)
    with pytest.raises(InputError, match="no dataset.json"):
        io.read_nnunet_dataset(tmp_path)


def test_plain_folders_files_and_name_clashes(tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(2):
        tifffile.imwrite(frames / f"frame_{i:04d}.tif", np.zeros((4, 4), np.uint8))
    (frames / "notes.txt").write_text("not an image")
    (frames / ".frame_0000.tmp.tif").write_bytes(b"")  # a hidden temporary file
    cases = io.find_images([frames])
    # Outside nnU-Net folders a _0000 suffix is part of the name: frames stay separate images.
    assert [(c.name, len(c.paths)) for c in cases] == [("frame_0000", 1), ("frame_0001", 1)]
    assert io.output_path_for(cases[0], tmp_path / "out") == tmp_path / "out" / "frame_0000.tif"
    other = tmp_path / "other"
    other.mkdir()
    tifffile.imwrite(other / "frame_0001.tiff", np.zeros((4, 4), np.uint8))
    with pytest.raises(InputError, match="frame_0001.*overwrite"):
        io.find_images([frames, other / "frame_0001.tiff"])
    with pytest.raises(InputError, match="no such file or folder"):
        io.find_images([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images found"):
        io.find_images([tmp_path / "empty"])


def test_match_cases_by_name(tmp_path):
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir(), gt.mkdir()
    for name in ("a_0000.tif", "b.npy"):
        (pred / name).write_bytes(b"")
    for name in ("a.nii.gz", "b.tif", "readme.txt"):
        (gt / name).write_bytes(b"")
    assert io.match_cases(pred, gt) == [
        ("a", pred / "a_0000.tif", gt / "a.nii.gz"),
        ("b", pred / "b.npy", gt / "b.tif"),
    ]
    (gt / "c.png").write_bytes(b"")
    (pred / "d.png").write_bytes(b"")
    with pytest.raises(InputError, match="predictions without ground truth: d; ground truth without prediction: c"):
        io.match_cases(pred, gt)
    (pred / "a.png").write_bytes(b"")
    with pytest.raises(InputError, match="a.png and a_0000.tif"):
        io.match_cases(pred, gt)
