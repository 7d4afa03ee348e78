"""The Fine-tune widget with a real viewer (run under ``xvfb-run -a``): pairs, regions, a short training
on the nuclei crop, Stop, the hand-over to Segment, and errors. Backbone: random:tiny."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from _widget_helpers import (
    collect_errors,
    nuclei_crop,
    wait_for,
    write_tiny_heads,
)

from napari_dinounet._widgets import finetune as finetune_module
from napari_dinounet._widgets._layer_geometry import WHOLE_STACK, camera
from napari_dinounet._widgets.finetune import (
    FRESH_HEADS,
    LOADED_HEADS,
    FineTuneOptions,
    FineTuneWidget,
    TrainingPair,
    finetune_job,
)
from napari_dinounet.engine.checkpoint import read_metadata
from napari_dinounet.engine.errors import InputError
from napari_dinounet.engine.train import poly_lr


@pytest.fixture
def viewer(make_napari_viewer):
    viewer = make_napari_viewer()
    image, labels = nuclei_crop()
    viewer.add_image(image, name="nuclei")
    viewer.add_labels(labels, name="nuclei labels", metadata={"class_names": ["background", "nucleus"]})
    return viewer


@pytest.fixture
def errors(monkeypatch) -> list[str]:
    return collect_errors(monkeypatch, finetune_module)


def ready_widget(viewer, tmp_path, *, steps=24, every=8):
    widget = FineTuneWidget(viewer)
    widget.model_form.set_backbone("random:tiny")
    widget.model_form.device_combo.setCurrentText("cpu")
    widget.start_combo.setCurrentText(FRESH_HEADS)
    widget.steps_spin.setValue(steps)
    widget.every_spin.setValue(every)
    widget.patch_spin.setValue(64)
    widget.lr_spin.setValue(0.003)
    widget.out_edit.setText(str(tmp_path / "tuned.safetensors"))
    return widget


LOSS_COLOR = np.array([255, 140, 0])
DICE_COLOR = np.array([80, 170, 255])


def qimage_to_array(image) -> np.ndarray:
    """(H, W, 3) int RGB of a QImage."""
    from qtpy.QtGui import QImage

    image = image.convertToFormat(QImage.Format_RGB888)
    buffer = np.frombuffer(image.constBits().asstring(image.sizeInBytes()), np.uint8)
    return (
        buffer.reshape(image.height(), image.bytesPerLine())[:, : image.width() * 3]
        .reshape(image.height(), image.width(), 3)
        .astype(int)
    )


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_pairs_follow_the_viewer_and_regions_become_masks(viewer):
    widget = FineTuneWidget(viewer)
    row = widget.rows[0]
    assert row.image.currentText() == "nuclei"
    assert row.labels.currentText() == "nuclei labels"  # Segment's naming is recognised
    assert row.region.currentText() == "everywhere"

    viewer.add_shapes([np.array([[10, 20], [10, 59], [39, 59], [39, 20]])], shape_type="rectangle", name="checked")
    row.region.setCurrentText("checked")
    (pair,) = widget._pairs()
    assert pair.image.shape == (128, 128) and pair.labels.shape == (128, 128) and not pair.has_channels
    assert pair.mask.dtype == bool and pair.mask[10:40, 20:60].all() and pair.mask.sum() == 30 * 40

    mask = np.zeros((128, 128), np.uint8)
    mask[:50] = 3
    viewer.add_labels(mask, name="painted region")
    row.region.setCurrentText("painted region")
    assert widget._pairs()[0].mask.sum() == 50 * 128

    second = widget.add_pair()
    assert len(widget.rows) == 2 and second.remove.isEnabled()
    widget.remove_pair(second)
    assert len(widget.rows) == 1 and not widget.rows[0].remove.isEnabled()


def test_fine_tune_lowers_the_loss_and_hands_the_heads_to_segment(qtbot, viewer, tmp_path):
    from napari_dinounet._widgets.segment import SegmentWidget

    segment = SegmentWidget(viewer)
    widget = ready_widget(viewer, tmp_path)
    heard = []
    widget.session.heads_changed.connect(heard.append)
    job = widget.start()
    assert not widget.start_button.isEnabled() and widget.stop_button.isEnabled()
    wait_for(qtbot, job, timeout_ms=240_000)
    assert not job.errored

    out = tmp_path / "tuned.safetensors"
    assert out.is_file() and heard == [out]
    assert segment.model_form.heads_edit.text() == str(out)  # Segment uses the new heads at once
    assert str(out) in widget.status.text()
    assert widget.out_edit.text() == ""  # the next Start writes a new file instead of refusing this one
    metadata = read_metadata(out)
    assert metadata.class_names == ["background", "nucleus"] and metadata.patch_size == 64

    losses = [loss for _, loss in widget.plot.loss]
    assert len(losses) == 24
    first, last = np.mean(losses[:4]), np.mean(losses[-4:])
    print(f"loss {first:.3f} (steps 1-4) -> {last:.3f} (steps 21-24); val Dice {widget.plot.val_dice}")
    assert last < 0.8 * first
    assert [step for step, _ in widget.plot.val_dice] == [0, 8, 16, 24]
    drawn = qimage_to_array(widget.plot.grab().toImage())
    assert (np.abs(drawn - LOSS_COLOR).sum(axis=-1) < 60).sum() > 50  # the loss curve is on screen
    assert (np.abs(drawn - DICE_COLOR).sum(axis=-1) < 60).sum() > 20  # and the Dice points
    assert widget.start_button.isEnabled() and not widget.stop_button.isEnabled()

    # Segment now runs with the fine-tuned heads
    segment.model_form.device_combo.setCurrentText("cpu")
    segment.tile_spin.setValue(64)
    wait_for(qtbot, segment.run())
    predicted = viewer.layers["nuclei labels"].data
    assert predicted.shape == (128, 128) and set(np.unique(predicted)) <= {0, 1}


def train_and_stop_at(qtbot, widget, step: int):
    """Start training, press Stop once training step ``step`` is reported, and wait for the job to end."""

    def stop(event):
        if event.task == "train" and event.done >= step:
            widget.stop()

    job = widget.start()
    job.worker.yielded.connect(stop)
    wait_for(qtbot, job)
    return job


def test_stop_writes_the_step_it_stopped_at_and_keeps_the_starting_heads(qtbot, viewer, tmp_path):
    start = write_tiny_heads(tmp_path / "start.safetensors")
    before = digest(start)
    widget = ready_widget(viewer, tmp_path, steps=400, every=4)
    widget.model_form.set_heads(str(start))
    widget.start_combo.setCurrentText(LOADED_HEADS)

    job = train_and_stop_at(qtbot, widget, step=6)  # two steps after a checkpoint
    out = tmp_path / "tuned.safetensors"
    assert not job.errored and out.is_file()
    stopped = widget.plot.loss[-1][0]
    assert 6 <= stopped < 400  # it ended early
    assert f"stopped at step {stopped}" in widget.status.text() and widget.session.heads_path == out
    assert digest(start) == before  # the heads it started from are untouched
    # the file holds the step it stopped at, not the last "Save every" checkpoint before it
    assert read_metadata(out).training["history"][-1]["step"] == stopped


def test_stop_before_the_first_checkpoint_still_writes_the_stopped_step(qtbot, viewer, tmp_path):
    """Walkthrough F4: with Save every 200, Stop at step 3 used to write nothing."""
    widget = ready_widget(viewer, tmp_path, steps=400, every=200)

    train_and_stop_at(qtbot, widget, step=3)
    out = tmp_path / "tuned.safetensors"
    stopped = widget.plot.loss[-1][0]
    assert 3 <= stopped < 200
    history = read_metadata(out).training["history"]
    assert [entry["step"] for entry in history] == [stopped]
    assert f"stopped at step {stopped}" in widget.status.text() and widget.session.heads_path == out
    assert widget.plot.val_dice[-1][0] == stopped  # the stop validated the heads it saved


def test_bad_input_is_explained_and_nothing_starts(qtbot, viewer, tmp_path, errors):
    widget = ready_widget(viewer, tmp_path)
    viewer.add_labels(np.zeros((64, 64), np.uint8), name="small")
    widget.rows[0].labels.setCurrentText("small")
    assert widget.start() is None
    assert "needs (128, 128)" in errors[-1] and "pick the labels drawn on that image" in errors[-1]

    widget.rows[0].labels.setCurrentText("nuclei labels")
    widget.start_combo.setCurrentText(LOADED_HEADS)
    widget.model_form.set_heads("")
    assert widget.start() is None and "fresh heads" in errors[-1]

    start = write_tiny_heads(tmp_path / "start.safetensors")
    widget.model_form.set_heads(str(start))
    widget.out_edit.setText(str(start))
    assert widget.start() is None and "would overwrite" in errors[-1]

    # labels with more classes than the heads have: the engine's message arrives as a notification, its
    # advice in the form's words (not num_classes / --classes, which the form cannot express)
    viewer.layers["nuclei labels"].data[0, 0] = 5
    widget.out_edit.setText(str(tmp_path / "other.safetensors"))
    job = widget.start()
    wait_for(qtbot, job)
    assert job.errored and "Fine-tuning failed" in errors[-1] and "labels 0..1" in errors[-1], errors[-1]
    assert "Start from: fresh heads" in errors[-1] and "Classes field" in errors[-1], errors[-1]
    assert "num_classes" not in errors[-1] and "--classes" not in errors[-1]
    assert widget.start_button.isEnabled() and not (tmp_path / "other.safetensors").exists()


# ------------------------------------------------------------------------ steps, channels, settings


def test_options_make_a_run_of_exactly_the_steps_asked():
    options = FineTuneOptions(steps=100, every=30, lr=1e-3, patch_size=64, batch_size=2, cache_features=False)
    settings = options.settings()
    assert (settings.total_steps, settings.iters_per_epoch, settings.epoch_count) == (100, 30, 4)
    assert poly_lr(99, settings) > 0 and poly_lr(100, settings) == 0  # the schedule ends at step 100, not 120


def write_compact_heads(path):
    """Tiny heads with the compact projection (not the default fapm), as a user's fine-tuned file may be."""
    from napari_dinounet.engine.backbone import load_backbone
    from napari_dinounet.engine.checkpoint import HeadsMetadata, save_heads
    from napari_dinounet.engine.network import build_dinounet

    model = build_dinounet("tiny", projection="compact", num_classes=2, backbone=load_backbone("random:tiny"))
    metadata = HeadsMetadata(
        config=model.config.to_dict(),
        class_names=["background", "nucleus"],
        in_channels=1,
        normalization={"scheme": "zscore"},
        patch_size=64,
        backbone_variant="tiny",
    )
    return save_heads(path, model, metadata)


