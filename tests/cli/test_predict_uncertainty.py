"""``dinounet predict --uncertainty``: a float32 uncertainty map in [0, 1] beside each prediction."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from _random_heads import random_heads

from napari_dinounet.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread", "quiet_random_backbone")


@pytest.fixture(scope="module")
def heads(tmp_path_factory, tiny_backbone):
    from napari_dinounet.engine.checkpoint import save_heads

    model, metadata = random_heads(tiny_backbone, num_classes=2)
    return save_heads(tmp_path_factory.mktemp("heads") / "heads.safetensors", model, metadata)


def test_uncertainty_is_written_beside_each_prediction_and_never_over_a_file_unasked(tmp_path, heads, capsys):
    from napari_dinounet.engine.backbone import load_backbone
    from napari_dinounet.engine.checkpoint import load_heads
    from napari_dinounet.engine.predictor import Predictor
    from napari_dinounet.engine.progress import drain
    from napari_dinounet.engine.uncertainty import Uncertainty

    inputs = tmp_path / "in"
    inputs.mkdir()
    image = np.random.default_rng(0).integers(0, 3000, (70, 90)).astype(np.uint16)
    tifffile.imwrite(inputs / "cells.tif", image)
    out = tmp_path / "out"
    args = ["predict", str(inputs), "--heads", str(heads), "--backbone", "random:tiny", "--out", str(out), "--quiet"]
    assert main([*args, "--uncertainty", "--tta"]) == 0
    written = tifffile.imread(out / "cells_uncertainty.tif")
    assert written.dtype == np.float32 and written.shape == (70, 90)
    assert written.min() >= 0 and written.max() <= 1 and written.std() > 0
    predictor = Predictor(*load_heads(heads, load_backbone("random:tiny")))
    (expected,) = drain(predictor.predict(image, mirror=True, outputs=(Uncertainty(),)))
    np.testing.assert_allclose(written, expected, atol=1e-6)
    assert f"{out / 'cells_uncertainty.tif'}" in capsys.readouterr().out
    # the labels alone exist from a run without --uncertainty: an existing uncertainty file is never replaced unasked
    before = (out / "cells_uncertainty.tif").read_bytes()
    assert main([*args, "--uncertainty"]) == 2
    assert "already exist" in capsys.readouterr().err
    assert (out / "cells_uncertainty.tif").read_bytes() == before
    assert main([*args, "--uncertainty", "--overwrite"]) == 0
    assert (out / "cells_uncertainty.tif").read_bytes() != before  # without --tta: another map
    assert sorted(p.name for p in out.iterdir()) == ["cells.tif", "cells_uncertainty.tif"]  # no temporaries left
