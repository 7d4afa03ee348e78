"""Where to correct next (engine/next_regions.py): tiles and objects ranked by the uncertainty left
unlabelled in them, as regions the Predictor and napari's Shapes take."""

from __future__ import annotations

import numpy as np
import pytest

from napari_dinounet.engine.errors import InputError
from napari_dinounet.engine.next_regions import next_regions, object_regions, shapes_data


def test_tiles_rank_by_unlabelled_uncertainty_and_skip_labelled_pixels():
    uncertainty = np.zeros((100, 130), np.float32)
    uncertainty[10:20, 70:90] = 1.0  # tile (0, 1): 200 px, all in one tile
    uncertainty[70:100, 0:10] = 0.5  # tile (1, 0): 150 "px"
    uncertainty[64:66, 128:130] = 1.0  # the cut last column of tiles: 4 px
    regions = next_regions(uncertainty, tile=64, count=10, gap=0)
    assert [(r.rows, r.cols) for r in regions] == [((0, 64), (64, 128)), ((64, 100), (0, 64)), ((64, 100), (128, 130))]
    assert regions[0].score == pytest.approx(200 / 64**2) and regions[0].slice_index is None
    assert regions[0].bounds == ((0, 64), (64, 128)) and regions[0].centre == (32.0, 96.0)
    labelled = np.zeros(uncertainty.shape, bool)
    labelled[10:20, 70:85] = True  # most of the best tile is corrected now: it drops below the second
    again = next_regions(uncertainty, tile=64, count=2, labelled=labelled, gap=0)
    assert [r.rows for r in again] == [(64, 100), (0, 64)] and again[1].score == pytest.approx(50 / 64**2)
    assert next_regions(np.zeros((10, 10)), tile=4) == []  # nothing uncertain: nothing to suggest


def test_suggestions_spread_out_before_crowding_one_spot_of_a_slice():
    uncertainty = np.zeros((2, 40, 50), np.float32)
    uncertainty[0, :10, :20] = 1.0  # tiles (0, 0) and (0, 1) of slice 0: one uncertain spot
    uncertainty[0, 10:20, 10:20] = 0.8  # (1, 1): the spot's diagonal neighbour
    uncertainty[0, 30:40, 20:30] = 0.5  # (3, 2): two tiles away from the spot
    uncertainty[1, :10, 10:20] = 0.6  # (0, 1) of slice 1: another slice is never a neighbour

    def tiles(**kwargs):
        return [(r.slice_index, r.rows[0] // 10, r.cols[0] // 10) for r in next_regions(uncertainty, tile=10, **kwargs)]

    # the spot's neighbours come after every tile away from it, in their own order
    assert tiles(count=9) == [(0, 0, 0), (1, 0, 1), (0, 3, 2), (0, 0, 1), (0, 1, 1)]
    assert tiles(count=9, gap=3) == [(0, 0, 0), (1, 0, 1), (0, 0, 1), (0, 1, 1), (0, 3, 2)]  # (3, 2) is 3 away
    assert tiles(count=9, gap=0) == [(0, 0, 0), (0, 0, 1), (0, 1, 1), (1, 0, 1), (0, 3, 2)]  # plain ranking
    assert tiles(count=2) == [(0, 0, 0), (1, 0, 1)]


def test_stacks_rank_over_all_slices_and_become_3d_shapes():
    uncertainty = np.zeros((3, 40, 40), np.float32)
    uncertainty[2, 30:40, 0:5] = 0.9
    uncertainty[0, 0:5, 0:5] = 0.2
    first, second = next_regions(uncertainty, tile=20, count=5)
    assert (first.slice_index, first.rows, first.cols) == (2, (20, 40), (0, 20)) and second.slice_index == 0
    (shape, _) = shapes_data([first, second])
    np.testing.assert_array_equal(shape, [[2, 19.5, -0.5], [2, 19.5, 19.5], [2, 39.5, 19.5], [2, 39.5, -0.5]])
    assert shapes_data(next_regions(uncertainty[2], tile=20))[0].shape == (4, 2)


def test_objects_rank_by_their_mean_uncertainty():
    uncertainty = np.zeros((30, 30), np.float32)
    instances = np.zeros((30, 30), np.int32)
    instances[2:6, 3:9], instances[20:25, 20:28], instances[10:12, 10:12] = 4, 9, 2
    uncertainty[2:6, 3:9] = 0.3
    uncertainty[20:25, 20:28] = 0.8
    regions = object_regions(uncertainty, instances)
    assert [(r.label, r.rows, r.cols, r.kind) for r in regions] == [
        (9, (20, 25), (20, 28), "object"),
        (4, (2, 6), (3, 9), "object"),
    ]  # object 2 has no uncertainty left
    assert regions[0].score == pytest.approx(0.8)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"uncertainty": np.zeros(5)}, r"\(H, W\)"),
        ({"uncertainty": np.full((4, 4), np.nan)}, "NaN"),
        ({"uncertainty": np.zeros((4, 4)), "labelled": np.zeros((3, 4))}, "do not match"),
        ({"uncertainty": np.zeros((4, 4)), "tile": 0}, "at least 1 pixel"),
        ({"uncertainty": np.zeros((4, 4)), "gap": -1}, "not negative"),
    ],
)
def test_bad_inputs_are_refused(kwargs, message):
    with pytest.raises(InputError, match=message):
        next_regions(**kwargs)
