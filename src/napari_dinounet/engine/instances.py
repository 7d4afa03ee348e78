"""Instance segmentation on the same heads: a boundary-aware 3-class target, decoded by seeded watershed.

Why this representation (and not StarDist's star-convex distances or Cellpose's flows): the heads stay
what they are, a U-Net decoder with a softmax over classes, trained by the same Dice + cross-entropy
loss on the same (possibly sparse, masked) patches; only the labels change. Each instance id map becomes
three classes (:func:`boundary_classes`): background, object interior, and object boundary (the object's
own pixels within ``width`` of another object or of background). Touching nuclei are then two interiors
apart by a band of boundary pixels, which a decoder learns from local evidence (the dimmer seam between
two nuclei), and no shape prior is assumed (StarDist needs star-convex objects; flows need their own
loss and a dynamics step). This is the DSB 2018 "boundary-class" approach (Caicedo et al., 2019).

Decoding (:func:`generate`) is a seeded watershed on the whole image's blended probabilities, so that
tiles never split an object: seeds are the connected components of ``interior > seed_threshold`` (of at
least ``min_seed_size`` pixels), flooded over ``1 - interior`` within the foreground
``1 - background > foreground_threshold``; objects under ``min_size`` pixels are dropped and the rest
numbered 1..N. Prediction and decoding are split as micro-sam splits ``initialize`` from ``generate``:
:class:`InstanceMapsOutput` keeps the probabilities (:class:`InstanceMaps`), and :func:`generate` re-runs
with other parameters on them without the network. :class:`Instances` does both in one prediction.

Stacks (``(Z, Y, X)`` predicted slice by slice) are decoded slice by slice too; ids are unique across
the stack.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from .errors import InputError
from .names import INSTANCE_CLASS_NAMES, INSTANCES, TASKS
from .outputs import Output, Probabilities
from .values import is_number

BACKGROUND, INTERIOR, BOUNDARY = 0, 1, 2
DEFAULT_BOUNDARY_WIDTH = 2
# the background value of the class scribbles instance scribbles become (not a class value: 0, 1, 2 are)
SCRIBBLE_BACKGROUND = len(INSTANCE_CLASS_NAMES)


def boundary_classes(instances: np.ndarray, *, width: int = DEFAULT_BOUNDARY_WIDTH, slice_axis: int = 0) -> np.ndarray:
    """The 3-class training target of an instance id map (0 background, each object its own id).

    instances: (Y, X) or a stack of non-negative integers, converted slice by slice along ``slice_axis``
    (as training cuts it). Returns uint8 of the same shape: 0 background, 1 interior,
    2 boundary, where boundary is every object pixel within ``width`` pixels (chessboard distance) of a
    pixel that is not of the same object. Two touching objects are thus separated by 2 x ``width`` boundary
    pixels; the image border is not a boundary (the object may go on outside).
    """
    from scipy import ndimage

    instances = np.asarray(instances)
    if instances.dtype.kind not in "biu" or instances.ndim not in (2, 3):
        raise InputError(
            f"instance labels must be a 2D or 3D integer array (0 background, one id per object), got "
            f"{instances.dtype} {instances.shape}"
        )
    if instances.dtype.kind == "i" and instances.size and instances.min() < 0:
        raise InputError("instance labels must not be negative: 0 is background, 1, 2, ... the objects")
    if not is_number(width) or int(width) != width or width < 1:
        raise InputError(f"boundary width={width!r} must be a whole number of pixels, at least 1")
    if instances.ndim == 3:
        planes = np.moveaxis(instances, slice_axis, 0)
        return np.moveaxis(np.stack([boundary_classes(plane, width=width) for plane in planes]), 0, slice_axis)
    ids = instances.astype(np.int64, copy=False)
    size = 2 * int(width) + 1
    # an object pixel is interior when every pixel of its (2w+1)^2 neighbourhood carries its id
    # (edge mode: the image border is no boundary): the neighbourhood's max and min are both its id
    highest = ndimage.maximum_filter(ids, size=size, mode="nearest")
    lowest = ndimage.minimum_filter(ids, size=size, mode="nearest")
    target = np.zeros(ids.shape, np.uint8)
    foreground = ids > 0
    target[foreground] = BOUNDARY
    target[foreground & (highest == ids) & (lowest == ids)] = INTERIOR
    return target


@dataclass(frozen=True)
class InstanceParams:
    """The watershed's parameters (see the module docstring); checked on construction.

    seed_threshold: interior probability a seed needs; foreground_threshold: the foreground probability
    (1 - background) a pixel needs to belong to an object; min_seed_size: pixels a seed needs (smaller
    ones are noise); min_size: pixels an object needs (smaller ones are dropped, background).
    """

    seed_threshold: float = 0.5
    foreground_threshold: float = 0.5
    min_seed_size: int = 4
    min_size: int = 16

    def __post_init__(self):
        for name in ("seed_threshold", "foreground_threshold"):
            value = getattr(self, name)
            if not is_number(value) or not 0 <= value < 1:
                raise InputError(f"{name}={value!r} must be a probability from 0 to below 1 (0.5 is usual)")
        for name in ("min_seed_size", "min_size"):
            value = getattr(self, name)
            if not is_number(value) or int(value) != value or value < 0:
                raise InputError(f"{name}={value!r} must be a whole number of pixels, 0 or more")


@dataclass(frozen=True)
class InstanceMaps:
    """What instance heads predict for an image, kept to decode again with other parameters.

    probabilities: (3, *spatial) float32, background / interior / boundary, the softmax of the whole
    image's blended logits; slice_dim: the spatial axis a stack was predicted along (None for 2D).
    """

    probabilities: np.ndarray
    slice_dim: int | None = None

    def __post_init__(self):
        shape = np.shape(self.probabilities)
        if len(shape) not in (3, 4) or shape[0] != len(INSTANCE_CLASS_NAMES):
            raise InputError(
                f"instance maps must be (3, Y, X) or (3, Z, Y, X) probabilities (background, interior, boundary), "
                f"got shape {shape}: predict them with instance heads"
            )
        if len(shape) == 4 and self.slice_dim is None:
            object.__setattr__(self, "slice_dim", 0)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.probabilities.shape[1:])


def instance_dtype(count: int) -> np.dtype:
    """uint16 for up to 65,535 objects, uint32 beyond."""
    return np.dtype(np.uint16 if count < 1 << 16 else np.uint32)


def _decode_plane(probabilities: np.ndarray, params: InstanceParams) -> np.ndarray:
    """Instance ids (Y, X) int64 numbered 1..n of one plane's (3, Y, X) probabilities."""
    from scipy import ndimage
    from skimage.segmentation import watershed

    interior = probabilities[INTERIOR]
    foreground = 1.0 - probabilities[BACKGROUND] > params.foreground_threshold
    seeds, count = ndimage.label((interior > params.seed_threshold) & foreground)
    if count and params.min_seed_size > 1:
        sizes = np.bincount(seeds.ravel(), minlength=count + 1)
        seeds[(sizes < params.min_seed_size)[seeds]] = 0
    labels = watershed(1.0 - interior, seeds, mask=foreground)
    sizes = np.bincount(labels.ravel())
    keep = sizes >= max(params.min_size, 1)
    keep[0] = False
    renumber = np.zeros(sizes.size, np.int64)
    renumber[keep] = np.arange(1, int(keep.sum()) + 1)
    return renumber[labels]


