"""Which axes of an image hold its channels, its slices, its rows and its columns: one rule for the whole plugin.

Pure NumPy. Prediction, training data, file I/O, the CLI and the widgets' layer mapping all describe an input
array by an :class:`ImageLayout`, so the conventions below are written once:

- **Channels.** An array that says nothing about its axes has its channels in the last axis when that axis
  holds RGB(A) colours (3 or 4 entries) or one or two channels of a plane larger than 4 x 4
  (:func:`channels_last_axis`); RGBA uses only its first three (alpha carries no content, as napari shows
  it). A caller that knows better names the channel axis, counted in the input's axes.
- **Slices.** A 3D spatial image is a stack of 2D planes along one axis, counted among the *spatial* axes
  (the channel axis left out; the output's axes): 0 unless told otherwise, the last for NIfTI's (X, Y, Z).
  The slice axis is a loop variable: :meth:`ImageLayout.with_slice_dim` gives the same image cut along
  another plane (what tri-planar prediction needs).
- **Rows and columns** are the two spatial axes that are not the slice axis, in the input's order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import InputError

RGB_CHANNELS = 3  # what an RGBA image contributes: alpha carries no content


def channels_last_axis(shape: Sequence[int]) -> int | None:
    """The channel axis of an array of ``shape`` that says nothing about its axes, or None: the last axis
    of a 3D ``(Y, X, C)`` or 4D ``(Z, Y, X, C)`` shape when it holds RGB(A) colours (3 or 4 entries), or
    one or two channels of an image plane larger than 4 x 4 (a stack of slices 1 or 2 pixels wide is
    not an image anyone segments)."""
    if len(shape) not in (3, 4):
        return None
    last = shape[-1]
    if last in (3, 4) or (last <= 2 and min(shape[-3:-1]) > 4):
        return len(shape) - 1
    return None


def normalize_axis(axis: int, ndim: int, name: str, shape: Sequence[int]) -> int:
    """``axis`` as a non-negative index into ``ndim`` axes; InputError naming ``name`` when it does not exist."""
    if not -ndim <= axis < ndim:
        raise InputError(f"{name}={axis} does not exist in {tuple(shape)}: use 0 to {ndim - 1} or a negative index")
    return axis % ndim


@dataclass(frozen=True)
class ImageLayout:
    """The roles of the axes of an input array of ``shape``.

    channel: the axis holding channels (None: one channel, no axis).
    slice: the axis 2D planes are stacked along (None: a 2D image); an axis of the input, never ``channel``.
    rgba: the channel axis holds RGBA colours, of which only the first three are used.
    """

    shape: tuple[int, ...]
    channel: int | None = None
    slice: int | None = None
    rgba: bool = False

    def __post_init__(self):
        spatial = self.spatial_axes
        if len(spatial) not in (2, 3):
            raise InputError(
                f"an image of shape {self.shape} with channel axis {self.channel} has {len(spatial)} spatial axes: "
                "give a 2D image (H, W), RGB (H, W, 3), a stack (Z, H, W), RGB stacks (Z, H, W, 3), or say which "
                "axis holds the channels (channel_axis=N in Python, --channel-axis N in the CLI)"
            )
        if (self.slice is None) != (len(spatial) == 2) or (self.slice is not None and self.slice not in spatial):
            raise ValueError(f"slice axis {self.slice} does not fit the spatial axes {spatial} of {self.shape}")
        if self.rgba and (self.channel is None or self.shape[self.channel] != 4):
            raise ValueError(f"rgba needs a channel axis of 4 entries, not {self.channel} of {self.shape}")

    @classmethod
    def from_axes(
        cls, shape: Sequence[int], channel: int | None = None, slice_dim: int = 0, rgba: bool = False
    ) -> ImageLayout:
        """The layout of ``shape`` with a known channel axis (None: none) and, for 3D images, the slice axis
        counted among the spatial axes (``slice_dim``, negative counts from the end); nothing is guessed."""
        shape = tuple(int(s) for s in shape)
        if channel is not None:
            channel = normalize_axis(channel, len(shape), "channel_axis", shape)
        spatial = [axis for axis in range(len(shape)) if axis != channel]
        slice_ = None
        if len(spatial) == 3:
            slice_ = spatial[normalize_axis(slice_dim, 3, "slice_axis", tuple(shape[a] for a in spatial))]
        return cls(shape, channel, slice_, rgba)

    @property
    def spatial_axes(self) -> tuple[int, ...]:
        """The axes other than the channel axis, in the input's order: the output's axes."""
        return tuple(axis for axis in range(len(self.shape)) if axis != self.channel)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """The shape without the channel axis: what a label map of this image has."""
        return tuple(self.shape[axis] for axis in self.spatial_axes)

    @property
    def slice_dim(self) -> int | None:
        """The slice axis counted among the spatial axes (an index into ``spatial_shape``), None for 2D."""
        return None if self.slice is None else self.spatial_axes.index(self.slice)

    @property
    def rows(self) -> int:
        return self._plane_axes[0]

    @property
    def cols(self) -> int:
        return self._plane_axes[1]

    @property
    def _plane_axes(self) -> tuple[int, int]:
        rows, cols = (axis for axis in self.spatial_axes if axis != self.slice)
        return rows, cols

    @property
    def channels(self) -> slice:
        """The channels used, as an index into the channel axis: all, or the first three of RGBA."""
        return slice(0, RGB_CHANNELS) if self.rgba else slice(None)

    @property
    def num_channels(self) -> int:
        """How many channels the model gets (1 without a channel axis; 3 for RGBA)."""
        if self.channel is None:
            return 1
        return RGB_CHANNELS if self.rgba else self.shape[self.channel]

    def with_slice_dim(self, dim: int) -> ImageLayout:
        """The same image cut into planes along spatial axis ``dim`` instead (3D images only)."""
        if self.slice is None:
            raise InputError(f"the image of shape {self.shape} is 2D: it has no other plane to cut along")
        spatial = self.spatial_axes
        return ImageLayout(
            self.shape, self.channel, spatial[normalize_axis(dim, 3, "slice_axis", self.spatial_shape)], self.rgba
        )

    def channels_first(self, array) -> np.ndarray:
        """``array`` (of this layout's shape) as (C, *spatial) NumPy, RGBA trimmed to RGB, spatial axes in order."""
        array = np.asarray(array)
        if tuple(array.shape) != self.shape:
            raise ValueError(f"array of shape {array.shape} does not have this layout's shape {self.shape}")
        if self.channel is None:
            return array[None]
        return np.moveaxis(array, self.channel, 0)[self.channels]


def infer_layout(shape: Sequence[int], channel_axis: int | None = None, slice_axis: int | None = None) -> ImageLayout:
    """The layout of an image to predict: ``channel_axis`` (counted in the input's axes) if given, else the
    last axis by :func:`channels_last_axis`, except that a 3D image given a ``slice_axis`` is a stack (its last
    axis is never taken for channels); ``slice_axis`` counts the spatial axes, default 0."""
    shape = tuple(int(s) for s in shape)
    if 0 in shape:
        raise InputError(f"the image of shape {shape} is empty")
    if channel_axis is not None:
        channel = normalize_axis(channel_axis, len(shape), "channel_axis", shape)
    elif slice_axis is None or len(shape) == 4:
        channel = channels_last_axis(shape)
    else:
        channel = None
    spatial_ndim = len(shape) - (channel is not None)
    if spatial_ndim not in (2, 3):
        raise InputError(
            f"cannot predict an image of shape {shape}: give a 2D image (H, W), RGB (H, W, 3), a stack (Z, H, W), "
            "RGB stacks (Z, H, W, 3), or say which axis holds the channels (channel_axis=N in Python, "
            "--channel-axis N in the CLI)"
        )
    if spatial_ndim == 2 and slice_axis is not None:
        raise InputError(f"slice_axis={slice_axis} was given but the image {shape} is 2D: leave slice_axis out")
    rgba = channel_axis is None and channel is not None and shape[channel] == 4  # a named 4-channel axis is 4 channels
    return ImageLayout.from_axes(shape, channel, 0 if slice_axis is None else slice_axis, rgba)


def layout_for_labels(
    image_shape: Sequence[int], labels_shape: Sequence[int], channel_axis: int | None = None, name: str = "image"
) -> ImageLayout:
    """The layout of a training image whose label map has ``labels_shape``: ``channel_axis`` if given; else
    no channel axis when the shapes are equal, a last RGB(A) axis of 3 or 4, else a first axis of channels.
    The image's spatial shape must be the labels' (2D, or a stack sliced along its first axis)."""
    image_shape, labels_shape = tuple(int(s) for s in image_shape), tuple(int(s) for s in labels_shape)
    if channel_axis is not None:
        try:
            channel = normalize_axis(channel_axis, len(image_shape), "channel_axis", image_shape)
        except InputError as err:
            raise InputError(f"{name}: {err}") from None
    elif image_shape == labels_shape:
        channel = None
    elif len(image_shape) == len(labels_shape) + 1 and image_shape[-1] in (3, 4) and image_shape[:-1] == labels_shape:
        channel = len(image_shape) - 1
    elif len(image_shape) == len(labels_shape) + 1 and image_shape[1:] == labels_shape:
        channel = 0  # channels first, (C, Y, X) or (C, Z, Y, X), as nnU-Net and most readers give them
    else:
        channel = -1  # no rule fits: reported below with the shapes
    spatial = tuple(s for axis, s in enumerate(image_shape) if axis != channel) if channel != -1 else image_shape
    if channel == -1 or spatial != labels_shape:
        raise InputError(
            f"{name}: image shape {spatial} does not match labels shape {labels_shape}: give labels of the image's "
            "shape (for a multichannel image say which axis holds the channels with channel_axis)"
        )
    if len(labels_shape) not in (2, 3):
        raise InputError(f"{name}: labels of shape {labels_shape} are neither 2D (Y, X) nor a stack (Z, Y, X)")
    rgba = channel_axis is None and channel == len(image_shape) - 1 and image_shape[channel] == 4
    return ImageLayout.from_axes(image_shape, channel, 0, rgba)
