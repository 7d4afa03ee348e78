"""One image or label file: :class:`ImageFile`, reading it, and writing a label map like it.

The format-specific work happens in the format's record (:mod:`.formats`); this module checks what all
formats share: that the file exists, that a decoder's failure becomes an InputError naming the file, that
labels are whole numbers >= 0 of the image's spatial shape, and that writes are atomic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_path
from ..errors import InputError
from ..layout import ImageLayout, channels_last_axis
from .formats import format_for, get_format


@dataclass
class ImageFile:
    """An image or label array as read from a file, with what is needed to write a result like it.

    data: the array in the file's axis order (see ``engine/io/__init__.py``).
    spacing: physical size of a pixel per spatial axis, in array order (channel axis left out), or None.
    unit: unit of ``spacing`` ("mm", "um", "cm", "inch", "m") or None when unknown.
    affine: NIfTI voxel-to-world (4, 4) matrix, else None.
    format: the name of a registered :class:`~.formats.Format` ("tiff", "png", "jpeg", "nifti", "npy").
    channel_axis: the axis holding channels/colour samples, or None for a single-channel image.
    metadata: format details the writer reuses (TIFF "imagej", "resolutionunit", "axes"; NIfTI
      "header") and "alpha_dropped" when an RGBA image was read as RGB.
    """

    data: np.ndarray
    format: str
    path: Path | None = None
    spacing: tuple[float, ...] | None = None
    unit: str | None = None
    affine: np.ndarray | None = None
    channel_axis: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def layout(self) -> ImageLayout:
        """The roles of ``data``'s axes: the channel axis as read, and for a 3D image the slice axis of its
        format (the first spatial axis of a (Z, Y, X) stack, the last of NIfTI's (X, Y, Z)).

        InputError for an image that is neither 2D nor 3D once its channel axis is left out.
        """
        return ImageLayout.from_axes(
            self.data.shape, channel=self.channel_axis, slice_dim=get_format(self.format).slice_dim
        )

    @property
    def spatial_axes(self) -> tuple[int, ...]:
        """The axes of ``data`` other than the channel axis.

        Defined for any number of axes, unlike :attr:`layout`: a 4D label map (a napari (T, Z, Y, X) layer
        saved as TIFF) has spatial axes too, though no network input is 4D.
        """
        channel = None if self.channel_axis is None else self.channel_axis % self.data.ndim
        return tuple(a for a in range(self.data.ndim) if a != channel)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """The shape without the channel axis: what a label map for this image has."""
        return tuple(self.data.shape[a] for a in self.spatial_axes)

    @property
    def slice_axis(self) -> int | None:
        """The axis of ``data`` that 2D slices of a 3D image are stacked along (None for 2D images):
        :attr:`layout`'s ``slice``, an axis of ``data`` (InputError for more than 3 spatial axes)."""
        return None if len(self.spatial_axes) < 3 else self.layout.slice


def _guessed_channels(data: np.ndarray, metadata: dict[str, Any]) -> tuple[np.ndarray, int | None]:
    """``data`` and its :func:`~..layout.channels_last_axis`, for files that do not name their axes; 4
    guessed channels are RGBA, whose alpha is dropped (``metadata["alpha_dropped"]``) as prediction drops it."""
    channel_axis = channels_last_axis(data.shape)
    if channel_axis is not None and data.shape[-1] == 4:
        data = data[..., :3]
        metadata["alpha_dropped"] = True
    return data, channel_axis


def read_image(path: str | Path) -> ImageFile:
    """Read one image or label file of a registered format with its spacing and metadata.

    Raises InputError for a missing file, an unsupported extension or a file that cannot be decoded.
    Alpha channels of PNG/JPEG and RGBA TIFF images are dropped (``metadata["alpha_dropped"]``): they
    carry no image content.
    """
    path = Path(path)
    fmt = format_for(path)
    if not (path.is_dir() if fmt.directory else path.is_file()):
        raise InputError(f"{path}: no such {'store' if fmt.directory else 'file'}; check the path")
    try:
        image = fmt.read(path)
    except (InputError, MemoryError):
        raise
    except Exception as err:  # every decoder has its own exception types; all mean "not a valid file"
        raise InputError(
            f"{path}: cannot read it as {fmt.title} ({type(err).__name__}: {err}); "
            "the file is damaged or not what its extension says"
        ) from err
    image.path = path
    return image


def read_labels(path: str | Path) -> ImageFile:
    """Read a label map (ground truth, a prediction): one whole number >= 0 per pixel.

    Palette PNGs (PASCAL VOC style masks) give their palette indices, not colours; a file whose colour
    channels are all equal gives one of them; ``data`` is uint8/uint16/uint32 (:func:`as_label_array`).
    Raises InputError for files with distinct channels or with negative or fractional values.
    """
    image = read_image(path)
    palette_indices = get_format(image.format).palette_indices
    if palette_indices is not None:
        indices = palette_indices(image.path)
        if indices is not None:
            image.data, image.channel_axis = indices, None
    if image.channel_axis is not None:
        channels = np.moveaxis(image.data, image.channel_axis, 0)
        if not all(np.array_equal(channels[0], other) for other in channels[1:]):
            raise InputError(
                f"{image.path}: has {len(channels)} different channels; a label map holds one "
                "class value per pixel (save it as a single-channel or palette image)"
            )
        image.data, image.channel_axis = channels[0], None
    try:
        image.data = as_label_array(image.data)
    except InputError as err:
        raise InputError(f"{image.path}: {err}") from err
    return image


def as_label_array(labels) -> np.ndarray:
    """Labels as the smallest unsigned type that holds them (uint8, else uint16, else uint32).

    Raises InputError for non-integer or negative values.
    """
    labels = np.asarray(labels)
    if labels.dtype.kind == "b":
        return labels.astype(np.uint8)
    if labels.dtype.kind == "f":
        if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
            raise InputError(
                "labels must be whole numbers; these are fractional (probabilities?): take the argmax first"
            )
    elif labels.dtype.kind not in "iu":
        raise InputError(f"labels must be integers, not {labels.dtype}")
    low, high = (labels.min(), labels.max()) if labels.size else (0, 0)
    if low < 0:
        raise InputError(f"labels must be >= 0, found {low}")
    for dtype in (np.uint8, np.uint16, np.uint32):
        if high <= np.iinfo(dtype).max:
            return labels.astype(dtype, copy=False)
    raise InputError(f"label value {high} is too large (at most {np.iinfo(np.uint32).max})")


def write_labels(path: str | Path, labels, like: ImageFile | None = None) -> Path:
    """Write a label map atomically in the format of ``path``'s extension; return the path.

    labels: integer array with ``like``'s spatial shape; stored as uint8 when the values fit, else
    uint16 (uint32 beyond). ``like``: the image the labels belong to; its spacing, unit and format
    metadata are kept: TIFF resolution, unit, z spacing and ImageJ layout; NIfTI header, affine and
    zooms (exactly). What a format cannot hold is refused by its ``can_hold``: PNG takes 2D labels <= 255
    only, NIfTI 2D or 3D, JPEG none (lossy).
    """
    path = Path(path)
    fmt = format_for(path)
    labels = as_label_array(labels)
    if labels.ndim < 2:
        raise InputError(f"labels must be 2D or more, not of shape {labels.shape}")
    if like is not None and labels.shape != like.spatial_shape:
        raise InputError(
            f"labels of shape {labels.shape} do not fit the image {like.path or ''} of spatial shape "
            f"{like.spatial_shape}"
        )
    reason = fmt.can_hold(labels)
    if reason is None and fmt.write is None:
        reason = f"{fmt.title} files cannot hold labels; write them as .tif"
    if reason is not None:
        raise InputError(f"{path.name}: {reason}")
    if fmt.directory:  # a store folder: its writer replaces it atomically itself
        fmt.write(path, labels, like)
        return path
    with atomic_path(path) as tmp:
        fmt.write(tmp, labels, like)
    return path
