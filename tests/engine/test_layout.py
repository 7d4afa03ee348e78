"""engine/layout.py: one rule for which axes hold channels, slices, rows and columns."""

import numpy as np
import pytest

from napari_dinounet.engine.errors import InputError
from napari_dinounet.engine.layout import (
    ImageLayout,
    channels_last_axis,
    infer_layout,
    layout_for_labels,
    normalize_axis,
)


@pytest.mark.parametrize(
    ("shape", "channel", "slice_", "spatial", "num_channels"),
    [
        ((20, 30), None, None, (20, 30), 1),
        ((20, 30, 3), 2, None, (20, 30), 3),  # RGB
        ((20, 30, 4), 2, None, (20, 30), 3),  # RGBA: alpha dropped
        ((20, 30, 2), 2, None, (20, 30), 2),  # two channels of a plane over 4 x 4
        ((5, 30, 40), None, 0, (5, 30, 40), 1),  # a stack
        ((5, 30, 40, 3), 3, 0, (5, 30, 40), 3),  # an RGB stack
        ((20, 3, 2), None, 0, (20, 3, 2), 1),  # slices 2 wide are not channels
    ],
)
def test_infer_layout_reads_the_axes_of_an_unlabelled_array(shape, channel, slice_, spatial, num_channels):
    layout = infer_layout(shape)
    assert (layout.channel, layout.slice, layout.spatial_shape, layout.num_channels) == (
        channel,
        slice_,
        spatial,
        num_channels,
    )
    assert layout.channels_first(np.zeros(shape)).shape == (num_channels, *spatial)


def test_a_slice_axis_makes_a_3d_image_a_stack_and_counts_spatial_axes():
    assert infer_layout((20, 30, 3)).channel == 2
    stack = infer_layout((20, 30, 3), slice_axis=2)
    assert (stack.channel, stack.slice, stack.rows, stack.cols) == (None, 2, 0, 1)
    # with channels first, slice_axis=1 is the input's axis 2
    layout = infer_layout((2, 7, 30, 40), channel_axis=0, slice_axis=1)
    assert (layout.slice, layout.slice_dim, layout.rows, layout.cols, layout.spatial_shape) == (2, 1, 1, 3, (7, 30, 40))


def test_a_named_four_channel_axis_keeps_all_four():
    assert infer_layout((20, 30, 4), channel_axis=-1).num_channels == 4
    assert infer_layout((20, 30, 4)).channels == slice(0, 3)


@pytest.mark.parametrize(
    ("shape", "kwargs", "message"),
    [
        ((0, 5), {}, "is empty"),
        ((2, 3, 4, 5, 6), {}, "cannot predict an image of shape"),
        ((20, 30), {"slice_axis": 0}, "leave slice_axis out"),
        ((20, 30, 3), {"channel_axis": 3}, "channel_axis=3 does not exist"),
        ((5, 20, 30), {"slice_axis": 3}, "slice_axis=3 does not exist"),
    ],
)
def test_infer_layout_refuses_what_it_cannot_read(shape, kwargs, message):
    with pytest.raises(InputError, match=message):
        infer_layout(shape, **kwargs)


def test_the_slice_axis_is_a_loop_variable():
    layout = ImageLayout.from_axes((6, 7, 8, 2), channel=3)
    planes = [layout.with_slice_dim(dim) for dim in range(3)]
    assert [(p.slice, p.rows, p.cols) for p in planes] == [(0, 1, 2), (1, 0, 2), (2, 0, 1)]
    assert all(p.spatial_shape == (6, 7, 8) and p.channel == 3 for p in planes)
    with pytest.raises(InputError, match="is 2D"):
        infer_layout((20, 30)).with_slice_dim(1)


def test_from_axes_guesses_nothing():
    nifti = ImageLayout.from_axes((12, 10, 6), channel=None, slice_dim=-1)  # NIfTI (X, Y, Z): slices along Z
    assert (nifti.slice, nifti.slice_dim) == (2, 2)
    assert ImageLayout.from_axes((20, 30, 3)).channel is None  # a 3-wide last axis is a slice axis here
    assert ImageLayout.from_axes((4, 20, 30), channel=0).num_channels == 4


@pytest.mark.parametrize(
    ("image", "labels", "channel_axis", "expected"),
    [
        ((20, 30), (20, 30), None, (1, 20, 30)),
        ((20, 30, 3), (20, 30), None, (3, 20, 30)),
        ((20, 30, 4), (20, 30), None, (3, 20, 30)),  # RGBA
        ((2, 20, 30), (20, 30), None, (2, 20, 30)),  # channels first
        ((4, 20, 30), (20, 30), None, (4, 20, 30)),  # four channels first are not RGBA
        ((20, 2, 30), (20, 30), 1, (2, 20, 30)),
        ((5, 20, 30, 3), (5, 20, 30), None, (3, 5, 20, 30)),
    ],
)
def test_layout_for_labels_pairs_an_image_with_its_labels(image, labels, channel_axis, expected):
    layout = layout_for_labels(image, labels, channel_axis)
    assert layout.channels_first(np.zeros(image)).shape == expected
    assert layout.spatial_shape == labels


def test_layout_for_labels_names_the_mismatch():
    with pytest.raises(InputError, match=r"cell.tif: image shape \(20, 31\) does not match labels shape \(20, 30\)"):
        layout_for_labels((20, 31), (20, 30), name="cell.tif")
    with pytest.raises(InputError, match="channel_axis=3 does not exist"):
        layout_for_labels((20, 30, 2), (20, 30), channel_axis=3)
    with pytest.raises(InputError, match="neither 2D"):
        layout_for_labels((2, 30), (30,))


def test_channels_last_axis_and_normalize_axis():
    assert channels_last_axis((2, 20, 30, 1)) == 3 and channels_last_axis((20, 3, 2)) is None
    assert channels_last_axis(()) is None and channels_last_axis((2, 3, 3)) == 2
    assert normalize_axis(-1, 3, "axis", (4, 5, 6)) == 2
    with pytest.raises(InputError, match="axis=3 does not exist in"):
        normalize_axis(3, 3, "axis", (4, 5, 6))
