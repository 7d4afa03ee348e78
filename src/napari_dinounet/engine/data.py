"""Training data: 2D samples from memory or disk, train/validation splits, patch sampling.

Everything trains on 2D :class:`Sample` s: a stack ``(Z, Y, X)`` becomes one sample per slice, and the
slices of one stack (or one nnU-Net case) share a ``group`` so that a split never puts neighbouring
slices of one volume on both sides. Images are normalised once, when the samples are built, with
statistics of the whole image or stack (``engine/normalize.py``), so a slice is normalised exactly like
the stack it came from.

Partial labels: a sample may carry a ``mask`` of the pixels that count. Foreground patches are centred
inside it, and it travels with every batch (``batch["mask"]``) so the loss can ignore the rest. Padding
(images smaller than the patch, pixels moved in from outside by augmentation) is also ``mask == False``.

Sparse labels (scribbles, ``sparse_background=B``): 0 is "not painted" and left out through the mask, B
becomes class 0, other painted values stay their class (:mod:`.sparse`); such samples say ``sparse``, so
that a validation on them is reported as what it is, a score on the painted pixels only.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from . import io, normalize
from .errors import InputError
from .layout import layout_for_labels
from .normalize import Normalization
from .sparse import check_scribbles, scribble_class_map

DEFAULT_NORMALIZATION = Normalization()  # frozen: one shared default is safe
MAX_LOCATIONS = 10_000  # pixels remembered per class (and per mask) and sample, as nnU-Net does
# Foreground values that look like instance ids (one per object), not classes: more than
# MAX_INFERRED_CLASSES (semantic label maps rarely have that many classes, and giving the count costs
# little), or at least MIN_SPARSE_IDS with gaps between them (crops of instance maps: e.g. 7, 50, 75, 83).
MAX_INFERRED_CLASSES = 16
MIN_SPARSE_IDS = 4
_CLASSES_OPTION = "num_classes, --classes N in the CLI"
_INSTANCE_HINT = (
    "these look like instance labels, one id per object; Dino U-Net trains classes: convert them, "
    f"e.g. labels > 0 for one foreground class, or give the number of classes ({_CLASSES_OPTION})"
)


@dataclass
class Sample:
    """One 2D training image, ready for patch sampling.

    image: (C, H, W) float32, already normalised.
    labels: (H, W) int64 class indices in [0, num_classes).
    mask: (H, W) bool, the pixels that count (partial labels); None means every pixel counts.
    name: e.g. "layer0", "case_003", "stack1[z=40]".
    group: the stack or case the sample comes from; splits keep a group on one side.
    sparse: the labels are scribbles (``mask`` = the painted pixels), not a full labelling of the mask.
    """

    image: np.ndarray
    labels: np.ndarray
    mask: np.ndarray | None
    name: str
    group: str
    sparse: bool = False

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W)."""
        return self.labels.shape


# ---------------------------------------------------------------------------------------------------
# Building samples


def _as_list(items, what: str) -> list:
    if items is None:
        return []
    if isinstance(items, np.ndarray) or hasattr(items, "__array__") and not isinstance(items, (list, tuple)):
        return [items]
    items = list(items)
    if not items:
        raise InputError(f"no {what} given: pass at least one image with its labels")
    return items


def _integer_labels(labels: np.ndarray, name: str) -> np.ndarray:
    if labels.dtype == bool:
        return labels.astype(np.int64)
    if not np.issubdtype(labels.dtype, np.integer):
        floating = np.issubdtype(labels.dtype, np.floating)
        whole = floating and np.all(np.isfinite(labels)) and np.all(labels == np.round(labels))
        if not whole:
            raise InputError(
                f"{name}: labels must be whole class numbers (0 = background), got {labels.dtype} values "
                "that are not: use a Labels layer or an integer label image"
            )
    return labels.astype(np.int64, copy=False)


def _shown(values, limit: int = 10, total: int | None = None) -> str:
    """``values`` as "1, 5, 7" (at most ``limit`` of them, then how many more of ``total``, default all)."""
    values = [str(v) for v in values]
    more = (len(values) if total is None else total) - min(limit, len(values))
    return ", ".join(values[:limit]) + (f" and {more} more" if more > 0 else "")