def test_finetune_job_runs_exactly_the_steps_asked_and_records_the_heads_projection(tmp_path):
    """Report defects (d).1 (Steps 100 with Save every 30 trained 120 steps) and (d).4 (compact heads recorded
    "projection": "fapm" in their training summary)."""
    from napari_dinounet._widgets._jobs import Stop
    from napari_dinounet._widgets._session import Session
    from napari_dinounet.engine.progress import Validation, drain

    start = write_compact_heads(tmp_path / "compact.safetensors")
    image, labels = nuclei_crop()
    options = FineTuneOptions(steps=100, every=30, lr=1e-3, patch_size=64, batch_size=2, cache_features=True)
    events = []
    out = tmp_path / "tuned.safetensors"
    pairs = [TrainingPair("crop", image, labels, None, False)]
    result = drain(
        finetune_job(Session(), "random:tiny", "cpu", start, pairs, None, out, options, Stop()), events.append
    )
    steps = [e.done for e in events if e.task == "train" and not isinstance(e, Validation)]
    assert steps == list(range(1, 101)) and result.steps_done == 100 and not result.stopped
    assert [e.done for e in events if isinstance(e, Validation)] == [0, 30, 60, 90, 100]
    training = read_metadata(out).training
    assert [h["step"] for h in training["history"]] == [30, 60, 90, 100]
    assert training["settings"]["projection"] == "compact" and training["settings"]["max_steps"] == 100
    assert read_metadata(out).config["projection"] == "compact"


