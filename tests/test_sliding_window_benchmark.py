"""benchmarks/sliding_window.py's shared-backbone parts: the nuclei test image, trained heads, the parts timed alone."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def sliding_window(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.delitem(sys.modules, "sliding_window", raising=False)
    import sliding_window

    monkeypatch.setenv(sliding_window.OPTIONS_VARIABLE, json.dumps({"mixing": True}))
    return sliding_window


def test_the_nuclei_image_is_the_bundled_one_mirrored_out(sliding_window):
    from napari_dinounet.engine.bundled_data import load_nuclei

    original, instances = load_nuclei()
    image, foreground = sliding_window.nuclei_image(1024)
    assert image.shape == foreground.shape == (1024, 1024) and image.dtype == original.dtype
    np.testing.assert_array_equal(image[:512, :512], original)
    np.testing.assert_array_equal(image[:512, 512:], original[:, ::-1])
    np.testing.assert_array_equal(foreground[512:, 512:], instances[::-1, ::-1] > 0)
    np.testing.assert_array_equal(sliding_window.nuclei_image(256)[0], original[:256, :256])


def test_trained_heads_are_saved_and_every_run_loads_them(sliding_window, tmp_path, monkeypatch):
    heads = tmp_path / "heads.pt"
    report = sliding_window.train_heads("dinounet-tiny", 3, heads)
    assert report["steps"] == 3 and np.isfinite(report["loss_last_10"])
    untrained = sliding_window.build_network("dinounet-tiny").heads_state_dict()
    monkeypatch.setenv(sliding_window.OPTIONS_VARIABLE, json.dumps({"mixing": True, "heads": str(heads)}))
    loaded = sliding_window.build_network("dinounet-tiny").heads_state_dict()
    saved = torch.load(heads, weights_only=True)
    assert all(torch.equal(loaded[name], saved[name]) for name in saved)
    assert not torch.equal(loaded["decoder.classifiers.2.weight"], untrained["decoder.classifiers.2.weight"])


def test_the_parts_cover_every_tile_and_window_of_the_image(sliding_window, monkeypatch):
    monkeypatch.setattr(sliding_window, "BATCH", 1)  # the per-tile figures are over the batch: one is enough
    parts = sliding_window.time_parts(sliding_window.build_network("dinounet-tiny"), 1280)
    # tiles at 0, 256, 512, 768 per axis; windows (0, 1024) and (768, 512) per axis
    assert parts["tiles"] == 16 and parts["window_count"] == 4
    assert set(parts["windows"]) == {"1024x1024", "1024x512", "512x1024", "512x512"}
    window_total = sum(parts["windows"].values())  # each shape once here
    assert parts["predicted"]["ours"] == pytest.approx(16 * (parts["backbone_per_tile"] + parts["heads_per_tile"]))
    assert parts["predicted"]["shared"] == pytest.approx(window_total + 16 * parts["heads_per_tile"])
    assert parts["bound_with_free_heads"] == pytest.approx(16 * parts["backbone_per_tile"] / window_total)
