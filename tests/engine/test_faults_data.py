"""Training-data faults from the 2026-12 reliability report: labels that would silently change the number of
classes, nnU-Net ``dataset.json`` rules, and the checks train() runs before its first step."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from napari_dinounet.engine import io
from napari_dinounet.engine.bundled_data import load_nuclei
from napari_dinounet.engine.data import (
    Sample,
    check_labels_fit,
    check_same_channels,
    samples_from_arrays,
    samples_from_folders,
    samples_from_nnunet,
)
from napari_dinounet.engine.errors import InputError


@pytest.fixture(scope="module")
def nuclei():
    """The nuclei image and its instance labels (125 nuclei, ids 1..183 with gaps)."""
    return load_nuclei()


def crops(array: np.ndarray) -> list[np.ndarray]:
    """Two 96 px crops, the report's fixture layout: rows and columns 0..95 and 96..191."""
    return [array[:96, :96], array[96:192, 96:192]]


def write_folders(root, image: np.ndarray, labels: list[np.ndarray], ext: str = ".tif"):
    """images/c<i>.tif (crops of ``image``) and labels/c<i><ext>; returns the two folders."""
    from skimage.io import imsave

    images_dir, labels_dir = root / "images", root / "labels"
    images_dir.mkdir(parents=True)
    labels_dir.mkdir()
    for i, (img, lab) in enumerate(zip(crops(image), labels)):
        tifffile.imwrite(images_dir / f"c{i}.tif", img)
        if ext == ".png":
            imsave(labels_dir / f"c{i}.png", lab, check_contrast=False)
        else:
            tifffile.imwrite(labels_dir / f"c{i}{ext}", lab)
    return images_dir, labels_dir


# ------------------------------------------------------------------------- folder mode: labels decide classes


def test_binary_masks_saved_as_0_255_train_as_0_1_with_a_warning(tmp_path, nuclei):
    image, instances = nuclei
    foreground = [(lab > 0).astype(np.uint8) for lab in crops(instances)]
    images_dir, labels_dir = write_folders(tmp_path, image, [f * 255 for f in foreground], ext=".png")
    with pytest.warns(
        UserWarning,
        match=r"c0\.png, \S+c1\.png hold only 0 and 255, a binary mask: 255 is read as "
        "class 1",
    ):
        samples = samples_from_folders(images_dir, labels_dir)
    # 0/255 used to train a 256-class network; now the same pixels are class 1 of 2
    assert [np.unique(s.labels).tolist() for s in samples] == [[0, 1], [0, 1]]
    assert [int(s.labels.sum()) for s in samples] == [int(f.sum()) for f in foreground]
    # with 256 or more classes 255 is a class of its own and stays
    kept = samples_from_arrays([image[:8, :8]], [np.full((8, 8), 255, np.uint8)], num_classes=256)
    assert kept[0].labels.max() == 255


def test_instance_labels_get_the_instance_hint(tmp_path, nuclei):
    image, instances = nuclei
    images_dir, labels_dir = write_folders(tmp_path, image, crops(instances))
    # the report's crops: ids 7, 50, 75, 83 and 19, 73, 137, 157, 178 (a 179-class network before)
    with pytest.raises(
        InputError,
        match=r"c0\.tif, \S+c1\.tif contain 7, 19, 50, 73, 75, 83, 137, 157, 178 but no 1, "
        r"2, 3, 4, 5 and 164 more: these look like instance labels, one id per "
        r"object; .*labels > 0.*--classes N",
    ):
        samples_from_folders(images_dir, labels_dir)
    # the whole image: 125 ids
    with pytest.raises(
        InputError,
        match=r"labels of nuclei hold 125 different values \(1, 3, 6, 7, 9 and 120 "
        r"more\): these look like instance labels",
    ):
        samples_from_arrays([image], [instances], names=["nuclei"])
    # many classes without gaps are refused too, unless their number is given
    many = np.arange(20 * 8).reshape(20, 8) // 8
    with pytest.raises(InputError, match="hold 19 different values"):
        samples_from_arrays([many.astype(np.float32)], [many])
    assert samples_from_arrays([many.astype(np.float32)], [many], num_classes=20)[0].labels.max() == 19


