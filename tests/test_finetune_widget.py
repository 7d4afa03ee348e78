"""The Fine-tune widget with a real viewer (run under ``xvfb-run -a``): pairs, regions, a short training
on the nuclei crop, Stop, the hand-over to Segment, and errors. Backbone: random:tiny."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from _widget_helpers import (  # noqa: F401
    collect_errors,
    isolated_settings,
    nuclei_crop,
    wait_for,
    write_tiny_heads,
)

from napari_dinounet._widgets import finetune as finetune_module
from napari_dinounet._widgets.finetune import FRESH_HEADS, LOADED_HEADS, FineTuneWidget
from napari_dinounet.engine.checkpoint import read_metadata


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
    return buffer.reshape(image.height(), image.bytesPerLine())[:, : image.width() * 3].reshape(
        image.height(), image.width(), 3).astype(int)


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


def test_stop_keeps_the_last_checkpoint_and_the_starting_heads(qtbot, viewer, tmp_path):
    start = write_tiny_heads(tmp_path / "start.safetensors")
    before = digest(start)
    widget = ready_widget(viewer, tmp_path, steps=400, every=4)
    widget.model_form.set_heads(str(start))
    widget.start_combo.setCurrentText(LOADED_HEADS)

    job = train_and_stop_at(qtbot, widget, step=6)  # after a checkpoint
    out = tmp_path / "tuned.safetensors"
    assert not job.errored and out.is_file()
    assert 6 <= widget.plot.loss[-1][0] < 400  # it ended early
    assert "stopped after" in widget.status.text() and widget.session.heads_path == out
    assert digest(start) == before  # the heads it started from are untouched

    assert read_metadata(out).training["history"][-1]["step"] in (4, 8)


def test_stop_before_the_first_checkpoint_writes_nothing(qtbot, viewer, tmp_path):
    widget = ready_widget(viewer, tmp_path, steps=400, every=200)
    original = widget.session.heads_path

    train_and_stop_at(qtbot, widget, step=1)  # at once
    assert not (tmp_path / "tuned.safetensors").exists()
    assert widget.session.heads_path == original and "nothing was written" in widget.status.text()


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

    # labels with more classes than the heads have: the engine's message arrives as a notification
    viewer.layers["nuclei labels"].data[0, 0] = 5
    widget.out_edit.setText(str(tmp_path / "other.safetensors"))
    job = widget.start()
    wait_for(qtbot, job)
    assert job.errored and "Fine-tuning failed" in errors[-1] and "labels 0..1" in errors[-1], errors[-1]
    assert widget.start_button.isEnabled() and not (tmp_path / "other.safetensors").exists()