def _missing(foreground: np.ndarray, limit: int = 5) -> tuple[list[int], int]:
    """The first ``limit`` values of 1..max absent from the sorted ``foreground`` values, and how many are absent
    in all (counted, never listed: a stray value of 4e9 must not build a range of 4e9)."""
    total = int(foreground[-1]) - foreground.size if foreground.size else 0
    present, first, value = set(foreground.tolist()), [], 1
    while len(first) < min(limit, total):
        if value not in present:
            first.append(value)
        value += 1
    return first, total


def _holding(present: list[np.ndarray], names: list[str], values) -> str:
    """The names (at most 5) of the label maps whose values ``present`` include any of ``values``."""
    return _shown([name for name, p in zip(names, present) if np.isin(p, values).any()], 5)


def _checked_labels(
    labels: list[np.ndarray], names: list[str], num_classes: int | None, fix: str | None = None
) -> list[np.ndarray]:
    """The label maps, checked to hold classes a network can learn; binary masks saved as 0/255 become 0/1.

    With ``num_classes`` every value must lie in [0, num_classes); the error ends with ``fix`` (default:
    fewer labels or more classes). Without it the values present define the classes (folder mode: no class
    list exists), so they must run 1..k without gaps (0 may be absent) with k <= ``MAX_INFERRED_CLASSES``:
    a gap or a crowd of values is far more often the wrong files (0/255 masks, instance ids, a stray value)
    than classes that are really absent, and every value up to the largest would become a class (70001 of
    them for one stray 70000). ``names`` name the maps in messages (file paths, layer names).
    """
    if num_classes is not None and num_classes < 2:
        raise InputError(
            f"{num_classes} classes: the count includes background, so give at least 2 ({_CLASSES_OPTION})"
        )
    present = [np.unique(lab) for lab in labels]
    values = np.unique(np.concatenate(present))
    if values.size and values[0] < 0:
        negative = values[values < 0]
        raise InputError(
            f"labels of {_holding(present, names, negative)} contain the negative values "
            f"{_shown(negative)}: use 0 for background and 1, 2, ... for classes"
        )
    if values.size and values[-1] == 255 and set(values.tolist()) <= {0, 255} and (num_classes or 0) <= 255:
        warnings.warn(
            f"labels of {_holding(present, names, [255])} hold only 0 and 255, a binary mask: 255 is "
            "read as class 1 (save masks as 0/1 to skip this step)",
            UserWarning,
            stacklevel=3,
        )
        return [(lab != 0).astype(np.int64) for lab in labels]
    foreground = values[values > 0]
    missing, missing_count = _missing(foreground)
    instances = foreground.size > MAX_INFERRED_CLASSES or (missing_count > 0 and foreground.size >= MIN_SPARSE_IDS)
    if num_classes is not None:
        bad = values[values >= num_classes]
        if bad.size:
            fix = fix or (
                _INSTANCE_HINT
                if instances
                else f"use only labels 0..{num_classes - 1}, or train {int(values[-1]) + 1} or more classes "
                f"({_CLASSES_OPTION})"
            )
            raise InputError(
                f"labels of {_holding(present, names, bad)} contain values {_shown(bad)} outside "
                f"0..{num_classes - 1}: {fix}"
            )
        return labels
    if foreground.size > MAX_INFERRED_CLASSES:
        raise InputError(
            f"labels of {_holding(present, names, foreground)} hold {foreground.size} different "
            f"values ({_shown(foreground, 5)}): {_INSTANCE_HINT}"
        )
    if missing_count:
        beyond = values[values > missing[0]]
        fix = (
            _INSTANCE_HINT
            if instances
            else (
                "class values must run 0, 1, 2, ... without gaps (a missing value would be a class never seen); "
                f"relabel them, or give the number of classes if some are really absent ({_CLASSES_OPTION})"
            )
        )
        raise InputError(
            f"labels of {_holding(present, names, beyond)} contain {_shown(beyond)} but no "
            f"{_shown(missing, 5, missing_count)}: {fix}"
        )
    return labels


def _normalized(image: np.ndarray, norm: Normalization, name: str) -> tuple[np.ndarray, tuple]:
    """Statistics of the whole image or stack, after warning about NaN/inf pixels (they become 0)."""
    if np.issubdtype(image.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(image)))
        if bad:
            warnings.warn(f"{name}: {bad} NaN/inf pixels are set to 0 (the image mean) for training", stacklevel=3)
    return normalize.statistics_for(image, norm)


