"""Multiscale images: a dask level is segmented one band at a time, and its labels land on level 0."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from _widget_helpers import write_tiny_heads

from napari_dinounet.engine import multiscale, normalize
from napari_dinounet.engine.progress import drain

da = pytest.importorskip("dask.array")
pytestmark = pytest.mark.usefixtures("one_torch_thread", "quiet_random_backbone")
TILE = 64


def lazy_level(height: int, width: int, reads: list) -> object:
    """A dask float32 (height, width) level computed chunk by chunk (squares of two brightnesses plus a
    ramp), recording each chunk's rows in ``reads``; nothing exists until a part is read."""

    def chunk(block_info=None):
        (y0, y1), (x0, x1) = block_info[None]["array-location"]
        reads.append((y0, y1))
        yy = np.arange(y0, y1, dtype=np.float32)[:, None]
        xx = np.arange(x0, x1, dtype=np.float32)[None, :]
        return (((yy // 96 + xx // 96) % 2) * 800 + (yy + xx) % 50).astype(np.float32)

    return da.map_blocks(chunk, chunks=((32,) * (height // 32), (width,)), dtype=np.float32)


def _segment_measured(predictor, level):
    """(labels, peak bytes NumPy and dask held while ``predictor`` segmented ``level``)."""
    tracemalloc.start()
    try:
        (labels,) = drain(predictor.predict(level, step=1.0))
        return labels, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_dask_level_is_read_one_band_at_a_time(tmp_path, monkeypatch):
    from napari_dinounet.engine.predictor import Predictor

    heads = write_tiny_heads(tmp_path / "heads.safetensors", patch_size=TILE)
    predictor = Predictor.from_checkpoint(heads, "random:tiny", device="cpu")
    width = 512
    # statistics read blocks of _BLOCK_ELEMENTS values (16 MB as float32: a 4096-wide band of 1024 rows);
    # here one tile band, so that these small levels show the bound large ones have
    monkeypatch.setattr(normalize, "_BLOCK_ELEMENTS", TILE * width)
    above_labels = {}
    for height in (128, 384):
        reads: list = []
        level = lazy_level(height, width, reads)
        labels, peak = _segment_measured(predictor, level)
        # every chunk was read once for the statistics and once for its band, nothing more
        assert sorted(reads) == sorted([(y, y + 32) for y in range(0, height, 32)] * 2)
        above_labels[height] = peak - labels.nbytes
    (expected,) = drain(predictor.predict(np.asarray(level), step=1.0))
    np.testing.assert_array_equal(labels, expected)
    assert len(np.unique(labels)) == 2
    # beyond the labels, memory is a few bands, whatever the level's height: 3x the rows, the same peak
    band_bytes = TILE * width * 4  # one tile band as float32
    assert above_labels[384] < 1.1 * above_labels[128] + band_bytes / 4, above_labels
    assert above_labels[384] < 8 * band_bytes, above_labels  # measured: about 6 (float64 statistics blocks)


def test_level_geometry_puts_a_level_on_level_zero():
    shapes = [(1, 301, 400), (1, 151, 200), (1, 76, 100)]
    factors = multiscale.level_factors(shapes)
    assert factors[0] == (1.0, 1.0, 1.0) and factors[2] == (1.0, 301 / 76, 4.0)
    scale, translate = multiscale.level_geometry((2.0, 0.5, 0.25), (0.0, 10.0, -4.0), factors[1])
    assert scale == pytest.approx((2.0, 0.5 * 301 / 151, 0.5)) and translate == (0.0, 10.0, -4.0)
    # napari draws level 1's pixel 10 at level-0 pixel 10 * factor: the labels' world point is the image's
    assert translate[2] + 10 * scale[2] == -4.0 + (10 * 2.0) * 0.25


def test_the_default_level_is_the_finest_that_fits_the_budget():
    planes = [(16384, 16384), (8192, 8192), (4096, 4096), (2048, 2048)]
    tiles = [multiscale.plane_tiles(h, w, 512, 0.5) for h, w in planes]
    assert tiles == [63 * 63, 31 * 31, 15 * 15, 7 * 7]
    assert multiscale.default_level(planes, 512, 0.5, budget_s=60, seconds_per_tile=0.2) == 2  # 225 tiles: 45 s
    assert multiscale.default_level(planes, 512, 0.5, budget_s=60, seconds_per_tile=0.02) == 1  # 961: 19 s
    assert multiscale.default_level(planes, 512, 0.5, budget_s=1, seconds_per_tile=1.0) == 3  # none fits: coarsest
    assert multiscale.default_level(planes, 512, 0.5) == 3  # the CPU table, ViT-S: 0.44 s per tile, 21 s


def test_the_visible_region_of_a_level_is_predicted_as_the_whole_level_is(tmp_path):
    from napari_dinounet.engine.predictor import Predictor

    heads = write_tiny_heads(tmp_path / "heads.safetensors", patch_size=TILE)
    predictor = Predictor.from_checkpoint(heads, "random:tiny", device="cpu")
    reads: list = []
    level0_shape, level1 = (512, 768), lazy_level(256, 384, reads)
    factors = multiscale.level_factors([level0_shape, level1.shape])[1]
    # what a viewer shows, in level-0 pixels: rows 101.5-300, columns 40-250.2
    region = multiscale.region_at_level(((101.5, 300.0), (40.0, 250.2)), factors, level1.shape)
    assert region == ((50, 150), (20, 126))
    (part,) = drain(predictor.predict(level1, region=region, step=1.0))
    (whole,) = drain(predictor.predict(np.asarray(level1), step=1.0))
    np.testing.assert_array_equal(part, whole[50:150, 20:126])
    with pytest.raises(multiscale.InputError, match="outside the image"):
        multiscale.region_at_level(((600.0, 700.0), (0.0, 10.0)), factors, level1.shape)
