"""Volumes: a 2D network trained on, and predicting along, all three planes of a 3D image.

A 3D image is a stack of 2D planes along any of its three spatial axes (the layout's slice axis is a loop
variable, :meth:`.layout.ImageLayout.with_slice_dim`). Along plane ``d`` the two other axes are the rows
and columns of the 2D images the network sees. Voxels are often anisotropic (5 mm slices of 1 mm pixels):
cut across the slices, such a plane would reach the network squashed. So every plane is resampled in-plane
to the finest spacing of the volume, the pixel size the network trains and predicts at (image linear,
labels and masks nearest); the plane axis itself is never resampled (slices stay where they are), and
predictions are brought back to the volume's grid.

- :func:`parse_planes`: ``"all"``, ``"axial,coronal"`` or ``"0,2"`` -> spatial axes.
- :func:`resample`, :func:`plane_shape`, :func:`resampled_affine`: the grids (pixel centres aligned, as
  ``scipy.ndimage.zoom(grid_mode=True)``), so a round trip keeps the grid and the affine.
- :func:`volume_samples`: 2D training :class:`~.data.Sample` s from a 3D image and labels, from every
  chosen plane; :func:`labelled_slices_mask`: "the slices that carry labels count".
- :func:`predict_planes`: tri-planar prediction; each plane's class probabilities are added into one
  running sum on the volume's grid (:class:`PlaneSum`), so memory holds one (nc, Z, Y, X) float32 sum,
  not one probability volume per plane; the fused labels are the argmax of the (weighted) mean.

Pure NumPy/SciPy/PyTorch.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import replace

import numpy as np
import torch
from scipy import ndimage

from .data import DEFAULT_NORMALIZATION, Sample, samples_from_arrays
from .errors import InputError
from .layout import layout_for_labels
from .names import SEMANTIC
from .normalize import Normalization
from .outputs import argmax_classes, label_dtype
from .predict import image_layout
from .progress import Progress
from .tiling import Blending, LogitRows

PLANE_NAMES = ("axial", "coronal", "sagittal")
ALL_PLANES = (0, 1, 2)
FUSIONS = ("mean", "weighted")


def plane_axis(name: str, z_axis: int = 0) -> int:
    """The spatial axis a named plane is stacked along: axial across z, coronal across y, sagittal across x.

    z_axis: where z is: 0 for (Z, Y, X) arrays (TIFF, napari stacks), 2 for NIfTI's (X, Y, Z).
    """
    if z_axis not in (0, 2):
        raise InputError(f"z_axis={z_axis}: plane names need z first (Z, Y, X) or last (X, Y, Z)")
    return {"axial": z_axis, "coronal": 1, "sagittal": 2 - z_axis}[name]


def parse_planes(text: str | Sequence, z_axis: int = 0) -> tuple[int, ...]:
    """Planes as spatial axes, sorted: ``"all"``, a comma list of names (axial, coronal, sagittal) or of
    axis numbers 0-2 (negative counts from the end), or a sequence of those. InputError naming the fix."""
    items = text.split(",") if isinstance(text, str) else list(text)
    items = [item.strip().lower() if isinstance(item, str) else item for item in items]
    if items == ["all"]:
        return ALL_PLANES
    axes = []
    for item in items:
        if isinstance(item, str) and item in PLANE_NAMES:
            axes.append(plane_axis(item, z_axis))
        elif isinstance(item, (int, np.integer)) or (isinstance(item, str) and item.lstrip("-").isdigit()):
            axis = int(item)
            if not -3 <= axis < 3:
                raise InputError(f"plane {axis} does not exist in a volume: use axes 0, 1, 2 (or -3..-1)")
            axes.append(axis % 3)
        else:
            raise InputError(
                f"unknown plane {item!r}: use 'all', names ({', '.join(PLANE_NAMES)}) or axis numbers 0-2, "
                "comma-separated (e.g. axial,coronal or 0,2)"
            )
    if not axes or len(set(axes)) != len(axes):
        raise InputError(f"planes {text!r}: give each plane once, at least one (e.g. 'all' or 'axial,coronal')")
    return tuple(sorted(axes))


def _check_spacing(spacing, ndim: int = 3) -> tuple[float, ...]:
    spacing = (1.0,) * ndim if spacing is None else tuple(float(s) for s in spacing)
    if len(spacing) != ndim or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise InputError(f"spacing {spacing} must give one positive size per axis of the {ndim}D volume")
    return spacing


def plane_shape(shape: Sequence[int], spacing, plane: int) -> tuple[int, int, int]:
    """The volume's (Z, Y, X) ``shape`` once plane ``plane``'s two in-plane axes are resampled to the
    finest spacing: each becomes round(size x spacing / finest) (at least 1); the plane axis is kept."""
    spacing = _check_spacing(spacing, len(shape))
    finest = min(spacing)
    return tuple(
        int(size) if axis == plane else max(1, round(size * step / finest))
        for axis, (size, step) in enumerate(zip(shape, spacing))
    )


def resample(array: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    """``array`` resampled to ``shape`` (its trailing axes; leading axes such as classes or channels kept):
    pixel centres aligned, the edges of the field of view kept (``ndimage.zoom(grid_mode=True)``), border
    values repeated. order 0: nearest (labels, masks, dtype kept); 1: linear (float32 out)."""
    array = np.asarray(array)
    lead = array.ndim - len(shape)
    if tuple(array.shape[lead:]) == tuple(shape):
        return array if order == 0 else array.astype(np.float32, copy=False)
    zoom = (1.0,) * lead + tuple(new / old for new, old in zip(shape, array.shape[lead:]))
    source = array if order == 0 else array.astype(np.float32, copy=False)
    out = ndimage.zoom(source, zoom, order=order, mode="nearest", grid_mode=True, prefilter=False)
    if tuple(out.shape[lead:]) != tuple(shape):  # zoom rounds its own output size: never off for these zooms
        raise AssertionError(f"resampled to {out.shape}, wanted {tuple(shape)}")
    return out


def resampled_affine(affine: np.ndarray, old_shape: Sequence[int], new_shape: Sequence[int]) -> np.ndarray:
    """The (4, 4) index-to-world matrix of ``new_shape`` when a volume of ``old_shape`` with ``affine`` is
    resampled to it by :func:`resample`: new index j sits at old index (j + 1/2) x old/new - 1/2."""
    scale = np.array([old / new for old, new in zip(old_shape, new_shape)], dtype=np.float64)
    new_to_old = np.eye(4)
    new_to_old[:3, :3] = np.diag(scale)
    new_to_old[:3, 3] = 0.5 * scale - 0.5
    return np.asarray(affine, dtype=np.float64) @ new_to_old


def labelled_slices_mask(labels: np.ndarray, slice_axis: int = 0) -> np.ndarray:
    """A bool mask of ``labels``' shape: True on the slices along ``slice_axis`` that hold any label other
    than 0, so that only the slices a user labelled count in training (the others are unknown, not
    background). InputError when no slice holds a label."""
    labels = np.asarray(labels)
    axis = slice_axis % labels.ndim
    others = tuple(a for a in range(labels.ndim) if a != axis)
    carries = np.any(labels != 0, axis=others)
    if not carries.any():
        raise InputError("no slice holds a label: paint some pixels (any class but 0) on the slices to train from")
    shape = [1] * labels.ndim
    shape[axis] = labels.shape[axis]
    return np.broadcast_to(carries.reshape(shape), labels.shape)


def volume_samples(
    image,
    labels,
    *,
    spacing=None,
    planes: Sequence[int] = ALL_PLANES,
    mask=None,
    channel_axis: int | None = None,
    normalization: Normalization = DEFAULT_NORMALIZATION,
    num_classes: int | None = None,
    name: str = "volume",
) -> list[Sample]:
    """2D training samples of a 3D ``image`` with 3D ``labels``, cut along every plane in ``planes``.

    image: (Z, Y, X), or with channels at ``channel_axis`` (as :func:`.layout.layout_for_labels` reads
    it); labels: (Z, Y, X) class indices; mask: (Z, Y, X), nonzero where the labels count (None: all);
    spacing: voxel size per spatial axis (None: isotropic). Each plane is resampled in-plane to the finest
    spacing (:func:`plane_shape`; image linear, labels and mask nearest), normalised with the statistics of
    that resampled volume (as :func:`predict_planes` normalises it) and cut into slices; slices with an
    empty mask are left out. Names are ``"<name>:axis<plane>[z=k]"``; all samples share the group ``name``.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise InputError(f"{name}: labels of shape {labels.shape} are not a volume: give (Z, Y, X) labels")
    image = np.asarray(image)
    layout = layout_for_labels(image.shape, labels.shape, channel_axis, name)
    volume = layout.channels_first(image)  # (C, Z, Y, X)
    spacing = _check_spacing(spacing)
    samples = []
    for plane in parse_planes(planes):
        shape = plane_shape(labels.shape, spacing, plane)
        plane_mask = None if mask is None else resample(np.asarray(mask) != 0, shape, 0)
        if plane_mask is not None and not plane_mask.any():
            continue
        found = samples_from_arrays(
            [resample(volume, shape, 1)],
            [resample(labels, shape, 0)],
            masks=[plane_mask],
            names=[f"{name}:axis{plane}"],
            channel_axis=0,
            slice_axis=plane,
            normalization=normalization,
            num_classes=num_classes,
        )
        samples += [replace(sample, group=name) for sample in found]
    if not samples:
        raise InputError(f"{name}: the mask marks no voxel: mark the voxels that count (nonzero)")
    return samples