def _checked_mask(mask, shape: tuple[int, ...], name: str) -> np.ndarray | None:
    """A given mask (nonzero = the pixel counts) as bool, or an InputError when its shape is not the labels'."""
    if mask is None:
        return None
    mask = np.asarray(mask)
    if mask.shape != shape:
        raise InputError(
            f"{name}: mask shape {mask.shape} differs from labels shape {shape}: give a mask of the labels' shape"
        )
    return mask != 0


def _pair_samples(
    image,
    labels: np.ndarray,
    mask,
    name: str,
    channel_axis: int | None,
    slice_axis: int,
    normalization: Normalization,
    sparse: bool = False,
) -> list[Sample]:
    """The 2D samples of one image/labels pair (labels already checked); slices with an empty mask are left out."""
    image = np.asarray(image)
    image = layout_for_labels(image.shape, labels.shape, channel_axis, name).channels_first(image)
    mask = _checked_mask(mask, labels.shape, name)
    stats = _normalized(image, normalization, name)
    if labels.ndim == 2:
        slices = [(name, image, labels, mask)]
    else:
        if not -3 <= slice_axis < 3:
            raise InputError(f"{name}: slice_axis={slice_axis} does not exist in a stack of shape {labels.shape}")
        axis = slice_axis % 3
        slices = [
            (
                f"{name}[z={k}]",
                np.take(image, k, axis=axis + 1),
                np.take(labels, k, axis=axis),
                None if mask is None else np.take(mask, k, axis=axis),
            )
            for k in range(labels.shape[axis])
        ]
    return [
        Sample(
            normalize.apply(img, normalization, stats),
            np.ascontiguousarray(lab2d),
            None if mask2d is None else np.ascontiguousarray(mask2d),
            slice_name,
            name,
            sparse,
        )
        for slice_name, img, lab2d, mask2d in slices
        if mask2d is None or mask2d.any()
    ]


def _scribble_labels(
    labels: list[np.ndarray], masks: list, background: int, names: Sequence[str]
) -> tuple[list[np.ndarray], list[np.ndarray], int]:
    """Scribble maps as class indices, their masks (painted, and inside a given mask), and the class count
    the painted values imply (:func:`.sparse.check_scribbles`)."""
    classes_needed = check_scribbles(labels, background, names)
    converted, painted_masks = [], []
    for lab, mask, name in zip(labels, masks, names):
        classes, painted = scribble_class_map(lab, background)
        mask = _checked_mask(mask, lab.shape, name)
        if mask is not None:
            painted &= mask
        converted.append(classes)
        painted_masks.append(painted)
    return converted, painted_masks, classes_needed


