"""Which part of an image layer a run reads, how it goes to the engine, and where its labels go.

Pure NumPy (no Qt, no torch). Napari image layers are (..., Y, X) with any number of leading axes,
one of which may hold channels; RGB(A) layers carry their colours in a last axis that is not one of
the layer's dimensions. The engine predicts 2D planes, with channels, slice by slice along one stack
axis; :func:`plan_run` reshapes a layer to that, describes it by an :class:`~..engine.layout.ImageLayout`
(the plugin's one axis rule) and says how the labels map back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..engine.errors import InputError
from ..engine.layout import ImageLayout

WHOLE_STACK, CURRENT_SLICE = "whole stack", "current slice"  # the widgets' choice for stacks


@dataclass(frozen=True)
class RunPlan:
    """What one run reads and writes.

    image: what the engine gets: (Y, X), (Y, X, C), (N, Y, X) or (N, Y, X, C) (lazy for dask input).
    layout: which axes of ``image`` hold channels and slices; :attr:`channel_axis` / :attr:`slice_axis` are
    them as the engine takes them (None when absent; the slice axis counted among the spatial axes).
    stack_shape: the leading shape the (N, Y, X) result is reshaped back to (() for one plane).
    target: the leading indices of the labels layer the result fills (() for the whole layer).
    labels_shape: the shape of the whole labels layer: the image's without its channels.
    scale / translate / units: the labels layer's, taken from the image without the channel axis (units as
    napari spells them, e.g. ``"micrometer"``; () when not known).
    """

    image: object
    layout: ImageLayout
    stack_shape: tuple[int, ...]
    target: tuple[int, ...]
    labels_shape: tuple[int, ...]
    scale: tuple[float, ...]
    translate: tuple[float, ...]
    units: tuple[str, ...] = ()

    @property
    def channel_axis(self) -> int | None:
        return self.layout.channel

    @property
    def slice_axis(self) -> int | None:
        return self.layout.slice_dim

    def place(self, labels: np.ndarray) -> np.ndarray:
        """The engine's labels, shaped as the part of the labels layer at ``target``."""
        return labels.reshape(self.stack_shape + labels.shape[-2:])

    def select(self, array) -> np.ndarray:
        """The part of a labels-shaped array (labels, a mask) that matches ``image`` plane for plane."""
        if self.target:
            return np.asarray(array[self.target])
        array = np.asarray(array)
        return array.reshape((-1,) + array.shape[-2:]) if len(self.stack_shape) > 1 else array


def parse_channels(text: str) -> tuple[int, ...] | None:
    """``"0, 2"`` -> (0, 2); empty -> None (all channels, in order)."""
    text = text.strip()
    if not text:
        return None
    try:
        return tuple(int(part) for part in text.replace(";", ",").split(",") if part.strip())
    except ValueError:
        raise InputError(f"channels {text!r} must be channel numbers separated by commas, e.g. 0,2") from None


def labels_layer_name(image_name: str) -> str:
    """Where Segment puts an image's labels, and where Fine-tune looks for the corrected ones."""
    return f"{image_name} labels"


def camera(viewer):
    """The viewer's camera: ``viewer.scene.camera`` from napari 0.9 on (where ``viewer.camera`` is deprecated),
    ``viewer.camera`` before it."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if hasattr(scene, "camera") else viewer.camera


def viewer_indices(viewer, layer) -> tuple[int, ...]:
    """The layer's data indices (one per layer axis) of the plane the viewer shows."""
    point = np.asarray(viewer.dims.point, dtype=float)[-layer.ndim :]
    return tuple(int(round(v)) for v in layer.world_to_data(point))


def channel_axis_choices(layer) -> list[int]:
    """Axes of a non-RGB layer that may hold channels: any axis but the last two (Y, X)."""
    return [] if layer.rgb else list(range(layer.ndim - 2))


