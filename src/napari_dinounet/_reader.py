"""Open NIfTI images in napari (File > Open) so that labels drawn or predicted on them export back to NIfTI.

The array keeps the file's axis order, as everywhere in the plugin (:mod:`napari_dinounet.engine.io`:
nibabel's ``(X, Y, Z)``, a 4th axis is channels); the header zooms become the layer's ``scale`` and
the voxel-to-world matrix goes to ``metadata["affine"]`` (the key :mod:`napari_dinounet._writer`
documents), which the Segment widget carries over to the labels it writes. Which file endings it opens
comes from the format registry (:data:`FORMATS`); ``napari.yaml`` lists the same (tests/test_manifest.py).
No torch here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from napari_dinounet._layer_metadata import AFFINE_KEY
from napari_dinounet.engine.io import get_format, read_image, split_extension

FORMATS = ("nifti",)  # the formats this reader opens: those whose affine napari's own readers drop


def endings() -> tuple[str, ...]:
    """The file endings of :data:`FORMATS` (lower case)."""
    return tuple(ending for name in FORMATS for ending in get_format(name).extensions)


def _paths(path: str | os.PathLike | Sequence) -> list[str]:
    return [os.fspath(path)] if isinstance(path, (str, os.PathLike)) else [os.fspath(p) for p in path]


def get_reader(path) -> Callable[[object], list[tuple]] | None:
    """npe2 reader hook: :func:`read_nifti` when every path is a NIfTI file, else None (another reader's turn)."""
    paths = _paths(path)
    if paths and all(p.lower().endswith(endings()) for p in paths):
        return read_nifti
    return None


def read_nifti(path) -> list[tuple]:
    """One image layer per file: data in the file's order, scale from the zooms, metadata["affine"]."""
    layers = []
    for file in _paths(path):
        image = read_image(file)  # InputError with the reason for a damaged file
        spatial = len(image.spatial_shape)
        scale = list(image.spacing or (1.0,) * spatial)
        units = [image.unit or "pixel"] * spatial
        if image.channel_axis is not None:  # (X, Y, Z, C): the channel axis has no physical size
            scale.append(1.0)
            units.append("pixel")
        meta = {
            "name": split_extension(file)[0],
            "scale": scale,
            "units": units,
            "metadata": {AFFINE_KEY: image.affine.tolist()},
        }
        layers.append((image.data, meta, "image"))
    return layers