def test_a_stray_value_is_a_gap_not_70001_classes(tmp_path, nuclei):
    image, instances = nuclei
    foreground = [(lab > 0).astype(np.uint32) for lab in crops(instances)]
    images_dir, labels_dir = write_folders(tmp_path, image, [foreground[0] * 70000, foreground[1]])
    with pytest.raises(
        InputError,
        match=r"labels of \S+labels/c0\.tif contain 70000 but no 2, 3, 4, 5, 6 and 69993 "
        r"more: class values must run 0, 1, 2, \.\.\. without gaps",
    ):
        samples_from_folders(images_dir, labels_dir)
    with pytest.raises(InputError, match=r"c0\.tif contain values 70000 outside 0\.\.1"):
        samples_from_folders(images_dir, labels_dir, num_classes=2)


def test_an_absent_class_needs_the_number_of_classes(tmp_path, nuclei):
    image, instances = nuclei
    twos = [(lab > 0).astype(np.uint8) * 2 for lab in crops(instances)]
    images_dir, labels_dir = write_folders(tmp_path, image, twos)
    with pytest.raises(
        InputError,
        match=r"c0\.tif, \S+c1\.tif contain 2 but no 1: .*give the number of classes if "
        r"some are really absent \(num_classes, --classes N in the CLI\)",
    ):
        samples_from_folders(images_dir, labels_dir)
    samples = samples_from_folders(images_dir, labels_dir, num_classes=3)
    assert [np.unique(s.labels).tolist() for s in samples] == [[0, 2], [0, 2]]
    with pytest.raises(InputError, match="at least 2"):
        samples_from_folders(images_dir, labels_dir, num_classes=1)


# ------------------------------------------------------------------------------------ nnU-Net dataset.json


