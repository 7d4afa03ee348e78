"""The model fields both widgets show: backbone weights, heads checkpoint and device.

The fields edit the viewer's :class:`~._session.Session` (so Segment and Fine-tune always agree) and
are remembered between napari sessions (:mod:`._settings`).
"""

from __future__ import annotations

from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QMenu,
    QToolButton,
    QWidget,
)

from ..engine.names import DEVICES
from ._session import Session
from ._settings import recall, remember

HEADS_FILTER = "Dino U-Net heads (*.safetensors);;All files (*)"


def seed_session(session: Session) -> None:
    """Fill a new session with the fields remembered from the last napari session."""
    if not session.backbone_source:
        session.backbone_source = recall("model/backbone")
        device = recall("model/device", "auto")
        session.device = device if device in DEVICES else "auto"
    if session.heads_path is None and recall("model/heads"):
        session.heads_path = recall("model/heads")


def _path_row(edit: QLineEdit, button: QToolButton) -> QWidget:
    row = QWidget()
    layout = QHBoxLayout(row)
    layout.setContentsMargins(0, 0, 0, 0)
    layout.addWidget(edit)
    layout.addWidget(button)
    return row


class ModelForm(QWidget):
    """Backbone weights, heads checkpoint and device, kept in step with ``session``.

    ``heads_label`` names the heads row (Fine-tune calls them the heads to start from).
    """

    def __init__(self, session: Session, heads_label: str = "Heads", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._session = session
        seed_session(session)

        self.backbone_edit = QLineEdit(session.backbone_source)
        self.backbone_edit.setPlaceholderText("DINOv3 weights: .pth / .safetensors / HF folder, or random:tiny")
        self.backbone_edit.setToolTip(
            "Frozen DINOv3 backbone: Meta's official .pth, a timm .safetensors, or a Hugging Face folder "
            "(config.json + model.safetensors). random:<size> builds an untrained one for testing."
        )
        backbone_button = QToolButton(text="…")
        backbone_button.setPopupMode(QToolButton.InstantPopup)
        menu = QMenu(backbone_button)
        menu.addAction("Weights file…", self._browse_backbone_file)
        menu.addAction("Hugging Face folder…", self._browse_backbone_folder)
        backbone_button.setMenu(menu)

        self.heads_edit = QLineEdit(str(session.heads_path or ""))
        self.heads_edit.setPlaceholderText("heads checkpoint (.safetensors)")
        self.heads_edit.setToolTip("The trained adapter, projection and decoder (written by Fine-tune or the CLI).")
        heads_button = QToolButton(text="…")
        heads_button.clicked.connect(self._browse_heads)

        self.device_combo = QComboBox()
        self.device_combo.addItems(DEVICES)
        self.device_combo.setCurrentText(session.device)
        self.device_combo.setToolTip("auto: CUDA if present, else Apple MPS, else the CPU.")

        layout = QFormLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addRow("Backbone", _path_row(self.backbone_edit, backbone_button))
        layout.addRow(heads_label, _path_row(self.heads_edit, heads_button))
        layout.addRow("Device", self.device_combo)

        self.backbone_edit.editingFinished.connect(lambda: self.set_backbone(self.backbone_edit.text()))
        self.heads_edit.editingFinished.connect(lambda: self.set_heads(self.heads_edit.text()))
        self.device_combo.currentTextChanged.connect(self._device_chosen)
        session.backbone_changed.connect(self._show_backbone)
        session.heads_changed.connect(self._show_heads)
        self.destroyed.connect(lambda *_: self._disconnect(session))

    def apply_typed(self) -> None:
        """Use the paths as typed, also when the user did not press Enter or leave the field before a run."""
        self.set_backbone(self.backbone_edit.text())
        self.set_heads(self.heads_edit.text())

    def set_backbone(self, source: str) -> None:
        self._session.backbone_source = source
        remember("model/backbone", self._session.backbone_source)
        self._show_backbone(self._session.backbone_source, self._session.device)

    def set_heads(self, path: str) -> None:
        self._session.heads_path = path.strip() or None
        remember("model/heads", str(self._session.heads_path or ""))
        self._show_heads(self._session.heads_path)

    def _device_chosen(self, device: str) -> None:
        self._session.device = device
        remember("model/device", device)

    def _show_backbone(self, source: str, device: str) -> None:
        if self.backbone_edit.text() != source:
            self.backbone_edit.setText(source)
        if self.device_combo.currentText() != device:
            self.device_combo.blockSignals(True)
            self.device_combo.setCurrentText(device)
            self.device_combo.blockSignals(False)

    def _show_heads(self, path) -> None:
        text = str(path or "")
        if self.heads_edit.text() != text:
            self.heads_edit.setText(text)

    def _browse_backbone_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self,
            "DINOv3 backbone weights",
            self.backbone_edit.text(),
            "Weights (*.pth *.pt *.safetensors);;All files (*)",
        )
        if path:
            self.set_backbone(path)

    def _browse_backbone_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Hugging Face DINOv3 folder", self.backbone_edit.text())
        if path:
            self.set_backbone(path)

    def _browse_heads(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Heads checkpoint", self.heads_edit.text(), HEADS_FILTER)
        if path:
            self.set_heads(path)

    def _disconnect(self, session: Session) -> None:
        session.backbone_changed.disconnect(self._show_backbone)
        session.heads_changed.disconnect(self._show_heads)
