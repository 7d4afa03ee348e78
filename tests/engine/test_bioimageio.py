"""bioimage.io export: the package passes bioimageio.core's model test, predicts what our predict predicts on
its test tensor, and `dinounet predict --model` reads it back (the CLI's export-bioimageio writes it)."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import tifffile
from _widget_helpers import write_tiny_heads

from napari_dinounet.cli import main
from napari_dinounet.engine.errors import InputError
from napari_dinounet.engine.progress import drain

pytest.importorskip("bioimageio.core", reason='the bioimageio extra: pip install "napari-dinounet[bioimageio]"')
pytestmark = pytest.mark.usefixtures("one_torch_thread", "quiet_random_backbone")


def _usable() -> str | None:
    from napari_dinounet.engine.bioimageio import check_environment

    try:
        check_environment()
    except InputError as err:
        return str(err)
    return None


@pytest.mark.skipif(_usable() is not None, reason=f"bioimageio unusable here: {_usable()}")
def test_exported_package_passes_the_zoo_test_and_predicts_what_we_predict(tmp_path, capsys):
    from bioimageio.core import load_description, predict, test_model

    from napari_dinounet.engine.bundled_data import load_nuclei
    from napari_dinounet.engine.predictor import Predictor

    heads = write_tiny_heads(tmp_path / "heads.safetensors")
    package = tmp_path / "model.zip"
    args = ["export-bioimageio", "--heads", str(heads), "--backbone", "random:tiny", "--out", str(package)]
    assert main(args) == 0
    with zipfile.ZipFile(package) as archive:
        names = set(archive.namelist())
        assert {"weights.pt", "test_input.npy", "test_output.npy", "cover.png", "LICENSE.md", "README.md"} <= names
        assert "DINOv3 License Agreement" in archive.read("LICENSE.md").decode()
        raw = np.load(archive.open("test_input.npy"))

    summary = test_model(str(package))
    assert summary.status == "passed", summary.format()

    # the zoo's run on the test tensor gives our labels
    ours = Predictor.from_checkpoint(heads, "random:tiny", device="cpu")
    (expected,) = drain(ours.predict(raw[0, 0]))
    assert raw.shape == (1, 1, 64, 64) and len(np.unique(expected)) == 2
    zoo = predict(model=load_description(str(package)), inputs={"raw": raw})
    probabilities = zoo.members["probabilities"].data.to_numpy()
    np.testing.assert_array_equal(probabilities[0].argmax(axis=0), expected)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)

    # dinounet predict --model: the package loaded back predicts files as the heads do
    image = load_nuclei()[0][:96, :128]
    tifffile.imwrite(tmp_path / "cells.tif", image)
    assert main(["predict", "--model", str(package), str(tmp_path / "cells.tif"), "--out", str(tmp_path / "out")]) == 0
    (reference,) = drain(ours.predict(image))
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / "cells.tif"), reference)
    # an existing package is never replaced unasked
    assert main(args) == 2 and "exists already" in capsys.readouterr().err