def infer_channel_axis(layer, in_channels: int | None) -> tuple[int | None, str]:
    """The channel axis to use for a non-RGB ``layer`` whose user chose none, given the heads' channel count.

    Returns ``(axis, note)``: the first leading axis whose size is ``in_channels`` (and a note saying it was
    taken), or ``(None, "")`` when the heads take one channel (or say nothing), or the layer is RGB or 2D with
    one channel. Raises InputError when the heads take several channels and no axis of the layer has that
    many: predicting then would read channels as slices, or fail deep in the engine.
    """
    if layer is None or layer.rgb or not in_channels or in_channels == 1:
        return None, ""
    shape = _level0(layer).shape
    fitting = [axis for axis in channel_axis_choices(layer) if shape[axis] == in_channels]
    if fitting:
        axis = fitting[0]
        return axis, f"channel axis: axis {axis} ({in_channels} channels, as the heads were trained with)"
    larger = [axis for axis in channel_axis_choices(layer) if shape[axis] > in_channels]
    pick = (
        f"choose its Channel axis (axis {larger[0]}?) and type {in_channels} channel numbers in Channels, or "
        if larger
        else ""
    )
    raise InputError(
        f"the heads take {in_channels} channels, but {layer.name!r} (shape {tuple(shape)}) has no axis of "
        f"{in_channels}: {pick}choose heads trained on images like this one"
    )


def _level0(layer):
    return layer.data[0] if layer.multiscale else layer.data


def plan_run(
    layer,
    *,
    channel_axis: int | None = None,
    channels: tuple[int, ...] | None = None,
    whole_stack: bool = True,
    current: tuple[int, ...] = (),
) -> RunPlan:
    """Plan a run on an image layer.

    channel_axis: the layer axis that holds channels (ignored for RGB layers, whose colours are channels).
    channels: which channels feed the model, in order (None: all; RGBA drops alpha).
    whole_stack: every plane of the leading axes, else only the plane at ``current`` (the layer's data
    indices of the viewer's position, one per layer axis).
    """
    data = _level0(layer)
    ndim = layer.ndim
    if ndim < 2:
        raise InputError(f"layer {layer.name!r} is {ndim}D: segmentation needs an image with at least Y and X")
    if layer.rgb:
        data = data[..., :3]  # RGBA: the model sees RGB
        channel_axis = ndim
    elif channel_axis is not None:
        if not 0 <= channel_axis < ndim - 2:
            raise InputError(f"axis {channel_axis} of {layer.name!r} cannot hold channels: choose a leading axis")
        data = np.moveaxis(data, channel_axis, -1)  # channels last, leading axes keep their order
    layer_axes = [axis for axis in range(ndim) if axis != channel_axis]  # the labels' axes, in layer order
    has_channels = channel_axis is not None
    if has_channels and channels is not None:
        available = data.shape[-1]
        if any(not 0 <= c < available for c in channels):
            raise InputError(f"channels {channels} do not exist: {layer.name!r} has channels 0 to {available - 1}")
        data = data[..., list(channels)]
    elif channels is not None:
        raise InputError(
            f"channels were given but {layer.name!r} has no channel axis: choose one, or clear the channels"
        )

    labels_shape = tuple(data.shape[: len(layer_axes)])
    leading = labels_shape[:-2]
    if whole_stack or not leading:
        stack_shape, target = leading, ()
        # the engine takes one stack axis: several leading axes (T, Z) become one
        image = data.reshape((-1,) + data.shape[len(leading) :]) if len(leading) > 1 else data
    else:
        target = tuple(int(np.clip(current[axis], 0, size - 1)) for axis, size in zip(layer_axes, leading))
        stack_shape = ()
        image = data[target]
    scale = tuple(float(layer.scale[axis]) for axis in layer_axes)
    translate = tuple(float(layer.translate[axis]) for axis in layer_axes)
    layer_units = getattr(layer, "units", None)
    units = tuple(str(layer_units[axis]) for axis in layer_axes) if layer_units is not None else ()
    return RunPlan(
        image=image,
        layout=ImageLayout.from_axes(image.shape, image.ndim - 1 if has_channels else None, slice_dim=0),
        stack_shape=stack_shape,
        target=target,
        labels_shape=labels_shape,
        scale=scale,
        translate=translate,
        units=units,
    )
