"""The Segment widget: run Dino U-Net heads over an image layer and put the result in a Labels layer.

The widget builds the form, plans which part of the layer to read (:mod:`._layer_geometry`), starts
:func:`segment_job` in a worker (:mod:`._jobs`) and writes the :class:`SegmentResult` it returns. The
labels go to the layer ``"<image> labels"``: created on the first run; later runs write through
``Labels.data_setitem`` (:func:`._corrections.write_labels_undoable`), so napari's undo (Ctrl+Z) brings back
what was there before, and keep the pixels the user corrected since the last run ("keep my corrections",
on by default; :mod:`._corrections`). "Where" limits a run to the part in view or to the box around a
Shapes layer's shapes (only the pixels inside the shapes are written); the engine runs only the tiles that
overlap it (``Predictor.predict(region=...)``). "uncertainty" adds the layer ``"<image> uncertainty"``
(normalised entropy, 0 to 1; :mod:`..engine.uncertainty`) and ``"<image> next"``, the tiles where
correcting should pay most, ranked (:mod:`..engine.next_regions`: the uncertainty not yet corrected in
them); **Next** centres the view on the next one and adds it to ``"<image> checked"``, the Shapes layer
Fine-tune then takes as the region that counts (the corrected labels are ``"<image> labels"``). The form's
visible fields are remembered between sessions (``_settings.persisted``); test-time augmentation (4x slower)
and Channels (which belong to one image) start afresh in each widget.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from napari.layers import Image, Labels, Shapes
from napari.utils.notifications import show_info
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QWidget,
)

from .._layer_metadata import AFFINE_KEY, CLASS_NAMES_KEY, HEADS_KEY
from ..engine.errors import DinoUNetError, InputError
from ..engine.names import INSTANCES, SEMANTIC
from ..engine.progress import Progress
from ._class_picker import ClassPicker
from ._classes import class_colors, class_features
from ._corrections import corrections, record_prediction, write_labels_undoable
from ._instances import show_instances
from ._jobs import Job, report_error
from ._layer_combo import LayerComboBox, fill_channel_axis_choices
from ._layer_geometry import (
    CURRENT_SLICE,
    WHOLE_STACK,
    RunPlan,
    infer_channel_axis,
    labels_layer_name,
    parse_channels,
    plan_run,
    viewer_indices,
)
from ._llvm_clash import avoid_triton_llvm_clash
from ._model_form import ModelForm, dock_layout, for_the_widgets, heads_metadata, help_label
from ._multiscale import LevelPicker
from ._next import NextRegions
from ._preview import visible_region
from ._session import Session, get_session
from ._settings import persisted
from ._volumes import WHOLE_VOLUME, WHOLE_VOLUME_TIP, planes_for, predict_volume
from .finetune import region_mask

EVERYWHERE, IN_VIEW = "everything", "the part in view"


@dataclass(frozen=True)
class SegmentResult:
    """What a run gives the viewer: ``labels`` shaped for ``RunPlan.target`` (the engine's label dtype) and
    the ``class_names`` of the heads (indexed by label value). More layers of one run (an uncertainty
    map, instances) become fields here."""

    labels: np.ndarray
    class_names: list[str]
    task: str = SEMANTIC  # INSTANCES: labels are object ids, measured in features (engine/instances.py)
    features: dict | None = None
    uncertainty: np.ndarray | None = None  # float32 in [0, 1], labels' shape (when asked for)


def segment_job(
    session: Session,
    backbone_source: str,
    device: str,
    heads_path: Path,
    plan: RunPlan,
    *,
    patch_size: int | None,
    step: float,
    tta: bool,
    allow_backbone_mismatch: bool = False,
    planes: tuple[int, ...] | None = None,
    region: tuple | None = None,
    uncertainty: bool = False,
) -> Generator[Progress, None, SegmentResult]:
    """Worker body: the session's backbone (loaded unless cached) and the heads, then predict.

    patch_size None: the training patch. planes: predict a whole volume along these planes and fuse them
    (:func:`._volumes.predict_volume`). region: ((y0, y1), (x0, x1)) of each plane, or None for all of it.
    uncertainty: also the normalised entropy of the probabilities (:class:`..engine.uncertainty.Uncertainty`).
    Runs in a worker thread: no Qt here. The engine's errors reach the widget with their advice in the
    widget's terms (:func:`._model_form.for_the_widgets`).
    """
    with for_the_widgets():
        return (
            yield from _segment(
                session,
                backbone_source,
                device,
                heads_path,
                plan,
                patch_size=patch_size,
                step=step,
                tta=tta,
                allow_backbone_mismatch=allow_backbone_mismatch,
                planes=planes,
                region=region,
                uncertainty=uncertainty,
            )
        )


def _segment(
    session,
    backbone_source,
    device,
    heads_path,
    plan,
    *,
    patch_size,
    step,
    tta,
    allow_backbone_mismatch,
    planes,
    region,
    uncertainty,
) -> Generator[Progress, None, SegmentResult]:
    from ..engine.device import pick_device
    from ..engine.instances import object_features
    from ..engine.predictor import Predictor
    from ..engine.uncertainty import Uncertainty

    device = pick_device(device)
    backbone = yield from session.backbone_steps(backbone_source, device)  # "loading"/"waiting for" events
    yield Progress("loading the heads", 0, 1, str(heads_path))
    predictor = Predictor.from_checkpoint(
        heads_path, backbone, device=device, allow_backbone_mismatch=allow_backbone_mismatch
    )
    if planes:
        labels = yield from predict_volume(predictor, plan, planes, step=step, tile=patch_size, mirror=tta)
        return SegmentResult(labels, predictor.class_names)
    labels_output = predictor.default_output()  # class labels, or object ids for instance heads
    outputs = (labels_output, Uncertainty()) if uncertainty else (labels_output,)
    results = yield from predictor.predict(
        plan.image,
        channel_axis=plan.channel_axis,
        slice_axis=plan.slice_axis,
        step=step,
        tile=patch_size,
        mirror=tta,
        outputs=outputs,
        region=region,
    )
    labels = results[0]
    task = predictor.metadata.task
    features = object_features(labels, _crop(plan, region), plan.channel_axis) if task == INSTANCES else None
    return SegmentResult(
        plan.place(labels), predictor.class_names, task, features, plan.place(results[1]) if uncertainty else None
    )


def _crop(plan: RunPlan, region: tuple | None):
    """The planned image inside ``region`` ((y0, y1), (x0, x1)) of its planes (all of it for None)."""
    if region is None:
        return plan.image
    (y0, y1), (x0, x1) = region
    rows = plan.image.ndim - (3 if plan.channel_axis is not None else 2)
    index = [slice(None)] * plan.image.ndim
    index[rows], index[rows + 1] = slice(y0, y1), slice(x0, x1)
    return plan.image[tuple(index)]


class SegmentWidget(QWidget):
    """Segment an image layer with Dino U-Net heads (dock widget; see the module docstring)."""

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        avoid_triton_llvm_clash()  # before anything imports torch, which the runs do
        self.viewer = napari_viewer
        self.session = get_session(napari_viewer)
        self.job: Job | None = None

        self.model_form = ModelForm(self.session)
        self.image_combo = LayerComboBox(napari_viewer, (Image,))
        self.image_combo.setToolTip("The image to segment.")
        self.channel_axis_combo = QComboBox()
        self.channel_axis_combo.setToolTip(
            "The layer axis that holds channels (multichannel images). With 'none', an axis as long as the heads' "
            "channel count is taken as channels (the status says so)."
        )
        self.channels_edit = QLineEdit()  # not remembered: it belongs to one image, hidden when not used
        self.channels_edit.setPlaceholderText("all, in order (e.g. 0,2)")
        self.channels_edit.setToolTip("Which channels feed the model, in the order it was trained with.")
        self.stack_combo = QComboBox()
        self.stack_combo.addItems([CURRENT_SLICE, WHOLE_STACK, WHOLE_VOLUME])
        persisted(self.stack_combo, "segment/stack", CURRENT_SLICE)
        self.stack_combo.setToolTip(f"For stacks: only the slice on screen, or every slice; {WHOLE_VOLUME_TIP}.")
        self.level_combo = LevelPicker()  # multiscale layers: the level to segment (_multiscale)
        self.tile_spin = QSpinBox()
        self.tile_spin.setRange(0, 4096)
        self.tile_spin.setSingleStep(32)
        self.tile_spin.setSpecialValueText("auto")  # "from heads" was clipped to "rom heads" in a narrow dock
        persisted(self.tile_spin, "segment/tile", 0)
        self.tile_spin.setToolTip("Sliding-window tile in pixels (multiple of 32); auto: the heads' training patch.")
        self.overlap_spin = QDoubleSpinBox()
        self.overlap_spin.setRange(0.0, 0.8)  # 0.8 makes ~6x the tiles of 0.5; predict refuses beyond 10x
        self.overlap_spin.setSingleStep(0.05)
        persisted(self.overlap_spin, "segment/overlap", 0.5)
        self.overlap_spin.setToolTip("How much neighbouring tiles overlap (0.5: half a tile).")
        self.tta_check = QCheckBox("mirror test-time augmentation (4x slower)")  # off in every new session
        self.tta_check.setToolTip("Average the predictions of the image and its mirror images: smoother, 4x slower.")
        self.where_combo = LayerComboBox(napari_viewer, (Shapes,), none_text=EVERYWHERE, more_texts=(IN_VIEW,))
        self.where_combo.setToolTip(
            "Segment everything, only the part of the image in view (quicker on large images), or only inside "
            "the shapes of a Shapes layer (the box around them is predicted, the pixels inside are written)."
        )
        self.uncertainty_check = persisted(QCheckBox("uncertainty"), "segment/uncertainty", False)
        self.uncertainty_check.setToolTip(
            "Also add '<image> uncertainty': how unsure the heads are per pixel (normalised entropy of the "
            "class probabilities: 0 sure, 1 all classes equally likely; with test-time augmentation it also "
            "counts the mirrors' disagreement). Bright areas are where corrections help most."
        )
        self.next_button = QPushButton("Next")
        self.next_button.setToolTip(
            "Centre the view on the next region of '<image> next' (where correcting helps most) and add it to "
            "'<image> checked': correct the labels there, then Fine-tune counts those regions in."
        )
        self.next_button.setEnabled(False)
        self.keep_check = persisted(QCheckBox("keep my corrections"), "segment/keep", True)
        self.keep_check.setToolTip(
            "Running again onto '<image> labels' keeps every pixel you changed since the last run (painted, "
            "filled or erased) and writes the new prediction everywhere else. Untick to replace them all "
            "(Ctrl+Z still brings them back)."
        )

        self.run_button = QPushButton("Run")
        self.run_button.setToolTip("Segment the chosen image with the heads above into the layer '<image> labels'.")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop the run; the labels layer stays as it was.")
        self.cancel_button.setEnabled(False)
        self.status = QLabel()
        self.status.setWordWrap(True)

        form = QFormLayout()
        form.addRow("Image", self.image_combo)
        form.addRow("Channels", _side_by_side(self.channel_axis_combo, self.channels_edit))
        form.addRow("Stack", self.stack_combo)
        form.addRow("Level", self.level_combo)
        form.addRow("Tile, overlap", _side_by_side(self.tile_spin, self.overlap_spin))
        form.addRow("Where", self.where_combo)
        form.addRow(self.tta_check)
        form.addRow(_side_by_side(self.uncertainty_check, self.keep_check))
        self.next_label = QLabel("Correct here next")
        form.addRow(self.next_label, self.next_button)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        layout = dock_layout(self)
        layout.addWidget(self.model_form)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.status)
        paint = QFormLayout()
        paint.addRow("Paint class", ClassPicker(napari_viewer))  # for correcting the labels, by class name
        layout.addLayout(paint)
        layout.addStretch(1)
        layout.addWidget(help_label())

        self.image_combo.currentIndexChanged.connect(self._image_changed)
        self.channel_axis_combo.currentIndexChanged.connect(self._channel_axis_changed)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self.next_button.clicked.connect(self.go_to_next)
        self._next: NextRegions | None = None
        self._image_changed()

    # -- the form ---------------------------------------------------------------------------------------

    def _image_changed(self, *_) -> None:
        layer = self.image_combo.layer()
        fill_channel_axis_choices(self.channel_axis_combo, layer)
        self.stack_combo.setEnabled(layer is not None and layer.ndim > 2)
        self.level_combo.set_layer(layer, self.tile_spin.value() or None, 1.0 - self.overlap_spin.value())
        self._channel_axis_changed()

    def _channel_axis_changed(self, *_) -> None:
        """Channels can be picked from colours or a channel axis; without either the field is ignored."""
        layer = self.image_combo.layer()
        has_channels = layer is not None and (layer.rgb or self.channel_axis_combo.currentData() is not None)
        self.channels_edit.setEnabled(has_channels)

    # -- running ----------------------------------------------------------------------------------------

    def run(self) -> Job | None:
        """Start a run with the form's choices; returns the job, or None when the form is not usable."""
        if self.job is not None and not self.job.done:
            return self.job
        self.model_form.apply_typed()
        layer = self.image_combo.layer()
        try:
            heads = self._heads_path()
            if layer is None:
                raise InputError("no image layer: open an image (File > Open, or a sample) and choose it")
            in_channels = _heads_channels(heads)
            channel_axis, note = self.channel_axis_combo.currentData(), ""
            if channel_axis is None:  # "none": the heads' channel count may say which axis holds channels
                channel_axis, note = infer_channel_axis(layer, in_channels)
            plan = plan_run(
                self.level_combo.at_level(layer),
                channel_axis=channel_axis,
                channels=parse_channels(self.channels_edit.text()) if self.channels_edit.isEnabled() else None,
                whole_stack=self.stack_combo.currentText() in (WHOLE_STACK, WHOLE_VOLUME),
                current=viewer_indices(self.viewer, layer),
            )
            check_channel_count(layer, plan, in_channels)
            region, inside = self._region(layer, plan, channel_axis)
            if planes_for(self.stack_combo.currentText()) and (
                region is not None or self.uncertainty_check.isChecked()
            ):
                raise InputError(
                    f"{WHOLE_VOLUME!r} predicts every plane and fuses them, for all of the volume and without "
                    "uncertainty: choose Where 'everything' and untick uncertainty, or another Stack choice"
                )
        except DinoUNetError as err:
            report_error(f"Segmentation cannot start: {err}", self.status)  # whole, in the status and a notification
            return None
        gen = segment_job(
            self.session,
            self.session.backbone_source,
            self.session.device,
            heads,
            plan,
            patch_size=self.tile_spin.value() or None,
            step=1.0 - self.overlap_spin.value(),
            tta=self.tta_check.isChecked(),
            allow_backbone_mismatch=self.session.allow_backbone_mismatch,
            planes=planes_for(self.stack_combo.currentText()),
            region=region,
            uncertainty=self.uncertainty_check.isChecked(),
        )
        self.job = Job(
            gen,
            "Segmentation",
            on_result=lambda result: self._show_result(layer, plan, heads, result, note, region, inside),
            on_finished=self._finished,
            status=self.status,  # phase, count and time left; an error's whole message
            on_cancel=self.cancel,  # the activity dock's Cancel does what the widget's does
        )
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.status.setText(f"segmenting {layer.name}…" + (f" ({note})" if note else ""))
        return self.job.start()

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()

    def _region(self, layer: Image, plan: RunPlan, channel_axis: int | None):
        """Where's choice as (region, inside): the plane region to predict, ((y0, y1), (x0, x1)) or None for
        all of it, and for shapes the pixels inside them (bool, the labels' shape at ``plan.target``)."""
        choice, shapes = self.where_combo.currentText(), self.where_combo.layer()
        if choice == IN_VIEW:
            axis = None if layer.rgb else channel_axis
            level = self.level_combo.at_level(layer)
            factors = getattr(level, "factors", None)  # a multiscale layer's level: its pixels are this coarser
            if factors is None:
                return visible_region(self.viewer, layer, plan.labels_shape[-2:], axis), None
            rows, cols = [a for a in range(layer.ndim) if a != axis][-2:]
            fy, fx = factors[rows], factors[cols]
            height, width = plan.labels_shape[-2:]
            (y0, y1), (x0, x1) = visible_region(self.viewer, layer, (round(height * fy), round(width * fx)), axis)
            return (
                (int(y0 // fy), min(height, int(np.ceil(y1 / fy)))),
                (int(x0 // fx), min(width, int(np.ceil(x1 / fx)))),
            ), None
        if shapes is None:
            return None, None
        inside = np.asarray(plan.select(region_mask(shapes, plan.labels_shape)))
        rows, cols = np.nonzero(inside.reshape((-1,) + inside.shape[-2:]).any(axis=0))
        if not rows.size:
            raise InputError(
                f"the Shapes layer {shapes.name!r} has no shape over this image: draw one, or choose another Where"
            )
        region = ((int(rows.min()), int(rows.max()) + 1), (int(cols.min()), int(cols.max()) + 1))
        return region, inside

    def _heads_path(self) -> Path:
        heads = self.session.heads_path
        if heads is None:
            raise InputError("no heads checkpoint chosen: pick a .safetensors file written by Fine-tune or the CLI")
        if not heads.is_file():
            raise InputError(f"the heads checkpoint {heads} does not exist: pick an existing file")
        return heads

    def _finished(self) -> None:
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        if self.job.cancelled:
            self.status.setText("cancelled: nothing was changed")
        elif self.job.errored:
            self.status.setText("failed: see the notification")

    def _show_result(
        self,
        image: Image,
        plan: RunPlan,
        heads: Path,
        result: SegmentResult,
        note: str = "",
        region: tuple | None = None,
        inside: np.ndarray | None = None,
    ) -> None:
        """Write the result's labels into the image's labels layer (GUI thread), creating it on the first run;
        with a region, only there (and with shapes, only inside them); the uncertainty into its layer."""
        labels, class_names = result.labels, result.class_names
        index = result_index(plan, region)
        name = labels_layer_name(image.name)
        existing = self.viewer.layers[name] if name in self.viewer.layers else None  # noqa: SIM401 (no .get)
        outside = None if inside is None else ~inside[(Ellipsis, *index[-2:])]
        kept = 0
        fits = isinstance(existing, Labels) and np.can_cast(np.min_scalar_type(labels.max()), existing.data.dtype)
        if fits and existing.data.shape == plan.labels_shape:
            keep = corrections(existing, index) if self.keep_check.isChecked() else None
            if outside is not None:
                keep = outside if keep is None else keep | outside
            kept = write_labels_undoable(existing, index, labels, keep=keep)
            target = existing
        else:
            data = np.zeros(plan.labels_shape, dtype=labels.dtype)
            data[index] = labels if outside is None else np.where(outside, 0, labels)
            # a same-named layer of another shape stays; napari gives the new one a unique name
            target = self.viewer.add_labels(
                data,
                name=name,
                scale=plan.scale,
                translate=plan.translate,
                units=plan.units or None,
                # the colours the sample's ground truth has; objects: napari's, one per object
                colormap=None if result.task == INSTANCES else class_colors(len(class_names)),
            )
            record_prediction(target, (), data)
        if result.task == INSTANCES:
            summary = show_instances(self.viewer, target, result.features)
        else:
            target.metadata[CLASS_NAMES_KEY] = class_names
            target.features = class_features(class_names)  # the class name under the cursor, in the status bar
            summary = ", ".join(f"{i} {n}" for i, n in enumerate(class_names))
        if AFFINE_KEY in image.metadata:  # a NIfTI image's grid: Export can write these labels back to NIfTI
            target.metadata[AFFINE_KEY] = image.metadata[AFFINE_KEY]
        target.metadata[HEADS_KEY] = str(heads)
        if result.uncertainty is not None:
            uncertainty = self._show_uncertainty(image, plan, index, result.uncertainty)
            self.viewer.layers.selection.active = target  # the layer to correct, not the new overlays
            self._next = NextRegions(self.viewer, image, plan, uncertainty, labelled=corrections(target))
            self.next_button.setEnabled(bool(self._next.regions))
        if kept:
            note = f"kept {kept} corrected pixels" + (f"; {note}" if note else "")
        self.status.setText(f"{target.name}: {summary}" + (f"; {note}" if note else ""))
        show_info(f"Segmented {image.name} into {target.name!r}")

    def go_to_next(self) -> None:
        """Centre the view on the next region worth correcting (GUI)."""
        if self._next is not None:
            self.status.setText(self._next.go_to_next())

    def _show_uncertainty(self, image: Image, plan: RunPlan, index: tuple, uncertainty: np.ndarray) -> np.ndarray:
        """The uncertainty at ``index`` of ``"<image> uncertainty"`` (float32, 0 to 1; 0 where never predicted);
        returns the layer's data."""
        name = uncertainty_layer_name(image.name)
        layer = self.viewer.layers[name] if name in self.viewer.layers else None  # noqa: SIM401 (no .get)
        if isinstance(layer, Image) and layer.data.shape == plan.labels_shape and layer.data.dtype == np.float32:
            layer.data[index] = uncertainty
            layer.refresh()
            return layer.data
        data = np.zeros(plan.labels_shape, dtype=np.float32)
        data[index] = uncertainty
        self.viewer.add_image(
            data,
            name=name,
            scale=plan.scale,
            translate=plan.translate,
            units=plan.units or None,
            colormap="magma",
            contrast_limits=(0.0, 1.0),
            opacity=0.7,
            blending="additive",
        )
        return data


def uncertainty_layer_name(image_name: str) -> str:
    return f"{image_name} uncertainty"


def result_index(plan: RunPlan, region: tuple | None) -> tuple:
    """Where a run's result goes in the labels layer: the plane (or stack) at ``plan.target``, and within it
    the ``region`` ((y0, y1), (x0, x1)) when given."""
    if region is None:
        return plan.target
    (y0, y1), (x0, x1) = region
    stack = (slice(None),) * len(plan.stack_shape)
    return (*plan.target, *stack, slice(y0, y1), slice(x0, x1))


def _side_by_side(*widgets: QWidget) -> QHBoxLayout:
    """One form row holding two short fields."""
    row = QHBoxLayout()
    for widget in widgets:
        row.addWidget(widget, 1)
    return row


def _heads_channels(heads: Path) -> int | None:
    """The channel count the heads were trained on, or None when unknown (a file that cannot be read is
    reported by the run, with the engine's message)."""
    metadata = heads_metadata(heads)
    return metadata.in_channels if metadata is not None else None


def check_channel_count(layer, plan: RunPlan, in_channels: int | None) -> None:
    """An InputError, with a fix the form can make, unless the planned image has the heads' channel count."""
    have = plan.layout.num_channels
    if not in_channels or have == in_channels:
        return
    trained = f"the heads were trained on {in_channels}-channel images"
    if layer.rgb:
        if in_channels < 3:
            example = ",".join(str(c) for c in range(in_channels))
            raise InputError(
                f"{trained} but {layer.name!r} has {have} colours: type {in_channels} of them in Channels "
                f"(e.g. {example}; 0 red, 1 green, 2 blue)"
            )
        raise InputError(f"{trained}; {layer.name!r} is a colour image: choose heads trained on colour images")
    if plan.channel_axis is None:  # one channel, and no axis of the layer fits (infer_channel_axis said so)
        raise InputError(f"{trained} but {layer.name!r} is single-channel: choose heads trained on such images")
    example = ",".join(str(c) for c in range(in_channels))
    raise InputError(
        f"{trained} but {have} channels of {layer.name!r} were chosen: type {in_channels} channel numbers in "
        f"Channels (e.g. {example}), or choose another Channel axis"
    )