class PlaneSum:
    """An :class:`~.outputs.Output` adding one plane's class probabilities, times ``weight``, into
    ``total`` (nc, Z, Y, X) float32 on the volume's grid.

    The plane's slices arrive resampled (the plane volume :func:`plane_shape` gives); each slice's
    probabilities (nc, h', w') are gathered, brought back to the volume's (h, w) (linear) and added
    when the next slice begins or the run ends: one slice is held, never the plane's whole volume.
    """

    blending = Blending(normalized=True)  # the softmax needs the weighted mean, not the sums

    def __init__(self, total: np.ndarray, plane: int, weight: float = 1.0):
        self.total = total
        self.plane = plane
        self.weight = float(weight)
        self._plane_shape: tuple[int, int] = (0, 0)
        self._slice: np.ndarray | None = None
        self._index: int | None = None

    def start(self, layout) -> None:
        if layout.slice_dim != self.plane:
            raise AssertionError(f"planes along {layout.slice_dim}, expected {self.plane}")
        self._plane_shape = tuple(n for axis, n in enumerate(layout.spatial_shape) if axis != self.plane)
        self._slice, self._index = None, None

    def write(self, slice_index: int, rows: slice, logits: LogitRows) -> None:
        if slice_index != self._index:
            self._flush()
            self._index = slice_index
        probabilities = torch.softmax(logits.logits, dim=0).cpu().numpy()  # (nc, h, w')
        if self._slice is None:
            self._slice = np.empty((probabilities.shape[0], *self._plane_shape), np.float32)
        self._slice[:, rows] = probabilities

    def _flush(self) -> None:
        if self._slice is None:
            return
        if self._slice.shape[0] != self.total.shape[0]:
            raise InputError(
                f"the model predicts {self._slice.shape[0]} classes but the fusion expected {self.total.shape[0]}"
            )
        index: list = [slice(None)] * 4
        index[1 + self.plane] = self._index
        target = self.total[tuple(index)]  # (nc, h, w): a view
        back = resample(self._slice, target.shape[1:], 1)
        target += self.weight * back
        self._slice = None

    def finish(self):
        self._flush()

    def close(self) -> None:
        self._slice = None


