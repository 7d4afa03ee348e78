"""Segment's "whole volume (3 planes)" and the volume helpers the widgets use (run under ``xvfb-run -a``)."""

from __future__ import annotations

import numpy as np
import pytest
from _widget_helpers import wait_for, write_tiny_heads

from napari_dinounet._widgets import _volumes
from napari_dinounet.engine.bundled_data import load_mni152_volume
from napari_dinounet.engine.errors import InputError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


def test_whole_volume_on_three_planes_gives_the_engines_fused_labels(qtbot, viewer, tmp_path):
    from napari_dinounet._widgets.segment import SegmentWidget
    from napari_dinounet.engine.predictor import Predictor
    from napari_dinounet.engine.progress import drain
    from napari_dinounet.engine.volume import predict_planes

    heads = write_tiny_heads(tmp_path / "heads.safetensors", class_names=("background", "gm", "wm", "other"))
    brain = load_mni152_volume().image[30:42:2, 30:54, 30:50]  # (6, 24, 20), 4 mm slices of 2 mm pixels
    viewer.add_image(brain, name="brain", scale=(4.0, 2.0, 2.0))
    widget = SegmentWidget(viewer)
    widget.model_form.set_backbone("random:tiny")
    widget.model_form.device_combo.setCurrentText("cpu")
    widget.model_form.set_heads(str(heads))
    widget.tile_spin.setValue(64)
    widget.stack_combo.setCurrentText(_volumes.WHOLE_VOLUME)
    assert widget.stack_combo.currentText() == "whole volume (3 planes)"
    job = widget.run()
    wait_for(qtbot, job)
    assert not job.errored
    labels = viewer.layers["brain labels"]
    assert labels.data.shape == brain.shape
    np.testing.assert_allclose(labels.scale, (4.0, 2.0, 2.0))
    predictor = Predictor.from_checkpoint(heads, widget.session.backbone("random:tiny", "cpu"))
    expected = drain(predict_planes(predictor, brain, spacing=(4.0, 2.0, 2.0), step=0.5, tile=64))
    np.testing.assert_array_equal(labels.data, expected)
    assert len(np.unique(expected)) > 1


def test_volume_choice_needs_a_3d_layer():
    class Plan:
        stack_shape, target, scale, labels_shape = (2, 5), (), (1.0, 1.0, 1.0, 1.0), (2, 5, 9, 9)

    with pytest.raises(InputError, match="needs a 3D"):
        next(_volumes.predict_volume(None, Plan(), (0, 1, 2), step=0.5, tile=None, mirror=False))
    assert _volumes.planes_for(_volumes.WHOLE_VOLUME) == (0, 1, 2) and _volumes.planes_for("whole stack") is None


def test_labelled_slices_and_the_ct_suggestion():
    labels = np.zeros((6, 8, 8), np.uint8)
    labels[1, 2, 2] = labels[4, 0, 0] = 2
    mask, labelled, total = _volumes.labelled_slices(labels)
    assert (labelled, total) == (2, 6) and mask[1].all() and mask[4].all() and not mask[[0, 2, 3, 5]].any()
    ct = np.full((4, 70, 70), -1000, np.int16)
    ct[:, 20:50, 20:50] = 40
    assert _volumes.suggested_normalization(ct, nifti=True) == "ct"
    assert _volumes.suggested_normalization(ct, nifti=False) == "zscore"  # a TIFF of the same numbers: not CT
    assert _volumes.suggested_normalization(load_mni152_volume().image, nifti=True) == "zscore"  # MRI


def _two_step_fresh_finetune(viewer, out, *, patch: int, stack: str):
    """A Fine-tune widget set for two steps of fresh random:tiny heads on the CPU, writing ``out``."""
    from napari_dinounet._widgets.finetune import FRESH_HEADS, FineTuneWidget

    widget = FineTuneWidget(viewer)
    widget.model_form.set_backbone("random:tiny")
    widget.model_form.device_combo.setCurrentText("cpu")
    widget.start_combo.setCurrentText(FRESH_HEADS)
    widget.steps_spin.setValue(2)
    widget.every_spin.setValue(2)
    widget.patch_spin.setValue(patch)
    widget.out_edit.setText(str(out))
    widget.stack_combo.setCurrentText(stack)
    return widget