@pytest.fixture
def three_channel_viewer(make_napari_viewer):
    """A (C, Y, X) image layer of 3 channels (not RGB), with labels drawn on it as napari makes them, (C, Y, X),
    and labels of the image's plane, (Y, X)."""
    viewer = make_napari_viewer()
    image, labels = nuclei_crop()
    viewer.add_image(np.stack([image, image[::-1], image[:, ::-1]]), name="three")
    viewer.add_labels(np.stack([labels] * 3), name="three labels")
    viewer.add_labels(labels, name="plane labels")
    return viewer


def test_the_channel_axis_of_a_multichannel_layer_makes_one_image_with_its_channels(three_channel_viewer, monkeypatch):
    widget = FineTuneWidget(three_channel_viewer)
    row = widget.rows[0]
    row.image.setCurrentText("three")
    assert [row.channel_axis.itemText(i) for i in range(row.channel_axis.count())] == ["none", "axis 0 (3)"]
    widget.stack_combo.setCurrentText(WHOLE_STACK)
    warned = []
    monkeypatch.setattr(finetune_module, "show_warning", warned.append)
    (stack,) = widget._pairs()  # no channel axis: three grey slices, as before, but never in silence
    assert stack.image.shape == (3, 128, 128) and not stack.has_channels
    assert len(warned) == 1 and "read as 3 slices along axis 0" in warned[0] and "Channel axis" in warned[0]

    row.labels.setCurrentText("plane labels")  # (Y, X) labels on a (C, Y, X) image: the error says why
    with pytest.raises(InputError, match="choose 'axis 0' in its Channel axis column"):
        widget._pairs()
    row.labels.setCurrentText("three labels")

    row.channel_axis.setCurrentIndex(1)
    row.labels.setCurrentText("plane labels")
    (pair,) = widget._pairs()
    assert pair.image.shape == (128, 128, 3) and pair.has_channels and pair.labels.shape == (128, 128)
    np.testing.assert_array_equal(pair.image[..., 1], three_channel_viewer.layers["three"].data[1])


