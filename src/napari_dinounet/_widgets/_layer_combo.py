"""A layer picker that follows the viewer: layers are listed as they are added, removed or renamed."""

from __future__ import annotations

from qtpy.QtWidgets import QComboBox, QWidget

from ._layer_geometry import channel_axis_choices


class LayerComboBox(QComboBox):
    """Lists the viewer's layers of ``layer_types`` by name; ``none_text`` adds a first "no layer" entry, and
    ``more_texts`` more such entries after it (choices that are not a layer, e.g. "the part in view").

    The choice survives list changes as long as its layer stays in the viewer (an entry without a layer, as
    long as its text is listed).
    """

    def __init__(
        self,
        viewer,
        layer_types: tuple[type, ...],
        none_text: str | None = None,
        parent: QWidget | None = None,
        more_texts: tuple[str, ...] = (),
    ) -> None:
        super().__init__(parent)
        self._viewer = viewer
        self._layer_types = layer_types
        self._none_texts = ((none_text,) if none_text is not None else ()) + tuple(more_texts)
        self._shown: list = []  # the layer behind each item (None for the "no layer" item)
        self.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(12)
        events = viewer.layers.events
        for event in (events.inserted, events.removed, events.reordered):
            event.connect(self._on_layers_changed)
        for layer in viewer.layers:
            layer.events.name.connect(self.refresh)
        self.destroyed.connect(lambda *_: self._disconnect(events))
        self.refresh()

    def layer(self):
        """The chosen layer, or ``None``."""
        index = self.currentIndex()
        layer = self._shown[index] if 0 <= index < len(self._shown) else None
        return layer if layer is not None and layer in self._viewer.layers else None

    def set_layer(self, layer) -> None:
        if layer in self._shown:
            self.setCurrentIndex(self._shown.index(layer))

    def refresh(self, *_) -> None:
        current, current_text = self.layer(), self.currentText()
        self.blockSignals(True)
        self.clear()
        self._shown = [None] * len(self._none_texts)
        self._shown += [
            layer
            for layer in reversed(self._viewer.layers)  # top layer first, as in the list
            if isinstance(layer, self._layer_types)
        ]
        for index, layer in enumerate(self._shown):
            self.addItem(self._none_texts[index] if layer is None else layer.name)
        self.blockSignals(False)
        if current is not None and current in self._shown:
            self.set_layer(current)
        elif current is None and current_text in self._none_texts:
            self.setCurrentIndex(self._none_texts.index(current_text))
        else:
            self.setCurrentIndex(0 if self.count() else -1)
            self.currentIndexChanged.emit(self.currentIndex())

    def _on_layers_changed(self, event) -> None:
        if event.type == "inserted":
            event.value.events.name.connect(self.refresh)
        elif event.type == "removed":
            event.value.events.name.disconnect(self.refresh)
        self.refresh()

    def _disconnect(self, events) -> None:
        for name in ("inserted", "removed", "reordered"):
            emitter = getattr(events, name, None)  # gone when the viewer closed first
            if emitter is not None:
                emitter.disconnect(self._on_layers_changed)
        for layer in self._viewer.layers:
            layer.events.name.disconnect(self.refresh)


def fill_channel_axis_choices(combo: QComboBox, layer) -> None:
    """The channel-axis choices for ``layer`` (data: the axis, or None): its RGB colours, or none and each axis
    that may hold channels (:func:`._layer_geometry.channel_axis_choices`); Segment and Fine-tune offer the same."""
    combo.clear()
    if layer is not None and layer.rgb:
        combo.addItem("RGB colours", None)
    else:
        combo.addItem("none", None)
        for axis in channel_axis_choices(layer) if layer is not None else []:
            combo.addItem(f"axis {axis} ({layer.data.shape[axis]})", axis)
    combo.setEnabled(combo.count() > 1)