def samples_from_arrays(
    images,
    labels,
    *,
    masks=None,
    names: Sequence[str] | None = None,
    channel_axis: int | None = None,
    slice_axis: int = 0,
    normalization: Normalization = DEFAULT_NORMALIZATION,
    num_classes: int | None = None,
    sparse_background: int | None = None,
) -> list[Sample]:
    """Samples from image/label arrays as napari layers hand them over.

    images: a list of arrays (numpy, dask, zarr), each 2D ``(Y, X)``, RGB ``(Y, X, 3)``, a stack ``(Z, Y, X)``
      (RGB stacks ``(Z, Y, X, 3)``), or multichannel with ``channel_axis``; pairs may differ in size.
    labels: one integer array per image, of the image's spatial shape (0 = background).
    masks: optional, one per image (None entries allowed): nonzero = the pixel counts (partial labels).
    names: one per image (layer names); default "image0", "image1", ...
    slice_axis: the axis stacks are cut along, counted in the *labels'* axes (channel axis left out).
    num_classes: classes including background; values outside 0..num_classes-1 are an InputError. None
      takes the values present as the classes: they must run 0, 1, ..., k without gaps (at most
      ``MAX_INFERRED_CLASSES`` foreground values; more look like instance ids). Either way a binary mask
      saved as 0/255 is read as 0/1, with a UserWarning.
    sparse_background: the labels are scribbles (:mod:`.sparse`): 0 = not painted (left out of the loss),
      this value B = background (class 0), other values their class; None takes 0 as background. The
      classes are then 0..max painted value (gaps allowed), or ``num_classes`` when given; masks, if
      given too, further restrict the painted pixels. The samples say ``sparse``.
    Slices whose mask has no pixel that counts are left out. Returns one Sample per 2D image or slice.
    """
    images, labels = _as_list(images, "images"), _as_list(labels, "labels")
    if len(images) != len(labels):
        raise InputError(f"{len(images)} images but {len(labels)} label arrays: give one label array per image")
    masks = _as_list(masks, "masks") or [None] * len(images)
    if len(masks) != len(images):
        raise InputError(f"{len(masks)} masks for {len(images)} images: give one mask (or None) per image")
    names = list(names) if names is not None else [f"image{i}" for i in range(len(images))]
    if len(names) != len(images) or len(set(names)) != len(names):
        raise InputError(f"names {names} must be {len(images)} different names, one per image")

    label_arrays = [_integer_labels(np.asarray(lab), name) for lab, name in zip(labels, names)]
    sparse = sparse_background is not None
    if sparse:
        label_arrays, masks, painted_classes = _scribble_labels(label_arrays, masks, sparse_background, names)
        num_classes = painted_classes if num_classes is None else num_classes
    label_arrays = _checked_labels(label_arrays, names, num_classes)
    samples = [
        sample
        for image, lab, mask, name in zip(images, label_arrays, masks, names)
        for sample in _pair_samples(image, lab, mask, name, channel_axis, slice_axis, normalization, sparse)
    ]
    if not samples:
        raise InputError("every mask is empty: mark the pixels that count (nonzero) in at least one image")
    return samples


def _samples_from_files(
    pairs: Sequence[tuple[str, io.Case, Path]],
    normalization: Normalization,
    num_classes: int | None,
    fix: str | None = None,
    ignore: int | None = None,
    sparse_background: int | None = None,
    instances: bool = False,
    planes=None,
) -> list[Sample]:
    """Samples from (name, image case, label file) triples: labels are read and checked first (before any
    image, so a wrong label file fails fast), messages naming the label files; then the images one at a
    time, each with the channel and slice axes its file format implies (see engine/io/).

    ignore: a label value that marks unlabelled pixels (nnU-Net's "ignore"): they are left out of the
    samples' masks, so the loss skips them, and hold 0 so that no class value >= num_classes remains.
    sparse_background: the label files are scribbles (see :func:`samples_from_arrays`).
    instances: the label files are instance ids, trained as :func:`.instances.boundary_classes`.
    """
    files = [io.read_labels(path) for _, _, path in pairs]
    if instances and sparse_background is not None:
        from .instances import check_painted_background

        check_painted_background([file.data for file in files], sparse_background, [str(p) for _, _, p in pairs])
    labels = [_label_data(file, instances, sparse_background) for file in files]
    if instances and sparse_background is not None:  # instance scribbles became class scribbles
        from .instances import SCRIBBLE_BACKGROUND as sparse_background
    masks = [None if ignore is None or not np.any(lab == ignore) else lab != ignore for lab in labels]
    labels = [np.where(mask, lab, 0) if mask is not None else lab for lab, mask in zip(labels, masks)]
    labels = [_integer_labels(lab, name) for lab, (name, _, _) in zip(labels, pairs)]
    label_names = [str(path) for _, _, path in pairs]
    sparse = sparse_background is not None
    if sparse and planes is not None:
        raise InputError("scribbles (sparse labels) are cut along one slice axis: leave out the planes")
    if sparse:
        labels, masks, painted_classes = _scribble_labels(labels, masks, sparse_background, label_names)
        num_classes = painted_classes if num_classes is None else num_classes
    labels = _checked_labels(labels, label_names, num_classes, fix)
    classes = num_classes if num_classes is not None else 1 + max(int(lab.max(initial=0)) for lab in labels)
    samples = []
    for (name, case, _), lab, mask in zip(pairs, labels, masks):
        image = io.read_case(case)
        slice_axis = image.layout.slice_dim or 0
        if planes is not None and lab.ndim == 3:
            from .volume import parse_planes, volume_samples  # volume builds on this module

            samples += volume_samples(
                image.data,
                lab,
                spacing=image.spacing,
                planes=parse_planes(planes, z_axis=image.layout.slice_dim),
                mask=mask,
                channel_axis=image.channel_axis,
                normalization=normalization,
                num_classes=classes,
                name=name,
            )
            continue
        samples += _pair_samples(image.data, lab, mask, name, image.channel_axis, slice_axis, normalization, sparse)
    return samples


