"""NIfTI (``.nii.gz``, ``.nii``) with nibabel: voxel order ``(X, Y, Z)`` as stored (a 4th axis is channels).

``spacing`` comes from the header zooms in that same order and ``affine`` maps voxel indices to world
millimetres. Stacks are cut into slices along the last spatial axis (Z). Labels written with ``like=`` keep
its header, affine and zooms exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from .formats import Format
from .images import ImageFile

# NIfTI xyzt_units -> unit names; "unknown" is read as millimetres, as ITK and nnU-Net do.
_NIFTI_UNITS = {"unknown": "mm", "meter": "m", "mm": "mm", "micron": "um"}


def _read_nifti(path: Path) -> ImageFile:
    import nibabel as nib

    img = nib.load(path)
    data = np.asanyarray(img.dataobj)
    if data.ndim > 4:
        raise InputError(
            f"{path}: NIfTI with {data.ndim} dimensions; supported are 2D, 3D (X, Y, Z) and 4D (X, Y, Z, channel)"
        )
    spatial_ndim = min(data.ndim, 3)
    spacing = tuple(float(z) for z in img.header.get_zooms()[:spatial_ndim])
    unit = _NIFTI_UNITS.get(img.header.get_xyzt_units()[0])
    channel_axis = 3 if data.ndim == 4 else None
    return ImageFile(
        data,
        "nifti",
        spacing=spacing,
        unit=unit,
        affine=np.array(img.affine),
        channel_axis=channel_axis,
        metadata={"header": img.header},
    )


def _can_hold(labels: np.ndarray) -> str | None:
    if labels.ndim > 3:
        return (
            f"NIfTI labels are 2D or 3D (these are {labels.ndim}D; a 4th NIfTI axis is read as channels); "
            "save them as .tif"
        )
    return None


def _write_nifti(tmp: Path, labels: np.ndarray, like: ImageFile | None) -> None:
    import nibabel as nib

    header = like.metadata.get("header") if like is not None else None
    if like is not None and like.affine is not None:
        affine = like.affine
    else:
        affine = np.eye(4)
        if like is not None and like.spacing is not None:
            affine[: min(3, len(like.spacing)), : min(3, len(like.spacing))] = np.diag(like.spacing[:3])
    image_class = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    image = image_class(labels, affine, header=header.copy() if header is not None else None)
    image.header.set_data_dtype(labels.dtype)
    image.header.set_slope_inter(1.0, 0.0)  # labels are stored as is, never rescaled
    image.header["cal_min"], image.header["cal_max"] = 0, 0
    nib.save(image, tmp)


NIFTI = Format(
    "nifti",
    (".nii.gz", ".nii"),
    read=_read_nifti,
    write=_write_nifti,
    can_hold=_can_hold,
    title="NIfTI",
    note="keeps the affine",
    exported=True,
    slice_dim=-1,
    world_affine=True,
)
