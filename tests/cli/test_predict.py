"""``dinounet predict``: files, folders and nnU-Net imagesTs in, predictions written like their inputs."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import tifffile
import torch

from napari_dinounet.cli import main
from napari_dinounet.engine.progress import drain

PATCH = 64


@pytest.fixture(scope="module")
def heads(tmp_path_factory, dinov3_tiny_dir):
    """Randomly initialised tiny heads for the official-format fixture backbone, saved as a checkpoint."""
    from napari_dinounet.engine.backbone import load_backbone
    from napari_dinounet.engine.checkpoint import HeadsMetadata, save_heads
    from napari_dinounet.engine.network import build_dinounet

    backbone_path = dinov3_tiny_dir / "official_tiny.pth"
    backbone = load_backbone(backbone_path)
    torch.manual_seed(0)
    model = build_dinounet(num_classes=2, backbone=backbone)
    metadata = HeadsMetadata(
        config=model.config.to_dict(),
        class_names=["background", "nucleus"],
        in_channels=1,
        normalization={"scheme": "zscore"},
        patch_size=PATCH,
        backbone_variant=backbone.variant,
        backbone_sha256=backbone.sha256,
    )
    path = save_heads(tmp_path_factory.mktemp("heads") / "heads.safetensors", model, metadata)
    return path, backbone_path


def expected(heads, image, **kwargs):
    """What the engine predicts for ``image`` with these heads: the reference for the CLI's files."""
    from napari_dinounet.engine.backbone import load_backbone
    from napari_dinounet.engine.checkpoint import load_heads
    from napari_dinounet.engine.predict import predict

    path, backbone_path = heads
    model, metadata = load_heads(path, load_backbone(backbone_path))
    return drain(predict(model, image, patch_size=PATCH, normalization=metadata.normalization, **kwargs))


def image(shape, seed=0, dtype=np.uint16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 3000, shape).astype(dtype)


def cli(heads, *args) -> int:
    path, backbone_path = heads
    return main(
        ["predict", "--heads", str(path), "--backbone", str(backbone_path), "--device", "cpu", "--quiet", *args]
    )


def test_folder_of_tiff_and_npy_files(heads, tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    flat = image((50, 70))
    stack = image((2, 40, 50), seed=1, dtype=np.float32)
    tifffile.imwrite(inputs / "cells.tif", flat, resolution=(1 / 0.5, 1 / 0.5), imagej=True, metadata={"unit": "um"})
    np.save(inputs / "stack.npy", stack)
    assert cli(heads, str(inputs), "--out", str(tmp_path / "out")) == 0
    from napari_dinounet.engine.io import read_image

    cells = read_image(tmp_path / "out" / "cells.tif")
    np.testing.assert_array_equal(cells.data, expected(heads, flat))
    assert cells.spacing == pytest.approx((0.5, 0.5)) and cells.unit == "um"
    labels = np.load(tmp_path / "out" / "stack.npy")
    assert labels.shape == (2, 40, 50)
    np.testing.assert_array_equal(labels, expected(heads, stack, slice_axis=0))
    assert "cells:" in capsys.readouterr().out


def test_nnunet_dataset_imagests_keeps_the_nifti_geometry(heads, tmp_path):
    nib = pytest.importorskip("nibabel")
    root = tmp_path / "Dataset001_Test"
    (root / "imagesTs").mkdir(parents=True)
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "MRI"},
                "labels": {"background": 0, "tumour": 1},
                "numTraining": 0,
                "file_ending": ".nii.gz",
            }
        )
    )
    volume = image((40, 50, 2), seed=2).astype(np.int16)  # (X, Y, Z)
    affine = np.diag([0.8, 0.8, 3.0, 1.0])
    affine[:3, 3] = (10, -5, 2)
    nib.save(nib.Nifti1Image(volume, affine), root / "imagesTs" / "case7_0000.nii.gz")
    assert cli(heads, str(root), "--out", str(tmp_path / "out"), "--axis", "2") == 0
    written = nib.load(tmp_path / "out" / "case7.nii.gz")
    np.testing.assert_allclose(written.affine, affine)
    np.testing.assert_array_equal(np.asarray(written.dataobj), expected(heads, volume, slice_axis=2))


def test_probabilities_are_written_beside_the_labels(heads, tmp_path):
    flat = image((50, 70), seed=3)
    np.save(tmp_path / "img.npy", flat)
    assert cli(heads, str(tmp_path / "img.npy"), "--out", str(tmp_path / "out"), "--probabilities") == 0
    probs = np.load(tmp_path / "out" / "img_probabilities.npy")
    labels = np.load(tmp_path / "out" / "img.npy")
    assert probs.shape == (2, 50, 70) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(labels, probs.argmax(0))
    np.testing.assert_allclose(probs, expected(heads, flat, probabilities=True), atol=1e-6)


def test_errors_end_with_a_message_and_touch_nothing(heads, tmp_path, capsys, dinov3_tiny_dir):
    flat = image((50, 70))
    np.save(tmp_path / "img.npy", flat)
    assert cli(heads, str(tmp_path / "img.npy"), "--out", str(tmp_path)) == 2
    assert "would overwrite an input" in capsys.readouterr().err
    np.testing.assert_array_equal(np.load(tmp_path / "img.npy"), flat)

    import skimage.io

    skimage.io.imsave(tmp_path / "rgb.png", image((70, 90, 3), dtype=np.uint8), check_contrast=False)
    assert cli(heads, str(tmp_path / "rgb.png"), "--out", str(tmp_path / "out")) == 2
    assert "rgb: the heads were trained on 1-channel images but this image has 3" in capsys.readouterr().err
    np.save(tmp_path / "stack.npy", image((2, 40, 50)))
    assert cli(heads, str(tmp_path / "stack.npy"), "--out", str(tmp_path / "out"), "--axis", "3") == 2
    assert "stack: --axis=3 does not exist in (2, 40, 50): use 0 to 2" in capsys.readouterr().err
    path, _ = heads
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(
            [
                "predict",
                "--heads",
                str(path),
                "--backbone",
                str(dinov3_tiny_dir / "hf_tiny"),
                "--quiet",
                str(tmp_path / "img.npy"),
                "--out",
                str(tmp_path / "out"),
            ]
        )
    assert code == 2
    err = capsys.readouterr().err
    assert "trained with backbone 'tiny'" in err and "--allow-backbone-mismatch" in err
    assert not (tmp_path / "out" / "img.npy").exists()
