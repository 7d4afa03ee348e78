"""A label picker by class name: napari's own picker shows only numbers (and a colour swatch).

:class:`ClassPicker` follows the viewer's active Labels layer. When that layer names its classes
(``layer.metadata["class_names"]``, as Segment's labels and the samples' ground truth do), it lists them
("1 nucleus") and choosing one selects that label value for the brush; painting another value in napari's
own picker shows here too. Without class names it is disabled and says why.
"""

from __future__ import annotations

from contextlib import suppress

from napari.layers import Labels
from qtpy.QtWidgets import QComboBox

from .._layer_metadata import CLASS_NAMES_KEY


class ClassPicker(QComboBox):
    """Choose the brush's label value of the active Labels layer by its class name."""

    def __init__(self, viewer, parent=None) -> None:
        super().__init__(parent)
        self._viewer = viewer
        self._layer: Labels | None = None
        self.setToolTip(
            "The class the brush paints in the selected labels layer, by name (napari's label box shows the "
            "number); the layer's class names come from Segment or the sample data"
        )
        self.activated.connect(self._choose)
        viewer.layers.selection.events.active.connect(self._follow)
        self.destroyed.connect(lambda *_: self._disconnect())
        self._follow()

    def _disconnect(self) -> None:
        with suppress(RuntimeError, TypeError, ValueError):  # the viewer went first
            self._viewer.layers.selection.events.active.disconnect(self._follow)
        self._watch(None)

    def _watch(self, layer: Labels | None) -> None:
        if self._layer is not None:
            self._layer.events.selected_label.disconnect(self._show_selected)
            self._layer.events.features.disconnect(self._follow)
        self._layer = layer
        if layer is not None:
            layer.events.selected_label.connect(self._show_selected)
            # Segment adds its labels layer first and names the classes after: list them when they arrive
            layer.events.features.connect(self._follow)

    def _follow(self, *_) -> None:
        """Show the classes of the active layer (when it is a Labels layer that names them)."""
        active = self._viewer.layers.selection.active
        layer = active if isinstance(active, Labels) else None
        if layer is not self._layer:
            self._watch(layer)
        self.clear()
        names = list(layer.metadata.get(CLASS_NAMES_KEY) or []) if layer is not None else []
        if not names:
            self.addItem("select a labels layer with class names" if layer is None else "this layer names no classes")
            self.setEnabled(False)
            return
        for value, name in enumerate(names):
            self.addItem(f"{value} {name}", value)
        self.setEnabled(True)
        self._show_selected()

    def _show_selected(self, *_) -> None:
        if self._layer is None:
            return
        index = self.findData(int(self._layer.selected_label))
        if index >= 0:
            self.setCurrentIndex(index)

    def _choose(self, index: int) -> None:
        value = self.itemData(index)
        if self._layer is not None and value is not None:
            self._layer.selected_label = int(value)
