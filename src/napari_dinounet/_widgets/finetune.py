"""The Fine-tune widget: train Dino U-Net heads on image/label layer pairs the user corrected.

The widget gathers the pairs (and the optional region that counts, for partially labelled images),
starts :func:`finetune_job` in a worker, draws the loss and validation Dice as they come, and when the
run ends hands the new checkpoint to the session, so Segment uses it at once. Stop ends training at the
next step and writes the heads of that step (the engine's stop request: nothing trained is lost); Cancel
(the activity dock's) is the same Stop. The form shows an estimate of the run's duration on a CPU
(:mod:`..engine.estimate`) and starts, on a CPU, from defaults that take minutes there. Engine messages
that name a Python or CLI option are reworded to name the form's control (:func:`gui_wording`). With
"live preview", the heads being trained predict the visible part of the first pair's image every few
seconds, within a fifth of the training time (:mod:`..engine.preview`), into ``"<image> preview"``
(:mod:`._preview`). With "sparse labels (scribbles)", unpainted pixels (0) are unknown and the value
chosen as Background label is the background (:mod:`..engine.sparse`); validation then scores the painted
pixels only, and says so, unless a labels layer with full labels is chosen under "Validate on" (the
image's "<image> ground truth" is picked when it exists).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from napari.layers import Image, Labels, Shapes
from napari.utils.notifications import show_info, show_warning
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
    QWidget,
)

from .._layer_metadata import CLASS_NAMES_KEY
from ..engine.errors import DinoUNetError, InputError
from ..engine.names import INSTANCE_CLASS_NAMES, INSTANCES, SEMANTIC
from ..engine.preview import Preview, PreviewTarget
from ..engine.progress import Progress, Validation
from ._jobs import Job, Stop, report_error
from ._layer_combo import LayerComboBox, fill_channel_axis_choices
from ._layer_geometry import (
    CURRENT_SLICE,
    WHOLE_STACK,
    labels_layer_name,
    plan_run,
    viewer_indices,
)
from ._llvm_clash import avoid_triton_llvm_clash
from ._model_form import ModelForm, dock_layout, heads_metadata, help_label, widget_advice
from ._next import checked_layer_name
from ._preview import LivePreview
from ._session import Session, get_session
from ._settings import persisted
from ._volumes import (
    LABELLED_SLICES,
    LABELLED_SLICES_TIP,
    TRAIN_VOLUME_TIP,
    WHOLE_VOLUME,
    auto_normalization,
    fresh_normalization,
    normalization_combo,
    only_labelled_slices,
    show_auto_normalization,
)

LOADED_HEADS, FRESH_HEADS = "the loaded heads", "fresh heads"
PAINTED_ONLY = "painted pixels"  # Validate on: the scribbles' own painted pixels (engine.train.PAINTED_SCOPE)
PAINTED_SCOPE = "painted"  # engine.train.PAINTED_SCOPE, without importing torch when the dock opens
# Defaults of the form: on a CPU a run of the defaults takes minutes (patch 128: about 0.5 s a step on a
# 2-core laptop CPU, against 2.5 s at 256; engine.estimate), on CUDA today's (patch 256).
CPU_DEFAULTS = {"steps": 200, "every": 50, "patch": 128}
CUDA_DEFAULTS = {"steps": 200, "every": 50, "patch": 256}


def cuda_likely() -> bool:
    """Whether device "auto" will be CUDA, without importing torch when nothing has yet (opening the dock
    stays quick): torch's answer when loaded, else whether an NVIDIA driver is installed."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return bool(torch.cuda.is_available())
    return os.path.exists("/proc/driver/nvidia/version")


# Engine advice naming a Python or CLI option, and what the form offers instead (Fine-tune's words).
_GUI_WORDING = [
    (
        r"convert them, e\.g\. labels > 0 for one foreground class, or give the number of classes \([^)]*\)",
        "tick 'any label value is foreground (instance labels)' to train one foreground class, or name every "
        "class in the Classes field (Start from: fresh heads)",
    ),
    (
        r"or train (\d+) or more classes \([^)]*\)",
        r"or train \1 or more classes (Start from: fresh heads, and name them in the Classes field)",
    ),
    (r"give the number of classes if some are really absent \([^)]*\)", "name every class in the Classes field"),
    (r"so give at least 2 \([^)]*\)", "so name at least 2 in the Classes field"),
    (r"\(channel_axis=N[^)]*\)", "(the Channel axis column)"),
    (
        r"or allow the mismatch \(allow_backbone_mismatch=True[^)]*\) if you know the features agree",
        "or tick 'allow another backbone' if you know the features agree, or choose 'Start from: fresh heads'",
    ),
    (r"\(--lr\)", "(Learning rate, under Advanced)"),
    (r"choose which to use \(channels, e\.g\. \(0, 1, 2\)\)", "give an image layer of 1 to 3 channels"),
    (
        r"continue it \(--resume / resume=True\), or replace it with a new run \(--overwrite / overwrite=True\)",
        "choose another 'Save to' file (or delete that state file)",
    ),
]


