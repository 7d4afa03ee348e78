"""The Fine-tune widget: train Dino U-Net heads on image/label layer pairs the user corrected.

The widget gathers the pairs (and the optional region that counts, for partially labelled images),
starts :func:`finetune_job` in a worker, draws the loss and validation Dice as they come, and when the
run ends hands the new checkpoint to the session, so Segment uses it at once. Stop ends training at the
next step and keeps the checkpoint of the last finished epoch (the engine writes one per epoch).
"""

from __future__ import annotations

import math
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from napari.layers import Image, Labels, Shapes
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from .._layer_metadata import CLASS_NAMES_KEY
from ..engine.errors import DinoUNetError, InputError
from ..engine.progress import Progress, Validation
from ._jobs import Job, Stop
from ._layer_combo import LayerComboBox, fill_channel_axis_choices
from ._layer_geometry import (
    CURRENT_SLICE,
    WHOLE_STACK,
    labels_layer_name,
    plan_run,
    viewer_indices,
)
from ._llvm_clash import avoid_triton_llvm_clash
from ._model_form import ModelForm
from ._session import Session, get_session
from ._settings import persisted

LOADED_HEADS, FRESH_HEADS = "the loaded heads", "fresh heads"


@dataclass(frozen=True)
class TrainingPair:
    """One training image as the engine takes it: image (Y, X[, C]) or a stack (N, Y, X[, C]), labels and
    an optional mask (nonzero = counts) of the image's spatial shape."""

    name: str
    image: object
    labels: np.ndarray
    mask: np.ndarray | None
    has_channels: bool


@dataclass(frozen=True)
class FineTuneOptions:
    steps: int  # optimiser steps in all, exactly
    every: int  # validate and write the checkpoint every this many steps (and after the last)
    lr: float
    patch_size: int
    batch_size: int
    cache_features: bool

    @property
    def epoch_steps(self) -> int:
        return max(1, min(self.every, self.steps))

    def settings(self):
        """The engine's :class:`~..engine.train.TrainSettings` for these options: epochs of ``every`` steps,
        the last one shorter when ``every`` does not divide ``steps`` (the run and its learning-rate schedule
        span exactly ``steps``)."""
        from ..engine.train import TrainSettings

        return TrainSettings(
            patch_size=self.patch_size,
            batch_size=self.batch_size,
            epochs=math.ceil(self.steps / self.epoch_steps),
            iters_per_epoch=self.epoch_steps,
            max_steps=self.steps,
            lr=self.lr,
            cache_features=self.cache_features,
        )


@dataclass(frozen=True)
class FineTuneResult:
    checkpoint: Path | None  # None when stopped before the first checkpoint
    stopped: bool
    steps_done: int


def finetune_job(
    session: Session,
    backbone_source: str,
    device: str,
    start_heads: Path | None,
    pairs: list[TrainingPair],
    class_names: list[str] | None,
    out: Path,
    options: FineTuneOptions,
    stop: Stop,
) -> Generator[Progress, None, FineTuneResult]:
    """Worker body: load the backbone and the starting heads, build the samples, train until done or stopped.

    Runs in a worker thread: no Qt here. ``stop`` set: the training generator is closed at its next event,
    which keeps the checkpoint of the last finished epoch.
    """
    from ..engine.checkpoint import load_heads
    from ..engine.data import check_same_channels, samples_from_arrays
    from ..engine.device import pick_device
    from ..engine.normalize import Normalization
    from ..engine.train import train

    device = pick_device(device)
    backbone = yield from session.backbone_steps(backbone_source, device)  # "loading"/"waiting for" events
    model, metadata, normalization = None, None, Normalization()
    if start_heads is not None:
        yield Progress("loading the heads", 0, 1, str(start_heads))
        model, metadata = load_heads(start_heads, backbone, device=device)
        class_names = list(metadata.class_names)
        normalization = Normalization.from_dict(metadata.normalization)
    if len({pair.has_channels for pair in pairs}) > 1:
        raise InputError(
            "some images have channels (colours or a channel axis) and some do not: train on one kind at a time"
        )
    yield Progress("preparing the images", 0, 1)
    samples = samples_from_arrays(
        [pair.image for pair in pairs],
        [pair.labels for pair in pairs],
        masks=[pair.mask for pair in pairs],
        names=[pair.name for pair in pairs],
        channel_axis=-1 if pairs[0].has_channels else None,
        normalization=normalization,
        num_classes=len(class_names) if class_names else None,
    )
    if not samples:
        raise InputError("no pixel counts: the regions that count are empty; draw a region over the corrected part")
    given = check_same_channels(samples)
    if metadata is not None and metadata.in_channels and given != metadata.in_channels:
        # the checkpoint would otherwise record the images' count, and Segment refuse the images it was made for
        raise InputError(
            f"the heads were trained on {metadata.in_channels}-channel images but the images give {given} "
            f"channel{'s' if given != 1 else ''}: set each image's channel axis (the Channel axis column) so that "
            f"it gives {metadata.in_channels}, or start from fresh heads"
        )
    run = train(
        samples,
        out=out,
        backbone=backbone,
        settings=options.settings(),
        class_names=class_names,
        normalization=normalization,
        model=model,
        device=device,
    )
    steps_done = 0
    try:
        while True:
            try:
                event = next(run)
            except StopIteration as end:
                return FineTuneResult(Path(end.value), stopped=False, steps_done=steps_done)
            if event.task == "train":
                steps_done = event.done
            yield event
            if stop:
                break
    finally:
        run.close()  # keeps the last written checkpoint as it is
    return FineTuneResult(out if out.is_file() else None, stopped=True, steps_done=steps_done)


