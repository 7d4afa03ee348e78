"""The labels writer napari's File > Save Layers uses, and the Export widget's way of writing files.

Formats follow the file name and come from the format registry (:mod:`napari_dinounet.engine.io.formats`):
those it marks ``exported`` (TIFF with the layer's ``scale`` and ``units`` as resolution, PNG for 2D labels
<= 255, NIfTI only for labels whose layer carries a NIfTI affine). The files themselves are written by
:func:`napari_dinounet.engine.io.write_labels` (atomically). ``napari.yaml`` lists the same extensions
(tests/test_manifest.py holds it to the registry).

Layer metadata keys this plugin reads and sets (readers and widgets that create layers set them too):

``metadata["affine"]``
    (4, 4) nested list or array: the NIfTI voxel-to-world matrix (millimetres, RAS) for the axes of
    ``layer.data`` in their order (``engine.io`` keeps NIfTI arrays in the file's ``(X, Y, Z)`` order).
    Present when the labels came from, or belong to, a NIfTI image; NIfTI export writes exactly it.
``metadata["class_names"]``
    list of class names indexed by label value (``class_names[0]`` is the background).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_dinounet._layer_metadata import AFFINE_KEY
from napari_dinounet.engine.errors import InputError
from napari_dinounet.engine.io import ImageFile, format_for, registered_formats
from napari_dinounet.engine.io import write_labels as write_label_file

# napari (pint) unit names -> engine.io unit names, and their size in metres to convert between axes
_UNIT_NAMES = {
    "meter": "m",
    "centimeter": "cm",
    "millimeter": "mm",
    "micrometer": "um",
    "nanometer": "nm",
    "inch": "inch",
}
_METRES = {"m": 1.0, "cm": 1e-2, "mm": 1e-3, "um": 1e-6, "nm": 1e-9, "inch": 0.0254}


def write_labels(path: str, data: Any, attributes: dict) -> list[str]:
    """npe2 single-layer writer: one labels layer -> one file; returns ``[path]``.

    data: the layer's array (numpy, dask, zarr, or a multiscale list: level 0 is written);
    attributes: the layer's state as napari passes it (``scale``, ``units``, ``metadata``, ``name``).
    Raises InputError when the format cannot hold these labels (PNG of a stack, NIfTI without an affine).
    """
    labels = np.asarray(data[0] if attributes.get("multiscale") else data)
    fmt = format_for(path)
    like = ImageFile(labels, fmt.name, spacing=_spacing(attributes, labels.ndim), unit=_unit(attributes))
    if fmt.world_affine:
        like.affine = layer_affine(attributes, fmt.title)
    return [str(write_label_file(path, labels, like=like))]


def export_refusals(labels_ndim: int, metadata: dict) -> dict[str, str | None]:
    """Each exported format's name -> None when a labels layer of ``labels_ndim`` dimensions with this
    ``metadata`` can be written to it, else why not (a sentence).

    Only what the layer shows without reading its data is checked: its dimensions (against the format's
    ``can_hold``, as for the smallest labels of that many dimensions) and, for a world-space format, its affine.
    Values a format cannot hold (PNG above 255) are refused when writing.
    """
    smallest = np.zeros((1,) * labels_ndim, np.uint8)
    refusals = {}
    for fmt in registered_formats():
        if fmt.exported:
            reason = fmt.can_hold(smallest)
            if reason is None and fmt.world_affine and metadata.get(AFFINE_KEY) is None:
                reason = (
                    f"{fmt.title} needs the affine of a {fmt.title} image (the layer has no metadata['{AFFINE_KEY}'])"
                )
            refusals[fmt.name] = reason
    return refusals


def formats_for(labels_ndim: int, metadata: dict) -> list[str]:
    """The formats a labels layer can be exported to (:func:`export_refusals` has no objection), in the
    registry's order: TIFF; PNG in 2D; NIfTI in 2D/3D with an affine."""
    return [name for name, reason in export_refusals(labels_ndim, metadata).items() if reason is None]


def layer_affine(attributes: dict, title: str = "NIfTI") -> np.ndarray:
    """The layer's voxel-to-world affine (4, 4) float64, or InputError saying why a file of the world-space
    format ``title`` cannot be written."""
    name = attributes.get("name", "labels")
    affine = (attributes.get("metadata") or {}).get(AFFINE_KEY)
    if affine is None:
        raise InputError(
            f"layer {name!r} did not come from a {title} image (no metadata['{AFFINE_KEY}']), so its "
            "position in world space is unknown; save it as .tif, or set "
            f"layer.metadata['{AFFINE_KEY}'] to the image's 4x4 voxel-to-world matrix"
        )
    try:
        affine = np.asarray(affine, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise InputError(f"layer {name!r}: metadata['{AFFINE_KEY}'] is not a 4x4 matrix ({err})") from err
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise InputError(
            f"layer {name!r}: metadata['{AFFINE_KEY}'] must be a finite 4x4 matrix, got shape {affine.shape}"
        )
    return affine


def _unit(attributes: dict) -> str | None:
    """The in-plane (last axis) unit in engine.io's spelling, or None for pixels / unknown."""
    units = attributes.get("units")
    return _UNIT_NAMES.get(str(units[-1])) if units else None


def _spacing(attributes: dict, ndim: int) -> tuple[float, ...] | None:
    """Per-axis pixel size from the layer's scale, every axis in the last axis's unit (TIFF has one unit)."""
    scale = attributes.get("scale")
    if scale is None:
        return None
    scale = [float(s) for s in scale][-ndim:]
    target = _unit(attributes)
    units = [_UNIT_NAMES.get(str(u)) for u in (attributes.get("units") or ())][-ndim:]
    if target is not None and len(units) == ndim and all(u is not None for u in units):
        scale = [s * _METRES[u] / _METRES[target] for s, u in zip(scale, units)]
    return tuple(scale)
