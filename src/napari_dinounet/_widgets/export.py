"""The Export widget: save a labels layer (TIFF, PNG, NIfTI), copy the current heads checkpoint, and write
the heads with their backbone as a bioimage.io model package (the ``bioimageio`` extra).

Labels go through the same function as napari's File > Save Layers (:func:`napari_dinounet._writer.write_labels`),
so both paths give identical files: TIFF with the layer's pixel size, PNG for 2D labels, NIfTI with the
affine the labels came with. The heads checkpoint in use (``get_session(viewer).heads_path``, set by the
Segment and Fine-tune widgets) is copied to a chosen file atomically. Every write replaces its target in
one rename, so a failed export leaves any earlier file as it was. The bioimage.io package is built in a
worker (:func:`bioimageio_job`, :mod:`..engine.bioimageio`), from the session's backbone and heads, with test
tensors cut from the chosen image layer.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QToolButton,
    QWidget,
)

from .._writer import export_refusals, formats_for, write_labels
from ..engine.atomic import atomic_path
from ..engine.errors import CheckpointError, DinoUNetError, InputError
from ..engine.io import file_name_for, get_format, registered_formats, with_extension
from ._jobs import Job
from ._layer_combo import LayerComboBox
from ._model_form import HEADS_FILTER, dock_layout, help_label, seed_session
from ._session import get_session
from ._settings import recall, remember

HEADS_EXTENSION = ".safetensors"
ZOO_FILTER = "bioimage.io model (*.zip)"


def bioimageio_job(session, backbone_source: str, device: str, heads: Path, out: Path, image, channel_axis):
    """Worker body: the session's backbone (loaded unless cached), the heads, then the package at ``out``."""
    from ..engine.bioimageio import check_environment, export_package
    from ..engine.device import pick_device
    from ..engine.predictor import Predictor
    from ..engine.progress import Progress

    check_environment()  # before the backbone loads
    device = pick_device(device)
    backbone = yield from session.backbone_steps(backbone_source, device)
    yield Progress("writing the bioimage.io package", 0, 1, str(out))
    predictor = Predictor.from_checkpoint(heads, backbone, device=device)
    return export_package(predictor, out, image, channel_axis=channel_axis)


def heads_target(source: str | Path | None, target: str | Path) -> Path:
    """Check that the heads checkpoint ``source`` can be copied to ``target``; return the target file
    (``.safetensors`` added when missing).

    Raises CheckpointError when there is no current heads file, InputError when ``target`` is that file.
    """
    if source is None:
        raise CheckpointError(
            "there is no heads checkpoint yet: choose one in the Segment widget, or train "
            "one with Fine-tune, then export it"
        )
    source, target = Path(source), Path(target).expanduser()
    if not target.name.endswith(HEADS_EXTENSION):
        target = target.with_name(target.name + HEADS_EXTENSION)
    if not source.is_file():
        raise CheckpointError(
            f"{source}: the current heads file no longer exists; choose another in the Segment widget"
        )
    if target.exists() and target.samefile(source):
        raise InputError(f"{target} is the current heads file itself; choose another file name")
    return target


def copy_heads(source: str | Path | None, target: str | Path) -> Path:
    """Copy the heads checkpoint ``source`` to ``target`` atomically (see :func:`heads_target`); return the file."""
    target = heads_target(source, target)
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
    return target


class _FormatCombo(QComboBox):
    """The format list; which formats a layer allows is checked again each time the list opens, since
    a layer's metadata (e.g. the affine Segment adds) can change without an event."""

    def __init__(self, before_popup) -> None:
        super().__init__()
        self._before_popup = before_popup

    def showPopup(self) -> None:
        self._before_popup()
        super().showPopup()


def _path_row(edit: QLineEdit, on_browse, tooltip: str) -> QWidget:
    row = QWidget()
    layout = QHBoxLayout(row)
    layout.setContentsMargins(0, 0, 0, 0)
    layout.addWidget(edit)
    button = QToolButton(text="…")
    button.setToolTip(tooltip)
    button.clicked.connect(on_browse)
    layout.addWidget(button)
    return row


def _side_by_side(*widgets: QWidget) -> QWidget:
    row = QWidget()
    layout = QHBoxLayout(row)
    layout.setContentsMargins(0, 0, 0, 0)
    for widget in widgets:
        layout.addWidget(widget, 1)
    return row


