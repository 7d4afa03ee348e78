"""What the widgets add for volumes: Segment's "whole volume (3 planes)", Fine-tune's labelled slices and
its normalisation choice; the work itself is :mod:`..engine.volume` and :mod:`..engine.normalize`.

- Segment: the Stack choice :data:`WHOLE_VOLUME` predicts a (Z, Y, X) layer along all three planes,
  resampled to its finest voxel size (the layer's scale), and fuses the class probabilities into one labels
  volume (:func:`predict_volume`).
- Fine-tune: the Stack choice :data:`WHOLE_VOLUME` trains on 2D slices of a (Z, Y, X) pair cut along all
  three planes, each resampled in-plane to the finest voxel size of the layer's scale
  (:func:`..engine.volume.volume_samples`); the heads record the planes and the spacing. The Stack choice
  :data:`LABELLED_SLICES` trains on the slices of a stack that carry labels
  (the others are unknown, not background: :func:`only_labelled_slices`), no Shapes region needed; the
  Normalisation field (:func:`normalization_combo`) is "auto" unless changed, which resolves to ``ct`` for a
  NIfTI layer with CT-range intensities (:func:`auto_normalization`) and is shown in the status;
  :func:`fresh_normalization` fits it on the training pairs in the worker.

The functions run in the GUI thread or a worker as their callers say; only :func:`normalization_combo` is Qt.
"""

from __future__ import annotations

from collections.abc import Generator

import numpy as np

from ..engine.errors import InputError
from ..engine.progress import Progress

WHOLE_VOLUME = "whole volume (3 planes)"
LABELLED_SLICES = "slices with labels"
LABELLED_SLICES_TIP = (
    "slices with labels: every slice of the stack that holds a label counts (the others are unknown, not "
    "background), so labelling a few slices of a volume is enough"
)
AUTO = "auto"
NORMALIZATIONS = (AUTO, "zscore", "ct", "rgb")
WHOLE_VOLUME_TIP = (
    "whole volume (3 planes): predict a (Z, Y, X) layer along z, y and x, each plane resampled to the finest "
    "voxel size of the layer's scale, and fuse their class probabilities (mean) into one labels volume"
)
TRAIN_VOLUME_TIP = (
    "whole volume (3 planes): learn from slices of a (Z, Y, X) image and its 3D labels cut along z, y and x, "
    "each plane resampled to the finest voxel size of the layer's scale (the heads record planes and spacing)"
)
# Hounsfield units: air is -1000, so a CT volume reaches far below any MRI or microscopy intensity
CT_MINIMUM_BELOW = -500


def planes_for(choice: str) -> tuple[int, ...] | None:
    """The planes of a Stack choice: all three for :data:`WHOLE_VOLUME`, None for the others."""
    return (0, 1, 2) if choice == WHOLE_VOLUME else None


def predict_volume(
    predictor, plan, planes, *, step: float, tile, mirror: bool
) -> Generator[Progress, None, np.ndarray]:
    """Tri-planar labels for a run plan of a whole 3D layer (:func:`..engine.volume.predict_planes`), with the
    layer's scale as the voxel spacing; an InputError unless the plan is one (Z, Y, X) volume."""
    from ..engine.volume import predict_planes

    if len(plan.stack_shape) != 1 or plan.target or len(plan.scale) != 3:
        raise InputError(
            f"{WHOLE_VOLUME} needs a 3D (Z, Y, X) layer (channels aside), all of it; this one has "
            f"{len(plan.labels_shape)} axes: choose 'whole stack' or 'current slice'"
        )
    labels = yield from predict_planes(
        predictor,
        plan.image,
        spacing=tuple(abs(float(s)) for s in plan.scale),
        planes=planes,
        channel_axis=plan.channel_axis,
        step=step,
        tile=tile,
        mirror=mirror,
    )
    return labels


