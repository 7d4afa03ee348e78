"""The Export widget: labels to TIFF/PNG/NIfTI read back, replace confirmation, heads checkpoint copy."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest
import skimage.io

from napari_dinounet._sample_data import mni152_sample, nuclei_sample
from napari_dinounet.engine.bundled_data import load_mni152_slices, load_nuclei
from napari_dinounet.engine.io import read_image

if not os.environ.get("DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


@pytest.fixture(autouse=True)
def no_modal_dialogs(monkeypatch):
    """A replace question the test did not expect fails the test instead of waiting for a click."""
    from napari_dinounet._widgets.export import ExportWidget

    def unexpected(self, path):
        raise AssertionError(f"unexpected 'replace {path}?' question")

    monkeypatch.setattr(ExportWidget, "_confirm_replace", unexpected)


@pytest.fixture
def viewer():
    from napari.components import ViewerModel

    return ViewerModel()


def _add(viewer, layer_data):
    return [viewer._add_layer_from_data(data, meta, layer_type)[0] for data, meta, layer_type in layer_data]


def _widget(qtbot, viewer):
    from napari_dinounet._widgets.export import ExportWidget

    widget = ExportWidget(viewer)
    qtbot.addWidget(widget)
    return widget


def _enabled_formats(widget) -> list[str]:
    model = widget.format_combo.model()
    return [
        widget.format_combo.itemData(row) for row in range(widget.format_combo.count()) if model.item(row).isEnabled()
    ]


def test_nuclei_labels_to_tiff_with_resolution_and_png(qtbot, viewer, tmp_path):
    _, labels_layer = _add(viewer, nuclei_sample())
    labels_layer.scale = (0.5, 0.5)
    labels_layer.units = "micrometer"
    labels_layer.data[:10, :10] = 1  # a user's brush correction is what gets exported
    widget = _widget(qtbot, viewer)
    assert widget.layer_combo.layer() is labels_layer
    assert widget.format() == "tiff" and _enabled_formats(widget) == ["tiff", "png"]
    assert widget.labels_path_edit.text().endswith("nuclei_ground_truth.tif")

    widget.labels_path_edit.setText(str(tmp_path / "out" / "nuclei"))
    written = widget.export_labels()
    assert written == tmp_path / "out" / "nuclei.tif"
    back = read_image(written)
    np.testing.assert_array_equal(back.data, labels_layer.data)
    assert back.data[:10, :10].all() and (back.data[10:] == (load_nuclei()[1][10:] > 0)).all()
    assert back.spacing == pytest.approx((0.5, 0.5)) and back.unit == "um"
    assert "Saved 'nuclei ground truth' (512×512)" in widget.status_label.text()

    widget.set_format("png")
    assert widget.labels_path_edit.text() == str(tmp_path / "out" / "nuclei.png")
    np.testing.assert_array_equal(skimage.io.imread(widget.export_labels()), labels_layer.data)


def test_mni152_labels_default_to_nifti_with_the_affine(qtbot, viewer, tmp_path):
    _add(viewer, nuclei_sample())
    _, mni_labels = _add(viewer, mni152_sample())
    widget = _widget(qtbot, viewer)
    widget.layer_combo.set_layer(mni_labels)
    assert widget.format() == "nifti" and _enabled_formats(widget) == ["tiff", "nifti"]
    assert widget.labels_path_edit.text().endswith("MNI152_T1_ground_truth.nii.gz")
    widget.labels_path_edit.setText(str(tmp_path / "tissue.nii.gz"))
    image = nib.load(widget.export_labels())
    sample = load_mni152_slices()
    np.testing.assert_array_equal(np.asarray(image.dataobj), sample.labels)
    np.testing.assert_allclose(image.affine, sample.affine)

    # back to the 2D nuclei labels: NIfTI is not offered there, the widget falls back to TIFF
    widget.layer_combo.set_layer(viewer.layers["nuclei ground truth"])
    assert widget.format() == "tiff" and "nifti" not in _enabled_formats(widget)


def test_formats_are_checked_again_when_the_list_opens(qtbot, viewer):
    """An affine added after the layer was chosen (as Segment does) makes NIfTI available."""
    from napari.layers import Labels

    layer = viewer.add_layer(Labels(np.zeros((4, 6, 6), np.uint8), name="drawn"))
    widget = _widget(qtbot, viewer)
    assert _enabled_formats(widget) == ["tiff"]
    layer.metadata["affine"] = np.eye(4).tolist()
    widget.format_combo.showPopup()
    widget.format_combo.hidePopup()
    assert _enabled_formats(widget) == ["tiff", "nifti"]
    assert widget.format_combo.toolTip() == "'drawn': PNG labels must be 2D (these are 3D); write a .tif instead."


def test_the_format_list_and_dialog_filters_come_from_the_registry(qtbot, viewer, tmp_path, monkeypatch):
    """A format registered elsewhere (here in the test) is offered, named and written without widget changes."""
    from napari.layers import Labels

    from napari_dinounet.engine import io

    def write(tmp, labels, like):
        with open(tmp, "wb") as file:
            np.save(file, labels)

    io.register(
        io.Format(
            "raw",
            (".raw.npy",),
            read=lambda path: io.ImageFile(np.load(path), "raw"),
            write=write,
            title="Raw",
            note="for tests",
            exported=True,
        )
    )
    try:
        viewer.add_layer(Labels(np.arange(12, dtype=np.uint8).reshape(3, 4), name="cells"))
        widget = _widget(qtbot, viewer)
        titles = [widget.format_combo.itemText(row) for row in range(widget.format_combo.count())]
        assert titles == [
            "TIFF (.tif)",
            "PNG (.png, 2D only)",
            "NIfTI (.nii.gz, keeps the affine)",
            "Raw (.raw.npy, for tests)",
        ]
        assert _enabled_formats(widget) == ["tiff", "png", "raw"]
        widget.set_format("raw")
        assert widget.labels_path_edit.text().endswith("cells.raw.npy")
        filters = []

        def cancelled_dialog(parent, caption, path, file_filter):
            filters.append(file_filter)
            return "", ""

        monkeypatch.setattr("napari_dinounet._widgets.export.QFileDialog.getSaveFileName", cancelled_dialog)
        widget._browse_labels()
        assert filters == ["Raw (*.raw.npy)"]
        widget.labels_path_edit.setText(str(tmp_path / "cells"))
        written = widget.export_labels()
        assert written == tmp_path / "cells.raw.npy"
        np.testing.assert_array_equal(io.read_image(written).data, np.arange(12).reshape(3, 4))
    finally:
        io.unregister("raw")


def test_existing_file_is_replaced_only_when_confirmed(qtbot, viewer, tmp_path, monkeypatch):
    _add(viewer, nuclei_sample())
    widget = _widget(qtbot, viewer)
    target = tmp_path / "labels.tif"
    target.write_bytes(b"earlier work")
    widget.labels_path_edit.setText(str(target))
    monkeypatch.setattr(widget, "_confirm_replace", lambda path: False)
    assert widget.export_labels() is None
    assert target.read_bytes() == b"earlier work"
    monkeypatch.setattr(widget, "_confirm_replace", lambda path: path == target)
    assert widget.export_labels() == target
    np.testing.assert_array_equal(read_image(target).data, load_nuclei()[1] > 0)


def test_no_labels_layer_says_what_to_do(qtbot, viewer, tmp_path):
    widget = _widget(qtbot, viewer)
    assert not widget.export_labels_button.isEnabled()
    target = tmp_path / "x.tif"
    widget.labels_path_edit.setText(str(target))
    assert widget.export_labels() is None
    assert "no labels layer" in widget.status_label.text()
    assert not target.exists()


def test_heads_export_copies_the_session_checkpoint(qtbot, viewer, tmp_path):
    from _widget_helpers import write_tiny_heads

    from napari_dinounet._widgets._session import get_session
    from napari_dinounet.engine.checkpoint import read_metadata

    widget = _widget(qtbot, viewer)
    assert not widget.export_heads_button.isEnabled()
    assert "none yet" in widget.heads_label.text()

    heads = write_tiny_heads(tmp_path / "trained" / "heads.safetensors")
    get_session(viewer).heads_path = heads  # what Fine-tune does when training ends
    assert widget.heads_label.text() == str(heads) and widget.export_heads_button.isEnabled()

    widget.heads_path_edit.setText(str(tmp_path / "shared" / "nuclei-heads"))
    copy = widget.export_heads()
    assert copy == tmp_path / "shared" / "nuclei-heads.safetensors"
    assert copy.read_bytes() == heads.read_bytes()
    assert read_metadata(copy).class_names == ["background", "nucleus"]

    widget.heads_path_edit.setText(str(heads))  # onto itself: refused, file intact
    original = heads.read_bytes()
    assert widget.export_heads() is None
    assert "is the current heads file itself" in widget.status_label.text()
    assert heads.read_bytes() == original

    heads.unlink()
    widget.heads_path_edit.setText(str(tmp_path / "again.safetensors"))
    assert widget.export_heads() is None
    assert "no longer exists" in widget.status_label.text()


def test_segmented_labels_of_a_nifti_image_export_to_its_grid(qtbot, viewer, tmp_path):
    """Segment carries the image's affine to its labels; Export then offers NIfTI and writes that grid."""
    from _widget_helpers import wait_for, write_tiny_heads

    from napari_dinounet._widgets.segment import SegmentWidget

    heads = write_tiny_heads(
        tmp_path / "heads.safetensors", class_names=("background", "grey matter", "white matter", "other brain")
    )
    image, _ = _add(viewer, mni152_sample())
    viewer.dims.set_current_step(0, 7)
    segment = SegmentWidget(viewer)
    qtbot.addWidget(segment)
    segment.model_form.set_backbone("random:tiny")
    segment.model_form.device_combo.setCurrentText("cpu")
    segment.model_form.set_heads(str(heads))
    segment.image_combo.set_layer(image)
    segment.stack_combo.setCurrentText("current slice")
    wait_for(qtbot, segment.run())
    predicted = viewer.layers["MNI152 T1 labels"]
    assert predicted.data.shape == (20, 188, 151)
    assert predicted.metadata["affine"] == image.metadata["affine"]

    widget = _widget(qtbot, viewer)
    widget.layer_combo.set_layer(predicted)
    assert widget.format() == "nifti"
    widget.labels_path_edit.setText(str(tmp_path / "predicted"))
    written = nib.load(widget.export_labels())
    np.testing.assert_allclose(written.affine, load_mni152_slices().affine)
    np.testing.assert_array_equal(np.asarray(written.dataobj), predicted.data)


