"""``dinounet evaluate``: geometric cases scored from files, the table, the JSON report and the errors."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import tifffile

from napari_dinounet.cli import main


def square_labels(shape=(40, 40), shift=0, with_class_2=True) -> np.ndarray:
    labels = np.zeros(shape, np.uint8)
    labels[5:25, 5 + shift : 25 + shift] = 1  # 20 x 20 square, shifted along X
    if with_class_2:
        labels[30:36, 30:36] = 2
    return labels


@pytest.fixture
def folders(tmp_path):
    """Ground truth as NIfTI with spacing (0.5, 2.0) mm; predictions as TIFF named like nnU-Net images."""
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir(), gt.mkdir()
    affine = np.diag([0.5, 2.0, 1.0, 1.0])
    for case, shift, has_2 in (("case1", 0, True), ("case2", 4, True), ("case3", 2, False)):
        nib.save(nib.Nifti1Image(square_labels(), affine), gt / f"{case}.nii.gz")
        tifffile.imwrite(pred / f"{case}_0000.tif", square_labels(shift=shift, with_class_2=has_2))
    return pred, gt


def test_scores_table_and_json(folders, tmp_path, capsys):
    pred, gt = folders
    report_path = tmp_path / "scores.json"
    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt), "--json", str(report_path)]) == 0
    out = capsys.readouterr().out
    report = json.loads(report_path.read_text())
    assert report["hd95_unit"] == "mm"
    # Square shifted by k columns (axis 1, spacing 2 mm): Dice (20 - k) / 20, HD95 2k mm.
    assert report["cases"]["case1"] == {"dice": {"1": 1.0, "2": 1.0}, "hd95": {"1": 0.0, "2": 0.0}}
    assert report["cases"]["case2"]["dice"]["1"] == pytest.approx(16 / 20)
    assert report["cases"]["case2"]["hd95"]["1"] == pytest.approx(8.0)
    assert report["cases"]["case3"]["dice"] == {"1": pytest.approx(18 / 20), "2": 0.0}
    assert report["cases"]["case3"]["hd95"] == {"1": pytest.approx(4.0), "2": None}  # missed: inf -> null
    mean = report["mean"]
    assert mean["dice"] == {"1": pytest.approx((1 + 0.8 + 0.9) / 3), "2": pytest.approx(2 / 3)}
    assert mean["hd95"] == {"1": pytest.approx(4.0), "2": pytest.approx(0.0)}
    assert mean["hd95_infinite"] == {"1": 0, "2": 1} and mean["images"] == {"1": 3, "2": 3}
    lines = out.splitlines()
    assert lines[0].split() == ["case", "Dice", "1", "HD95", "1", "(mm)", "Dice", "2", "HD95", "2", "(mm)"]
    assert lines[3].split() == ["case2", "0.8000", "8.00", "1.0000", "0.00"]
    assert lines[4].split() == ["case3", "0.9000", "4.00", "0.0000", "inf"]
    assert lines[6].split() == ["mean", "0.9000", "4.00", "0.6667", "0.00"]
    assert "one of the two masks is empty (class 2: 1)" in out


def test_pixels_and_classes_options(folders, tmp_path):
    pred, gt = folders
    report_path = tmp_path / "px.json"
    assert (
        main(
            ["evaluate", "--pred", str(pred), "--gt", str(gt), "--pixels", "--classes", "1", "--json", str(report_path)]
        )
        == 0
    )
    report = json.loads(report_path.read_text())
    assert report["hd95_unit"] == "px"
    assert report["cases"]["case2"] == {"dice": {"1": pytest.approx(0.8)}, "hd95": {"1": pytest.approx(4.0)}}


def test_class_names_from_nnunet_dataset_json(tmp_path, capsys):
    root = tmp_path / "Dataset002"
    (root / "labelsTr").mkdir(parents=True)
    (tmp_path / "pred").mkdir()
    (root / "dataset.json").write_text(
        json.dumps(
            {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "tumour": 2}, "file_ending": ".npy"}
        )
    )
    np.save(root / "labelsTr" / "x.npy", square_labels())
    np.save(tmp_path / "pred" / "x.npy", square_labels(shift=1))
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(root / "labelsTr")]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert "Dice 1:liver" in header and "HD95 2:tumour (px)" in header  # .npy has no spacing: pixels


def test_unmatched_files_are_a_clear_error(folders, capsys):
    pred, gt = folders
    (pred / "case3_0000.tif").rename(pred / "case9.tif")
    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt)]) == 2
    err = capsys.readouterr().err
    assert "predictions without ground truth: case9; ground truth without prediction: case3" in err
    assert "Traceback" not in err


def test_shape_mismatch_and_mixed_units_name_the_problem(folders, capsys):
    pred, gt = folders
    tifffile.imwrite(pred / "case2_0000.tif", np.zeros((40, 41), np.uint8))
    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt)]) == 2
    assert "case 'case2'" in capsys.readouterr().err
    tifffile.imwrite(pred / "case2_0000.tif", square_labels())
    np.save(gt / "case4.npy", square_labels())  # no spacing, unlike the NIfTI files
    tifffile.imwrite(pred / "case4.tif", square_labels())
    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt)]) == 2
    assert "--pixels" in capsys.readouterr().err
    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt), "--pixels"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()[2:6]] == [
        "case1",
        "case2",
        "case3",
        "case4",
    ]