def test_heads_of_three_channels_are_not_fine_tuned_on_one_channel_images(
    qtbot, three_channel_viewer, tmp_path, errors
):
    """Report defect (d).2: the checkpoint's in_channels used to be rewritten to what the images gave."""
    start = write_tiny_heads(tmp_path / "rgb.safetensors", in_channels=3)
    widget = ready_widget(three_channel_viewer, tmp_path, steps=2, every=2)
    widget.model_form.set_heads(str(start))
    widget.start_combo.setCurrentText(LOADED_HEADS)
    row = widget.rows[0]
    row.image.setCurrentText("three")
    row.labels.setCurrentText("three labels")
    job = widget.start()  # channel axis "none": three 1-channel slices
    wait_for(qtbot, job)
    assert job.errored and "trained on 3-channel images but the images give 1 channel" in errors[-1], errors[-1]
    assert "Channel axis" in errors[-1] and not (tmp_path / "tuned.safetensors").exists()

    row.channel_axis.setCurrentIndex(1)
    row.labels.setCurrentText("plane labels")
    job = widget.start()
    wait_for(qtbot, job)
    assert not job.errored, errors
    assert read_metadata(tmp_path / "tuned.safetensors").in_channels == 3


def test_the_form_is_remembered_for_the_next_widget(viewer, isolated_settings):
    widget = FineTuneWidget(viewer)
    assert (widget.steps_spin.value(), widget.every_spin.value(), widget.cache_check.isChecked()) == (200, 50, True)
    assert widget.patch_spin.value() == (256 if finetune_module.cuda_likely() else 128)  # CPU: minutes, not 15
    widget.steps_spin.setValue(123)
    widget.every_spin.setValue(7)
    widget.lr_spin.setValue(0.004)
    widget.patch_spin.setValue(128)
    widget.batch_spin.setValue(3)
    widget.cache_check.setChecked(False)
    again = FineTuneWidget(viewer)
    assert (
        again.steps_spin.value(),
        again.every_spin.value(),
        again.lr_spin.value(),
        again.patch_spin.value(),
        again.batch_spin.value(),
        again.cache_check.isChecked(),
    ) == (123, 7, 0.004, 128, 3, False)
    assert (isolated_settings / "napari-dinounet.ini").is_file()


