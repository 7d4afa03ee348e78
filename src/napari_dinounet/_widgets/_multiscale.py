"""Segment's Level field: which level of a multiscale image layer (``layer.data`` a list of arrays, finest
first, e.g. dask arrays from napari-ome-zarr) to segment, and the layer view that plans a run at it.

The field lists every level with its size and estimated time (:func:`~..engine.multiscale.estimated_seconds`)
and starts at the finest level that fits :data:`~..engine.multiscale.DEFAULT_BUDGET_S`
(:func:`~..engine.multiscale.default_level`). For a single-level layer it is disabled. The run reads only the
chosen level, one tile band at a time (a dask level is never loaded whole), and the labels layer gets that
level's shape with :func:`~..engine.multiscale.level_geometry`, so it lands on the image.
"""

from __future__ import annotations

from qtpy.QtWidgets import QComboBox

from ..engine.estimate import format_duration
from ..engine.multiscale import (
    DEFAULT_BUDGET_S,
    cpu_seconds_per_tile,
    default_level,
    estimated_seconds,
    level_factors,
    level_geometry,
)

DEFAULT_TILE = 512  # the estimate's tile while the form says "auto" (the usual training patch)


class LayerLevel:
    """What :func:`._layer_geometry.plan_run` reads of a layer, for one level of a multiscale layer: that
    level's data, level-0 geometry scaled by the level's factors (``scale``, ``translate``), the layer's name,
    colours, units and metadata."""

    def __init__(self, layer, level: int):
        self.layer = layer
        self.level = level
        self.data = layer.data[level]
        self.factors = level_factors([tuple(d.shape) for d in layer.data])[level]
        self.scale, self.translate = level_geometry(layer.scale, layer.translate, self.factors[: layer.ndim])
        self.name, self.rgb, self.ndim, self.metadata = layer.name, layer.rgb, layer.ndim, layer.metadata
        self.units = getattr(layer, "units", None)
        self.multiscale = False


def _planes(layer) -> list[tuple[int, int]]:
    """(height, width) of each level of a layer: its last two layer axes (before the colours of RGB)."""
    last = -2 if layer.rgb else -1
    return [(int(d.shape[last - 1]), int(d.shape[last])) for d in layer.data]


class LevelPicker(QComboBox):
    """The Level field (see the module docstring)."""

    def __init__(self):
        super().__init__()
        self.setToolTip(
            "For multiscale images: the resolution level to segment (0: the finest). It starts at the finest level "
            f"estimated to take under {DEFAULT_BUDGET_S:.0f} s on a laptop CPU (ViT-S); the labels "
            "layer gets that level's pixels, placed on the image."
        )
        self.set_layer(None)

    def set_layer(self, layer, tile: int | None = None, step: float = 0.5) -> None:
        """List ``layer``'s levels (estimated with ``tile``, default :data:`DEFAULT_TILE`) and pick the default."""
        self.clear()
        if layer is None or not getattr(layer, "multiscale", False):
            self.addItem("single level")
            self.setEnabled(False)
            return
        tile = tile or DEFAULT_TILE
        planes = _planes(layer)
        per_tile = cpu_seconds_per_tile(tile)
        for index, (height, width) in enumerate(planes):
            seconds = estimated_seconds([(height, width)], tile, step, per_tile)
            self.addItem(f"{index}: {height} x {width}, {format_duration(seconds)}", index)
        self.setCurrentIndex(default_level(planes, tile, step, seconds_per_tile=per_tile))
        self.setEnabled(True)

    def at_level(self, layer):
        """``layer`` itself when it has one level, else its :class:`LayerLevel` at the chosen level."""
        if not getattr(layer, "multiscale", False):
            return layer
        return LayerLevel(layer, self.currentData() or 0)
