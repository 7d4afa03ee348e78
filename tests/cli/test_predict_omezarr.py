"""``dinounet predict x.ome.zarr``: a chosen level in, an OME-Zarr label store out, read back with ome-zarr."""

from __future__ import annotations

import numpy as np
import pytest
from _widget_helpers import write_tiny_heads

from napari_dinounet.cli import main
from napari_dinounet.engine.progress import drain

pytest.importorskip("ome_zarr", reason='the ome-zarr extra: pip install "napari-dinounet[ome-zarr]"')
pytestmark = pytest.mark.usefixtures("one_torch_thread", "quiet_random_backbone")


def _write_image(path, image):
    """``image`` (c, y, x) as an OME-Zarr image with 3 levels, 0.5 um pixels at level 0, written by ome-zarr."""
    import zarr
    from ome_zarr.writer import write_image

    axes = [{"name": "c", "type": "channel"}] + [{"name": n, "type": "space", "unit": "micrometer"} for n in "yx"]
    write_image(
        image, zarr.open_group(str(path), mode="w"), axes=axes, scale_factors=(2, 4), scale={"y": 0.5, "x": 0.5}
    )


def _read_back(path):
    """(specs, levels, per-level transforms) of the first node ome-zarr's reader (napari-ome-zarr's) finds."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    node = list(Reader(parse_url(str(path)))())[0]
    specs = {type(spec).__name__ for spec in node.specs}
    return specs, [np.asarray(level) for level in node.data], node.metadata["coordinateTransformations"]


def test_a_chosen_level_round_trips_as_an_ome_zarr_label_store(tmp_path):
    heads = write_tiny_heads(tmp_path / "heads.safetensors")
    image = np.random.default_rng(0).integers(0, 3000, (1, 300, 260)).astype(np.uint16)
    image[:, 100:200, 60:180] += 4000  # a bright block the random heads label differently from the rest
    _write_image(tmp_path / "cells.ome.zarr", image)
    args = ["predict", str(tmp_path / "cells.ome.zarr"), "--heads", str(heads), "--backbone", "random:tiny"]
    assert main([*args, "--out", str(tmp_path / "out"), "--level", "1", "--device", "cpu", "--quiet"]) == 0

    specs, levels, transforms = _read_back(tmp_path / "out" / "cells.ome.zarr")
    assert "Label" in specs  # napari-ome-zarr opens it as a Labels layer
    _, image_levels, image_transforms = _read_back(tmp_path / "cells.ome.zarr")
    # level 0 of the labels is the image's level 1, with its scale and translation: it lands on the image
    assert levels[0].shape == image_levels[1].shape[1:] == (150, 130)
    assert transforms[0] == [
        {"type": "scale", "scale": image_transforms[1][0]["scale"][1:]},
        {"type": "translation", "translation": image_transforms[1][1]["translation"][1:]},
    ]
    from napari_dinounet.engine.predictor import Predictor

    predictor = Predictor.from_checkpoint(heads, "random:tiny", device="cpu")
    (expected,) = drain(predictor.predict(image_levels[1], channel_axis=0))
    np.testing.assert_array_equal(levels[0], expected)
    assert len(np.unique(expected)) == 2
    # coarser levels: every second pixel, twice the scale
    assert len(levels) == 2 and levels[1].shape == (75, 65)
    np.testing.assert_array_equal(levels[1], expected[::2, ::2])
    assert transforms[1][0]["scale"] == [2 * s for s in transforms[0][0]["scale"]]


def test_a_level_the_store_does_not_have_is_refused_naming_the_levels(tmp_path, capsys):
    heads = write_tiny_heads(tmp_path / "heads.safetensors")
    _write_image(tmp_path / "cells.ome.zarr", np.zeros((1, 128, 128), np.uint16))
    args = ["predict", str(tmp_path / "cells.ome.zarr"), "--heads", str(heads), "--backbone", "random:tiny"]
    assert main([*args, "--out", str(tmp_path / "out"), "--level", "5", "--device", "cpu"]) == 2
    assert "has levels 0 to 2, not 5" in capsys.readouterr().err
    assert not (tmp_path / "out" / "cells.ome.zarr").exists()