def gui_wording(message: str) -> str:
    """``message`` with advice the form cannot follow (``num_classes``, ``channel_axis=``, ``--lr``,
    ``allow_backbone_mismatch``...) replaced by the Fine-tune control that does it."""
    return widget_advice(message, _GUI_WORDING)


@dataclass(frozen=True)
class TrainingPair:
    """One training image as the engine takes it: image (Y, X[, C]) or a stack (N, Y, X[, C]), labels and
    an optional mask (nonzero = counts) of the image's spatial shape. planes: a (Z, Y, X) volume to cut
    along these spatial axes (:func:`..engine.volume.volume_samples`), with its voxel ``spacing``; None:
    the image's own slices."""

    name: str
    image: object
    labels: np.ndarray
    mask: np.ndarray | None
    has_channels: bool
    planes: tuple[int, ...] | None = None
    spacing: tuple[float, ...] | None = None


@dataclass(frozen=True)
class FineTuneOptions:
    steps: int  # optimiser steps in all, exactly
    every: int  # validate and write the checkpoint every this many steps (and after the last)
    lr: float
    patch_size: int
    batch_size: int
    cache_features: bool
    normalization: str = "zscore"  # of fresh heads (_volumes.fresh_normalization)

    @property
    def checkpoints(self) -> int:
        return math.ceil(self.steps / self.epoch_steps)

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
    checkpoint: Path | None  # None when stopped before the first step
    stopped: bool
    steps_done: int  # the step the checkpoint holds


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
    allow_backbone_mismatch: bool = False,
    preview: PreviewTarget | None = None,
    sparse_background: int | None = None,
    validation: list[TrainingPair] | None = None,
    task: str = SEMANTIC,
) -> Generator[Progress, None, FineTuneResult]:
    """Worker body: load the backbone and the starting heads, build the samples, train until done or stopped.

    preview: the view to preview while training (:func:`..engine.preview.with_previews`: Preview events
    among the training's, within a fifth of the training time); None: no previews.
    sparse_background: the pairs' labels are scribbles with this background value (None: full labels).
    validation: pairs with full labels to validate on (None: a share of the training pairs, which for
    scribbles scores their painted pixels only).
    Runs in a worker thread: no Qt here. ``stop`` set: training ends before its next step and writes the
    heads of the step it reached (the engine's stop request); set before the first step, the run is closed
    and nothing is written. Engine errors are reworded for the form (:func:`gui_wording`). task: what fresh
    heads learn (``names.INSTANCES``: the labels are object ids); start heads keep their own.
    """
    from ..engine.checkpoint import load_heads
    from ..engine.data import check_same_channels, samples_from_arrays
    from ..engine.device import pick_device
    from ..engine.instances import instance_samples
    from ..engine.names import INSTANCES
    from ..engine.normalize import Normalization
    from ..engine.preview import with_previews
    from ..engine.train import build_model, train
    from ..engine.volume import volume_samples

    with _in_the_forms_words():
        device = pick_device(device)
        backbone = yield from session.backbone_steps(backbone_source, device)  # "loading"/"waiting for" events
        model, metadata = None, None
        normalization = fresh_normalization(options.normalization, pairs) if start_heads is None else None
        if start_heads is not None:
            yield Progress("loading the heads", 0, 1, str(start_heads))
            model, metadata = load_heads(
                start_heads, backbone, allow_backbone_mismatch=allow_backbone_mismatch, device=device
            )
            class_names = list(metadata.class_names)
            normalization = Normalization.from_dict(metadata.normalization)
        if len({pair.has_channels for pair in pairs}) > 1:
            raise InputError(
                "some images have channels (colours or a channel axis) and some do not: train on one kind at a time"
            )
        yield Progress("preparing the images", 0, 1)
        task = metadata.task if metadata is not None else task

        def samples_of(chosen: list[TrainingPair], **kwargs):
            if chosen[0].planes is not None:
                return volumes_of(chosen, **kwargs)
            images, labels = [pair.image for pair in chosen], [pair.labels for pair in chosen]
            arrays = {
                "masks": [pair.mask for pair in chosen],
                "names": [pair.name for pair in chosen],
                "channel_axis": -1 if chosen[0].has_channels else None,
                "normalization": normalization,
            }
            if task == INSTANCES:  # instance heads go on learning from (corrected) instance labels, one id per object
                return instance_samples(images, labels, **arrays, **kwargs)
            return samples_from_arrays(
                images, labels, num_classes=len(class_names) if class_names else None, **arrays, **kwargs
            )

        def volumes_of(chosen: list[TrainingPair], sparse_background: int | None = None):
            if task == INSTANCES or sparse_background is not None:
                raise InputError(
                    f"{WHOLE_VOLUME} trains on full semantic labels: for scribbles or object ids choose "
                    f"'whole stack' or '{LABELLED_SLICES}'"
                )
            return [
                sample
                for pair in chosen
                for sample in volume_samples(
                    pair.image,
                    pair.labels,
                    spacing=pair.spacing,
                    planes=pair.planes,
                    mask=pair.mask,
                    channel_axis=-1 if pair.has_channels else None,
                    normalization=normalization,
                    num_classes=len(class_names) if class_names else None,
                    name=pair.name,
                )
            ]

        samples = samples_of(pairs, sparse_background=sparse_background)
        validation_samples = samples_of(validation) if validation else None
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
        settings = options.settings()
        if preview is not None and model is None and class_names:
            # the heads train() would build, built here so that the previews see them train
            model = build_model(backbone, settings, len(class_names), in_channels=given)
        run = train(
            samples,
            out=out,
            backbone=backbone,
            settings=settings,
            validation=validation_samples,
            class_names=class_names,
            normalization=normalization,
            model=model,
            device=device,
            stop=lambda: bool(stop),
            task=task,
            spacing=pairs[0].spacing,
            planes=pairs[0].planes,
        )
        if preview is not None and model is not None:
            run = with_previews(run, model, preview, normalization=normalization, patch_size=options.patch_size)
        steps_done = 0
        try:
            while True:
                try:
                    event = next(run)
                except StopIteration as end:
                    written = Path(end.value)
                    return FineTuneResult(
                        written if written.is_file() else None,
                        stopped=steps_done < options.steps,
                        steps_done=steps_done,
                    )
                if event.task == "train" and not isinstance(event, Preview):
                    steps_done = event.done
                yield event
                if stop and steps_done == 0:
                    break  # nothing trained yet (loading, caching): end at once, nothing to keep
        finally:
            run.close()  # after the end a no-op; before the first step it leaves no file
        return FineTuneResult(None, stopped=True, steps_done=0)