def test_fine_tune_on_a_few_labelled_slices_of_a_ct_volume(qtbot, make_napari_viewer, tmp_path):
    """Labels on two slices of a NIfTI-like CT stack: only those slices train, no region needed, and the
    normalisation resolves to ct (fitted on the labelled voxels), stored in the heads."""
    from napari_dinounet.engine.checkpoint import read_metadata

    viewer = make_napari_viewer()
    brain = load_mni152_volume()
    ct = brain.image[30:38, 20:84, 10:74].astype(np.int16) * 4 - 1000  # (8, 64, 64) in a CT-like range
    drawn = np.zeros(ct.shape, np.uint8)
    drawn[[2, 5]] = brain.labels[30:38, 20:84, 10:74][[2, 5]]  # two slices labelled, the rest left at 0
    viewer.add_image(ct, name="ct", metadata={"affine": np.eye(4).tolist()})  # as the NIfTI reader adds it
    viewer.add_labels(drawn, name="ct labels")
    widget = _two_step_fresh_finetune(viewer, tmp_path / "ct.safetensors", patch=64, stack=_volumes.LABELLED_SLICES)
    assert widget.normalization_combo.currentText() == "auto (ct)"  # what auto resolves to, shown

    (pair,) = widget._pairs()
    counted = np.flatnonzero(pair.mask.any(axis=(1, 2)))
    np.testing.assert_array_equal(counted, [2, 5])  # the unlabelled slices are unknown, not background
    assert widget._options().normalization == "ct"
    job = widget.start()
    assert "ct normalisation" in widget.status.text()
    wait_for(qtbot, job)
    assert not job.errored
    normalization = read_metadata(tmp_path / "ct.safetensors").normalization
    assert normalization["scheme"] == "ct"
    labelled = ct[[2, 5]][drawn[[2, 5]] > 0].astype(float)
    assert normalization["clip"] == pytest.approx(list(np.percentile(labelled, [0.5, 99.5])))

    widget.normalization_combo.setCurrentText("zscore")  # shown and changeable
    assert widget._options().normalization == "zscore"
    viewer.add_image(brain.image[:8], name="mri")  # not NIfTI: auto is zscore for it
    widget.rows[0].image.set_layer(viewer.layers["mri"])
    assert widget.normalization_combo.itemText(0) == "auto (zscore)"


def test_fine_tune_on_three_planes_of_an_anisotropic_volume(qtbot, make_napari_viewer, tmp_path):
    """Stack 'whole volume (3 planes)' in Fine-tune: the pair is cut along z, y and x at the layer's voxel
    size, and the heads record the planes and that spacing; a 2D layer gets an error naming the fix."""
    from napari_dinounet.engine.checkpoint import read_metadata
    from napari_dinounet.engine.volume import volume_samples

    viewer = make_napari_viewer()
    brain = load_mni152_volume()
    image = brain.image[24:56:2, 20:68, 16:56]  # (16, 48, 40): every second slice, so 4 mm by 2 mm by 2 mm
    labels = brain.labels[24:56:2, 20:68, 16:56]
    viewer.add_image(image, name="mri", scale=(4.0, 2.0, 2.0))
    viewer.add_labels(labels, name="mri labels", scale=(4.0, 2.0, 2.0))
    widget = _two_step_fresh_finetune(viewer, tmp_path / "planes.safetensors", patch=32, stack=_volumes.WHOLE_VOLUME)

    (pair,) = widget._pairs()
    assert pair.planes == (0, 1, 2) and pair.spacing == (4.0, 2.0, 2.0)
    samples = volume_samples(pair.image, pair.labels, spacing=pair.spacing, planes=pair.planes)
    # z slices keep (48, 40); y and x slices are resampled to 2 mm along z: 16 slices of 4 mm -> 32 rows
    assert sorted({sample.shape for sample in samples}) == [(32, 40), (32, 48), (48, 40)]
    assert len(samples) == 16 + 48 + 40
    job = widget.start()
    wait_for(qtbot, job)
    assert not job.errored
    metadata = read_metadata(tmp_path / "planes.safetensors")
    assert tuple(metadata.planes) == (0, 1, 2)
    assert tuple(metadata.spacing) == (4.0, 2.0, 2.0)

    viewer.add_image(image[0], name="one slice")
    viewer.add_labels(labels[0], name="one slice labels")
    widget.rows[0].image.set_layer(viewer.layers["one slice"])
    widget.rows[0].labels.set_layer(viewer.layers["one slice labels"])
    with pytest.raises(InputError, match=r"needs a 3D \(Z, Y, X\) image"):
        widget._pairs()