def _label_data(labels: io.ImageFile, instances: bool, sparse_background: int | None) -> np.ndarray:
    """A label file's classes: its values, or with ``instances`` the boundary-aware classes of its ids
    (:func:`.instances.instance_scribbles` for scribbles)."""
    if not instances:
        return labels.data
    from .instances import boundary_classes, instance_scribbles

    slice_axis = labels.layout.slice_dim or 0
    if sparse_background is not None:
        return instance_scribbles(labels.data, sparse_background, slice_axis=slice_axis)
    return boundary_classes(labels.data, slice_axis=slice_axis)


def samples_from_nnunet(
    root, *, normalization: Normalization = DEFAULT_NORMALIZATION, planes=None
) -> tuple[list[Sample], dict]:
    """Samples from an nnU-Net raw dataset's imagesTr/labelsTr (one group per case), and its dataset.json.

    The classes are dataset.json's ``labels`` (:func:`.io.class_names`: values 0..k); a label file holding
    any other value is an InputError naming it. Pixels of the "ignore" label, if dataset.json has one,
    are left out of the loss (the samples' masks). 3D cases are cut into 2D slices across their slice axis
    (NIfTI: the last); slices holding only "ignore" are left out. planes: for 3D cases, the planes to cut
    them along instead (:func:`.volume.parse_planes`: "all", "axial,coronal", axes; names read with the
    file's own z axis), each resampled in-plane to the case's finest spacing (:func:`.volume.volume_samples`).
    """
    dataset = io.read_nnunet_dataset(root)
    num_classes = len(io.class_names(dataset.info))
    pairs = [(case.name, case, label_path) for case, label_path in dataset.training]
    fix = "add the missing classes to dataset.json's labels, or correct the label files"
    ignore = dataset.labels.get(io.IGNORE_LABEL)
    samples = _samples_from_files(pairs, normalization, num_classes, fix, ignore=ignore, planes=planes)
    if not samples:
        raise InputError(f"{dataset.root}: every labelled pixel is '{io.IGNORE_LABEL}': label some pixels with classes")
    return samples, dataset.info


def folder_pairs(images_dir, labels_dir) -> list[tuple[str, io.Case, Path]]:
    """(name, image case, label file) for a folder of images and a folder of label files, paired by file
    name as :func:`samples_from_folders` pairs them; unpaired files are an InputError listing them."""
    cases = io.find_images([images_dir])
    label_paths = {case.name: case.paths[0] for case in io.find_images([labels_dir])}
    pairs, unpaired = [], []
    for case in cases:
        name = next((n for n in (case.name, io.evaluation_name(case.paths[0])) if n in label_paths), None)
        if name is None:
            unpaired.append(case.paths[0].name)
        else:
            pairs.append((case.name, case, label_paths.pop(name)))
    if unpaired or label_paths:
        problems = ([f"images without labels in {labels_dir}: {', '.join(unpaired[:5])}"] if unpaired else []) + (
            [f"labels without images in {images_dir}: {', '.join(p.name for p in list(label_paths.values())[:5])}"]
            if label_paths
            else []
        )
        raise InputError(
            "; ".join(problems) + " (pairs are matched by file name without extension): "
            "add the missing files or move the extra ones out"
        )
    return pairs


def samples_from_folders(
    images_dir,
    labels_dir,
    *,
    normalization: Normalization = DEFAULT_NORMALIZATION,
    num_classes: int | None = None,
    sparse_background: int | None = None,
    instances: bool = False,
    planes=None,
) -> list[Sample]:
    """Samples from a folder of images and a folder of label files, paired by file name.

    Names ignore the extension (``a.tif`` pairs with ``a.png``) and an nnU-Net ``_0000`` channel suffix on
    the image; a folder named imagesTr groups channel files into cases. Unpaired files are an InputError
    listing them. num_classes: as for :func:`samples_from_arrays` (None: the label values must run 0..k
    without gaps); label problems name the label files. sparse_background: the label files are scribbles,
    as for :func:`samples_from_arrays`. instances: the label files hold instance ids (one per object),
    trained as the 3 classes of :func:`.instances.boundary_classes` (give num_classes 3); with
    sparse_background, painted objects and background (:func:`.instances.instance_scribbles`). planes: as
    for :func:`samples_from_nnunet`.
    """
    pairs = folder_pairs(images_dir, labels_dir)
    return _samples_from_files(
        pairs, normalization, num_classes, sparse_background=sparse_background, instances=instances, planes=planes
    )


