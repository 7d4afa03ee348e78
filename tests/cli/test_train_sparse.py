"""``dinounet train --sparse --background-label B``: training on scribble files, and its argument checks."""

from __future__ import annotations

import numpy as np
import pytest

from napari_dinounet.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread", "quiet_random_backbone")

TINY = ["--backbone", "random:tiny", "--size", "tiny", "--patch", "64", "--batch", "2", "--device", "cpu", "--quiet"]


def _write_scribbles(root):
    import tifffile

    from napari_dinounet.engine.bundled_data import load_nuclei
    from napari_dinounet.engine.sparse import simulated_scribbles

    image, instances = load_nuclei()
    images, labels = root / "images", root / "labels"
    images.mkdir()
    labels.mkdir()
    for i in range(2):
        cols = slice(128 * i, 128 * (i + 1))
        tifffile.imwrite(images / f"crop{i}.tif", image[:128, cols])
        strokes = simulated_scribbles((instances[:128, cols] > 0).astype(np.int64), 7, seed=i)
        tifffile.imwrite(labels / f"crop{i}.tif", strokes.astype(np.uint8))
    return images, labels


def test_sparse_training_on_scribble_files_says_its_validation_is_on_painted_pixels(tmp_path, capsys):
    from napari_dinounet.engine.checkpoint import read_metadata

    images, labels = _write_scribbles(tmp_path)
    out = tmp_path / "heads.safetensors"
    data = ["--images", str(images), "--labels", str(labels), "--out", str(out)]
    steps = ["--epochs", "1", "--iters-per-epoch", "3"]
    assert main(["train", *TINY, *data, *steps, "--sparse", "--background-label", "7"]) == 0
    meta = read_metadata(out)
    assert meta.class_names == ["background", "class 1"]  # 7 became background, class 0
    assert meta.training["history"][-1]["val_scope"] == "painted"
    assert "on the painted pixels only" in capsys.readouterr().out
    # without --sparse the same files are refused: 0, 1, 7 has gaps
    assert main(["train", *TINY, *data, *steps, "--overwrite"]) == 2
    assert "without gaps" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--sparse"], "go together"),
        (["--background-label", "2"], "go together"),
        (["--sparse", "--background-label", "3"], "painted nowhere"),
        (["--sparse", "--background-label", "0"], "0 means 'not painted'"),
    ],
)
def test_sparse_arguments_are_checked(tmp_path, capsys, extra, message):
    images, labels = _write_scribbles(tmp_path)
    args = ["train", *TINY, "--images", str(images), "--labels", str(labels), "--out", str(tmp_path / "o.safetensors")]
    assert main([*args, *extra]) == 2
    assert message in capsys.readouterr().err