# ------------------------------------------------------------------- the form: classes, estimate, fit


def test_fresh_heads_are_the_default_without_heads_and_their_classes_can_be_named(qtbot, viewer, tmp_path):
    widget = FineTuneWidget(viewer)
    assert widget.session.heads_path is None and widget.start_combo.currentText() == FRESH_HEADS
    assert widget.classes_edit.isEnabled() and widget.classes_edit.placeholderText() == "background, nucleus"
    start = write_tiny_heads(tmp_path / "start.safetensors")
    widget.model_form.set_heads(str(start))
    assert widget.start_combo.currentText() == LOADED_HEADS and not widget.classes_edit.isEnabled()
    widget.model_form.set_heads("")
    assert widget.start_combo.currentText() == FRESH_HEADS

    viewer.add_labels(viewer.layers["nuclei labels"].data.copy(), name="unnamed")  # no class names
    widget.rows[0].labels.setCurrentText("unnamed")
    assert widget.classes_edit.placeholderText() == "background, class 1"

    widget = ready_widget(viewer, tmp_path, steps=2, every=2)
    widget.classes_edit.setText("background, cell nucleus")
    wait_for(qtbot, widget.start())
    assert read_metadata(tmp_path / "tuned.safetensors").class_names == ["background", "cell nucleus"]


def test_one_class_name_is_refused_with_the_fields_name(viewer, tmp_path, errors):
    widget = ready_widget(viewer, tmp_path)
    widget.classes_edit.setText("nucleus")
    assert widget.start() is None and "Classes field names one class" in errors[-1]


def test_the_estimate_follows_patch_batch_steps_cache_and_device(viewer):
    widget = FineTuneWidget(viewer)
    widget.model_form.device_combo.setCurrentText("cpu")

    def seconds_a_step() -> float:
        text = widget.estimate_label.text()
        assert text.startswith("Duration: about ") and "estimate" in text
        return float(text.split("(")[1].split(" s a step")[0])

    widget.patch_spin.setValue(128)
    widget.batch_spin.setValue(2)
    small = seconds_a_step()
    widget.patch_spin.setValue(256)
    assert seconds_a_step() > 3 * small  # measured: 0.5 s against 2.5 s a step
    widget.batch_spin.setValue(4)
    assert seconds_a_step() > 6 * small
    from napari_dinounet.engine.estimate import cpu_run_estimate, format_duration

    widget.steps_spin.setValue(400)
    widget.every_spin.setValue(100)
    expected = cpu_run_estimate(steps=400, patch_size=256, batch_size=4, cache_features=True, checkpoints=4)
    assert widget.estimate_label.text().startswith(f"Duration: {format_duration(expected.total_s)} (")
    assert expected.total_s > 30 * 60  # 400 steps of 5 s, as the text says
    before = widget.estimate_label.text()
    widget.cache_check.setChecked(False)
    assert widget.estimate_label.text() != before
    widget.model_form.device_combo.setCurrentText("cuda")
    assert "no estimate for a GPU" in widget.estimate_label.text()