def _plane_weights(planes: Sequence[int], weights) -> list[float]:
    if weights is None:
        return [1.0] * len(planes)
    weights = [float(w) for w in weights]
    if len(weights) != len(planes) or not all(np.isfinite(w) and w >= 0 for w in weights) or sum(weights) <= 0:
        raise InputError(
            f"weights {weights} must be one finite number >= 0 per plane ({len(planes)}), not all 0 (e.g. 1,1,2)"
        )
    return weights


def fused_labels(total: np.ndarray) -> np.ndarray:
    """The argmax over classes of ``total`` (nc, Z, Y, X), the first class on ties: (Z, Y, X) labels,
    computed one z-slice at a time (no full-size temporary)."""
    labels = np.empty(total.shape[1:], label_dtype(total.shape[0]))
    for k in range(total.shape[1]):
        labels[k] = argmax_classes(torch.from_numpy(total[:, k]))
    return labels


def predict_planes(
    predictor,
    image,
    *,
    spacing=None,
    planes: Sequence[int] = ALL_PLANES,
    weights: Sequence[float] | None = None,
    channel_axis: int | None = None,
    probabilities: bool = False,
    **predict_options,
) -> Generator[Progress, None, np.ndarray | tuple[np.ndarray, np.ndarray]]:
    """Tri-planar prediction of a 3D ``image``: yields Progress, returns fused labels (Z, Y, X) (with
    ``probabilities``: also the fused probabilities (nc, Z, Y, X) float32).

    predictor: a :class:`~.predictor.Predictor`. image: (Z, Y, X) or with a channel axis (its channels
    must be the heads'); spacing: voxel size per spatial axis (None: isotropic); planes: spatial axes to
    predict along (:func:`parse_planes`); weights: one per plane (None: the plain mean). Each plane is
    resampled in-plane to the finest spacing, predicted slice by slice (``predict_options``: step, tile,
    mirror, batch_size, force, as :meth:`Predictor.predict` takes them) and its softmax, brought back to
    the volume's grid, added into one running sum (:class:`PlaneSum`); labels are the argmax of the sum
    (= of the weighted mean). Memory: the image, one resampled copy of it at a time (none when the voxels
    are isotropic), the sum (nc x the voxels x 4 bytes) and one slice of probabilities.
    """
    if predictor.metadata.task != SEMANTIC:  # boundary classes fused voxel by voxel are no objects
        raise InputError(
            f"{predictor.metadata.task} heads cannot be fused over planes: tri-planar prediction takes semantic "
            "heads; predict instance heads slice by slice"
        )
    planes = parse_planes(planes)
    weights = _plane_weights(planes, weights)
    layout = image_layout(image, channel_axis)
    if layout.slice is None:
        raise InputError(f"image of shape {tuple(image.shape)} is not a volume: give (Z, Y, X), channels aside")
    spatial = layout.spatial_shape
    spacing = _check_spacing(spacing)
    total = np.zeros((predictor.metadata.num_classes, *spatial), np.float32)
    volume = None  # channels first, made only when a plane needs resampling
    for number, (plane, weight) in enumerate(zip(planes, weights), start=1):
        shape = plane_shape(spatial, spacing, plane)
        if shape == tuple(spatial):
            source, source_channel = image, layout.channel
        else:
            if volume is None:
                volume = layout.channels_first(np.asarray(image))
            source, source_channel = resample(volume, shape, 1), 0
        job = predictor.predict(
            source,
            channel_axis=source_channel,
            slice_axis=plane,
            outputs=[PlaneSum(total, plane, weight)],
            **predict_options,
        )
        while True:
            try:
                event = next(job)
            except StopIteration:
                break
            yield replace(event, message=f"plane {number}/{len(planes)} (axis {plane}) {event.message}".strip())
        del source
    labels = fused_labels(total)
    if not probabilities:
        return labels
    total /= sum(weights)
    return labels, total
