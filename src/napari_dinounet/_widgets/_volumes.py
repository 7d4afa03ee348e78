"""What the widgets add for volumes: Segment's "whole volume (3 planes)", Fine-tune's labelled slices and
its CT normalisation; the work itself is :mod:`..engine.volume` (no Qt here, the widgets call in).

- Segment: the Stack choice :data:`WHOLE_VOLUME` predicts a (Z, Y, X) layer along all three planes,
  resampled to its finest voxel size (the layer's scale), and fuses the class probabilities into one labels
  volume (:func:`predict_volume`).
- Fine-tune: :func:`labelled_slices` says which slices of a stack carry labels (the others are unknown, not
  background); :func:`suggested_normalization` picks ``ct`` for CT-range intensities.
"""

from __future__ import annotations

from collections.abc import Generator

import numpy as np

from ..engine.errors import InputError
from ..engine.progress import Progress

WHOLE_VOLUME = "whole volume (3 planes)"
WHOLE_VOLUME_TIP = (
    "whole volume (3 planes): predict a (Z, Y, X) layer along z, y and x, each plane resampled to the finest "
    "voxel size of the layer's scale, and fuse their class probabilities (mean) into one labels volume"
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
