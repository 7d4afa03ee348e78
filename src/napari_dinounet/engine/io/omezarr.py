"""OME-Zarr (NGFF 0.4 and 0.5) multiscale images: read one resolution level lazily, write label pyramids.

Optional: needs the ``ome-zarr`` extra (``pip install "napari-dinounet[ome-zarr]"``: ``ome-zarr``, the OME
reference implementation that napari-ome-zarr reads with, and ``dask``). A store is a folder, so the
format is registered with ``directory=True``.

Reading (:func:`read_ome_zarr`) opens the first multiscale image of a local store: each level a dask array
over the zarr array, never loaded whole (prediction reads it one band of tile rows at a time through
:class:`~..tiling.AxisView`). A time axis of length 1 is dropped (longer ones are refused), a ``channel``
axis becomes the :attr:`~.images.ImageFile.channel_axis`, ``z`` is the slice axis. ``spacing`` and ``unit``
come from the level's ``scale`` transformation and the axes' units; the level's scale and translation are
kept in ``metadata`` for writing.

Writing (:func:`write_label_pyramid`) makes a new store whose root is a label image (``multiscales`` plus
``image-label``, what napari-ome-zarr opens as a Labels layer): level 0 is the labels as predicted, with the
image level's scale and translation, so they land on the image in world coordinates; each further level
takes every second pixel in y and x (nearest, labels stay whole numbers) with twice the scale and the same
translation (its first pixel is level 0's). The store is written beside the target and renamed into place.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import output_error
from ..errors import InputError
from .formats import Format
from .images import ImageFile

EXTRA = 'pip install "napari-dinounet[ome-zarr]"'
# NGFF unit names -> the short units ImageFile.spacing uses elsewhere (TIFF, NIfTI)
_UNITS = {"micrometer": "um", "millimeter": "mm", "centimeter": "cm", "nanometer": "nm", "meter": "m"}
MIN_LEVEL_SIZE = 64  # no label level smaller than this in y or x (napari shows small levels poorly)


def _zarr():
    try:
        import dask.array
        import zarr
    except ImportError:
        raise InputError(f"reading OME-Zarr needs zarr and dask: {EXTRA}") from None
    return zarr, dask.array


def _multiscale(group) -> dict[str, Any]:
    attrs = dict(group.attrs)
    meta = attrs.get("ome", attrs)  # NGFF 0.5 nests its metadata under "ome"
    if not meta.get("multiscales"):
        raise InputError("it has no 'multiscales' metadata: it is a zarr store, not an OME-Zarr image")
    return meta["multiscales"][0]


def _transform(dataset: dict, kind: str, ndim: int, default: float) -> list[float]:
    for transform in dataset.get("coordinateTransformations", []):
        if transform.get("type") == kind:
            return [float(v) for v in transform[kind]]
    return [default] * ndim


def levels(path: str | Path) -> list:
    """The resolution levels of an OME-Zarr image, finest first: dask arrays in the store's axis order."""
    zarr, da = _zarr()
    group = zarr.open_group(str(path), mode="r")
    return [da.from_zarr(group[dataset["path"]]) for dataset in _multiscale(group)["datasets"]]


def read_ome_zarr(path: str | Path, level: int = 0) -> ImageFile:
    """Level ``level`` (0: the finest) of the OME-Zarr image at ``path`` as an ImageFile over a dask array.

    ``metadata``: "axes" (the NGFF axes kept, dicts), "scale" and "translation" (the level's, one per kept
    axis), "level" and "levels" (how many the store has). InputError for a missing level, a time axis
    longer than 1, or other than 2 or 3 spatial axes.
    """
    zarr, da = _zarr()
    group = zarr.open_group(str(path), mode="r")
    multiscale = _multiscale(group)
    datasets = multiscale["datasets"]
    if not -len(datasets) <= level < len(datasets):
        raise InputError(f"{Path(path).name} has levels 0 to {len(datasets) - 1}, not {level}: choose one of those")
    level %= len(datasets)
    data = da.from_zarr(group[datasets[level]["path"]])
    axes = [axis if isinstance(axis, dict) else {"name": axis} for axis in multiscale.get("axes", [])]
    if len(axes) != data.ndim:  # NGFF 0.1-0.3 stores name no axes: (t, c, z, y, x) is implied
        axes = [{"name": name} for name in "tczyx"[-data.ndim :]]
    scale = _transform(datasets[level], "scale", data.ndim, 1.0)
    translation = _transform(datasets[level], "translation", data.ndim, 0.0)
    kept = []
    for index, axis in enumerate(axes):
        if axis.get("type") == "time" or axis["name"] == "t":
            if data.shape[index] != 1:
                raise InputError(
                    f"{Path(path).name} has {data.shape[index]} time points: predict one at a time (save each "
                    "as its own OME-Zarr image)"
                )
            continue
        kept.append(index)
    data = data[tuple(slice(None) if index in kept else 0 for index in range(data.ndim))]
    axes = [axes[index] for index in kept]
    scale = [scale[index] for index in kept]
    translation = [translation[index] for index in kept]
    channel = next((i for i, axis in enumerate(axes) if axis.get("type") == "channel" or axis["name"] == "c"), None)
    spatial = [i for i in range(len(axes)) if i != channel]
    if len(spatial) not in (2, 3):
        raise InputError(f"{Path(path).name} has {len(spatial)} spatial axes; prediction takes 2 (y, x) or 3 (z, y, x)")
    units = {axes[i].get("unit") for i in spatial}
    unit = _UNITS.get(units.pop()) if len(units) == 1 else None
    metadata = {"axes": axes, "scale": scale, "translation": translation, "level": level, "levels": len(datasets)}
    return ImageFile(
        data,
        "ome-zarr",
        spacing=tuple(scale[i] for i in spatial),
        unit=unit,
        channel_axis=channel,
        metadata=metadata,
    )


