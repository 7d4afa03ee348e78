"""Segment's instance results in napari: the objects' table on the labels layer, their count, napari's table.

Instance heads (``task == "instances"``) give one id per object. Their labels layer gets napari's default
label colours (one per object, not the class colours), and its ``features`` the per-object table the
worker measured (:func:`~..engine.instances.object_features`: index, area in pixels, mean intensity), so
the status bar shows an object's area and intensity under the cursor and napari's Features table widget
(napari-builtins, opened beside it when napari has it) lists them all.
"""

from __future__ import annotations

import contextlib

from .._layer_metadata import OBJECT_COUNT_KEY

FEATURES_TABLE = ("napari", "Features table widget")  # napari-builtins' dock widget: (plugin, widget name)


def show_instances(viewer, layer, features: dict[str, list]) -> str:
    """Put the objects' table on ``layer`` and open napari's features table; returns the status text."""
    layer.features = features
    count = len(features["index"])
    layer.metadata[OBJECT_COUNT_KEY] = count
    with contextlib.suppress(KeyError, ValueError):  # a napari without napari-builtins' table: the layer has it
        viewer.window.add_plugin_dock_widget(*FEATURES_TABLE, tabify=True)  # in front: the result
    viewer.layers.selection.active = layer  # the table shows the active layer
    return f"{count} objects (area and mean intensity of each in the Features table)"
