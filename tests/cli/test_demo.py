"""``dinounet demo``: a shortened run still beats the Otsu baseline on the nuclei test half."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import tifffile
from _nuclei_training import nuclei_foreground
from PIL import Image

from napari_dinounet.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # training: one thread (see conftest.py)


@pytest.fixture(autouse=True)
def _no_configured_backbone(monkeypatch):
    monkeypatch.delenv("DINOUNET_BACKBONE", raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def test_short_demo_beats_otsu_and_writes_its_files(tmp_path, capsys):
    # 80 steps instead of the demo's 200. Measured 2026-12-02 on the shared 2-core machine, five runs at this
    # commit and at the session start alike: Dice 0.888-0.893 against Otsu's 0.868 (CPU training is not
    # bit-reproducible here), so a margin of 0.02 failed one run in five; 0.01 keeps the claim and the headroom
    assert main(["demo", "--out", str(tmp_path), "--epochs", "2", "--iters-per-epoch", "40", "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert "RANDOMLY INITIALISED" in err  # no weights configured: the loud warning

    results = json.loads((tmp_path / "demo_results.json").read_text())
    ours, otsu = results["test_half"]["dinounet"], results["test_half"]["otsu"]
    assert otsu["dice"] == pytest.approx(0.868, abs=0.001)  # the baseline is deterministic
    assert ours["dice"] > otsu["dice"] + 0.01, results["test_half"]
    # HD95 after 80 steps varied between runs (2.8 to 5.0 px, against Otsu's 5.0; the full demo: 2.2)
    assert ours["hd95"] is not None and ours["hd95"] <= 8.0
    assert results["backbone"] == "random:tiny" and results["pretrained"] is False

    labels = tifffile.imread(tmp_path / "nuclei_test_labels.tif")
    _, foreground = nuclei_foreground()
    assert labels.shape == (512, 256) and set(np.unique(labels)) <= {0, 1}
    truth = foreground[:, 256:]
    dice = 2 * np.sum((labels == 1) & (truth == 1)) / (np.sum(labels == 1) + np.sum(truth == 1))
    assert dice == pytest.approx(ours["dice"])  # the JSON describes the written labels
    overlay = np.asarray(Image.open(tmp_path / "nuclei_test_overlay.png"))
    assert overlay.shape == (512, 256, 3)
    predicted_outline = np.all(overlay == (255, 0, 255), axis=-1)
    true_outline = np.all(overlay == (0, 255, 0), axis=-1)
    assert predicted_outline.sum() > 500 and true_outline.sum() > 100
    assert not predicted_outline[labels == 0].any()  # outlines are drawn inside the predicted nuclei
    assert "Otsu threshold" in out and f"{ours['dice']:.3f}" in out


def test_demo_uses_the_configured_backbone_without_warning(tmp_path, capsys, monkeypatch, dinov3_tiny_dir):
    monkeypatch.setenv("DINOUNET_BACKBONE", str(dinov3_tiny_dir / "hf_tiny"))
    assert main(["demo", "--out", str(tmp_path), "--epochs", "1", "--iters-per-epoch", "1", "--quiet"]) == 0
    assert "RANDOMLY" not in capsys.readouterr().err
    results = json.loads((tmp_path / "demo_results.json").read_text())
    assert results["backbone"] == str(dinov3_tiny_dir / "hf_tiny") and results["pretrained"] is True
