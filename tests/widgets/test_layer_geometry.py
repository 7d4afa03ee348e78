"""Which part of an image layer a run reads, how it goes to the engine, and where its labels go
(_widgets/_layer_geometry.py: pure NumPy, no viewer needed)."""

from __future__ import annotations

import numpy as np
import pytest
from napari.layers import Image

from napari_dinounet._widgets._layer_geometry import parse_channels, plan_run
from napari_dinounet.engine.errors import InputError
from napari_dinounet.engine.layout import ImageLayout


def test_plan_2d_keeps_geometry():
    layer = Image(np.zeros((40, 50), np.uint16), scale=(0.5, 2.0), translate=(3, 4))
    plan = plan_run(layer)
    assert plan.image.shape == (40, 50)
    assert (plan.channel_axis, plan.slice_axis, plan.target) == (None, None, ())
    assert plan.labels_shape == (40, 50)
    assert plan.scale == (0.5, 2.0) and plan.translate == (3.0, 4.0)


def test_plan_stack_whole_and_current_slice():
    data = np.arange(3 * 8 * 9).reshape(3, 8, 9)
    layer = Image(data, scale=(5, 1, 1))
    whole = plan_run(layer, whole_stack=True)
    assert whole.image.shape == (3, 8, 9) and whole.slice_axis == 0 and whole.target == ()
    current = plan_run(layer, whole_stack=False, current=(2, 0, 0))
    assert current.target == (2,) and current.slice_axis is None
    np.testing.assert_array_equal(current.image, data[2])
    # the labels of one slice go back to that slice only
    assert current.place(np.ones((8, 9), np.uint8)).shape == (8, 9)


def test_plan_two_leading_axes_become_one_stack_and_back():
    data = np.random.default_rng(0).random((2, 3, 8, 9))
    plan = plan_run(Image(data), whole_stack=True)
    assert plan.image.shape == (6, 8, 9) and plan.slice_axis == 0
    np.testing.assert_array_equal(plan.place(plan.image), data)
    labels = np.arange(2 * 3 * 8 * 9).reshape(2, 3, 8, 9)
    np.testing.assert_array_equal(plan.select(labels), labels.reshape(6, 8, 9))


def test_plan_channels_go_last_and_are_picked():
    data = np.random.default_rng(0).random((4, 5, 8, 9))  # (C, Z, Y, X)
    layer = Image(data, scale=(1, 3, 0.5, 0.5))
    plan = plan_run(layer, channel_axis=0, channels=(2, 0), whole_stack=True)
    assert plan.image.shape == (5, 8, 9, 2) and plan.channel_axis == 3 and plan.slice_axis == 0
    np.testing.assert_array_equal(plan.image[..., 0], data[2])
    np.testing.assert_array_equal(plan.image[..., 1], data[0])
    assert plan.labels_shape == (5, 8, 9) and plan.scale == (3.0, 0.5, 0.5)
    with pytest.raises(InputError, match="channels 0 to 3"):
        plan_run(layer, channel_axis=0, channels=(4,))
    with pytest.raises(InputError, match="no channel axis"):
        plan_run(layer, channels=(0,))


def test_plan_rgba_drops_alpha():
    layer = Image(np.zeros((8, 9, 4), np.uint8), rgb=True, scale=(2, 2))
    plan = plan_run(layer)
    assert plan.image.shape == (8, 9, 3) and plan.channel_axis == 2 and plan.labels_shape == (8, 9)
    assert plan.scale == (2.0, 2.0)


def test_parse_channels():
    assert parse_channels(" ") is None
    assert parse_channels("0, 2") == (0, 2)
    with pytest.raises(InputError, match="e.g. 0,2"):
        parse_channels("red")


@pytest.mark.parametrize(
    "data, kwargs, rgb",
    [
        (np.zeros((40, 50)), {}, False),
        (np.zeros((3, 8, 9)), {"whole_stack": True}, False),
        (np.zeros((2, 3, 8, 9)), {"whole_stack": True}, False),
        (np.zeros((4, 5, 8, 9)), {"channel_axis": 0, "channels": (2, 0), "whole_stack": True}, False),
        (np.zeros((4, 5, 8, 9)), {"channel_axis": 1, "whole_stack": False, "current": (1, 2, 0, 0)}, False),
        (np.zeros((8, 9, 4), np.uint8), {}, True),
        (np.zeros((3, 8, 9, 3), np.uint8), {"whole_stack": True}, True),
    ],
)
def test_the_plan_layout_is_how_the_engine_reads_what_the_plan_passes(data, kwargs, rgb):
    from napari_dinounet.engine.layout import infer_layout

    plan = plan_run(Image(data, rgb=rgb), **kwargs)
    assert isinstance(plan.layout, ImageLayout) and plan.layout.shape == plan.image.shape
    assert infer_layout(plan.image.shape, plan.channel_axis, plan.slice_axis) == plan.layout
    # the engine's output fills the labels at target plane for plane (several leading axes as one stack)
    spatial, labels_part = plan.layout.spatial_shape, plan.labels_shape[len(plan.target) :]
    assert spatial[-2:] == labels_part[-2:] and np.prod(spatial) == np.prod(labels_part)


def test_plan_carries_the_units_without_the_channel_axis():
    layer = Image(np.zeros((3, 20, 30)), scale=(1, 0.5, 0.5), units=("second", "micrometer", "micrometer"))
    assert plan_run(layer, channel_axis=0).units == ("micrometer", "micrometer")
    assert plan_run(layer).units == ("second", "micrometer", "micrometer")


def test_the_channel_axis_is_inferred_from_the_heads_channel_count():
    from napari_dinounet._widgets._layer_geometry import infer_channel_axis

    layer = Image(np.zeros((5, 2, 20, 30)))
    axis, note = infer_channel_axis(layer, 2)
    assert axis == 1 and "axis 1" in note and "2 channels" in note
    assert infer_channel_axis(layer, 1) == (None, "")  # one channel: the leading axes are a stack
    assert infer_channel_axis(layer, None) == (None, "")  # heads that do not say
    assert infer_channel_axis(Image(np.zeros((20, 30, 3)), rgb=True), 3) == (None, "")
    with pytest.raises(InputError, match="take 3 channels.*no axis of 3"):
        infer_channel_axis(layer, 3)
    with pytest.raises(InputError, match="take 2 channels"):
        infer_channel_axis(Image(np.zeros((20, 30))), 2)


def test_camera_is_the_scene_camera_where_napari_has_one_else_the_viewer_camera():
    from types import SimpleNamespace

    from napari_dinounet._widgets._layer_geometry import camera

    scene_camera, old_camera = object(), object()
    assert camera(SimpleNamespace(scene=SimpleNamespace(camera=scene_camera), camera=old_camera)) is scene_camera
    assert camera(SimpleNamespace(camera=old_camera)) is old_camera  # napari before 0.9: no scene