def default_checkpoint_path(start_heads: Path | None) -> Path:
    """A new file beside the starting heads (or in ~/dinounet) that no earlier run wrote."""
    folder = start_heads.parent if start_heads is not None else Path.home() / "dinounet"
    stem = f"{start_heads.stem}-finetuned" if start_heads is not None else "heads"
    number = 1
    while (folder / f"{stem}-{number}.safetensors").exists():
        number += 1
    return folder / f"{stem}-{number}.safetensors"


class _PairRow:
    """The pickers of one training pair: image, its channel axis, corrected labels and the optional region
    that counts."""

    def __init__(self, viewer) -> None:
        self.image = LayerComboBox(viewer, (Image,))
        self.channel_axis = QComboBox()
        self.channel_axis.setToolTip(
            "The image axis that holds channels (multichannel images): the heads "
            "see one image with that many channels, not a stack of grey slices."
        )
        self.labels = LayerComboBox(viewer, (Labels,))
        self.region = LayerComboBox(viewer, (Shapes, Labels), none_text="everywhere")
        self.image.setToolTip("An image to learn from.")
        self.labels.setToolTip("Its corrected labels (class values, 0 = background).")
        self.region.setToolTip(
            "Where the labels count: a Shapes layer (inside the shapes) or a Labels mask (nonzero pixels). "
            "Pixels outside are ignored, so a partly corrected image can be used."
        )
        self.remove = QToolButton(text="✕")
        self.remove.setToolTip("Remove this pair")
        self.image.currentIndexChanged.connect(self._image_changed)
        self._image_changed()

    def widgets(self) -> list[QWidget]:
        return [self.image, self.channel_axis, self.labels, self.region, self.remove]

    def _image_changed(self, *_) -> None:
        fill_channel_axis_choices(self.channel_axis, self.image.layer())
        self._guess_labels()

    def _guess_labels(self, *_) -> None:
        """Pick "<image> labels" (what Segment writes) when it exists."""
        image = self.image.layer()
        index = self.labels.findText(labels_layer_name(image.name)) if image is not None else -1
        if index >= 0:
            self.labels.setCurrentIndex(index)


def region_mask(region, shape: tuple[int, ...]) -> np.ndarray:
    """The pixels that count (bool, ``shape``) from a Shapes layer (inside any shape) or a Labels layer (nonzero)."""
    if isinstance(region, Shapes):
        if region.ndim != len(shape):
            raise InputError(
                f"the shapes in {region.name!r} are {region.ndim}D but the labels are {len(shape)}D: "
                "draw the region on the image itself"
            )
        return region.to_labels(labels_shape=shape) > 0
    data = np.asarray(region.data)
    if data.shape != shape:
        raise InputError(
            f"the region mask {region.name!r} has shape {data.shape}, the labels {shape}: "
            "paint the region in a labels layer of the image's size"
        )
    return data != 0