@contextlib.contextmanager
def _in_the_forms_words():
    """Engine errors whose advice names a Python or CLI option, reworded to name the form's control."""
    try:
        yield
    except DinoUNetError as err:
        worded = gui_wording(str(err))
        if worded == str(err):
            raise
        raise type(err)(worded) from err


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
        """Pick "<image> labels" (what Segment writes) when it exists, and "<image> checked" (the regions
        Segment's Next showed for correcting) as the region that counts."""
        image = self.image.layer()
        index = self.labels.findText(labels_layer_name(image.name)) if image is not None else -1
        if index >= 0:
            self.labels.setCurrentIndex(index)
        self.guess_region()

    def guess_region(self, *_) -> None:
        """Count in "<image> checked" once it exists, unless another region was chosen."""
        image = self.image.layer()
        index = self.region.findText(checked_layer_name(image.name)) if image is not None else -1
        if index >= 0 and self.region.layer() is None:
            self.region.setCurrentIndex(index)


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
        self.live_preview: LivePreview | None = None
        self.rows: list[_PairRow] = []

        self.model_form = ModelForm(self.session, heads_label="Start heads")
        self.start_combo = QComboBox()
        self.start_combo.addItems([LOADED_HEADS, FRESH_HEADS])
        self.start_combo.setToolTip(
            "Go on training the heads above, or start from new, untrained heads (needed for other classes)."
        )
        self._heads_changed(self.session.heads_path)
        self.classes_edit = QLineEdit()
        self.classes_edit.setToolTip(
            "The class names of fresh heads, background first, separated by commas: one per label value "
            "0, 1, 2, ... Empty: the labels layer's class names, else background, class 1, ..."
        )

        self._pairs_grid = QGridLayout()
        for column, title in enumerate(["Image", "Channel axis", "Corrected labels", "Counts in"]):
            self._pairs_grid.addWidget(QLabel(title), 0, column)
        self.add_pair_button = QPushButton("Add pair")
        self.add_pair_button.setToolTip("Train on one more image and its corrected labels.")
        self.add_pair_button.clicked.connect(self.add_pair)

        self.stack_combo = QComboBox()
        self.stack_combo.addItems([CURRENT_SLICE, WHOLE_STACK, LABELLED_SLICES, WHOLE_VOLUME])
        self.stack_combo.setToolTip(
            f"For stacks: learn from the slice on screen only, or from every slice; {LABELLED_SLICES_TIP}; "
            f"{TRAIN_VOLUME_TIP}."
        )
        self.normalization_combo = normalization_combo()
        self.foreground_check = QCheckBox("any label value is foreground (instance labels)")
        self.foreground_check.setToolTip(
            "Train one foreground class from labels where each object has its own value (instance labels)."
        )
        self.sparse_check = persisted(QCheckBox("scribbles"), "finetune/sparse", False)
        self.sparse_check.setToolTip(
            "The labels are strokes: unpainted pixels (0) are unknown and ignored. Paint each class with its "
            "value (1, 2, ...) and some background with the Background label value; it becomes the background "
            "(class 0) of the heads. A few strokes near the objects' edges teach the most."
        )
        self.background_spin = persisted(_spin(1, 255, 1), "finetune/background", 2)
        self.background_spin.setToolTip(
            "The label value you paint background with in sparse labels (unpainted = unknown, so 0 cannot be "
            "background). 2 suits one class painted as 1; with more classes take the value after the last."
        )
        self.validate_combo = LayerComboBox(napari_viewer, (Labels,), none_text=PAINTED_ONLY)
        self.validate_combo.setToolTip(
            "What validation Dice is scored on. 'painted pixels': a share of the strokes, which reads far "
            "higher than the Dice on whole images. A labels layer with full labels of the first pair's image "
            "(e.g. '<image> ground truth', picked when it exists) scores on it instead."
        )
        self.objects_check = QCheckBox("each label value is one object (fresh instance heads)")
        self.objects_check.setToolTip(
            "Train instance heads from labels where each object has its own value: Segment then gives each object "
            "its own label, counted and measured (classes background / interior / boundary)."
        )
        defaults = CUDA_DEFAULTS if cuda_likely() else CPU_DEFAULTS
        self.steps_spin = persisted(_spin(1, 1_000_000, 10), "finetune/steps", defaults["steps"])
        self.steps_spin.setToolTip("Training steps in all (the estimate below says how long they take).")
        self.every_spin = persisted(_spin(1, 100_000, 10), "finetune/every", defaults["every"])
        self.every_spin.setToolTip(
            "Validation Dice and a checkpoint after every this many steps and after the last "
            "(Stop also writes the step it stopped at)."
        )
        self.lr_spin = QDoubleSpinBox()
        self.lr_spin.setDecimals(5)
        self.lr_spin.setRange(1e-5, 1.0)
        self.lr_spin.setSingleStep(1e-4)
        self.lr_spin.setToolTip("Adam's learning rate at the first step; it decays to 0 at the last (1e-3 is usual).")
        persisted(self.lr_spin, "finetune/lr", 0.001)
        self.patch_spin = persisted(_spin(64, 2048, 32), "finetune/patch", defaults["patch"])
        self.patch_spin.setToolTip(
            "Side of the square training patches, a multiple of 32. Larger sees more context but is much "
            "slower: on a CPU 128 takes about 0.5 s a step, 256 about 2.5 s."
        )
        self.batch_spin = persisted(_spin(1, 64, 1), "finetune/batch", 2)
        self.batch_spin.setToolTip("Patches per step; the time per step grows with it.")
        self.cache_check = persisted(
            QCheckBox("cache backbone features (faster, lighter augmentation)"), "finetune/cache", True
        )
        self.cache_check.setToolTip(
            "Compute the backbone's features of 64 fixed crops once before training, so steps skip the "
            "backbone; augmentation is then only mirroring and intensity."
        )
        self.preview_check = persisted(QCheckBox("live preview"), "finetune/preview", True)
        self.preview_check.setToolTip(
            "While training, the heads predict the visible part of the first pair's image (the slice on "
            "screen) into the layer '<image> preview' every few seconds, taking at most a fifth of the "
            "training time."
        )
        self.out_edit = QLineEdit()
        self.out_edit.setPlaceholderText("automatic: beside the start heads")
        self.out_edit.setToolTip("The heads file to write (.safetensors); empty: a new name beside the start heads.")
        out_button = QToolButton(text="…")
        out_button.setToolTip("Choose the file to save the heads to.")
        out_button.clicked.connect(self._browse_out)
        self.estimate_label = QLabel()
        self.estimate_label.setWordWrap(True)
        self.estimate_label.setToolTip(
            "From seconds per step measured on a 2-core laptop CPU with a ViT-S backbone, for this patch, "
            "batch, cache and number of steps; a faster CPU, a larger backbone or a busy machine change it."
        )

        self.start_button = QPushButton("Start")
        self.start_button.setToolTip("Train with these settings; the loss and validation Dice are drawn below.")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        self.stop_button.setToolTip("End training now and save the heads of the step it reached.")
        from ._loss_plot import LossPlot

        self.plot = LossPlot()
        self.plot.setVisible(False)  # shown from the first Start on: an empty plot only takes height
        self.plot.setToolTip("Training loss (orange, left scale) and validation Dice (blue dots, 0 to 1) per step.")
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextSelectableByMouse)  # the checkpoint path can be copied

        form = QFormLayout()
        form.addRow("Start from", self.start_combo)
        form.addRow("Classes", self.classes_edit)
        stack_row = QHBoxLayout()  # the preview beside Stack: one row fewer, the three docks fit a laptop
        stack_row.addWidget(self.stack_combo, 1)
        stack_row.addWidget(self.preview_check)
        form.addRow("Stack", stack_row)
        form.addRow("Normalisation", self.normalization_combo)
        form.addRow(self.foreground_check)
        sparse_row = QHBoxLayout()  # with the instance-heads option: one row fewer, the docks fit a laptop
        sparse_row.addWidget(self.objects_check)
        sparse_row.addStretch(1)
        sparse_row.addWidget(self.sparse_check)
        self.background_label = QLabel("background")
        sparse_row.addWidget(self.background_label)
        sparse_row.addWidget(self.background_spin)
        form.addRow(sparse_row)
        self._validate_row = QWidget()  # shown with sparse labels only: the form stays short without them
        validate_row = QHBoxLayout(self._validate_row)
        validate_row.setContentsMargins(0, 0, 0, 0)
        validate_row.addWidget(QLabel("Validate on"))
        validate_row.addWidget(self.validate_combo, 1)
        form.addRow(self._validate_row)
        form.addRow("Steps", self.steps_spin)
        form.addRow(self.estimate_label)
        out_row = QHBoxLayout()
        out_row.addWidget(self.out_edit)
        out_row.addWidget(out_button)
        form.addRow("Save to", out_row)

        # rarely changed: folded away unless opened (the three docks must fit a laptop screen)
        self.advanced = QToolButton(text="Advanced")
        self.advanced.setCheckable(True)
        self.advanced.setAutoRaise(True)
        self.advanced.setArrowType(Qt.RightArrow)
        self.advanced.setToolButtonStyle(Qt.ToolButtonTextBesideIcon)
        self.advanced.setToolTip("Show the learning rate, patch and batch size, the feature cache and Save every.")
        self._advanced_body = QWidget()
        advanced_form = QFormLayout(self._advanced_body)
        advanced_form.setContentsMargins(12, 0, 0, 0)
        advanced_form.addRow("Save every", self.every_spin)
        advanced_form.addRow("Learning rate", self.lr_spin)
        advanced_form.addRow("Patch size", self.patch_spin)
        advanced_form.addRow("Batch size", self.batch_spin)
        advanced_form.addRow(self.cache_check)
        self.advanced.toggled.connect(self._show_advanced)
        self._advanced_body.setVisible(False)

        buttons = QHBoxLayout()
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.stop_button)
        layout = dock_layout(self)  # scrolls when short, like Segment and Export: the three docks fit a laptop
        layout.addWidget(self.model_form)
        layout.addLayout(self._pairs_grid)
        layout.addWidget(self.add_pair_button)
        layout.addLayout(form)
        layout.addWidget(self.advanced)
        layout.addWidget(self._advanced_body)
        layout.addLayout(buttons)
        layout.addWidget(self.plot)
        layout.addWidget(self.status)
        layout.addStretch(1)
        layout.addWidget(help_label())

        for spin in (self.steps_spin, self.every_spin, self.patch_spin, self.batch_spin):
            spin.valueChanged.connect(self._update_estimate)
        self.cache_check.toggled.connect(self._update_estimate)
        for spin in (self.every_spin, self.lr_spin, self.patch_spin, self.batch_spin):
            spin.valueChanged.connect(self._update_advanced_summary)
        self.cache_check.toggled.connect(self._update_advanced_summary)
        self.model_form.device_combo.currentTextChanged.connect(self._update_estimate)
        self.start_combo.currentTextChanged.connect(self._update_classes)
        self.foreground_check.toggled.connect(self._update_classes)
        self.sparse_check.toggled.connect(self._sparse_changed)
        self.background_spin.valueChanged.connect(self._update_classes)
        self.objects_check.toggled.connect(self._update_classes)
        self.session.heads_changed.connect(self._heads_changed)
        self.destroyed.connect(lambda *_: _disconnect(self.session.heads_changed, self._heads_changed))
        napari_viewer.layers.events.inserted.connect(self._layer_added)
        self.destroyed.connect(lambda *_: _disconnect(napari_viewer.layers.events.inserted, self._layer_added))
        self.start_button.clicked.connect(self.start)
        self.stop_button.clicked.connect(self.stop)
        self.add_pair()
        self._show_auto_normalization()
        self._sparse_changed()  # (it updates the classes)
        self._update_estimate()
        self._update_advanced_summary()

    # -- the form ---------------------------------------------------------------------------------------

    def add_pair(self) -> _PairRow:
        row = _PairRow(self.viewer)
        row.remove.clicked.connect(lambda: self.remove_pair(row))
        row.labels.currentIndexChanged.connect(self._update_classes)
        row.image.currentIndexChanged.connect(self._show_auto_normalization)
        self.rows.append(row)
        for column, widget in enumerate(row.widgets()):
            self._pairs_grid.addWidget(widget, len(self.rows), column)
        self._update_remove_buttons()
        return row

    def _layer_added(self, *_) -> None:
        """Segment's Next made "<image> checked": the pairs of that image count it in."""
        for row in self.rows:
            row.region.refresh()  # napari may tell this widget before the picker lists the new layer
            row.guess_region()

    def _show_auto_normalization(self, *_) -> None:
        show_auto_normalization(self.normalization_combo, [row.image.layer() for row in self.rows if row.image.layer()])

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
            normalization=auto_normalization(
                self.normalization_combo.currentText(), [row.image.layer() for row in self.rows if row.image.layer()]
            )[0],  # "auto (ct)" resolves again here, the layers may have changed since
        )

    def _pairs(self) -> list[TrainingPair]:
        """The chosen pairs as arrays (read here, in the GUI thread; the worker gets only arrays)."""
        whole = self.stack_combo.currentText() in (WHOLE_STACK, LABELLED_SLICES, WHOLE_VOLUME)
        volume = self.stack_combo.currentText() == WHOLE_VOLUME
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
            channels_like = plan.channel_axis is None and not image.rgb and image.ndim >= 3 and image.data.shape[0] <= 3
            if labels.data.shape != plan.labels_shape:
                hint = (
                    f"; if {image.name!r}'s axis 0 holds {image.data.shape[0]} channels, choose 'axis 0' in its "
                    "Channel axis column"
                    if channels_like and tuple(labels.data.shape) == plan.labels_shape[1:]
                    else ""
                )
                raise InputError(
                    f"labels {labels.name!r} have shape {labels.data.shape} but image {image.name!r} "
                    f"needs {plan.labels_shape}: pick the labels drawn on that image{hint}"
                )
            if channels_like:  # a (C, Y, X) layer trained as C slices unless the user says otherwise
                show_warning(
                    f"{image.name!r} is read as {image.data.shape[0]} slices along axis 0; if that axis holds "
                    "channels, choose 'axis 0' in its Channel axis column"
                )
            values = plan.select(labels.data)
            if self.foreground_check.isChecked() and not self.sparse_check.isChecked():
                values = (values > 0).astype(np.uint8)
            mask = plan.select(region_mask(region, plan.labels_shape)) if region is not None else None
            if self.stack_combo.currentText() == LABELLED_SLICES:
                mask = only_labelled_slices(values, mask)
            planes, spacing = None, None
            if volume:
                if len(plan.labels_shape) != 3:
                    raise InputError(
                        f"{WHOLE_VOLUME} needs a 3D (Z, Y, X) image and labels; {image.name!r} gives labels of "
                        f"shape {plan.labels_shape}: choose 'whole stack' or 'current slice'"
                    )
                planes, spacing = (0, 1, 2), tuple(plan.scale)
            pairs.append(
                TrainingPair(
                    f"{image.name} / {labels.name}",
                    plan.image,
                    values,
                    mask,
                    plan.channel_axis is not None,
                    planes,
                    spacing,
                )
            )
        if len({(pair.planes, pair.spacing) for pair in pairs}) > 1:
            raise InputError(
                f"{WHOLE_VOLUME}: the volumes have different voxel sizes (layer scales): train on one at a time"
            )
        return pairs

    def _automatic_class_names(self) -> list[str] | None:
        """Fresh heads' class names when the Classes field is empty: background/foreground for instance
        labels, the first labels layer's metadata class names, else background, class 1, ... up to its
        largest value; None without a labels layer."""
        if self._instance_heads():
            return list(INSTANCE_CLASS_NAMES)
        if self.foreground_check.isChecked():
            return ["background", "foreground"]
        labels = self.rows[0].labels.layer() if self.rows else None
        if labels is None:
            return None
        names = labels.metadata.get(CLASS_NAMES_KEY)
        if names:
            return [str(name) for name in names]
        from ..engine.data import default_class_names

        values = np.unique(labels.data) if np.size(labels.data) else np.zeros(1, int)
        background = self._sparse_background()
        if background is not None:  # scribbles: the background value is class 0, not a class of its own
            values = values[values != background]
        largest = int(values.max()) if values.size else 0
        return default_class_names(max(largest, 1) + 1)

    def _instance_heads(self) -> bool:
        """Whether fresh heads are to be instance heads (the labels are object ids)."""
        return self.objects_check.isChecked() and self.start_combo.currentText() == FRESH_HEADS

    def _class_names(self) -> list[str] | None:
        """Class names for fresh heads: the Classes field's, else the automatic ones."""
        typed = [name.strip() for name in self.classes_edit.text().split(",") if name.strip()]
        if not typed or self._instance_heads():
            return self._automatic_class_names()
        if len(typed) < 2:
            raise InputError(
                "the Classes field names one class: name the background first and at least one class, "
                "e.g. 'background, nucleus' (or leave it empty for the automatic names)"
            )
        if len(set(typed)) < len(typed):
            raise InputError(f"the Classes field names a class twice ({', '.join(typed)}): give each a new name")
        return typed

    def _sparse_changed(self, *_) -> None:
        """Scribbles take a background value and a validation choice; instance labels are not scribbles."""
        sparse = self.sparse_check.isChecked()
        for control in (self.background_label, self.background_spin):
            control.setEnabled(sparse)
        self._validate_row.setVisible(sparse)
        if sparse and self.validate_combo.layer() is None:
            image = self.rows[0].image.layer() if self.rows else None
            index = self.validate_combo.findText(f"{image.name} ground truth") if image is not None else -1
            if index >= 0:
                self.validate_combo.setCurrentIndex(index)
        self._update_classes()

    def _sparse_background(self) -> int | None:
        return self.background_spin.value() if self.sparse_check.isChecked() else None

    def _validation_pairs(self) -> list[TrainingPair] | None:
        """The full labels to validate on (scribbles only; None: a share of the painted pixels)."""
        layer = self.validate_combo.layer() if self.sparse_check.isChecked() else None
        if layer is None:
            return None
        row = self.rows[0]
        image = row.image.layer()
        plan = plan_run(
            image,
            channel_axis=row.channel_axis.currentData(),
            whole_stack=self.stack_combo.currentText() == WHOLE_STACK,
            current=viewer_indices(self.viewer, image),
        )
        if layer.data.shape != plan.labels_shape:
            raise InputError(
                f"the validation labels {layer.name!r} have shape {layer.data.shape} but image {image.name!r} "
                f"needs {plan.labels_shape}: under Validate on, pick full labels of the first pair's image"
            )
        name = f"{image.name} / {layer.name} (validation)"
        return [TrainingPair(name, plan.image, plan.select(layer.data), None, plan.channel_axis is not None)]

    def _show_advanced(self, shown: bool) -> None:
        self._advanced_body.setVisible(shown)
        self.advanced.setArrowType(Qt.DownArrow if shown else Qt.RightArrow)

    def _update_advanced_summary(self, *_) -> None:
        """The folded section's values stay in sight (they are remembered between sessions)."""
        self.advanced.setText(
            f"Advanced: patch {self.patch_spin.value()}, batch {self.batch_spin.value()}, "
            f"lr {self.lr_spin.value():g}, {'cached' if self.cache_check.isChecked() else 'no cache'}, "
            f"save every {self.every_spin.value()}"
        )

    def _update_classes(self, *_) -> None:
        """The Classes field is for fresh heads; its placeholder shows the names an empty field gives."""
        fresh = self.start_combo.currentText() == FRESH_HEADS
        self.classes_edit.setEnabled(fresh and not self.objects_check.isChecked())
        self.objects_check.setEnabled(fresh)  # start heads keep their own task
        # object ids must stay apart; scribbles keep their values
        self.foreground_check.setEnabled(not self._instance_heads() and not self.sparse_check.isChecked())
        if self._instance_heads():
            self.foreground_check.setChecked(False)
        automatic = self._automatic_class_names() if fresh else None
        self.classes_edit.setPlaceholderText(
            ", ".join(automatic) if automatic else ("the start heads' classes" if not fresh else "background, class 1")
        )

    def _heads_changed(self, path) -> None:
        """Heads chosen (or cleared) elsewhere: start from them, or from fresh heads when there are none (or
        the file is gone)."""
        self.start_combo.setCurrentText(LOADED_HEADS if path is not None and Path(path).is_file() else FRESH_HEADS)

    def _update_estimate(self, *_) -> None:
        """The run's duration before Start, on a CPU (engine.estimate's table); none for GPUs."""
        from ..engine.estimate import BASIS, cpu_run_estimate, format_duration

        device = self.model_form.device_combo.currentText()
        if device.startswith("cuda") or device == "mps" or (device == "auto" and cuda_likely()):
            self.estimate_label.setText(
                "Duration: no estimate for a GPU (usually far below a second a step); the time left shows once "
                "training runs"
            )
            return
        try:
            options = self._options()
        except DinoUNetError:
            self.estimate_label.setText("")
            return
        estimate = cpu_run_estimate(
            steps=options.steps,
            patch_size=options.patch_size,
            batch_size=options.batch_size,
            cache_features=options.cache_features,
            checkpoints=options.checkpoints,
        )
        self.estimate_label.setText(
            f"Duration: {format_duration(estimate.total_s)} ({estimate.steps_s / options.steps:.1f} s a step; {BASIS})"
        )

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
            validation = self._validation_pairs()
            class_names = None if start_heads is not None else self._class_names()
            options = self._options()
        except DinoUNetError as err:
            report_error(f"Fine-tuning cannot start: {err}", self.status)
            return None
        out.parent.mkdir(parents=True, exist_ok=True)
        self._stop = Stop()
        self.live_preview = self._live_preview(start_heads, class_names) if self.preview_check.isChecked() else None
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
            allow_backbone_mismatch=bool(getattr(self.session, "allow_backbone_mismatch", False)),
            preview=self.live_preview.target if self.live_preview is not None else None,
            sparse_background=self._sparse_background(),
            validation=validation,
            task=INSTANCES if self._instance_heads() else SEMANTIC,
        )
        self.plot.clear(options.steps)
        self.plot.setVisible(True)
        self.job = Job(
            gen,
            "Fine-tuning",
            on_result=self._show_result,
            on_progress=self._progress,
            on_finished=self._finished,
            stop=self._stop,
            status=self.status,  # phase, step count and time left; an error's whole message
            on_cancel=self.stop,  # the activity dock's Cancel is this widget's Stop
        )
        self.start_button.setEnabled(False)
        self.stop_button.setEnabled(True)
        scheme = "the start heads'" if start_heads is not None else options.normalization
        self.status.setText(f"training ({scheme} normalisation); checkpoints go to {out}")
        return self.job.start()

    def stop(self) -> None:
        """End training at the next step and save the heads of that step."""
        if self.job is not None and not self.job.done:
            self.job.cancel()
            self.stop_button.setEnabled(False)
            self.status.setText("stopping after this step, then saving its heads…")

    def _start_heads(self) -> Path | None:
        if self.start_combo.currentText() == FRESH_HEADS:
            return None
        heads = self.session.heads_path
        if heads is None:
            raise InputError("no heads to start from: pick a heads checkpoint (Start heads), or choose 'fresh heads'")
        if not heads.is_file():
            raise InputError(
                f"the start heads {heads} do not exist (moved or deleted?): pick another file in Start heads, "
                "or choose 'fresh heads'"
            )
        return heads

    def _live_preview(self, start_heads: Path | None, class_names: list[str] | None) -> LivePreview | None:
        """Previews of the first pair's image (None when the class count is not known yet)."""
        row = self.rows[0]
        metadata = heads_metadata(start_heads) if start_heads is not None else None
        count = len(metadata.class_names) if metadata is not None else len(class_names or ())
        if not count or row.image.layer() is None:
            return None
        return LivePreview(
            self.viewer, row.image.layer(), channel_axis=row.channel_axis.currentData(), num_classes=count
        )

    def _progress(self, event: Progress) -> None:
        if isinstance(event, Preview):
            if self.live_preview is not None:
                self.live_preview.show(event)
        elif isinstance(event, Validation):
            painted_only = event.scope == PAINTED_SCOPE
            self.plot.dice_label = "val Dice (painted px)" if painted_only else "val Dice"
            if event.dice is not None:
                self.plot.add_val_dice(event.done, event.dice)
        elif event.task == "train" and "loss" in event.metrics:  # one training step
            self.plot.add_loss(event.done, event.metrics["loss"])

    def _show_result(self, result: FineTuneResult) -> None:
        if result.checkpoint is None:
            self.status.setText("stopped before the first step: nothing was trained, nothing written")
            return
        self.session.heads_path = result.checkpoint
        self.model_form.set_heads(str(result.checkpoint))
        if self.out_edit.text().strip() and Path(self.out_edit.text().strip()) == result.checkpoint:
            self.out_edit.clear()  # the next run gets a new name instead of refusing an existing file
        how = f"stopped at step {result.steps_done}" if result.stopped else f"done ({result.steps_done} steps)"
        self.status.setText(
            f"{how}; the heads of step {result.steps_done} are saved and Segment now uses {result.checkpoint}"
        )
        show_info(f"Fine-tuning {how}: heads of step {result.steps_done} saved to {result.checkpoint}")

    def _finished(self) -> None:
        self.start_button.setEnabled(True)
        self.stop_button.setEnabled(False)
        if self.live_preview is not None:
            self.live_preview.close()
        if self.job.cancelled and not self.job.errored:
            self.status.setText("cancelled: the heads in use did not change")


def _spin(low: int, high: int, step: int) -> QSpinBox:
    spin = QSpinBox()
    spin.setRange(low, high)
    spin.setSingleStep(step)
    return spin


def _disconnect(signal, slot) -> None:
    with contextlib.suppress(RuntimeError, ValueError):  # already gone
        signal.disconnect(slot)
