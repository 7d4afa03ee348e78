"""The tiler (engine/tiling.py): tile placement, the importance map, the open-row memory bound, and the logit
rows it hands to outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_dinounet.engine import normalize
from napari_dinounet.engine.layout import infer_layout
from napari_dinounet.engine.outputs import Output
from napari_dinounet.engine.predict import sliding_window
from napari_dinounet.engine.progress import drain
from napari_dinounet.engine.tiling import AxisView, Blending, OpenRows, Tiler, gaussian_importance, tile_starts

IDENTITY = normalize.Normalization("ct", clip=(-1e9, 1e9), mean=0.0, std=1.0)
SUMS = Blending(normalized=False)  # the cheapest blend, what Labels asks for


class Constant(torch.nn.Module):
    """The same logits everywhere; counts the tiles it is given."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.tensor(logits, dtype=torch.float32))
        self.tiles = 0

    def forward(self, x):
        self.tiles += x.shape[0]
        return self.logits.view(1, -1, 1, 1).expand(x.shape[0], -1, *x.shape[2:])


class Bands(Output):
    """Records every band handed out: (slice, rows, the tiles the model had run by then, the logit rows)."""

    def __init__(self, model, blending: Blending = SUMS):
        self.model, self.blending, self.bands = model, blending, []

    def start(self, layout):
        self.bands = []

    def write(self, slice_index, rows, logits):
        self.bands.append((slice_index, rows, self.model.tiles, logits))

    def finish(self):
        return self.bands


def test_tile_starts_cover_the_image_like_monai():
    assert tile_starts(333, 128, 0.5) == [0, 64, 128, 192, 205]
    assert tile_starts(128, 128, 0.5) == [0]
    assert tile_starts(100, 128, 0.5) == [0]
    assert tile_starts(1024, 512, 1.0) == [0, 512]


def test_importance_map_is_a_gaussian_of_sigma_tile_over_8():
    weights = gaussian_importance((64, 96))
    assert weights.shape == (64, 96) and weights.dtype == np.float32
    rows, cols = np.arange(64) - 31.5, np.arange(96) - 47.5
    expected = np.exp(-(rows[:, None] ** 2) / (2 * 8.0**2) - cols[None, :] ** 2 / (2 * 12.0**2))
    np.testing.assert_allclose(weights, np.maximum(expected, 1e-3), rtol=1e-6)
    assert weights[0, 0] == pytest.approx(1e-3)  # corners are floored
    assert weights[31, 47] == weights.max() > 0.99


def test_open_rows_hold_only_the_rows_tiles_still_overlap():
    """The memory bound itself: after each row of tiles is added and its final rows taken, the sums cover
    one tile height at most while a row of tiles is added, and only the overlap with the next row afterwards."""
    importance = torch.from_numpy(gaussian_importance((64, 64)))
    rows = OpenRows(120, importance, weights=True)
    ys, xs = tile_starts(600, 64, 0.5), tile_starts(120, 64, 0.5)
    held, before = [], []
    for number, y in enumerate(ys):
        for x in xs:
            rows.add(torch.ones(3, 64, 64), y, x)
        before.append(rows.sums.shape[1])
        until = ys[number + 1] if number + 1 < len(ys) else 600
        final = rows.take(until)
        assert final.shape[0] == 4 and final.shape[2] == 120  # 3 planes + the summed weights
        held.append(rows.sums.shape[1])
        assert rows.top == until
    assert max(before) == 64  # one tile height while a row of tiles is added
    assert max(held) < 64 and rows.sums.shape[1] == 0  # then only the overlap with the next row stays


def test_rows_are_handed_out_as_soon_as_the_tiles_have_passed_them():
    """Through the public seam (a recording output): a band comes out once the tiles above it ran, so the
    rows held open never exceed one tile height plus the part of a batch spilling into the next row."""
    model = Constant([0.0, 1.0])
    bands = drain(
        sliding_window(
            model,
            np.zeros((600, 120), np.float32),
            infer_layout((600, 120)),
            [Bands(model)],
            patch_size=64,
            batch_size=4,
            normalization=IDENTITY,
        )
    )[0]
    ys, xs = tile_starts(600, 64, 0.5), tile_starts(120, 64, 0.5)  # 18 rows of 3 tiles
    assert [rows.start for _, rows, _, _ in bands] == [0] + [rows.stop for _, rows, _, _ in bands[:-1]]
    assert bands[-1][1].stop == 600
    for _, rows, tiles, _ in bands:
        lowest = ys[(tiles - 1) // len(xs)] + 64  # the bottom of the last tile run
        assert lowest - rows.start <= 64 + 32
    assert len(bands) > 10  # the rows went out in many bands while the tiles ran


def test_logit_rows_are_the_weighted_sums_or_the_weighted_mean_as_asked():
    logits = [0.25, -1.5, 2.0]
    img = np.zeros((150, 170), np.float32)
    for normalized in (False, True):
        model = Constant(logits)
        output = Bands(model, Blending(normalized=normalized))
        (bands,) = drain(
            sliding_window(model, img, infer_layout(img.shape), [output], patch_size=64, normalization=IDENTITY)
        )
        blended = torch.cat([band[3].logits for band in bands], dim=1)
        assert blended.shape == (3, 150, 170) and blended.dtype == torch.float32
        assert all(band[3].normalized == normalized and band[3].per_mirror is None for band in bands)
        expected = torch.tensor(logits).view(3, 1, 1)
        if normalized:
            torch.testing.assert_close(blended, expected.expand_as(blended), atol=1e-6, rtol=0)
        else:  # each pixel scaled by its summed weight, which is positive: the same order of classes
            weight = blended[0] / logits[0]
            assert (weight > 0).all() and weight.max() > 1  # overlapping tiles added up
            torch.testing.assert_close(blended, expected * weight, rtol=1e-5, atol=0)


def test_per_mirror_logits_come_in_mirror_order_and_average_to_the_logits():
    torch.manual_seed(0)
    model = torch.nn.Conv2d(1, 2, 3, padding=1).eval()
    img = np.random.default_rng(0).normal(size=(1, 64, 64)).astype(np.float32)
    plane = AxisView(img, (0, 1, 2))
    tiler = Tiler(
        model,
        device=torch.device("cpu"),
        tile=(64, 64),
        step=0.5,
        batch_size=1,
        mirror=True,
        normalization=IDENTITY,
        statistics=(np.zeros(1), np.ones(1)),
        blending=Blending(per_mirror=True),
    )
    ((tiles, rows, logits),) = list(tiler.plane(plane))
    assert tiles == 1 and rows == slice(0, 64) and logits.per_mirror.shape == (4, 2, 64, 64)
    x = torch.from_numpy(img)[None]
    with torch.no_grad():
        for mirrored, dims in zip(logits.per_mirror, ([], [-1], [-2], [-2, -1])):
            torch.testing.assert_close(mirrored, model(x.flip(dims)).flip(dims)[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(logits.per_mirror.mean(0), logits.logits, atol=1e-6, rtol=0)