def _form_box(title: str, *rows: tuple[str, QWidget] | QWidget) -> QGroupBox:
    """A titled group of form rows: (label, field) pairs, or a widget spanning the row."""
    box = QGroupBox(title)
    form = QFormLayout(box)
    for row in rows:
        form.addRow(*(row if isinstance(row, tuple) else (row,)))
    return box


class ExportWidget(QWidget):
    """Dock widget: export a labels layer to a file, and the current heads checkpoint to a file."""

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self._viewer = napari_viewer
        self._session = get_session(napari_viewer)
        seed_session(self._session)
        self._labels_path_suggested = True  # the path field follows the layer until the user types one
        self._confirmed_target: Path | None = None  # a file dialog already asked about overwriting it
        self._layer = None  # the labels layer the format and path were last chosen for

        self.layer_combo = LayerComboBox(napari_viewer, (Labels,), parent=self)
        self.format_combo = _FormatCombo(self._refresh_formats)
        for fmt in registered_formats():
            if fmt.exported:
                self.format_combo.addItem(fmt.export_title, fmt.name)
        self.labels_path_edit = QLineEdit()
        self.labels_path_edit.setPlaceholderText("file to write")
        self.labels_path_edit.setToolTip("The file the labels go to; the format's extension is added.")
        self.layer_combo.setToolTip("The labels layer to save (e.g. '<image> labels' from Segment).")
        self.export_labels_button = QPushButton("Export labels")
        self.export_labels_button.setToolTip(
            "Write the chosen labels layer; an existing file is replaced only "
            "after you confirm, and only once the new file is complete."
        )

        labels_box = _form_box(
            "Labels",
            ("Layer", _side_by_side(self.layer_combo, self.format_combo)),
            ("File", _path_row(self.labels_path_edit, self._browse_labels, "Choose the file to write.")),
            self.export_labels_button,
        )

        self.heads_label = QLabel()
        self.heads_label.setWordWrap(True)
        self.heads_path_edit = QLineEdit()
        self.heads_path_edit.setPlaceholderText("file to write (.safetensors)")
        self.heads_path_edit.setToolTip("Where the copy of the heads checkpoint in use goes.")
        self.heads_label.setToolTip("The heads checkpoint Segment and Fine-tune use now.")
        self._heads_path_suggested = True  # the heads file name follows the heads in use until the user types one
        self.export_heads_button = QPushButton("Export heads")
        self.export_heads_button.setToolTip(
            "Copy the heads checkpoint in use (adapter, projection, decoder and "
            "their settings; never the backbone) to the file above."
        )
        heads_box = _form_box(
            "Heads checkpoint",
            ("In use", self.heads_label),
            ("File", _path_row(self.heads_path_edit, self._browse_heads, "Choose the file to write.")),
            self.export_heads_button,
        )

        self.zoo_image_combo = LayerComboBox(napari_viewer, (Image,), parent=self)
        self.zoo_image_combo.setToolTip("An image like the training ones: its middle gives the package's test tensors.")
        self.zoo_path_edit = QLineEdit()
        self.zoo_path_edit.setPlaceholderText("model.zip")
        self.zoo_path_edit.setToolTip("The bioimage.io model package to write (.zip).")
        self.export_zoo_button = QPushButton("Export for bioimage.io")
        self.export_zoo_button.setToolTip(
            "Write the heads in use WITH their backbone (the DINOv3 licence applies to it) as a bioimage.io model "
            "package: weights, architecture, test tensors, cover, licence and training summary."
        )
        self.job: Job | None = None
        zoo_box = _form_box(
            "bioimage.io model",
            ("Test image", self.zoo_image_combo),
            ("File", _path_row(self.zoo_path_edit, self._browse_zoo, "Choose the package to write.")),
            self.export_zoo_button,
        )

        self.status_label = QLabel()
        self.status_label.setWordWrap(True)
        layout = dock_layout(self)
        layout.addWidget(labels_box)
        layout.addWidget(heads_box)
        layout.addWidget(zoo_box)
        layout.addWidget(self.status_label)
        layout.addStretch(1)
        layout.addWidget(help_label())

        self.layer_combo.currentIndexChanged.connect(self._layer_chosen)
        self.format_combo.currentIndexChanged.connect(self._format_chosen)
        self.labels_path_edit.textEdited.connect(self._path_typed)
        self.heads_path_edit.textEdited.connect(self._heads_path_typed)
        self.export_labels_button.clicked.connect(self.export_labels)
        self.export_heads_button.clicked.connect(self.export_heads)
        self.export_zoo_button.clicked.connect(self.export_bioimageio)
        self._session.heads_changed.connect(self._show_heads)
        self.destroyed.connect(lambda *_: self._session.heads_changed.disconnect(self._show_heads))

        active = napari_viewer.layers.selection.active
        if isinstance(active, Labels):
            self.layer_combo.set_layer(active)
        self._layer_chosen()
        self._show_heads(self._session.heads_path)

    # -------------------------------------------------------------------------------------- labels

    def format(self) -> str:
        return self.format_combo.currentData()

    def set_format(self, fmt: str) -> None:
        self.format_combo.setCurrentIndex(self.format_combo.findData(fmt))

    def labels_target(self) -> Path | None:
        """The file the labels go to: the typed path with the chosen format's extension."""
        text = self.labels_path_edit.text().strip()
        return with_extension(Path(text).expanduser(), self.format()) if text else None

    def _refresh_formats(self) -> list[str]:
        """Enable the formats the chosen layer can be written to (without a layer: the first); return them."""
        layer = self.layer_combo.layer()
        allowed = formats_for(layer.ndim, layer.metadata) if layer is not None else [self.format_combo.itemData(0)]
        model = self.format_combo.model()
        for row in range(self.format_combo.count()):
            model.item(row).setEnabled(self.format_combo.itemData(row) in allowed)
        self.format_combo.setToolTip(self._format_help(layer))
        return allowed

    def _layer_chosen(self, *_) -> None:
        layer = self.layer_combo.layer()
        allowed = self._refresh_formats()
        new_layer = layer is not self._layer
        self._layer = layer
        if new_layer or self.format() not in allowed:
            # labels that came from a world-space image (NIfTI) go back to its format; the rest to the first
            # format (TIFF; the user may pick PNG)
            self.set_format(next((name for name in allowed if get_format(name).world_affine), allowed[0]))
        if new_layer:
            self._suggest_labels_path()
        self.export_labels_button.setEnabled(layer is not None)

    @staticmethod
    def _format_help(layer) -> str:
        if layer is None:
            return "No labels layer in the viewer."
        refusals = export_refusals(layer.ndim, layer.metadata).values()
        return " ".join(f"{layer.name!r}: {reason}." for reason in refusals if reason) or "All formats available."

    def _format_chosen(self, *_) -> None:
        target = self.labels_target()
        if target is not None:
            self.labels_path_edit.setText(str(target))
        self._confirmed_target = None

    def _path_typed(self, text: str) -> None:
        self._labels_path_suggested = not text.strip()
        self._confirmed_target = None

    def _suggest_labels_path(self) -> None:
        layer = self.layer_combo.layer()
        if layer is None or not self._labels_path_suggested:
            return
        folder = Path(recall("export/folder", str(Path.home())))
        self.labels_path_edit.setText(str(folder / file_name_for(layer.name, self.format())))
        self._confirmed_target = None

    def _browse_labels(self) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self, "Export labels", self.labels_path_edit.text(), get_format(self.format()).dialog_filter
        )
        if path:
            self.labels_path_edit.setText(path)
            self._labels_path_suggested = False
            self._confirmed_target = self.labels_target()

    def export_labels(self) -> Path | None:
        """Write the chosen labels layer to :meth:`labels_target`; returns the file, or None if nothing was written."""
        layer = self.layer_combo.layer()
        target = self.labels_target()
        if layer is None:
            return self._fail("Export failed: no labels layer; segment an image or open a labels layer first")
        if target is None:
            return self._fail("Export failed: no file name; type one or press … to choose it")
        if not self._may_replace(target):
            return None
        data, attributes, _ = layer.as_layer_data_tuple()
        written = self._write(target, lambda: write_labels(str(target), data, attributes)[0])
        if written is None:
            return None
        shape = "×".join(str(s) for s in layer.data.shape)
        return self._done(written, f"Saved {layer.name!r} ({shape}) to {written}")

    # --------------------------------------------------------------------------------------- heads

    def _show_heads(self, path) -> None:
        self.heads_label.setText(str(path) if path else "none yet (choose one in Segment, or train with Fine-tune)")
        self.export_heads_button.setEnabled(path is not None)
        if path and (self._heads_path_suggested or not self.heads_path_edit.text().strip()):
            folder = Path(recall("export/folder", str(Path.home())))
            self.heads_path_edit.setText(str(folder / Path(path).name))
            self._heads_path_suggested = True

    def _heads_path_typed(self, text: str) -> None:
        self._heads_path_suggested = not text.strip()

    def _browse_heads(self) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self, "Export heads checkpoint", self.heads_path_edit.text(), HEADS_FILTER
        )
        if path:
            self.heads_path_edit.setText(path)
            self._heads_path_suggested = False
            self._confirmed_target = Path(path)

    def export_heads(self) -> Path | None:
        """Copy the session's heads checkpoint to the typed file; returns it, or None if nothing was written."""
        text = self.heads_path_edit.text().strip()
        if not text:
            return self._fail("Export failed: no file name for the heads; type one or press … to choose it")
        try:
            target = heads_target(self._session.heads_path, text)
        except DinoUNetError as err:
            return self._fail(f"Export failed: {err}")
        if not self._may_replace(target):
            return None
        written = self._write(target, lambda: copy_heads(self._session.heads_path, target))
        if written is None:
            return None
        return self._done(written, f"Saved the heads checkpoint to {written}")

    # -------------------------------------------------------------------------------------- bioimage.io

    def _browse_zoo(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export a bioimage.io model", self.zoo_path_edit.text(), ZOO_FILTER)
        if path:
            self.zoo_path_edit.setText(path)
            self._confirmed_target = Path(path)

    def export_bioimageio(self) -> Job | None:
        """Start writing the bioimage.io package in a worker; returns the job, or None when the form is not usable."""
        text = self.zoo_path_edit.text().strip()
        heads, layer = self._session.heads_path, self.zoo_image_combo.layer()
        problem = (
            "no file name for the package; type one or press … to choose it"
            if not text
            else "there is no heads checkpoint yet: choose one in Segment, or train one with Fine-tune"
            if heads is None
            else "no image layer for the test tensors: open an image like the training ones"
            if layer is None
            else None
        )
        if problem:
            return self._fail(f"Export failed: {problem}")
        target = Path(text).expanduser()
        target = target if target.suffix.lower() == ".zip" else target.with_name(target.name + ".zip")
        if not self._may_replace(target):
            return None
        data = layer.data[0] if layer.multiscale else layer.data
        gen = bioimageio_job(
            self._session,
            self._session.backbone_source,
            self._session.device,
            Path(heads),
            target,
            data,
            data.ndim - 1 if layer.rgb else None,
        )
        self.job = Job(
            gen,
            "bioimage.io export",
            on_result=lambda path: self._done(Path(path), f"Wrote the bioimage.io model {path}"),
            on_finished=lambda: self.export_zoo_button.setEnabled(True),
            status=self.status_label,
        )
        self.export_zoo_button.setEnabled(False)
        return self.job.start()

    # -------------------------------------------------------------------------------------- common

    def _may_replace(self, target: Path) -> bool:
        """True unless ``target`` exists and the user declines to replace it."""
        if not target.exists() or target == self._confirmed_target:
            return True
        return self._confirm_replace(target)

    def _confirm_replace(self, target: Path) -> bool:
        answer = QMessageBox.question(
            self, "Replace file?", f"{target} exists. Replace it?", QMessageBox.Yes | QMessageBox.No, QMessageBox.No
        )
        return answer == QMessageBox.Yes

    def _write(self, target: Path, write: Callable[[], str | Path]) -> Path | None:
        """Run ``write``, which writes ``target``; the file written, or None once the user is told why not."""
        try:
            written = Path(write())
        except DinoUNetError as err:
            return self._fail(f"Export failed: {err}")
        except OSError as err:
            return self._fail(
                f"Export failed: cannot write {target} ({err.strerror or err}); choose a folder you can write to"
            )
        remember("export/folder", str(written.parent))
        return written

    def _fail(self, message: str) -> None:
        self.status_label.setText(message)
        show_error(message)

    def _done(self, path: Path, message: str) -> Path:
        self.status_label.setText(message)
        show_info(message)
        return path
