"""TIFF (``.tif``, ``.tiff``): arrays in tifffile's series order, spacing from the resolution tags and the
ImageJ or tifffile description.

Channel axes (``C``/``S`` in tifffile's series axes) are reported in ``channel_axis``; a TIFF whose leading
axes have no stated meaning (tifffile's ``Q``/``I``) has its channel axis guessed from its shape
(:func:`~..layout.channels_last_axis`). X/Y spacing comes from the resolution tags, Z spacing and the unit
from the ImageJ or tifffile description (Z spacing 1.0, ImageJ's default, when only X/Y are calibrated).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .formats import Format
from .images import ImageFile, _guessed_channels

_GENERIC_TIFF_AXES = set("QI")  # tifffile's letters for axes of unknown meaning (pages, sequences)
_TIFF_UNITS = {2: "inch", 3: "cm", 4: "mm", 5: "um"}  # TIFF ResolutionUnit codes (1 = none)
# Spellings of units found in ImageJ/OME metadata -> the names ImageFile.unit uses; "pixel" means uncalibrated.
_UNIT_ALIASES = {
    "micron": "um",
    "microns": "um",
    "\u00b5m": "um",
    "\u03bcm": "um",
    "\\u00b5m": "um",
    "millimeter": "mm",
    "centimeter": "cm",
    "meter": "m",
    "nanometer": "nm",
    "pixel": None,
    "pixels": None,
}


def _read_tiff(path: Path) -> ImageFile:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        data = series.asarray()
        axes = series.axes
        page = tif.pages.first
        xres, yres = (float(r) for r in page.resolution)
        resolution_unit = int(page.resolutionunit)
        extra = dict(tif.imagej_metadata or {})
        if tif.is_shaped and tif.shaped_metadata:
            extra.update(tif.shaped_metadata[0])
        imagej = bool(tif.is_imagej)
        rgba = page.photometric == tifffile.PHOTOMETRIC.RGB and "S" in axes and data.shape[axes.index("S")] == 4
    channel_axis = next((axes.index(a) for a in "SC" if a in axes), None)
    metadata = {"imagej": imagej, "resolutionunit": resolution_unit, "axes": axes}
    if rgba:  # as for PNG: the alpha channel carries no image content
        data = np.take(data, [0, 1, 2], axis=channel_axis)
        metadata["alpha_dropped"] = True
    elif channel_axis is None and set(axes[:-2]) <= _GENERIC_TIFF_AXES:
        # tifffile stores an unnamed (Y, X, 2) array as Y pages of X x 2 pixels: guess as for .npy
        data, channel_axis = _guessed_channels(data, metadata)
    unit = _unit_name(extra.get("unit")) or _TIFF_UNITS.get(resolution_unit)
    z_spacing = extra.get("spacing")
    spacing = None
    if (unit is not None or z_spacing is not None or (xres, yres) != (1.0, 1.0)) and xres > 0 and yres > 0:
        per_axis = {"X": 1.0 / xres, "Y": 1.0 / yres, "Z": float(z_spacing or 1.0)}
        spacing = tuple(per_axis.get(a, 1.0) for i, a in enumerate(axes) if i != channel_axis)
    return ImageFile(data, "tiff", spacing=spacing, unit=unit, channel_axis=channel_axis, metadata=metadata)


def _unit_name(unit: Any) -> str | None:
    if not unit:
        return None
    name = str(unit).strip()
    return _UNIT_ALIASES.get(name.lower(), name)


def _write_tiff(tmp: Path, labels: np.ndarray, like: ImageFile | None) -> None:
    """TIFF labels: resolution tags from ``like.spacing``, z spacing and unit in the description.

    A ``like`` read from a TIFF keeps its layout (ImageJ or not) and resolution unit code. Otherwise
    microscopy units (um, mm, nm) get an ImageJ file, the layout Fiji, napari and QuPath read
    calibrations from, and inch/cm the standard TIFF unit codes. ImageJ cannot hold uint32 or more than 3
    axes: those are written as plain TIFF with tifffile's JSON description.
    """
    import tifffile

    axes = "ZYX"[-labels.ndim :] if labels.ndim <= 3 else None
    spacing = like.spacing if like is not None else None
    unit = like.unit if like is not None else None
    unit_codes = {name: code for code, name in _TIFF_UNITS.items()}
    if like is not None and "resolutionunit" in like.metadata:  # read from a TIFF: keep its layout
        imagej, unit_code = bool(like.metadata.get("imagej")), like.metadata["resolutionunit"]
    else:
        imagej = unit not in (None, "inch", "cm")
        unit_code = 1 if imagej else unit_codes.get(unit, 1)
    imagej = imagej and labels.dtype != np.uint32 and axes is not None
    if not imagej and unit_code == 1:
        unit_code = unit_codes.get(unit, 1)  # mm, um: tifffile's extension codes hold the unit without ImageJ
    description: dict[str, Any] = {"axes": axes} if axes else {}
    options: dict[str, Any] = {"imagej": True} if imagej else {"photometric": "minisblack"}
    if spacing is not None:
        options["resolution"] = (1.0 / spacing[-1], 1.0 / spacing[-2])
        options["resolutionunit"] = unit_code
        if labels.ndim == 3:
            description["spacing"] = spacing[0]
        if unit is not None:
            description["unit"] = unit
    tifffile.imwrite(tmp, labels, metadata=description, **options)


TIFF = Format("tiff", (".tif", ".tiff"), read=_read_tiff, write=_write_tiff, title="TIFF", exported=True)