def generate(maps: InstanceMaps, params: InstanceParams | None = None, **changes) -> np.ndarray:
    """Instance labels of ``maps``: 0 background, objects 1..N, of :func:`instance_dtype`, the maps'
    spatial shape. No network runs: call it again with other parameters on the same maps.

    params: an :class:`InstanceParams`; keyword arguments replace its fields (``generate(maps,
    seed_threshold=0.7)``).
    """
    if not isinstance(maps, InstanceMaps):
        raise InputError(f"generate takes InstanceMaps (from InstanceMapsOutput), not {type(maps).__name__}")
    params = dataclasses.replace(params or InstanceParams(), **changes)
    probabilities = np.asarray(maps.probabilities, dtype=np.float32)
    if probabilities.ndim == 3:
        labels = _decode_plane(probabilities, params)
        return labels.astype(instance_dtype(int(labels.max(initial=0))), copy=False)
    labels = np.zeros(maps.spatial_shape, np.int64)
    planes = np.moveaxis(labels, maps.slice_dim, 0)  # a view: writing a plane writes labels
    offset = 0
    for index in range(planes.shape[0]):
        ids = _decode_plane(np.take(probabilities, index, axis=maps.slice_dim + 1), params)
        ids[ids > 0] += offset
        planes[index] = ids
        offset = max(offset, int(ids.max(initial=0)))
    return labels.astype(instance_dtype(offset), copy=False)


class InstanceMapsOutput(Probabilities):
    """An output (:mod:`.outputs`) that returns :class:`InstanceMaps`: the class probabilities of
    instance heads, whole-image blended, to decode with :func:`generate` (as often as needed)."""

    name = "instance maps"

    def start(self, layout) -> None:
        super().start(layout)
        self._slice_dim = layout.slice_dim

    def finish(self) -> InstanceMaps:
        return InstanceMaps(super().finish(), self._slice_dim)


class Instances(Output):
    """An output that returns instance labels (:func:`generate` with ``params`` on the maps of
    :class:`InstanceMapsOutput`), decoded once every tile is blended, so no tile border splits an object.

    params: an :class:`InstanceParams`, or its fields as keywords.
    """

    def __init__(self, params: InstanceParams | None = None, **changes):
        self.params = dataclasses.replace(params or InstanceParams(), **changes)
        self.maps = InstanceMapsOutput()
        self.blending = self.maps.blending

    def start(self, layout) -> None:
        self.maps.start(layout)

    def write(self, slice_index, rows, logits) -> None:
        self.maps.write(slice_index, rows, logits)

    def finish(self) -> np.ndarray:
        return generate(self.maps.finish(), self.params)

    def close(self) -> None:
        self.maps.close()