def write_dataset(root, labels_json, label_maps: list[np.ndarray] | None = None, **extra) -> None:
    """A one-channel TIFF dataset with cases case0, case1 (16 x 16); labels 0/1 unless given."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        tifffile.imwrite(root / "imagesTr" / f"case{i}_0000.tif", rng.normal(size=(16, 16)).astype(np.float32))
        lab = np.zeros((16, 16), np.uint8) if label_maps is None else label_maps[i]
        if label_maps is None:
            lab[4:10, 4:10] = 1
        tifffile.imwrite(root / "labelsTr" / f"case{i}.tif", lab)
    info = {"channel_names": {"0": "DAPI"}, "labels": labels_json, "numTraining": 2, "file_ending": ".tif", **extra}
    (root / "dataset.json").write_text(json.dumps(info))


@pytest.mark.parametrize(
    ("labels_json", "message"),
    [
        (
            {"background": 0, "ignore": -1, "nuclei": 1},
            r"label 'ignore' has the value -1: label values are 0 "
            r"\(background\), 1, 2",
        ),
        ({"background": 0, "a": 1, "b": 1}, "labels 'a' and 'b' share the value 1: give each class its own value"),
        (
            {"background": 0, "nuclei": 2},
            r"label values 0, 2 skip 1: nnU-Net needs values 0, 1, 2, \.\.\. without gaps",
        ),
        ({"background": 0, "ignore": 1, "nuclei": 2}, "'ignore' has the value 1, but nnU-Net gives it the highest"),
        (
            {"background": "0", "nuclei": "1"},
            r"label 'background' has the value \"0\", text in quotes: label values "
            "are whole numbers",
        ),
        ({"background": 0, "nuclei": 1.5}, "label 'nuclei' has the value 1.5, not a whole number"),
        ({"background": 0, "nuclei": [1, 2]}, "label 'nuclei' is a list of values .*region-based labels are not"),
        ({"nuclei": 1}, "'labels' lacks \"background\": 0"),
        ({"background": 0}, "'labels' names no class besides background"),
    ],
)
def test_dataset_json_labels_follow_nnunet_rules(tmp_path, labels_json, message):
    write_dataset(tmp_path / "D", labels_json)
    with pytest.raises(InputError, match=rf"D/dataset\.json: {message}") as err:
        samples_from_nnunet(tmp_path / "D")
    assert "region" not in str(err.value) or isinstance(labels_json.get("nuclei"), list)
    assert "num_classes" not in str(err.value)


def test_label_files_beyond_a_gapped_dataset_json_are_refused_before_training(tmp_path):
    # dataset.json {background: 0, nuclei: 2} with files using 2 reached the loss: "Target 2 is out of bounds"
    twos = [np.zeros((16, 16), np.uint8) for _ in range(2)]
    for lab in twos:
        lab[2:6, 2:6] = 2
    write_dataset(tmp_path / "D", {"background": 0, "nuclei": 2}, twos)
    with pytest.raises(InputError, match=r"dataset\.json: label values 0, 2 skip 1"):
        samples_from_nnunet(tmp_path / "D")


def test_dataset_json_names_are_ordered_by_value_and_ignore_pixels_are_masked(tmp_path):
    v1 = {"0": "background", "1": "tumour", "2": "oedema"}
    assert io.class_names({"labels": v1}) == ["background", "tumour", "oedema"]
    assert list(io.label_values({"labels": {"oedema": 2, "background": 0, "tumour": 1}})) == [
        "background",
        "tumour",
        "oedema",
    ]
    maps = [np.zeros((16, 16), np.uint8) for _ in range(2)]
    maps[0][:8] = 2  # top half unlabelled
    maps[0][10:12, 10:12] = 1
    maps[1][:] = 2  # nothing labelled: no sample
    write_dataset(tmp_path / "D", {"background": 0, "nuclei": 1, "ignore": 2}, maps)
    samples, info = samples_from_nnunet(tmp_path / "D")
    assert io.class_names(info) == ["background", "nuclei"]
    assert [s.name for s in samples] == ["case0"]
    assert samples[0].mask.sum() == 8 * 16 and not samples[0].mask[:8].any()
    assert np.unique(samples[0].labels).tolist() == [0, 1]  # ignore pixels hold no class value >= 2


def test_file_ending_without_its_dot_is_named(tmp_path):
    write_dataset(tmp_path / "D", {"background": 0, "nuclei": 1}, file_ending="tif")
    with pytest.raises(
        InputError,
        match=r"dataset\.json: \"file_ending\": \"tif\" lacks the dot of an extension; "
        r"write \"file_ending\": \"\.tif\"",
    ):
        samples_from_nnunet(tmp_path / "D")


def test_a_prediction_inside_images_ts_is_not_advised_to_be_renamed_into_an_input(tmp_path):
    folder = tmp_path / "D" / "imagesTs"
    folder.mkdir(parents=True)
    tifffile.imwrite(folder / "test0_0000.tif", np.zeros((8, 8), np.uint8))
    tifffile.imwrite(folder / "test0.tif", np.zeros((8, 8), np.uint8))  # what predict --out imagesTs wrote
    with pytest.raises(
        InputError,
        match=r"imagesTs/test0\.tif: .*rename it, e\.g\. to test0_0000\.tif, unless it is a "
        "prediction written into imagesTs by mistake: then move it out",
    ):
        io.find_images([folder])


# ------------------------------------------------------------------------------- checks before training


def sample(name: str, labels: np.ndarray, channels: int = 1, mask: np.ndarray | None = None) -> Sample:
    return Sample(np.zeros((channels, *labels.shape), np.float32), labels.astype(np.int64), mask, name, name)


def test_check_labels_fit_names_the_sample_and_the_value():
    fits = sample("layer0", np.eye(6))
    painted = np.eye(6)
    painted[0, 5] = 2  # label 2 painted for 2-class heads
    with pytest.raises(
        InputError,
        match=r"labels of layer1 \(2\) lie outside the 2 classes 0\.\.1: paint only labels "
        r"0\.\.1, or train new heads with more classes",
    ):
        check_labels_fit([fits, sample("layer1", painted)], 2)
    check_labels_fit([fits, sample("layer1", painted)], 3)
    # outside the mask of a partial-label sample the value does not count
    mask = np.ones((6, 6), bool)
    mask[0, 5] = False
    check_labels_fit([sample("layer1", painted, mask=mask)], 2)
    with pytest.raises(InputError, match=r"layer1 \(-1\)"):
        check_labels_fit([sample("layer1", -np.eye(6))], 2)


def test_check_labels_fit_warns_when_nothing_is_foreground():
    blank = [sample("a", np.zeros((6, 6))), sample("b", np.zeros((6, 6)))]
    with pytest.warns(UserWarning, match="no training sample has any foreground"):
        check_labels_fit(blank, 2)
    # foreground only where the mask says "does not count" is no foreground
    hidden = np.eye(6)
    with pytest.warns(UserWarning, match="no training sample has any foreground"):
        check_labels_fit([sample("c", hidden, mask=hidden == 0)], 2)


def test_check_same_channels_names_the_odd_sample():
    rgb = [sample(f"rgb{i}", np.zeros((4, 4)), channels=3) for i in range(2)]
    assert check_same_channels(rgb) == 3
    with pytest.raises(InputError, match=r"grey has 1 channels but rgb0 has 3: train on images of one kind"):
        check_same_channels([*rgb, sample("grey", np.zeros((4, 4)))])
    with pytest.raises(InputError, match="no training samples"):
        check_same_channels([])