def labelled_slices(labels: np.ndarray) -> tuple[np.ndarray, int, int]:
    """For a (Z, Y, X) labels stack: (mask of the slices holding any label, slices labelled, slices in all).
    Training on it counts only the labelled slices (:func:`..engine.volume.labelled_slices_mask`)."""
    from ..engine.volume import labelled_slices_mask

    mask = labelled_slices_mask(labels, 0)
    labelled = int(mask.any(axis=(1, 2)).sum())
    return mask, labelled, labels.shape[0]


def suggested_normalization(image, *, nifti: bool = False) -> str:
    """``ct`` for intensities in CT's range (values below -500, Hounsfield air), else ``zscore``.

    nifti: whether the layer came from a NIfTI file; only such images (or DICOM-range ones) get ``ct``,
    the scheme is shown and can be changed. Reads a strided subsample of large images."""
    if not nifti:
        return "zscore"
    array = np.asarray(image[tuple(slice(None, None, max(1, n // 64)) for n in image.shape)])
    return "ct" if array.size and float(array.min()) < CT_MINIMUM_BELOW else "zscore"


def only_labelled_slices(labels: np.ndarray, mask: np.ndarray | None) -> np.ndarray | None:
    """The mask that counts for a stack's labels (N, Y, X): the slices holding a label, within ``mask`` if one
    is given (a region); a 2D image's mask unchanged. InputError when no slice holds a label."""
    labels = np.asarray(labels)
    if labels.ndim < 3:
        return mask
    carries = labelled_slices(labels.reshape((-1,) + labels.shape[-2:]))[0].reshape(labels.shape)
    return carries if mask is None else carries & (np.asarray(mask) != 0)


def normalization_combo():
    """The Fine-tune field choosing the normalisation of fresh heads (heads to go on training keep theirs)."""
    from qtpy.QtWidgets import QComboBox

    combo = QComboBox()
    combo.addItems(NORMALIZATIONS)
    combo.setToolTip(
        "Intensity normalisation of fresh heads, stored in them (heads to go on from keep theirs). auto: ct "
        "for NIfTI images with CT intensities (below -500, Hounsfield air), else zscore; ct: nnU-Net's CT "
        "scheme (clip to the 0.5-99.5 percentiles of the labelled voxels, z-score with their mean and std); "
        "rgb: one mean and deviation over the colours."
    )
    return combo


def auto_normalization(choice: str, layers) -> tuple[str, str]:
    """(scheme, why) for a Normalisation choice and the training image layers: a chosen scheme as it is,
    ``auto`` (the field's first item, shown as "auto (<scheme>)") from the first layer
    (:func:`suggested_normalization`, NIfTI known from its affine metadata)."""
    from .._layer_metadata import AFFINE_KEY

    if not choice.startswith(AUTO):
        return choice, "chosen"
    layer = next(iter(layers), None)
    if layer is None:
        return "zscore", "auto"
    if getattr(layer, "rgb", False):
        return "rgb", "auto: a colour image"
    scheme = suggested_normalization(layer.data, nifti=AFFINE_KEY in layer.metadata)
    return scheme, "auto: NIfTI with CT intensities" if scheme == "ct" else "auto"


def show_auto_normalization(combo, layers) -> None:
    """Write what "auto" resolves to for these image layers into the field's first item: "auto (ct)"."""
    combo.setItemText(0, f"{AUTO} ({auto_normalization(AUTO, layers)[0]})")


def fresh_normalization(scheme: str, pairs):
    """The :class:`..engine.normalize.Normalization` of fresh heads: ``ct`` fitted on the pairs' labelled
    foreground (inside their masks), the others as they are. Runs in the worker."""
    from ..engine.normalize import Normalization, fit_ct

    if scheme != "ct":
        return Normalization(scheme)
    if any(pair.has_channels for pair in pairs):
        raise InputError("the ct normalisation is for single-channel images (CT): choose zscore for these")
    images = (np.asarray(pair.image) for pair in pairs)
    labels = (
        pair.labels if pair.mask is None else np.where(np.asarray(pair.mask) != 0, pair.labels, 0) for pair in pairs
    )
    return fit_ct(images, labels)
