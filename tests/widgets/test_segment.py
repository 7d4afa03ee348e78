"""The Segment widget with a real viewer (run under ``xvfb-run -a``): form, layer planning, runs, undo,
cancel and errors. The model is the random:tiny backbone with randomly initialised heads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _widget_helpers import (
    collect_errors,
    nuclei_crop,
    wait_for,
    write_tiny_heads,
)
from napari.utils import progress

from napari_dinounet._widgets import _jobs
from napari_dinounet._widgets._layer_geometry import camera
from napari_dinounet.engine.errors import InputError

# -- the session the widgets share ----------------------------------------------------------------------------


def test_session_signals_changes_and_keeps_the_backbone():
    from napari.components import ViewerModel

    from napari_dinounet._widgets._session import Session, get_session
    from napari_dinounet.engine.errors import WeightsError

    session = Session()
    heard = []
    session.heads_changed.connect(heard.append)
    session.heads_path = "a.safetensors"
    session.heads_path = Path("a.safetensors")  # the same: no signal
    session.heads_path = None
    assert heard == [Path("a.safetensors"), None]

    backbone = session.backbone("random:tiny", "cpu")
    assert session.backbone("random:tiny", "cpu") is backbone  # loaded once per (source, device)
    assert session.backbone("random:tiny", "auto" if not torch.cuda.is_available() else "cpu") is backbone
    with pytest.raises(WeightsError, match="no backbone weights chosen"):
        session.backbone(" ", "cpu")

    first, second = ViewerModel(), ViewerModel()
    assert get_session(first) is get_session(first) and get_session(first) is not get_session(second)


# -- the widget in a viewer --------------------------------------------------------------------------------


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


@pytest.fixture
def errors(monkeypatch) -> list[str]:
    """Error notifications the widgets show (collected instead of shown)."""
    from napari_dinounet._widgets import segment

    return collect_errors(monkeypatch, segment)


def make_widget(viewer):
    from napari_dinounet._widgets.segment import SegmentWidget

    return SegmentWidget(viewer)


def test_image_picker_follows_the_viewer(viewer):
    widget = make_widget(viewer)
    assert widget.image_combo.count() == 0
    viewer.add_image(np.zeros((3, 16, 16)), name="stack")
    viewer.add_labels(np.zeros((16, 16), np.uint8), name="not an image")
    viewer.add_image(np.zeros((16, 16, 3), np.uint8), name="colour", rgb=True)
    names = [widget.image_combo.itemText(i) for i in range(widget.image_combo.count())]
    assert names == ["colour", "stack"]
    assert widget.image_combo.currentText() == "stack"  # the choice survives layers being added
    assert widget.stack_combo.isEnabled()
    assert [widget.channel_axis_combo.itemData(i) for i in range(widget.channel_axis_combo.count())] == [None, 0]
    viewer.layers["stack"].name = "renamed"
    assert widget.image_combo.currentText() == "renamed"
    viewer.layers.remove("renamed")
    assert widget.image_combo.currentText() == "colour"
    assert widget.channel_axis_combo.itemText(0) == "RGB colours" and not widget.stack_combo.isEnabled()


def test_fields_are_remembered_in_the_test_settings_folder(viewer, isolated_settings):
    widget = make_widget(viewer)
    widget.model_form.set_backbone("random:tiny")
    widget.model_form.device_combo.setCurrentText("cpu")
    widget.tile_spin.setValue(96)
    widget.overlap_spin.setValue(0.25)
    widget.tta_check.setChecked(True)
    widget.stack_combo.setCurrentText("whole stack")
    widget.channels_edit.setText("0,2")
    assert (isolated_settings / "napari-dinounet.ini").is_file()  # remembered as they change, no run needed

    from napari_dinounet._widgets._session import Session

    fresh = Session()  # as in the next napari session
    from napari_dinounet._widgets._model_form import ModelForm
    from napari_dinounet._widgets.segment import SegmentWidget

    ModelForm(fresh)
    assert (fresh.backbone_source, fresh.device) == ("random:tiny", "cpu")
    again = SegmentWidget(viewer)
    assert again.tile_spin.value() == 96 and again.overlap_spin.value() == pytest.approx(0.25)
    assert again.stack_combo.currentText() == "whole stack"
    # what slows a run 4x unseen (TTA), or belongs to one image (Channels), starts afresh
    assert not again.tta_check.isChecked() and again.channels_edit.text() == ""
    assert not again.model_form.allow_backbone_check.isChecked()


@pytest.fixture
def nuclei(viewer):
    image, _ = nuclei_crop()
    return viewer.add_image(image, name="nuclei", scale=(0.5, 0.25), translate=(10.0, -4.0))


@pytest.fixture
def heads(tmp_path):
    return write_tiny_heads(tmp_path / "tiny-heads.safetensors")


def ready_widget(viewer, heads):
    widget = make_widget(viewer)
    widget.model_form.set_backbone("random:tiny")
    widget.model_form.device_combo.setCurrentText("cpu")
    widget.model_form.set_heads(str(heads))
    widget.tile_spin.setValue(64)
    return widget


def reference_labels(widget, heads, image, **kwargs) -> np.ndarray:
    """What the engine gives for ``image`` with the backbone the widget used (the session's cached one)."""
    from napari_dinounet.engine.checkpoint import load_heads
    from napari_dinounet.engine.predict import predict
    from napari_dinounet.engine.progress import drain

    torch.set_num_threads(1)  # as the widget's worker does on this 2-core machine: several times faster
    model, metadata = load_heads(heads, widget.session.backbone("random:tiny", "cpu"))
    return drain(predict(model, image, patch_size=64, normalization=metadata.normalization, **kwargs))


def test_segment_writes_labels_with_geometry_and_undo(qtbot, viewer, nuclei, heads):
    widget = ready_widget(viewer, heads)
    job = widget.run()
    assert not widget.run_button.isEnabled() and widget.cancel_button.isEnabled()
    wait_for(qtbot, job)
    assert not job.errored and widget.run_button.isEnabled() and not widget.cancel_button.isEnabled()

    labels = viewer.layers["nuclei labels"]
    assert labels.data.shape == (128, 128) and labels.data.dtype == np.uint8
    np.testing.assert_allclose(labels.scale, (0.5, 0.25))
    np.testing.assert_allclose(labels.translate, (10.0, -4.0))
    assert labels.metadata["class_names"] == ["background", "nucleus"]
    first = labels.data.copy()
    np.testing.assert_array_equal(first, reference_labels(widget, heads, nuclei.data))

    # the user paints over part of it (the brush's own function), then runs again with other heads
    labels.selected_label, labels.brush_size = 1, 9
    labels.paint((100, 100), 1)
    labels.paint((10, 120), 0)
    painted = labels.data.copy()
    edited = painted != first
    assert edited.sum() > 20
    other = write_tiny_heads(heads.parent / "other-heads.safetensors", seed=1)
    widget.model_form.set_heads(str(other))
    expected = reference_labels(widget, other, nuclei.data)
    assert (expected != first).sum() > 500  # the other heads change much more than the corrections
    wait_for(qtbot, widget.run())
    assert viewer.layers["nuclei labels"] is labels and len(viewer.layers) == 2
    np.testing.assert_array_equal(labels.data, np.where(edited, painted, expected))  # corrections kept
    assert f"kept {int((edited & (expected != painted)).sum())} corrected pixels" in widget.status.text()
    labels.undo()  # the run is one undoable edit
    np.testing.assert_array_equal(labels.data, painted)

    # the option off: the run replaces everything, still one undoable edit
    widget.keep_check.setChecked(False)
    wait_for(qtbot, widget.run())
    np.testing.assert_array_equal(labels.data, expected)
    labels.undo()
    np.testing.assert_array_equal(labels.data, painted)


def test_segment_current_slice_of_a_stack(qtbot, viewer, heads):
    image, _ = nuclei_crop()
    stack = np.stack([image, image[::-1], image[:, ::-1]])
    viewer.add_image(stack, name="stack")
    viewer.dims.set_current_step(0, 1)
    widget = ready_widget(viewer, heads)
    widget.stack_combo.setCurrentText("current slice")
    wait_for(qtbot, widget.run())
    labels = viewer.layers["stack labels"].data
    assert labels.shape == (3, 128, 128)
    np.testing.assert_array_equal(labels[1], reference_labels(widget, heads, stack[1]))
    assert not labels[0].any() and not labels[2].any()  # only the slice on screen was segmented

    widget.stack_combo.setCurrentText("whole stack")
    wait_for(qtbot, widget.run())
    np.testing.assert_array_equal(viewer.layers["stack labels"].data, reference_labels(widget, heads, stack))


def test_segment_colour_and_multichannel_images(qtbot, viewer, heads, tmp_path):
    image, _ = nuclei_crop()
    grey = (image / image.max() * 255).astype(np.uint8)
    rgb = np.stack([grey, grey[::-1], grey[:, ::-1]], axis=-1)
    viewer.add_image(rgb, name="colour", rgb=True)
    widget = ready_widget(viewer, write_tiny_heads(tmp_path / "rgb-heads.safetensors", in_channels=3))
    widget.image_combo.set_layer(viewer.layers["colour"])
    assert widget.channel_axis_combo.currentText() == "RGB colours"
    wait_for(qtbot, widget.run())
    np.testing.assert_array_equal(
        viewer.layers["colour labels"].data, reference_labels(widget, widget.session.heads_path, rgb, channel_axis=2)
    )

    # (C, Y, X) with the model's one channel picked from the second
    channels = np.stack([grey[::-1], image, grey])
    viewer.add_image(channels, name="channels", scale=(1, 0.5, 0.5))
    widget.model_form.set_heads(str(heads))
    widget.image_combo.set_layer(viewer.layers["channels"])
    assert not widget.channels_edit.isEnabled()  # no channel axis chosen yet
    widget.channel_axis_combo.setCurrentIndex(widget.channel_axis_combo.findData(0))
    assert widget.channels_edit.isEnabled()
    widget.channels_edit.setText("1")
    wait_for(qtbot, widget.run())
    labels = viewer.layers["channels labels"]
    assert labels.data.shape == (128, 128) and tuple(labels.scale) == (0.5, 0.5)
    np.testing.assert_array_equal(labels.data, reference_labels(widget, heads, image))


def test_labels_carry_units_class_names_and_class_colours_into_a_tiff(qtbot, viewer, heads, tmp_path):
    from napari_dinounet._sample_data import nuclei_sample
    from napari_dinounet._widgets._classes import class_color
    from napari_dinounet._writer import write_labels
    from napari_dinounet.engine.io import read_labels

    image, _ = nuclei_crop()
    viewer.add_image(image, name="cells", scale=(0.5, 0.5), units="um")
    widget = ready_widget(viewer, heads)
    wait_for(qtbot, widget.run())
    labels = viewer.layers["cells labels"]
    assert [str(u) for u in labels.units] == ["micrometer", "micrometer"]
    np.testing.assert_allclose(labels.scale, (0.5, 0.5))

    # the class name under the cursor shows in napari's status bar
    y, x = np.argwhere(labels.data == 1)[0]
    assert labels.get_status((y * 0.5, x * 0.5), world=True)["value"] == "1; class_name: nucleus"
    y, x = np.argwhere(labels.data == 0)[0]
    assert labels.get_status((y * 0.5, x * 0.5), world=True)["value"] == "0; class_name: background"
    # class 1 is the sample ground truth's colour
    (_, truth, _), colours = nuclei_sample()[1], labels.colormap.map(np.array([0, 1]))
    from napari.layers import Labels

    truth_colours = Labels(np.zeros((2, 2), np.uint8), colormap=truth["colormap"]).colormap.map(np.array([0, 1]))
    np.testing.assert_allclose(colours, truth_colours)
    assert class_color(1) == "magenta" and colours[0][3] == 0  # background transparent

    data, attributes, _ = labels.as_layer_data_tuple()
    (written,) = write_labels(str(tmp_path / "cells.tif"), data, attributes)
    back = read_labels(written)
    assert back.unit == "um" and back.spacing == pytest.approx((0.5, 0.5))
    np.testing.assert_array_equal(back.data, labels.data)


def test_a_channels_first_layer_with_two_channel_heads_is_read_as_channels(qtbot, viewer, tmp_path):
    from napari_dinounet.engine.predictor import Predictor
    from napari_dinounet.engine.progress import drain

    image, _ = nuclei_crop()
    two = np.stack([image, image[::-1]])  # (2, Y, X): two channels, or two slices
    viewer.add_image(two, name="two", scale=(1, 0.5, 0.5))
    heads = write_tiny_heads(tmp_path / "two-channel.safetensors", in_channels=2)
    widget = ready_widget(viewer, heads)
    assert widget.channel_axis_combo.currentData() is None  # the user left it at "none"
    job = widget.run()
    assert "channel axis: axis 0" in widget.status.text()
    wait_for(qtbot, job)
    assert not job.errored
    labels = viewer.layers["two labels"]
    assert labels.data.shape == (128, 128) and tuple(labels.scale) == (0.5, 0.5)
    predictor = Predictor.from_checkpoint(heads, widget.session.backbone("random:tiny", "cpu"))
    (expected,) = drain(predictor.predict(two, channel_axis=0, tile=64))
    np.testing.assert_array_equal(labels.data, expected)
    assert "channel axis: axis 0" in widget.status.text()  # the result says how it was read


def test_a_layer_that_cannot_fit_the_heads_channels_is_refused_with_a_form_fix(viewer, tmp_path, errors):
    image, _ = nuclei_crop()
    grey = (image / image.max() * 255).astype(np.uint8)
    viewer.add_image(np.stack([image, image, image]), name="three")
    widget = ready_widget(viewer, write_tiny_heads(tmp_path / "two.safetensors", in_channels=2))
    assert widget.run() is None  # never three slices predicted silently with 2-channel heads
    assert "take 2 channels" in errors[-1] and "'three'" in errors[-1]
    assert "choose its Channel axis (axis 0?) and type 2 channel numbers in Channels" in errors[-1]
    widget.channel_axis_combo.setCurrentIndex(widget.channel_axis_combo.findData(0))
    assert widget.run() is None
    assert "type 2 channel numbers in Channels" in errors[-1]
    assert "channel_axis" not in errors[-1] and "--" not in errors[-1]

    viewer.add_image(np.stack([grey] * 3, axis=-1), name="colour", rgb=True)
    widget.image_combo.set_layer(viewer.layers["colour"])
    assert widget.run() is None
    assert "type 2 of them in Channels" in errors[-1] and "set the channel axis" not in errors[-1]


def test_widget_advice_names_fields_not_arguments():
    from napari_dinounet._widgets._model_form import for_the_widgets, widget_advice
    from napari_dinounet.engine.errors import CheckpointError

    message = "x: load the backbone, or allow the mismatch (allow_backbone_mismatch=True, --allow-backbone-mismatch)"
    assert (
        widget_advice(message)
        == 'x: load the backbone, or allow the mismatch (tick "allow another backbone" under the heads)'
    )
    with pytest.raises(CheckpointError, match="tick") as caught, for_the_widgets():
        raise CheckpointError(message)
    assert "allow_backbone_mismatch" not in str(caught.value)


def test_cancel_leaves_the_previous_labels_untouched(qtbot, viewer, nuclei, heads):
    widget = ready_widget(viewer, heads)
    wait_for(qtbot, widget.run())
    labels = viewer.layers["nuclei labels"]
    before = labels.data.copy()
    history = len(labels._undo_history)

    widget.tile_spin.setValue(64)
    widget.overlap_spin.setValue(0.9)  # many small steps: plenty of events to cancel at
    widget.tta_check.setChecked(True)
    job = widget.run()
    seen = []

    def cancel_at_first_tile(event):
        seen.append(event.task)
        if event.task == "predict":
            widget.cancel()

    job.worker.yielded.connect(cancel_at_first_tile)
    wait_for(qtbot, job)
    assert job.cancelled and "predict" in seen
    np.testing.assert_array_equal(labels.data, before)
    assert len(labels._undo_history) == history
    assert job._bar.n < job._bar.total  # it stopped part-way
    assert job._bar not in progress._all_instances  # and its progress bar is gone
    assert widget.run_button.isEnabled() and not widget.cancel_button.isEnabled()
    assert "cancelled" in widget.status.text()


def test_errors_become_notifications_and_the_widget_stays_usable(
    qtbot, viewer, nuclei, heads, tmp_path, errors, dinov3_tiny_dir
):
    widget = ready_widget(viewer, heads)

    widget.model_form.set_heads(str(tmp_path / "missing.safetensors"))
    assert widget.run() is None
    assert "does not exist" in errors[-1] and "pick an existing file" in errors[-1]

    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a checkpoint at all")
    widget.model_form.set_heads(str(broken))
    job = widget.run()
    wait_for(qtbot, job)
    assert job.errored and "Segmentation failed" in errors[-1] and str(broken) in errors[-1]
    assert widget.status.text() == errors[-1]  # whole in the widget, not only in a cut toast
    assert job._bar not in progress._all_instances
    assert "nuclei labels" not in viewer.layers
    assert widget.run_button.isEnabled() and not widget.cancel_button.isEnabled()

    # heads trained on 3 channels cannot read a grey image: refused before the run, with a fix the form can make
    widget.model_form.set_heads(str(write_tiny_heads(tmp_path / "rgb-heads.safetensors", in_channels=3)))
    assert widget.run() is None
    assert "take 3 channels" in errors[-1] and "choose heads trained on images like this one" in errors[-1]
    assert widget.status.text() == errors[-1]  # the full message, in the widget too

    # weights that are not there, and heads trained with another backbone than the one chosen
    widget.model_form.set_heads(str(heads))
    widget.model_form.set_backbone(str(tmp_path / "missing.pth"))
    wait_for(qtbot, widget.run())
    assert "missing.pth" in errors[-1] and "Segmentation failed" in errors[-1]
    widget.model_form.set_backbone(str(dinov3_tiny_dir / "official_tiny.pth"))
    wait_for(qtbot, widget.run())
    assert "was trained with backbone" in errors[-1] and "load the backbone the heads were trained with" in errors[-1]
    assert "allow_backbone_mismatch" not in errors[-1] and "--allow" not in errors[-1]  # not GUI actions
    assert '"allow another backbone"' in errors[-1]  # the form's checkbox instead
    assert "nuclei labels" not in viewer.layers
    widget.model_form.allow_backbone_check.setChecked(True)  # the user knows better: it runs, with a warning
    assert widget.session.allow_backbone_mismatch
    wait_for(qtbot, job := widget.run())  # the engine warns "using it anyway" (a napari warning notification)
    assert not job.errored and "nuclei labels" in viewer.layers
    viewer.layers.remove("nuclei labels")
    widget.model_form.allow_backbone_check.setChecked(False)

    widget.model_form.set_backbone("random:tiny")
    wait_for(qtbot, job := widget.run())
    assert not job.errored and "nuclei labels" in viewer.layers


def test_out_of_memory_during_a_run_is_explained(qtbot, viewer, nuclei, heads, errors, monkeypatch):
    from napari_dinounet.engine.predictor import Predictor
    from napari_dinounet.engine.progress import Progress

    def predict_out_of_memory(*args, **kwargs):
        yield Progress("predict", 0, 9)
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(Predictor, "predict", predict_out_of_memory)
    widget = ready_widget(viewer, heads)
    wait_for(qtbot, job := widget.run())
    assert job.errored and "ran out of accelerator memory" in errors[-1]
    assert "lower the tile" in errors[-1] and "CPU device" in errors[-1]
    assert job._bar not in progress._all_instances and widget.run_button.isEnabled()
    assert "nuclei labels" not in viewer.layers


def test_out_of_memory_message_names_the_fix():
    class OutOfMemoryError(RuntimeError):
        pass

    message = _jobs.error_message(OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"), "Segmentation")
    assert "tile" in message and "CPU" in message
    assert "Segmentation failed: no heads" in _jobs.error_message(InputError("no heads"), "Segmentation")


def test_loading_torch_after_the_viewer_does_not_crash_napari(tmp_path):
    """Triton's LLVM clashes with the libLLVM of Mesa's OpenGL (which the viewer's canvas loads here):
    once a widget exists, the engine can be imported. In a fresh process, as in napari."""
    script = (
        "import napari\n"
        "viewer = napari.Viewer(show=False)\n"
        "from napari_dinounet._widgets.segment import SegmentWidget\n"
        "SegmentWidget(viewer)\n"
        "import torch\n"
        "from napari_dinounet.engine.backbone import load_backbone\n"
        "maps = load_backbone('random:tiny').features(torch.zeros(1, 3, 32, 32))\n"
        "print('features', tuple(maps[0].shape))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "features (1, 64, 2, 2)" in done.stdout


def test_segment_job_returns_a_segment_result(heads):
    from napari.layers import Image

    from napari_dinounet._widgets._layer_geometry import plan_run
    from napari_dinounet._widgets._session import Session
    from napari_dinounet._widgets.segment import SegmentResult, segment_job
    from napari_dinounet.engine.checkpoint import load_heads
    from napari_dinounet.engine.predict import predict
    from napari_dinounet.engine.progress import drain

    image, _ = nuclei_crop()
    stack = np.stack([image, image[::-1]])[None]  # (T, Z, Y, X): two leading axes, one stack for the engine
    session = Session()
    plan = plan_run(Image(stack), whole_stack=True)
    tasks = []
    result = drain(
        segment_job(session, "random:tiny", "cpu", heads, plan, patch_size=None, step=0.5, tta=False),
        lambda event: tasks.append(event.task),
    )
    assert isinstance(result, SegmentResult) and result.class_names == ["background", "nucleus"]
    assert tasks[:2] == ["loading the backbone", "loading the heads"] and tasks[-1] == "predict"
    model, _ = load_heads(heads, session.backbone("random:tiny", "cpu"))
    expected = drain(predict(model, stack[0], patch_size=64))  # the training patch of write_tiny_heads
    assert result.labels.shape == (1, 2, 128, 128)
    np.testing.assert_array_equal(result.labels[0], expected)


def _controls_without_tooltips(widget) -> list[str]:
    from qtpy.QtWidgets import QAbstractButton, QComboBox, QDoubleSpinBox, QLineEdit, QSpinBox

    kinds = (QAbstractButton, QComboBox, QLineEdit, QSpinBox, QDoubleSpinBox)
    missing = []
    for child in widget.findChildren(kinds):
        if isinstance(child, QLineEdit) and isinstance(child.parent(), (QComboBox, QSpinBox, QDoubleSpinBox)):
            continue  # a combo box's or spin box's own editor
        if not child.toolTip():
            missing.append(f"{type(child).__name__} {getattr(child, 'text', lambda: '')()!r}")
    return missing


def test_every_control_has_a_tooltip_and_the_dock_is_compact_with_a_help_link(qtbot, viewer, heads):
    from qtpy.QtWidgets import QLabel, QScrollArea

    from napari_dinounet._widgets.export import ExportWidget

    widget = ready_widget(viewer, heads)
    export = ExportWidget(viewer)
    assert _controls_without_tooltips(widget) == [] and _controls_without_tooltips(export) == []
    for dock in (widget, export):
        links = [label for label in dock.findChildren(QLabel) if "Help" in label.text()]
        assert len(links) == 1 and links[0].openExternalLinks()
        assert dock.minimumSizeHint().height() <= 150  # it scrolls in a short dock: three docks fit 1000 px
        assert dock.sizeHint().height() >= 300  # and asks for its whole form when there is room
        (scroll,) = dock.findChildren(QScrollArea)
        qtbot.wait(50)
        assert dock.minimumSizeHint().width() >= scroll.widget().minimumSizeHint().width()  # never cut at the side

    # the heads summary next to the Heads field, from the file's header
    summary = widget.model_form.heads_info.text()
    assert summary == "2 classes (background, nucleus); 1 channel; patch 64; backbone tiny (random weights)"
    widget.model_form.set_heads("/nonexistent/heads.safetensors")
    assert widget.model_form.heads_info.text() == "no such file"


def test_segment_the_part_in_view_or_inside_shapes_and_add_uncertainty(qtbot, viewer, heads):
    image, _ = nuclei_crop()
    viewer.add_image(image, name="nuclei")
    widget = ready_widget(viewer, heads)
    whole = reference_labels(widget, heads, image)
    camera(viewer).center, camera(viewer).zoom = (40, 30), max(viewer.canvas.size) / 50  # about 50 px in view
    widget.where_combo.setCurrentText("the part in view")
    widget.uncertainty_check.setChecked(True)
    wait_for(qtbot, widget.run())
    labels = viewer.layers["nuclei labels"].data
    from napari_dinounet._widgets._preview import visible_region

    (y0, y1), (x0, x1) = visible_region(viewer, viewer.layers["nuclei"], (128, 128))
    assert y0 <= 40 < y1 and x0 <= 30 < x1 and (y1 - y0) * (x1 - x0) < 128 * 128 / 2
    np.testing.assert_array_equal(labels[y0:y1, x0:x1], whole[y0:y1, x0:x1])  # as a whole-image run there
    outside = np.ones((128, 128), bool)
    outside[y0:y1, x0:x1] = False
    assert not labels[outside].any()  # nothing written outside the view
    uncertainty = viewer.layers["nuclei uncertainty"]
    assert uncertainty.data.dtype == np.float32 and uncertainty.colormap.name == "magma"
    assert tuple(uncertainty.contrast_limits) == (0.0, 1.0)
    inside_u = uncertainty.data[y0:y1, x0:x1]
    assert inside_u.min() >= 0 and 0 < inside_u.max() <= 1 and not uncertainty.data[outside].any()

    # inside a Shapes layer's shapes only: the box around them is predicted, the pixels inside are written
    viewer.add_shapes([np.array([[80, 70], [80, 120], [120, 120], [120, 70]])], shape_type="rectangle", name="roi")
    widget.where_combo.setCurrentText("roi")
    widget.keep_check.setChecked(False)
    wait_for(qtbot, widget.run())
    labels = viewer.layers["nuclei labels"].data
    np.testing.assert_array_equal(labels[80:121, 70:121], whole[80:121, 70:121])
    np.testing.assert_array_equal(labels[y0:y1, x0:x1], whole[y0:y1, x0:x1])  # the earlier run's pixels stay
    widget.where_combo.setCurrentText("the part in view")
    viewer.layers.remove("roi")
    assert widget.where_combo.currentText() == "the part in view"  # a layer change keeps the choice


def test_correct_here_next_walks_the_ranked_regions_and_feeds_fine_tune(qtbot, viewer, nuclei, heads):
    from napari_dinounet._widgets.finetune import FineTuneWidget
    from napari_dinounet.engine.next_regions import next_regions

    widget = ready_widget(viewer, heads)
    finetune = FineTuneWidget(viewer)
    widget.uncertainty_check.setChecked(True)
    assert not widget.next_button.isEnabled()
    wait_for(qtbot, widget.run())
    labels = viewer.layers["nuclei labels"]
    expected = next_regions(viewer.layers["nuclei uncertainty"].data, tile=64, count=10)
    ranked = viewer.layers["nuclei next"]
    assert len(ranked.data) == len(expected) >= 2 and list(ranked.features["rank"]) == list(range(1, len(expected) + 1))
    np.testing.assert_allclose(ranked.features["score"], [r.score for r in expected])
    assert viewer.layers.selection.active is labels  # the layer to correct stays active
    assert widget.next_button.isEnabled()

    widget.next_button.click()
    first = expected[0]
    centre = np.array([10.0, -4.0]) + np.array([0.5, 0.25]) * np.array(first.centre)  # the layer's geometry
    np.testing.assert_allclose(camera(viewer).center[-2:], centre)
    assert "region 1/" in widget.status.text()
    checked = viewer.layers["nuclei checked"]
    assert len(checked.data) == 1 and finetune.rows[0].region.currentText() == "nuclei checked"
    (pair,) = finetune._pairs()  # Fine-tune counts in exactly the region shown
    (y0, y1), (x0, x1) = first.bounds
    assert pair.mask[y0:y1, x0:x1].all() and pair.mask.sum() == (y1 - y0) * (x1 - x0)
    widget.next_button.click()
    assert len(checked.data) == 2 and "region 2/" in widget.status.text()

    # the user corrects all of region 1; the next run keeps it and no longer ranks it first
    corrected = labels.data.copy()
    corrected[y0:y1, x0:x1] = 1 - corrected[y0:y1, x0:x1]
    labels.data_setitem(np.nonzero(corrected != labels.data), corrected[corrected != labels.data])
    wait_for(qtbot, widget.run())
    np.testing.assert_array_equal(labels.data[y0:y1, x0:x1], corrected[y0:y1, x0:x1])
    regions = [(r.rows, r.cols) for r in next_regions(viewer.layers["nuclei uncertainty"].data, tile=64, count=10)]
    assert regions[0] == (first.rows, first.cols)  # without the corrections it would still be first
    new_first = viewer.layers["nuclei next"].features["score"][0]
    assert (first.rows, first.cols) not in [
        ((int(s[0][0] + 0.5), int(s[2][0] + 0.5)), (int(s[0][1] + 0.5), int(s[2][1] + 0.5)))
        for s in viewer.layers["nuclei next"].data
    ] and new_first <= expected[0].score