def test_rarely_changed_fields_fold_away_and_every_control_says_what_it_does(viewer):
    from qtpy.QtWidgets import QAbstractButton, QComboBox, QDoubleSpinBox, QLineEdit, QScrollArea, QSpinBox

    widget = FineTuneWidget(viewer)
    widget.show()
    form = widget.findChild(QScrollArea).widget()  # the dock scrolls when short; the form is what it holds
    assert widget.minimumSizeHint().height() < 100
    folded = form.minimumSizeHint().height()
    assert not widget.advanced.isChecked() and not widget.patch_spin.isVisible() and not widget.plot.isVisible()
    # folded, its remembered values stay in sight
    widget.patch_spin.setValue(192)
    assert widget.advanced.text() == "Advanced: patch 192, batch 2, lr 0.001, cached, save every 50"
    widget.advanced.setChecked(True)
    assert widget.patch_spin.isVisible() and widget.lr_spin.isVisible() and widget.cache_check.isVisible()
    assert form.minimumSizeHint().height() > folded + 80
    print(f"Fine-tune form minimumSizeHint: {folded} px folded, {form.minimumSizeHint().height()} px open")
    assert folded < 600  # 755 px before the Advanced section and the plot shown from Start on

    controls = widget.findChildren((QAbstractButton, QComboBox, QSpinBox, QDoubleSpinBox, QLineEdit))
    silent = [
        c.text() if hasattr(c, "text") else type(c).__name__
        for c in controls
        if not c.toolTip() and not isinstance(c.parent(), (QSpinBox, QDoubleSpinBox, QComboBox))
    ]
    assert len(controls) > 15 and silent == []


def engine_message(call) -> str:
    from napari_dinounet.engine.errors import DinoUNetError

    with pytest.raises(DinoUNetError) as caught:
        call()
    return str(caught.value)


def test_engine_advice_is_reworded_to_the_forms_controls(tmp_path):
    """Advice the form cannot follow (num_classes, channel_axis=, --lr, allow_backbone_mismatch, channels) is
    replaced by the control that does it; the engine's own messages, produced for real, are the input."""
    from napari_dinounet._widgets.finetune import gui_wording
    from napari_dinounet.engine.backbone import load_backbone
    from napari_dinounet.engine.checkpoint import load_heads
    from napari_dinounet.engine.data import samples_from_arrays
    from napari_dinounet.engine.layout import infer_layout
    from napari_dinounet.engine.train import TrainSettings, build_model

    image, labels = nuclei_crop()
    instances = np.zeros_like(labels, np.int32)
    instances[:40, :40] = np.arange(40 * 40).reshape(40, 40) % 30  # 29 ids: instance labels
    messages = {
        "instances": engine_message(lambda: samples_from_arrays([image], [instances])),
        "classes": engine_message(lambda: samples_from_arrays([image], [labels * 3], num_classes=2)),
        "axes": engine_message(lambda: infer_layout((2, 2, 2, 8, 8))),
        "channels": engine_message(
            lambda: build_model(load_backbone("random:tiny"), TrainSettings(size="tiny"), 2, in_channels=5)
        ),
        "backbone": engine_message(
            lambda: load_heads(write_tiny_heads(tmp_path / "t.safetensors"), load_backbone("random:s"))
        ),
    }
    worded = {key: gui_wording(message) for key, message in messages.items()}
    for key, text in worded.items():
        print(key, "->", text)
        for code in (
            "num_classes",
            "--classes",
            "channel_axis=",
            "--channel-axis",
            "allow_backbone_mismatch",
            "(channels",
        ):
            assert code not in text, (key, text)
    assert "any label value is foreground" in worded["instances"]
    assert "Classes field" in worded["classes"]
    assert "Channel axis column" in worded["axes"]
    assert "1 to 3 channels" in worded["channels"]
    assert "allow another backbone" in worded["backbone"] and "fresh heads" in worded["backbone"]
    assert gui_wording("Lower the learning rate (--lr) and start again") == (
        "Lower the learning rate (Learning rate, under Advanced) and start again"
    )