@pytest.mark.gui
@pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="a real viewer needs a display: run under xvfb-run -a")
def test_docked_from_the_layers_segment_menu_in_a_real_viewer(make_napari_viewer, tmp_path):
    from napari._app_model import get_app_model

    viewer = make_napari_viewer()
    viewer.open_sample("napari-dinounet", "mni152")
    menu = get_app_model().menus.get_menu("napari/layers/segment")
    assert {"napari-dinounet.segment_widget", "napari-dinounet.finetune_widget", "napari-dinounet.export_widget"} <= {
        item.command.id for item in menu if hasattr(item, "command")
    }

    _, widget = viewer.window.add_plugin_dock_widget("napari-dinounet", "Export")
    assert widget.layer_combo.layer() is viewer.layers["MNI152 T1 ground truth"]
    widget.labels_path_edit.setText(str(tmp_path / "tissue"))
    written = widget.export_labels()
    assert written == tmp_path / "tissue.nii.gz"
    np.testing.assert_allclose(nib.load(written).affine, load_mni152_slices().affine)


def test_bioimageio_button_writes_a_package_or_says_what_to_install(qtbot, viewer, tmp_path):
    import zipfile

    pytest.importorskip("bioimageio.spec", reason='the bioimageio extra: pip install "napari-dinounet[bioimageio]"')
    from _widget_helpers import nuclei_crop, wait_for, write_tiny_heads

    from napari_dinounet._widgets._session import get_session
    from napari_dinounet.engine.bioimageio import check_environment
    from napari_dinounet.engine.errors import InputError

    widget = _widget(qtbot, viewer)
    widget.zoo_path_edit.setText(str(tmp_path / "model"))
    assert widget.export_bioimageio() is None and "heads checkpoint" in widget.status_label.text()
    session = get_session(viewer)
    session.heads_path = write_tiny_heads(tmp_path / "heads.safetensors")
    session.backbone_source, session.device = "random:tiny", "cpu"
    viewer.add_image(nuclei_crop()[0], name="nuclei")
    widget.zoo_image_combo.refresh()
    job = widget.export_bioimageio()
    wait_for(qtbot, job)
    try:
        check_environment()
    except InputError as err:  # this environment's bioimageio cannot build packages: the status says the fix
        assert job.errored and "pydantic" in str(err) and "pydantic" in widget.status_label.text()
        assert not (tmp_path / "model.zip").exists()
        return
    assert not job.errored, widget.status_label.text()
    with zipfile.ZipFile(tmp_path / "model.zip") as archive:
        assert {"weights.pt", "test_input.npy", "cover.png", "LICENSE.md"} <= set(archive.namelist())
    assert "Wrote the bioimage.io model" in widget.status_label.text()
