"""PNG and JPEG, read with scikit-image: ``(Y, X)`` or colour samples last ``(Y, X, 3)``, no spacing.

Alpha channels are dropped (they carry no image content). PNG holds 2D labels <= 255 (palette PNGs, the
PASCAL VOC masks, read as labels give their palette indices); JPEG holds none, since its compression
changes values: predictions for JPEG images are written as PNG.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .formats import Format
from .images import ImageFile


def _read(path: Path, name: str) -> ImageFile:
    import skimage.io

    data = np.asarray(skimage.io.imread(path))
    metadata: dict[str, Any] = {}
    if data.ndim == 3 and data.shape[-1] in (2, 4):  # grey + alpha, RGB + alpha
        data = data[..., :-1] if data.shape[-1] == 4 else data[..., 0]
        metadata["alpha_dropped"] = True
    channel_axis = 2 if data.ndim == 3 else None
    return ImageFile(data, name, channel_axis=channel_axis, metadata=metadata)


def _read_png(path: Path) -> ImageFile:
    return _read(path, "png")


def _read_jpeg(path: Path) -> ImageFile:
    return _read(path, "jpeg")


def _palette_indices(path: Path) -> np.ndarray | None:
    from PIL import Image

    with Image.open(path) as png:
        return np.asarray(png) if png.mode == "P" else None


def _png_can_hold(labels: np.ndarray) -> str | None:
    if labels.ndim != 2:
        return f"PNG labels must be 2D (these are {labels.ndim}D); write a .tif instead"
    if labels.dtype != np.uint8:
        return f"PNG labels must have values <= 255 (these go up to {labels.max()}); write a .tif instead"
    return None


def _write_png(tmp: Path, labels: np.ndarray, like: ImageFile | None) -> None:
    import skimage.io

    skimage.io.imsave(tmp, labels, check_contrast=False)


def _jpeg_can_hold(labels: np.ndarray) -> str:
    return "JPEG compression changes label values; write labels as .png or .tif"


PNG = Format(
    "png",
    (".png",),
    read=_read_png,
    write=_write_png,
    can_hold=_png_can_hold,
    title="PNG",
    note="2D only",
    exported=True,
    palette_indices=_palette_indices,
)
JPEG = Format("jpeg", (".jpg", ".jpeg"), read=_read_jpeg, can_hold=_jpeg_can_hold, title="JPEG", labels_as="png")
