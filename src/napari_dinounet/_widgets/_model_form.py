"""The model fields both widgets show: backbone weights, heads checkpoint (with a summary of it) and device.

The fields edit the viewer's :class:`~._session.Session` (so Segment and Fine-tune always agree) and
are remembered between napari sessions (:mod:`._settings`); "allow another backbone" is not (a risky
choice is made again each session). :func:`for_the_widgets` turns the engine's advice, which names
Python and CLI arguments, into the fields of these widgets.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from qtpy.QtCore import QEvent, QSize, Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMenu,
    QScrollArea,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ..engine.errors import DinoUNetError
from ..engine.names import DEVICES
from ._session import Session
from ._settings import recall, remember

HEADS_FILTER = "Dino U-Net heads (*.safetensors);;All files (*)"
LINK_COLOR = "#5fa8ff"  # readable on napari's dark and light themes
ALLOW_BACKBONE_TEXT = "allow another backbone"

logger = logging.getLogger(__name__)

# the engine's advice in Python/CLI terms -> what the widgets let the user do (pattern, replacement)
_WIDGET_ADVICE = (
    (
        re.compile(r"\s*\(allow_backbone_mismatch=True, --allow-backbone-mismatch\)"),
        f' (tick "{ALLOW_BACKBONE_TEXT}" under the heads)',
    ),
    (re.compile(r"\(channel_axis=N; --channel-axis N in the CLI; in Segment, ([^)]*)\)"), r"(\1)"),
    (re.compile(r"\s*\(channel_axis=N in Python, --channel-axis N in the CLI\)"), " (the Channel axis field)"),
    (re.compile(r"with channels=\(i, j, k\) \(1 to 3 indices\)"), "in the Channels field (1 to 3 channel numbers)"),
    (re.compile(r"\s*\(num_classes, --classes N in the CLI\)"), ""),
)


def widget_advice(message: str, rules=_WIDGET_ADVICE) -> str:
    """``message`` with the engine's Python/CLI advice rewritten into the widgets' fields: ``rules`` are
    (pattern, replacement) pairs for ``re.sub``, by default the ones Segment, Export and the model form share."""
    for pattern, replacement in rules:
        message = re.sub(pattern, replacement, message)
    return message


@contextmanager
def for_the_widgets() -> Iterator[None]:
    """Re-raise the engine's errors (DinoUNetError) with :func:`widget_advice` applied; the engine's own
    message goes to the log. Qt-free: worker generators use it."""
    try:
        yield
    except DinoUNetError as err:
        message = str(err)
        rewritten = widget_advice(message)
        if rewritten != message:
            logger.info("engine message, rewritten for the widget: %s", message)
            err.args = (rewritten,)
        raise


def help_url() -> str | None:
    """Where the plugin's guide is: the package's documentation URL (its metadata), else the README of a
    source checkout, else None."""
    from importlib import metadata

    try:
        urls = metadata.metadata("napari-dinounet").get_all("Project-URL") or []
    except metadata.PackageNotFoundError:
        urls = []
    by_label = dict(url.split(", ", 1) for url in urls if ", " in url)
    for label in ("Documentation", "documentation", "Homepage", "homepage", "Source", "source"):
        if label in by_label:
            return by_label[label]
    readme = Path(__file__).resolve().parents[3] / "README.md"
    return readme.as_uri() if readme.is_file() else None


class _VerticalScrollArea(QScrollArea):
    """Scrolls up and down only: as wide as its content needs (never clipped at the side), as short as a
    few rows."""

    def setWidget(self, widget: QWidget) -> None:
        super().setWidget(widget)
        widget.installEventFilter(self)

    def eventFilter(self, watched, event) -> bool:
        if watched is self.widget() and event.type() == QEvent.LayoutRequest:
            self.updateGeometry()  # the content's minimum width changed: so did ours
        return super().eventFilter(watched, event)

    def minimumSizeHint(self) -> QSize:
        content = self.widget()
        width = content.minimumSizeHint().width() if content is not None else 0
        return QSize(width + self.verticalScrollBar().sizeHint().width(), super().minimumSizeHint().height())


def dock_layout(dock: QWidget) -> QVBoxLayout:
    """The layout to fill for a dock widget whose content scrolls when napari gives it less height than it
    wants: its minimum height stays small, so several docks fit a laptop screen, one above the other."""
    content = QWidget()
    scroll = _VerticalScrollArea()
    scroll.setWidget(content)
    scroll.setWidgetResizable(True)
    scroll.setFrameShape(QFrame.NoFrame)
    scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
    outer = QVBoxLayout(dock)
    outer.setContentsMargins(0, 0, 0, 0)
    outer.addWidget(scroll)
    return QVBoxLayout(content)


def help_label() -> QLabel:
    """A small "Help: the guide" link (opens in the browser), for the foot of a dock."""
    url = help_url()
    if url:
        text = f'<a href="{url}" style="color: {LINK_COLOR}">Help: the napari-dinounet guide</a>'
    else:
        text = "Help: see napari-dinounet's README"
    label = QLabel(text)
    label.setOpenExternalLinks(True)
    label.setToolTip(url or "The README of the napari-dinounet package")
    return label


def heads_metadata(path: str | Path | None):
    """The heads checkpoint's :class:`~..engine.checkpoint.HeadsMetadata` (its header only: no weights are
    loaded), or None when there is no such readable file."""
    if not path or not Path(path).is_file():
        return None
    from ._llvm_clash import avoid_triton_llvm_clash

    avoid_triton_llvm_clash()  # the checkpoint module imports torch
    from ..engine.checkpoint import read_metadata

    try:
        return read_metadata(path)
    except DinoUNetError:
        return None


def heads_summary(path: str | Path | None) -> str:
    """One line about a heads checkpoint: classes, channels, patch, backbone and what it was trained on."""
    if not path:
        return "no heads chosen"
    if not Path(path).is_file():
        return "no such file"
    metadata = heads_metadata(path)
    if metadata is None:
        return "not a readable heads checkpoint"
    classes = ", ".join(metadata.class_names)
    channels = (
        f"{metadata.in_channels} channel{'s' if metadata.in_channels != 1 else ''}"
        if metadata.in_channels
        else "channels unknown"
    )
    patch = metadata.patch_size
    patch = f"{patch[0]}×{patch[1]}" if isinstance(patch, tuple) else f"{patch}" if patch else "?"
    backbone = metadata.backbone_variant or "?"
    if metadata.backbone_sha256 is None:
        backbone += " (random weights)"
    parts = [f"{metadata.num_classes} classes ({classes})", channels, f"patch {patch}", f"backbone {backbone}"]
    trained = _trained_on(metadata.training)
    if trained:
        parts.append(trained)
    return "; ".join(parts)


def _trained_on(training: dict) -> str:
    """What a checkpoint's training summary says it was trained on, briefly ('' when it says nothing)."""
    if not isinstance(training, dict):
        return ""
    settings = training.get("settings") if isinstance(training.get("settings"), dict) else {}
    for key in ("data", "dataset", "images", "trained_on", "source"):
        value = training.get(key, settings.get(key))
        if isinstance(value, str) and value:
            return f"trained on {value}"
    steps = training.get("steps", settings.get("steps"))
    return f"{steps} training steps" if isinstance(steps, int) else ""


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
        backbone_button.setToolTip("Choose the backbone weights: a file, or a Hugging Face folder.")
        heads_button.setToolTip("Choose a heads checkpoint (.safetensors).")

        self.heads_info = QLabel()
        self.heads_info.setWordWrap(True)
        self.heads_info.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.heads_info.setToolTip("What the heads file says about itself (read from its header).")
        self.allow_backbone_check = QCheckBox(ALLOW_BACKBONE_TEXT)
        self.allow_backbone_check.setChecked(session.allow_backbone_mismatch)
        self.allow_backbone_check.setToolTip(
            "Use heads with a backbone other than the one they were trained with (another size or weights): "
            "only when you know its features agree. Not remembered between sessions."
        )
        self.allow_backbone_check.toggled.connect(self._allow_backbone_toggled)

        layout = QFormLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addRow("Backbone", _path_row(self.backbone_edit, backbone_button))
        layout.addRow(heads_label, _path_row(self.heads_edit, heads_button))
        layout.addRow(self.heads_info)
        device_row = QHBoxLayout()
        device_row.addWidget(self.device_combo, 1)
        device_row.addWidget(self.allow_backbone_check)
        layout.addRow("Device", device_row)

        self.backbone_edit.editingFinished.connect(lambda: self.set_backbone(self.backbone_edit.text()))
        self.heads_edit.editingFinished.connect(lambda: self.set_heads(self.heads_edit.text()))
        self.device_combo.currentTextChanged.connect(self._device_chosen)
        session.backbone_changed.connect(self._show_backbone)
        session.heads_changed.connect(self._show_heads)
        session.allow_backbone_changed.connect(self._show_allow_backbone)
        self.destroyed.connect(lambda *_: self._disconnect(session))
        self.heads_info.setText(heads_summary(session.heads_path))

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

    def _allow_backbone_toggled(self, on: bool) -> None:
        self._session.allow_backbone_mismatch = on

    def _show_allow_backbone(self, on: bool) -> None:
        if self.allow_backbone_check.isChecked() != on:
            self.allow_backbone_check.setChecked(on)

    def _show_heads(self, path) -> None:
        text = str(path or "")
        if self.heads_edit.text() != text:
            self.heads_edit.setText(text)
        self.heads_info.setText(heads_summary(path))

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
        session.allow_backbone_changed.disconnect(self._show_allow_backbone)
