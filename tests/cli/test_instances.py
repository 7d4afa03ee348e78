"""Instance mode through the CLI: ``train --instances``, ``predict`` with instance heads, ``evaluate --instances``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from napari_dinounet.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread", "quiet_random_backbone")

TINY = ["--backbone", "random:tiny", "--size", "tiny", "--patch", "64", "--batch", "2", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def instance_folders(tmp_path_factory):
    """Two 128 x 128 crops of the nuclei sample with their instance ids (as on disk: uint16 TIFFs)."""
    from napari_dinounet.engine.bundled_data import load_nuclei

    image, instances = load_nuclei()
    root = tmp_path_factory.mktemp("nuclei")
    images, labels = root / "images", root / "labels"
    images.mkdir(), labels.mkdir()
    for i in range(2):
        crop = (slice(0, 128), slice(i * 128, (i + 1) * 128))
        tifffile.imwrite(images / f"crop{i}.tif", image[crop])
        tifffile.imwrite(labels / f"crop{i}.tif", instances[crop])
    return images, labels


def test_train_predict_and_evaluate_instances(instance_folders, tmp_path, capsys):
    from napari_dinounet.engine.checkpoint import read_metadata
    from napari_dinounet.engine.instances import INSTANCE_CLASS_NAMES, InstanceMaps, generate

    images, labels = instance_folders
    heads = tmp_path / "instances.safetensors"
    command = ["train", *TINY, "--images", str(images), "--labels", str(labels), "--out", str(heads), "--instances"]
    assert main([*command, "--epochs", "1", "--iters-per-epoch", "2"]) == 0
    metadata = read_metadata(heads)
    assert metadata.task == "instances" and metadata.class_names == list(INSTANCE_CLASS_NAMES)

    pred = tmp_path / "pred"
    predict = ["predict", str(images), "--heads", str(heads), "--backbone", "random:tiny", "--device", "cpu"]
    assert main([*predict, "--out", str(pred), "--quiet", "--probabilities", "--min-size", "4"]) == 0
    written = tifffile.imread(pred / "crop0.tif")
    assert written.dtype.kind == "u" and written.shape == (128, 128)  # files keep the smallest type that fits
    ids = np.unique(written)
    assert ids[0] == 0 and np.array_equal(ids, np.arange(ids.size))  # objects numbered 1..N
    maps = InstanceMaps(np.load(pred / "crop0_probabilities.npy"))
    np.testing.assert_array_equal(generate(maps, min_size=4), written)  # the stored maps give the same objects

    capsys.readouterr()
    report = tmp_path / "scores.json"
    assert main(["evaluate", "--instances", "--pred", str(labels), "--gt", str(labels), "--json", str(report)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["case", "objects", "true", "matched", "precision", "recall", "F1@0.5"] + [
        "AP@.5:.95",
        "PQ",
        "Dice",
        "fg",
    ]
    scores = json.loads(report.read_text())
    true_counts = [np.unique(tifffile.imread(labels / f"crop{i}.tif")).size - 1 for i in range(2)]
    assert [scores["cases"][f"crop{i}"]["gt_count"] for i in range(2)] == true_counts
    assert scores["mean"]["f1"] == 1.0 and scores["mean"]["ap"] == 1.0 and scores["mean"]["dice"] == 1.0
    assert scores["mean"]["matched"] == sum(true_counts)
    assert main(["evaluate", "--instances", "--pred", str(pred), "--gt", str(labels)]) == 0
    assert capsys.readouterr().out.splitlines()[2].split()[1] == str(ids.size - 1)  # crop0's object count


def test_instance_options_are_refused_where_they_do_not_apply(instance_folders, tmp_path, capsys):
    images, labels = instance_folders
    out = ["--out", str(tmp_path / "h.safetensors")]
    assert main(
        ["train", *TINY, "--instances", "--images", str(images), "--labels", str(labels), "--classes", "3"] + out
    )
    assert "--classes does not go with --instances" in capsys.readouterr().err
    assert main(["evaluate", "--instances", "--pred", str(labels), "--gt", str(labels), "--classes", "1"]) == 2
    assert "--instances scores objects" in capsys.readouterr().err


def test_train_instances_from_scribbles(instance_folders, tmp_path, capsys):
    """Sparse instance labels on disk: a few nuclei painted whole and a background stroke (value 1)."""
    from napari_dinounet.engine.checkpoint import read_metadata

    images, labels = instance_folders
    scribbles = tmp_path / "scribbles"
    scribbles.mkdir()
    for i in range(2):
        ids = tifffile.imread(labels / f"crop{i}.tif")
        painted = np.where(np.isin(ids, np.unique(ids)[1:4]), ids, 0)  # three objects
        painted[120:124, :] = np.where(ids[120:124, :] == 0, 1, painted[120:124, :])  # background stroke
        tifffile.imwrite(scribbles / f"crop{i}.tif", painted.astype(np.uint16))
    heads = tmp_path / "sparse.safetensors"
    sparse = ["--sparse", "--background-label", "1", "--epochs", "1", "--iters-per-epoch", "1"]
    command = ["train", *TINY, "--instances", "--images", str(images), "--labels", str(scribbles), *sparse]
    assert main([*command, "--out", str(heads)]) == 0
    assert read_metadata(heads).task == "instances"
    # a background value painted nowhere: the message names the user's value, before any training
    wrong = [*command[: -len(sparse)], "--sparse", "--background-label", "9", "--epochs", "1", "--iters-per-epoch", "1"]
    assert main([*wrong, "--out", str(tmp_path / "never.safetensors")]) == 2
    assert "background label 9 is painted nowhere" in capsys.readouterr().err
    assert not (tmp_path / "never.safetensors").exists()