class FineTuneWidget(QWidget):
    """Fine-tune Dino U-Net heads on corrected label layers (dock widget; see the module docstring)."""

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        avoid_triton_llvm_clash()  # before anything imports torch, which the runs do
        self.viewer = napari_viewer
        self.session = get_session(napari_viewer)
        self.job: Job | None = None
        self._stop: Stop | None = None
        self.rows: list[_PairRow] = []

        self.model_form = ModelForm(self.session, heads_label="Start heads")
        self.start_combo = QComboBox()
        self.start_combo.addItems([LOADED_HEADS, FRESH_HEADS])
        self.start_combo.setToolTip("Go on training the heads above, or start from new, untrained heads.")

        self._pairs_grid = QGridLayout()
        for column, title in enumerate(["Image", "Channel axis", "Corrected labels", "Counts in"]):
            self._pairs_grid.addWidget(QLabel(title), 0, column)
        self.add_pair_button = QPushButton("Add pair")
        self.add_pair_button.clicked.connect(self.add_pair)

        self.stack_combo = QComboBox()
        self.stack_combo.addItems([CURRENT_SLICE, WHOLE_STACK])
        self.stack_combo.setToolTip("For stacks: learn from the slice on screen only, or from every slice.")
        self.foreground_check = QCheckBox("any label value is foreground (instance labels)")
        self.steps_spin = persisted(_spin(1, 1_000_000, 10), "finetune/steps", 200)
        self.steps_spin.setToolTip("Training steps in all.")
        self.every_spin = persisted(_spin(1, 100_000, 10), "finetune/every", 50)
        self.every_spin.setToolTip(
            "Validation Dice and a checkpoint after every this many steps and after the last (Stop keeps the last)."
        )
        self.lr_spin = QDoubleSpinBox()
        self.lr_spin.setDecimals(5)
        self.lr_spin.setRange(1e-5, 1.0)
        self.lr_spin.setSingleStep(1e-4)
        persisted(self.lr_spin, "finetune/lr", 0.001)
        self.patch_spin = persisted(_spin(64, 2048, 32), "finetune/patch", 256)
        self.batch_spin = persisted(_spin(1, 64, 1), "finetune/batch", 2)
        self.cache_check = persisted(
            QCheckBox("cache backbone features (faster, lighter augmentation)"), "finetune/cache", True
        )
        self.out_edit = QLineEdit()
        self.out_edit.setPlaceholderText("automatic: beside the start heads")
        out_button = QToolButton(text="…")
        out_button.clicked.connect(self._browse_out)

        self.start_button = QPushButton("Start")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        self.stop_button.setToolTip("End training now and keep the checkpoint of the last finished epoch.")
        from ._loss_plot import LossPlot

        self.plot = LossPlot()
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextSelectableByMouse)  # the checkpoint path can be copied

        form = QFormLayout()
        form.addRow("Start from", self.start_combo)
        form.addRow("Stack", self.stack_combo)
        form.addRow(self.foreground_check)
        form.addRow("Steps", self.steps_spin)
        form.addRow("Save every", self.every_spin)
        form.addRow("Learning rate", self.lr_spin)
        form.addRow("Patch size", self.patch_spin)
        form.addRow("Batch size", self.batch_spin)
        form.addRow(self.cache_check)
        out_row = QHBoxLayout()
        out_row.addWidget(self.out_edit)
        out_row.addWidget(out_button)
        form.addRow("Save to", out_row)
        buttons = QHBoxLayout()
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.stop_button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.model_form)
        layout.addLayout(self._pairs_grid)
        layout.addWidget(self.add_pair_button)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.plot)
        layout.addWidget(self.status)
        layout.addStretch(1)

        self.start_button.clicked.connect(self.start)
        self.stop_button.clicked.connect(self.stop)
        self.add_pair()

    # -- the form ---------------------------------------------------------------------------------------

    def add_pair(self) -> _PairRow:
        row = _PairRow(self.viewer)
        row.remove.clicked.connect(lambda: self.remove_pair(row))
        self.rows.append(row)
        for column, widget in enumerate(row.widgets()):
            self._pairs_grid.addWidget(widget, len(self.rows), column)
        self._update_remove_buttons()
        return row

    def remove_pair(self, row: _PairRow) -> None:
        self.rows.remove(row)
        for widget in row.widgets():
            self._pairs_grid.removeWidget(widget)
            widget.deleteLater()
        self._update_remove_buttons()

    def _update_remove_buttons(self) -> None:
        for row in self.rows:
            row.remove.setEnabled(len(self.rows) > 1)

    def _browse_out(self) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self, "Save the fine-tuned heads", self.out_edit.text(), "Dino U-Net heads (*.safetensors)"
        )
        if path:
            self.out_edit.setText(path if path.endswith(".safetensors") else path + ".safetensors")

    def _options(self) -> FineTuneOptions:
        return FineTuneOptions(
            steps=self.steps_spin.value(),
            every=self.every_spin.value(),
            lr=self.lr_spin.value(),
            patch_size=self.patch_spin.value(),
            batch_size=self.batch_spin.value(),
            cache_features=self.cache_check.isChecked(),
        )

    def _pairs(self) -> list[TrainingPair]:
        """The chosen pairs as arrays (read here, in the GUI thread; the worker gets only arrays)."""
        whole = self.stack_combo.currentText() == WHOLE_STACK
        pairs, seen = [], set()
        for row in self.rows:
            image, labels, region = row.image.layer(), row.labels.layer(), row.region.layer()
            if image is None or labels is None:
                raise InputError("each pair needs an image and its corrected labels layer: choose both")
            if (image.name, labels.name) in seen:
                continue
            seen.add((image.name, labels.name))
            plan = plan_run(
                image,
                channel_axis=row.channel_axis.currentData(),
                whole_stack=whole,
                current=viewer_indices(self.viewer, image),
            )
            if labels.data.shape != plan.labels_shape:
                raise InputError(
                    f"labels {labels.name!r} have shape {labels.data.shape} but image {image.name!r} "
                    f"needs {plan.labels_shape}: pick the labels drawn on that image"
                )
            values = plan.select(labels.data)
            if self.foreground_check.isChecked():
                values = (values > 0).astype(np.uint8)
            mask = plan.select(region_mask(region, plan.labels_shape)) if region is not None else None
            pairs.append(
                TrainingPair(f"{image.name} / {labels.name}", plan.image, values, mask, plan.channel_axis is not None)
            )
        return pairs

    def _class_names(self) -> list[str] | None:
        """Class names for fresh heads: from the labels layer's metadata, or background/foreground."""
        if self.foreground_check.isChecked():
            return ["background", "foreground"]
        names = self.rows[0].labels.layer().metadata.get(CLASS_NAMES_KEY) if self.rows else None
        return list(names) if names else None

    # -- running ----------------------------------------------------------------------------------------

    def start(self) -> Job | None:
        """Start training with the form's choices; returns the job, or None when the form is not usable."""
        if self.job is not None and not self.job.done:
            return self.job
        self.model_form.apply_typed()
        try:
            start_heads = self._start_heads()
            typed = self.out_edit.text().strip()
            out = Path(typed) if typed else default_checkpoint_path(start_heads)
            if start_heads is not None and out.resolve() == start_heads.resolve():
                raise InputError(f"saving to {out} would overwrite the heads training starts from: choose another file")
            if out.exists():
                raise InputError(f"{out} already exists: choose another file (or clear 'Save to' for a new name)")
            pairs = self._pairs()
            class_names = None if start_heads is not None else self._class_names()
            options = self._options()
        except DinoUNetError as err:
            show_error(f"Fine-tuning cannot start: {err}")
            return None
        out.parent.mkdir(parents=True, exist_ok=True)
        self._stop = Stop()
        gen = finetune_job(
            self.session,
            self.session.backbone_source,
            self.session.device,
            start_heads,
            pairs,
            class_names,
            out,
            options,
            self._stop,
        )
        self.plot.clear(options.steps)
        self.job = Job(
            gen,
            "Fine-tuning",
            on_result=self._show_result,
            on_progress=self._progress,
            on_finished=self._finished,
            stop=self._stop,
        )
        self.start_button.setEnabled(False)
        self.stop_button.setEnabled(True)
        self.status.setText(f"training; checkpoints go to {out}")
        return self.job.start()

    def stop(self) -> None:
        """End training at the next step, keeping the last checkpoint."""
        if self.job is not None and not self.job.done:
            self.job.cancel()
            self.stop_button.setEnabled(False)
            self.status.setText("stopping after this step…")

    def _start_heads(self) -> Path | None:
        if self.start_combo.currentText() == FRESH_HEADS:
            return None
        heads = self.session.heads_path
        if heads is None or not heads.is_file():
            raise InputError("no heads to start from: pick a heads checkpoint, or choose 'fresh heads'")
        return heads

    def _progress(self, event: Progress) -> None:
        if isinstance(event, Validation):
            if event.dice is not None:
                self.plot.add_val_dice(event.done, event.dice)
        elif event.task == "train" and "loss" in event.metrics:  # one training step
            self.plot.add_loss(event.done, event.metrics["loss"])

    def _show_result(self, result: FineTuneResult) -> None:
        if result.checkpoint is None:
            self.status.setText(
                f"stopped after {result.steps_done} steps, before the first checkpoint: nothing was written"
            )
            return
        self.session.heads_path = result.checkpoint
        self.model_form.set_heads(str(result.checkpoint))
        how = f"stopped after {result.steps_done} steps" if result.stopped else "done"
        self.status.setText(f"{how}; Segment now uses {result.checkpoint}")
        show_info(f"Fine-tuning {how}: heads saved to {result.checkpoint}")

    def _finished(self) -> None:
        self.start_button.setEnabled(True)
        self.stop_button.setEnabled(False)
        if self.job.errored:
            self.status.setText("failed: see the notification")
        elif self.job.cancelled:
            self.status.setText("cancelled: the heads in use did not change")


def _spin(low: int, high: int, step: int) -> QSpinBox:
    spin = QSpinBox()
    spin.setRange(low, high)
    spin.setSingleStep(step)
    return spin