def default_class_names(num_classes: int) -> list[str]:
    """Names for classes that have none (folders of label files): "background", "class 1", "class 2", ..."""
    return ["background"] + [f"class {i}" for i in range(1, num_classes)]


# ---------------------------------------------------------------------------------------------------
# Checks before training


def check_labels_fit(samples: Sequence[Sample], num_classes: int) -> None:
    """Refuse samples whose labels (inside their mask) hold values outside 0..num_classes-1, naming each
    with its values: the loss cannot take them (napari's Fine-tune gets here when label 2 is painted for
    2-class heads). Warn (UserWarning) when no sample has any foreground: the heads would learn to predict
    background everywhere.
    """
    bad, foreground = [], False
    for sample in samples:
        labels = sample.labels if sample.mask is None else sample.labels[sample.mask]
        if labels.size == 0:
            continue
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= num_classes:
            values = np.unique(labels)
            bad.append(f"{sample.name} ({_shown(values[(values < 0) | (values >= num_classes)], 5)})")
        foreground = foreground or high > 0
    if bad:
        raise InputError(
            f"labels of {_shown(bad, 5)} lie outside the {num_classes} classes 0..{num_classes - 1}: "
            f"paint only labels 0..{num_classes - 1}, or train new heads with more classes"
        )
    if not foreground:
        warnings.warn(
            "no training sample has any foreground (every labelled pixel is 0): the heads would learn "
            "to predict background everywhere; label some objects first",
            UserWarning,
            stacklevel=2,
        )


def check_same_channels(samples: Sequence[Sample]) -> int:
    """The channel count C of the images (C, H, W) of ``samples``; InputError naming the first sample whose
    count differs from the first sample's (grey and RGB images mixed): one network takes one kind."""
    if not samples:
        raise InputError("no training samples: give at least one image with labels")
    first = samples[0]
    channels = first.image.shape[0]
    odd = next((s for s in samples if s.image.shape[0] != channels), None)
    if odd is not None:
        raise InputError(
            f"{odd.name} has {odd.image.shape[0]} channels but {first.name} has {channels}: train on "
            "images of one kind (all grey or all RGB), or convert them first"
        )
    return int(channels)


# ---------------------------------------------------------------------------------------------------
# Splits


def _spatial_split(sample: Sample, val_fraction: float) -> tuple[Sample, Sample]:
    """Cut one image across the longer side of its counted region (the mask's bounding box, or the image):
    the first part holds (1 - val_fraction) of the counted pixels and trains, the rest validates."""
    counted = sample.mask if sample.mask is not None else np.ones(sample.shape, bool)
    extents = [np.flatnonzero(counted.any(axis=1 - axis)) for axis in (0, 1)]
    axis = 1 if np.ptp(extents[1]) >= np.ptp(extents[0]) else 0
    cumulative = np.cumsum(counted.sum(axis=1 - axis))
    cut = int(np.searchsorted(cumulative, (1 - val_fraction) * cumulative[-1])) + 1
    cut = min(max(cut, 1), sample.shape[axis] - 1)

    def part(region: slice, suffix: str) -> Sample:
        index = (slice(None), region) if axis == 1 else (region, slice(None))
        return replace(
            sample,
            image=sample.image[(slice(None), *index)],
            labels=sample.labels[index],
            mask=None if sample.mask is None else sample.mask[index],
            name=f"{sample.name}[{suffix}]",
        )

    return part(slice(0, cut), "train part"), part(slice(cut, None), "validation part")