def check_task(task: str, num_classes: int) -> None:
    """An InputError unless ``task`` is one of :data:`TASKS` and heads of ``num_classes`` classes can do it
    (instance heads have the three classes)."""
    if task not in TASKS:
        raise InputError(f"task={task!r} must be one of {', '.join(TASKS)}")
    if task == INSTANCES and num_classes != len(INSTANCE_CLASS_NAMES):
        raise InputError(
            f"instance heads have {len(INSTANCE_CLASS_NAMES)} classes ({', '.join(INSTANCE_CLASS_NAMES)}), "
            f"not {num_classes}: train new heads for instances"
        )


def instance_scribbles(
    instances: np.ndarray, background: int, *, width: int = DEFAULT_BOUNDARY_WIDTH, slice_axis: int = 0
) -> np.ndarray:
    """Sparse instance labels as class scribbles (:mod:`.sparse`'s convention, background value
    :data:`SCRIBBLE_BACKGROUND`): 0 not painted, ``background`` painted background, other values objects
    (each its own id, painted whole). Objects become interior and boundary (:func:`boundary_classes`: an
    object ends where its paint ends); painted background becomes ``SCRIBBLE_BACKGROUND``; the rest stays 0.
    """
    instances = np.asarray(instances)
    painted_background = instances == background
    classes = boundary_classes(np.where(painted_background, 0, instances), width=width, slice_axis=slice_axis)
    return np.where(painted_background, SCRIBBLE_BACKGROUND, classes).astype(np.uint8)


def check_painted_background(id_maps, background, names) -> int:
    """``background`` as an int, or an InputError naming the user's value: it must be a positive whole
    number painted somewhere in the instance scribbles ``id_maps`` (one name each). Checked before
    :func:`instance_scribbles`, after which B reads as :data:`SCRIBBLE_BACKGROUND`."""
    from .sparse import check_background

    background = check_background(background)
    if not any((np.asarray(ids) == background).any() for ids in id_maps):
        raise InputError(
            f"background label {background} is painted nowhere in {', '.join(list(names)[:5])}: paint some "
            f"background strokes with label {background}, or give the label you painted background with"
        )
    return background


def instance_samples(
    images,
    instances,
    *,
    masks=None,
    sparse_background: int | None = None,
    width: int = DEFAULT_BOUNDARY_WIDTH,
    **options,
) -> list:
    """Training samples (:class:`.data.Sample`) from images and their instance labels (one id per object).

    images, masks and ``options`` (names, channel_axis, slice_axis, normalization) as
    :func:`.data.samples_from_arrays` takes them; instances: one id map per image (or one array), turned
    into the 3 classes of :func:`boundary_classes`. Sparse labels: ``sparse_background=B``, the instance
    layers are scribbles (0 not painted and left out of the loss, B painted background, other values
    objects painted whole: :func:`instance_scribbles`); or a mask of the pixels that count.
    """
    from .data import _as_list, samples_from_arrays

    slice_axis = options.get("slice_axis", 0)
    id_maps = [np.asarray(ids) for ids in _as_list(instances, "instance labels")]
    if sparse_background is None:
        targets = [boundary_classes(ids, width=width, slice_axis=slice_axis) for ids in id_maps]
    else:
        names = options.get("names") or [f"image{i}" for i in range(len(id_maps))]
        background = check_painted_background(id_maps, sparse_background, names)
        targets = [instance_scribbles(ids, background, width=width, slice_axis=slice_axis) for ids in id_maps]
    return samples_from_arrays(
        images,
        targets,
        masks=masks,
        num_classes=len(INSTANCE_CLASS_NAMES),
        sparse_background=None if sparse_background is None else SCRIBBLE_BACKGROUND,
        **options,
    )


def object_features(labels: np.ndarray, image, channel_axis: int | None = None) -> dict[str, list]:
    """A table of the objects of ``labels`` (ids > 0), one row each in id order: ``index`` (the id), ``area``
    (pixels) and ``mean_intensity`` (of ``image`` over the object; channels averaged first).

    labels: instance ids (*spatial); image: the image they were predicted from, the spatial shape plus
    a channel axis ``channel_axis`` if it has one. The columns napari's Labels ``features`` take.
    """
    labels = np.asarray(labels)
    intensity = np.asarray(image, dtype=np.float64)
    if channel_axis is not None:
        intensity = intensity.mean(axis=channel_axis)
    if intensity.shape != labels.shape:
        raise InputError(f"image of spatial shape {intensity.shape} for labels of shape {labels.shape}")
    ids = labels.ravel().astype(np.int64)
    area = np.bincount(ids)
    summed = np.bincount(ids, weights=intensity.ravel(), minlength=area.size)
    present = np.flatnonzero(area)
    present = present[present > 0]
    return {
        "index": present.tolist(),
        "area": area[present].tolist(),
        "mean_intensity": (summed[present] / area[present]).tolist(),
    }
