"""Multiscale images (a list of arrays, finest first, as napari-ome-zarr gives): which level to segment,
and where its labels land.

Level ``k`` is segmented like any array: prediction reads it one tile band at a time (and the statistics
pass one block of :data:`~.normalize._BLOCK_ELEMENTS` values at a time), so a dask level is never loaded
whole. Its labels have level ``k``'s shape; placed with :func:`level_geometry` (level 0's scale times the
level's downsampling factor per axis, level 0's translation, the convention napari draws multiscale levels
with) they fall on the image in world coordinates.

The default level (:func:`default_level`) is the finest whose estimated time fits a budget: tiles at that
level (:func:`plane_tiles`) times seconds per tile, from :mod:`.estimate`'s CPU table (the backbone's time
per crop, ViT-S on a 2-core CPU) when no measured figure is given.
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import InputError
from .estimate import _interpolated
from .tiling import fit_tile, grid

DEFAULT_BUDGET_S = 60.0  # what Segment proposes to wait for by default


def level_factors(shapes: Sequence[Sequence[int]]) -> list[tuple[float, ...]]:
    """Per level, per axis: how many level-0 pixels one pixel of that level spans (level 0: all 1.0)."""
    if not shapes:
        raise InputError("a multiscale image needs at least one level")
    finest = shapes[0]
    for shape in shapes:
        if len(shape) != len(finest):
            raise InputError(f"the levels have different numbers of axes ({len(finest)} and {len(shape)})")
    return [tuple(f / s for f, s in zip(finest, shape)) for shape in shapes]


def level_geometry(
    scale: Sequence[float], translate: Sequence[float], factors: Sequence[float]
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(scale, translate) of a layer holding one level's pixels so that it lands on the multiscale image:
    level 0's scale times the level's factors, level 0's translate (napari draws level ``k``'s pixel ``i``
    at level-0 pixel ``i * factor``)."""
    return tuple(float(s) * f for s, f in zip(scale, factors)), tuple(float(t) for t in translate)


def plane_tiles(height: int, width: int, tile: int, step: float) -> int:
    """Tiles the sliding window runs over one (height, width) plane."""
    ys, xs = grid(height, width, fit_tile((tile, tile), height, width), step)
    return len(ys) * len(xs)


def cpu_seconds_per_tile(tile: int) -> float:
    """The CPU table's seconds for one tile of ``tile`` pixels (the backbone's time per crop, ViT-S)."""
    return _interpolated(tile, 2)


def estimated_seconds(planes: Sequence[tuple[int, int]], tile: int, step: float, seconds_per_tile: float) -> float:
    """Seconds to segment ``planes`` (height, width) at ``seconds_per_tile``."""
    return sum(plane_tiles(h, w, tile, step) for h, w in planes) * seconds_per_tile


def default_level(
    plane_shapes: Sequence[tuple[int, int]],
    tile: int,
    step: float = 0.5,
    budget_s: float = DEFAULT_BUDGET_S,
    seconds_per_tile: float | None = None,
) -> int:
    """The finest level whose (height, width) plane is estimated to take at most ``budget_s`` seconds, else
    the coarsest. ``seconds_per_tile`` None: :func:`cpu_seconds_per_tile`."""
    per_tile = cpu_seconds_per_tile(tile) if seconds_per_tile is None else seconds_per_tile
    for index, plane in enumerate(plane_shapes):
        if estimated_seconds([plane], tile, step, per_tile) <= budget_s:
            return index
    return len(plane_shapes) - 1


def region_at_level(
    box: Sequence[tuple[float, float]], factors: Sequence[float], shape: Sequence[int]
) -> tuple[tuple[int, int], ...]:
    """A box in level-0 pixel coordinates (per axis (low, high), e.g. what the viewer shows) as the
    half-open pixel ranges of a level with these ``factors`` and ``shape`` that cover it, clipped to the
    level: the ``region`` to pass to :meth:`~.predictor.Predictor.predict`. InputError when the box misses
    the level."""
    ranges = []
    for (low, high), factor, size in zip(box, factors, shape):
        start = max(0, int(low // factor))
        stop = min(size, int(-(-high // factor)))
        if stop <= start:
            raise InputError(f"the region {tuple(box)} lies outside the image: pan to the image, then run again")
        ranges.append((start, stop))
    return tuple(ranges)