def split_samples(
    samples: Sequence[Sample], val_fraction: float = 0.2, seed: int = 0
) -> tuple[list[Sample], list[Sample]]:
    """Random train/validation split by group (whole stacks and cases go to one side); reproducible by seed.

    With a single group there is nothing to shuffle: a stack is cut into its first and last slices
    (contiguous, so neighbouring slices do not leak across), a single 2D image is cut spatially across its
    longer axis (left 80 % train, right 20 % validation; with a mask, 80 % of the pixels that count)
    rather than leaving validation empty.
    val_fraction=0 returns every sample for training and no validation.
    """
    samples = list(samples)
    if not samples:
        raise InputError("no training samples to split: give at least one image with labels")
    if not 0 <= val_fraction < 1:
        raise InputError(f"val_fraction={val_fraction} must be at least 0 and below 1 (0.2 = 20 % for validation)")
    if val_fraction == 0:
        return samples, []
    groups = list(dict.fromkeys(s.group for s in samples))
    if len(groups) == 1:
        if len(samples) == 1:
            train, val = _spatial_split(samples[0], val_fraction)
            return [train], [val]
        n_val = min(max(1, round(len(samples) * val_fraction)), len(samples) - 1)
        return samples[:-n_val], samples[-n_val:]
    order = np.random.default_rng(seed).permutation(len(groups))
    n_val = min(max(1, round(len(groups) * val_fraction)), len(groups) - 1)
    val_groups = {groups[i] for i in order[:n_val]}
    return [s for s in samples if s.group not in val_groups], [s for s in samples if s.group in val_groups]


# ---------------------------------------------------------------------------------------------------
# Patches


