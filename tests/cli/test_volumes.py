"""Volumes through the CLI: ``train --planes all --normalization ct``, ``predict --planes all`` and the 3D
Dice / HD95 in mm of ``evaluate``, on an anisotropic NIfTI cut from the bundled MNI152 brain."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import tifffile

from napari_dinounet.cli import main
from napari_dinounet.engine.bundled_data import load_mni152_volume
from napari_dinounet.engine.checkpoint import read_metadata
from napari_dinounet.engine.metrics import evaluate_pair

pytestmark = pytest.mark.usefixtures("one_torch_thread", "quiet_random_backbone")

TINY = ["--backbone", "random:tiny", "--device", "cpu", "--quiet"]
ZOOMS = (2.0, 2.0, 4.0)  # every second axial slice of the 2 mm brain: 4 mm along z


def write_case(folder, name: str, data: np.ndarray) -> None:
    folder.mkdir(exist_ok=True)
    affine = np.diag([*ZOOMS, 1.0])
    affine[:3, 3] = [-40.0, -50.0, -20.0]
    nib.save(nib.Nifti1Image(data, affine), folder / f"{name}.nii.gz")


@pytest.fixture(scope="module")
def brain(tmp_path_factory):
    root = tmp_path_factory.mktemp("brain")
    sample = load_mni152_volume()
    # (z, y, x) -> NIfTI (X, Y, Z), a block of the brain, every second slice
    image = sample.image[20:60:2, 20:60, 20:52].transpose(2, 1, 0).copy()
    labels = sample.labels[20:60:2, 20:60, 20:52].transpose(2, 1, 0).copy()
    write_case(root / "images", "brain", image)
    write_case(root / "labels", "brain", labels)
    return root, labels


def test_train_predict_evaluate_a_volume_on_three_planes(brain, capsys):
    root, labels = brain
    heads = root / "heads.safetensors"
    args = ["--images", str(root / "images"), "--labels", str(root / "labels"), "--out", str(heads)]
    args += ["--size", "tiny", "--patch", "64", "--batch", "2", "--epochs", "1", "--iters-per-epoch", "2"]
    assert main(["train", *TINY, *args, "--planes", "all", "--normalization", "ct", "--val-fraction", "0"]) == 0
    meta = read_metadata(heads)
    assert meta.planes == (0, 1, 2) and meta.spacing == ZOOMS
    assert meta.normalization["scheme"] == "ct"
    low, high = meta.normalization["clip"]
    foreground = nib.load(root / "images" / "brain.nii.gz").get_fdata()[labels > 0]
    assert (low, high) == pytest.approx(tuple(np.percentile(foreground, [0.5, 99.5])))

    out = root / "pred"
    assert (
        main(["predict", *TINY, str(root / "images"), "--heads", str(heads), "--out", str(out), "--planes", "all"]) == 0
    )
    written = nib.load(out / "brain.nii.gz")
    assert written.shape == labels.shape
    np.testing.assert_allclose(written.header.get_zooms(), ZOOMS)
    predicted = np.asarray(written.dataobj)

    report = root / "scores.json"
    assert main(["evaluate", "--pred", str(out), "--gt", str(root / "labels"), "--json", str(report)]) == 0
    scores = json.loads(report.read_text())
    assert scores["hd95_unit"] == "mm"
    expected = evaluate_pair(predicted, labels, spacing=ZOOMS, classes=[1, 2, 3])
    in_pixels = evaluate_pair(predicted, labels, classes=[1, 2, 3])
    for c in (1, 2, 3):
        assert scores["cases"]["brain"]["dice"][str(c)] == pytest.approx(expected["dice"][c])
        assert scores["cases"]["brain"]["hd95"][str(c)] == pytest.approx(expected["hd95"][c])
    assert any(expected["hd95"][c] != in_pixels["hd95"][c] for c in (1, 2, 3))  # mm, not voxels

    tifffile.imwrite(root / "flat.tif", np.zeros((40, 40), np.uint8))
    flat = [
        "predict",
        *TINY,
        str(root / "flat.tif"),
        "--heads",
        str(heads),
        "--out",
        str(root / "o"),
        "--planes",
        "all",
    ]
    capsys.readouterr()
    assert main(flat) == 2
    assert "--planes is for 3D volumes" in capsys.readouterr().err
    images = str(root / "images")
    assert main(["predict", *TINY, images, "--heads", str(heads), "--out", str(root / "p"), "--planes", "up"]) == 2
    assert "unknown plane 'up'" in capsys.readouterr().err
