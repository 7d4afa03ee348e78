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