def _subsample(where: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return rng.choice(where, MAX_LOCATIONS, replace=False) if where.size > MAX_LOCATIONS else where


def _foreground_locations(sample: Sample, rng: np.random.Generator) -> list[np.ndarray]:
    """Flat indices of foreground pixels (inside the mask), one array per foreground class present."""
    flat = sample.labels.ravel()
    candidates = flat > 0
    if sample.mask is not None:
        candidates &= sample.mask.ravel()
    return [_subsample(np.flatnonzero(candidates & (flat == cls)), rng) for cls in np.unique(flat[candidates])]


def _patch_origin(
    shape: tuple[int, int], patch_size: int, rng: np.random.Generator, centre: tuple[int, int] | None
) -> tuple[int, int]:
    """Top-left corner of a patch: random, or as close to centring ``centre`` as the image allows.

    A side shorter than the patch gives a negative origin: the patch overhangs and is padded.
    """
    origin = []
    for axis, size in enumerate(shape):
        low, high = min(0, size - patch_size), max(0, size - patch_size)
        if centre is None:
            origin.append(int(rng.integers(low, high + 1)))
        else:
            origin.append(int(np.clip(centre[axis] - patch_size // 2, low, high)))
    return origin[0], origin[1]


def _crop(sample: Sample, top: int, left: int, patch_size: int, image_out, labels_out, mask_out) -> None:
    """Copy the patch at (top, left) into the outputs (C, P, P), (P, P), (P, P); padding stays 0 / False."""
    height, width = sample.shape
    y0, y1 = max(top, 0), min(top + patch_size, height)
    x0, x1 = max(left, 0), min(left + patch_size, width)
    dst = (slice(y0 - top, y1 - top), slice(x0 - left, x1 - left))
    image_out[(slice(None), *dst)] = sample.image[:, y0:y1, x0:x1]
    labels_out[dst] = sample.labels[y0:y1, x0:x1]
    mask_out[dst] = True if sample.mask is None else sample.mask[y0:y1, x0:x1]


class _Cropper:
    """Draws patches from a list of samples: uniform sample, then random or foreground-centred position."""

    def __init__(
        self, samples: Sequence[Sample], patch_size: int, foreground_fraction: float, rng: np.random.Generator
    ):
        if not samples:
            raise InputError("no training samples: give at least one image with labels")
        if patch_size < 1:
            raise InputError(f"patch_size={patch_size} must be a positive number of pixels")
        if not 0 <= foreground_fraction <= 1:
            raise InputError(f"foreground_fraction={foreground_fraction} must lie in [0, 1] (nnU-Net uses 0.33)")
        self.samples = list(samples)
        self.channels = check_same_channels(self.samples)
        self.patch_size = patch_size
        self.foreground_fraction = foreground_fraction
        self.rng = rng
        self.locations = [_foreground_locations(s, rng) for s in self.samples]
        self.with_foreground = [i for i, loc in enumerate(self.locations) if loc]
        self.counted = [None if s.mask is None else _subsample(np.flatnonzero(s.mask), rng) for s in self.samples]

    def batch(self, sample_indices: Sequence[int | None]) -> dict[str, torch.Tensor]:
        """One patch per entry (a sample index, or None for a uniformly random sample), as CPU tensors."""
        count, size = len(sample_indices), self.patch_size
        image = np.zeros((count, self.channels, size, size), np.float32)
        labels = np.zeros((count, size, size), np.int64)
        mask = np.zeros((count, size, size), bool)
        forced = np.zeros(count, bool)
        for b, index in enumerate(sample_indices):
            force = self.rng.random() < self.foreground_fraction
            if index is None:
                pool = self.with_foreground if force and self.with_foreground else range(len(self.samples))
                index = pool[int(self.rng.integers(len(pool)))]
            sample, centre = self.samples[index], None
            if force and self.locations[index]:
                classes = self.locations[index]
                where = classes[int(self.rng.integers(len(classes)))]
                forced[b] = True
            else:
                where = self.counted[index]
            if where is not None and where.size:
                centre = np.unravel_index(where[int(self.rng.integers(where.size))], sample.shape)
            top, left = _patch_origin(sample.shape, size, self.rng, centre)
            _crop(sample, top, left, size, image[b], labels[b], mask[b])
        return {
            "image": torch.from_numpy(image),
            "labels": torch.from_numpy(labels),
            "mask": torch.from_numpy(mask),
            "foreground_forced": torch.from_numpy(forced),
        }


def _to_device(batch: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    device = torch.device(device)
    if device.type == "cpu":
        return batch
    return {
        key: value.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else value.to(device)
        for key, value in batch.items()
    }


class PatchSampler:
    """Infinite random training patches (nnU-Net style), optionally augmented.

    Each patch comes from a uniformly chosen sample; with probability ``foreground_fraction`` it is centred
    on a labelled foreground pixel inside the mask (a foreground class chosen uniformly among those the
    sample holds, then a pixel of it; only samples holding foreground are chosen then), otherwise placed
    uniformly at random (in a sample with a mask: centred on a random pixel that counts, so that no patch
    is wasted on unlabelled pixels). Near the border the patch is shifted inwards, so the pixel stays inside it.
    Images smaller than the patch are padded (image 0, labels 0, mask False).

    DDP: ``rank``/``world_size`` give each process the samples ``samples[rank::world_size]`` and its own
    random stream, so ranks see disjoint data; with fewer samples than ranks every rank uses all samples
    (still with its own stream). The augmenter's random stream is its own (seed it per rank).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        patch_size: int,
        batch_size: int,
        *,
        foreground_fraction: float = 0.33,
        augment=None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if batch_size < 1:
            raise InputError(f"batch_size={batch_size} must be at least 1")
        if not 0 <= rank < world_size:
            raise InputError(f"rank {rank} is not one of the {world_size} processes")
        samples = list(samples)
        self.shard = samples[rank::world_size] if len(samples) >= world_size else samples
        self.batch_size = batch_size
        self.augment = augment
        self._cropper = _Cropper(self.shard, patch_size, foreground_fraction, np.random.default_rng([seed, rank]))

    def next_batch(self, device="cpu") -> dict[str, torch.Tensor]:
        """One batch on ``device``: image (B, C, P, P) float32, labels (B, P, P) int64, mask (B, P, P) bool,
        foreground_forced (B,) bool (whether the patch was centred on foreground)."""
        batch = _to_device(self._cropper.batch([None] * self.batch_size), device)
        return self.augment(batch) if self.augment is not None else batch


def fixed_crops(
    samples: Sequence[Sample], patch_size: int, count: int, seed: int = 0, *, foreground_fraction: float = 0.33
) -> dict[str, torch.Tensor]:
    """``count`` deterministic crops (validation, feature caching), placed as :class:`PatchSampler` places
    them: crop i comes from sample i mod len(samples), or with fewer crops than samples from samples spread
    evenly over the list (i * len(samples) // count). Same layout as ``next_batch``, on the CPU, B = count."""
    samples = list(samples)
    cropper = _Cropper(samples, patch_size, foreground_fraction, np.random.default_rng(seed))
    total = len(samples)
    return cropper.batch([i % total if count >= total else i * total // count for i in range(count)])