def at_level(image: ImageFile, level: int) -> ImageFile:
    """``image``, an OME-Zarr image as read, at resolution level ``level``; InputError for other formats."""
    if image.format != "ome-zarr":
        raise InputError(f"{image.path.name} is not a multiscale OME-Zarr image: only those have levels to choose")
    return read_ome_zarr(image.path, level) if level != image.metadata["level"] else image


def label_pyramid(labels: np.ndarray, count: int | None = None) -> list[np.ndarray]:
    """``labels`` (*, Y, X) and its coarser levels, every second pixel in y and x each: ``count`` levels, or
    (None) as many as keep y and x at least :data:`MIN_LEVEL_SIZE` (always level 0)."""
    pyramid = [labels]
    while (count is None or len(pyramid) < count) and min(pyramid[-1].shape[-2:]) >= 2 * MIN_LEVEL_SIZE:
        pyramid.append(pyramid[-1][..., ::2, ::2])
    return pyramid


def _label_axes_and_transforms(like: ImageFile | None, ndim: int):
    """The NGFF axes of a label image of ``ndim`` spatial axes and level 0's (scale, translation): ``like``'s
    spatial axes and its level's transformation, or plain (z,) y, x in pixels."""
    if like is not None and like.format == "ome-zarr":
        meta = like.metadata
        keep = [i for i in range(len(meta["axes"])) if i != like.channel_axis]
        return [meta["axes"][i] for i in keep], [meta["scale"][i] for i in keep], [meta["translation"][i] for i in keep]
    names = "zyx"[-ndim:]
    return [{"name": n, "type": "space"} for n in names], [1.0] * ndim, [0.0] * ndim


@contextlib.contextmanager
def _atomic_store(target: Path):
    """A temporary folder beside ``target`` to write a store into; on success it replaces ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    except OSError as err:
        raise output_error(target, err) from None
    try:
        yield tmp
        old = None
        if target.exists():  # --overwrite: the old store leaves only once the new one is complete
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as err:
        raise output_error(target, err) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_label_pyramid(
    target: str | Path, labels: np.ndarray, like: ImageFile | None = None, levels: int | None = None
) -> Path:
    """Write ``labels`` as a new OME-Zarr label image store at ``target`` (see the module notes); return it.

    like: the image (an OME-Zarr ImageFile) whose level the labels were predicted at: its axes, units, scale
    and translation; levels: how many levels (default: down to :data:`MIN_LEVEL_SIZE`).
    """
    try:
        import zarr
        from ome_zarr.format import CurrentFormat
        from ome_zarr.writer import add_metadata, write_multiscale
    except ImportError:
        raise InputError(f"writing OME-Zarr needs ome-zarr: {EXTRA}") from None
    target = Path(target)
    axes, scale, translation = _label_axes_and_transforms(like, labels.ndim)
    pyramid = label_pyramid(labels, levels)
    transforms = []
    for index in range(len(pyramid)):
        level_scale = [s * (2**index if a >= labels.ndim - 2 else 1) for a, s in enumerate(scale)]
        transforms.append(
            [{"type": "scale", "scale": level_scale}, {"type": "translation", "translation": translation}]
        )
    with _atomic_store(target) as tmp:
        root = zarr.open_group(str(tmp), mode="w")
        with warnings.catch_warnings():  # exact per-level transforms are what this store needs, deprecated or not
            warnings.simplefilter("ignore", DeprecationWarning)
            write_multiscale(pyramid, root, axes=axes, coordinate_transformations=transforms, name="labels")
        add_metadata(root, {"image-label": {"version": CurrentFormat().version}})
    return target


def _write(tmp: Path, labels: np.ndarray, like: ImageFile | None) -> None:
    write_label_pyramid(tmp, labels, like)


OME_ZARR = Format(
    "ome-zarr",
    (".ome.zarr",),
    read=read_ome_zarr,
    write=_write,
    title="OME-Zarr",
    directory=True,
)