def test_live_preview_follows_the_camera_and_updates_while_training(qtbot, viewer, tmp_path, monkeypatch):
    from napari_dinounet.engine import preview as preview_module
    from napari_dinounet.engine.preview import Preview

    monkeypatch.setattr(preview_module, "PREVIEW_INTERVAL_S", 0.0)  # a preview after every step: the test is short
    monkeypatch.setattr(preview_module, "PREVIEW_SHARE", 1e9)
    camera(viewer).center = (30, 40)
    camera(viewer).zoom = max(viewer.canvas.size) / 40  # about 40 pixels of the 128 across the canvas's long side
    widget = ready_widget(viewer, tmp_path, steps=8, every=4)
    assert widget.preview_check.isChecked()  # on by default
    previews = []

    def watch(event):
        if isinstance(event, Preview):
            previews.append(event)
            if len(previews) == 3:
                camera(viewer).center = (90, 90)  # the user pans while it trains

    job = widget.start()
    job.worker.yielded.connect(watch)
    wait_for(qtbot, job)
    assert not job.errored
    assert [p.done for p in previews] == list(range(1, 8)) and widget.live_preview.shown == 7

    (y0, y1), (x0, x1) = first = previews[0].view.region
    height, width = viewer.canvas.size
    zoom = camera(viewer).zoom
    assert y0 <= 30 < y1 and x0 <= 40 < x1  # around the camera's centre
    assert abs((y1 - y0) - min(128, height / zoom)) <= 2 and abs((x1 - x0) - min(128, width / zoom)) <= 2
    (y0, y1), (x0, x1) = last = previews[-1].view.region
    assert last != first and y0 <= 90 < y1 and x0 <= 90 < x1  # it followed the camera

    layer = viewer.layers["nuclei preview"]  # the latest preview, zero outside its region
    assert layer.data.shape == (128, 128) and layer.metadata["preview_step"] == 7
    expected = np.zeros((128, 128), np.uint8)
    expected[y0:y1, x0:x1] = previews[-1].labels
    np.testing.assert_array_equal(layer.data, expected)
    assert 0 < layer.opacity < 1


def test_scribbles_train_fresh_heads_and_validation_says_what_it_scored(qtbot, viewer, tmp_path):
    from napari_dinounet.engine.progress import Validation
    from napari_dinounet.engine.sparse import simulated_scribbles

    truth = viewer.layers["nuclei labels"].data
    viewer.layers["nuclei labels"].name = "nuclei ground truth"
    strokes = simulated_scribbles(truth, background=2, coverage=0.03).astype(np.uint8)
    assert 0 < (strokes > 0).mean() <= 0.03 and set(np.unique(strokes)) == {0, 1, 2}
    scribbles = viewer.add_labels(strokes, name="strokes")
    widget = ready_widget(viewer, tmp_path, steps=8, every=4)
    widget.preview_check.setChecked(False)  # (tested on its own)
    widget.cache_check.setChecked(False)  # a few steps: caching 64 crops would take longer than they do
    widget.rows[0].labels.set_layer(scribbles)
    assert not widget.background_spin.isEnabled() and widget.validate_combo.currentText() == "painted pixels"
    widget.sparse_check.setChecked(True)
    assert widget.background_spin.isEnabled() and widget.background_spin.value() == 2  # the default
    assert not widget.foreground_check.isEnabled()
    assert widget.validate_combo.currentText() == "nuclei ground truth"  # full labels, when they exist
    assert widget.classes_edit.placeholderText() == "background, class 1"  # 2 is the background, not a class

    validations = []
    job = widget.start()
    job.worker.yielded.connect(lambda e: validations.append(e) if isinstance(e, Validation) else None)
    wait_for(qtbot, job)
    assert not job.errored, widget.status.text()
    out = tmp_path / "tuned.safetensors"
    assert read_metadata(out).class_names == ["background", "class 1"]  # two classes from strokes 1 and 2
    assert [v.scope for v in validations] == ["labels"] * 3 and widget.plot.dice_label == "val Dice"

    # validated on a share of the strokes instead: the plot says the Dice is on painted pixels only
    widget.validate_combo.setCurrentText("painted pixels")
    widget.out_edit.setText(str(tmp_path / "painted.safetensors"))
    widget.steps_spin.setValue(2)
    validations.clear()
    job = widget.start()
    job.worker.yielded.connect(lambda e: validations.append(e) if isinstance(e, Validation) else None)
    wait_for(qtbot, job)
    assert not job.errored, widget.status.text()
    assert {v.scope for v in validations} == {"painted"} and widget.plot.dice_label == "val Dice (painted px)"
