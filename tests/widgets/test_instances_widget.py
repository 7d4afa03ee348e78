"""Segment with instance heads in a real viewer (run under ``xvfb-run -a``): object ids, napari's label
colours, the per-object features table and its dock, the count in the status."""

from __future__ import annotations

import numpy as np
import pytest
from _widget_helpers import nuclei_crop, wait_for

from napari_dinounet.engine.backbone import load_backbone
from napari_dinounet.engine.checkpoint import save_heads
from napari_dinounet.engine.instances import INSTANCE_CLASS_NAMES


@pytest.fixture
def instance_heads(tmp_path):
    """Randomly initialised instance heads for random:tiny (their objects are arbitrary, but objects)."""
    import dataclasses

    from _random_heads import random_heads

    model, metadata = random_heads(load_backbone("random:tiny"), num_classes=3)
    metadata = dataclasses.replace(metadata, class_names=list(INSTANCE_CLASS_NAMES), task="instances")
    return save_heads(tmp_path / "instances.safetensors", model, metadata)


def test_segment_with_instance_heads_measures_the_objects(qtbot, make_napari_viewer, instance_heads):
    from napari_dinounet._widgets.segment import SegmentWidget

    viewer = make_napari_viewer()
    image, _ = nuclei_crop()
    viewer.add_image(image, name="nuclei")
    widget = SegmentWidget(viewer)
    widget.model_form.set_backbone("random:tiny")
    widget.model_form.device_combo.setCurrentText("cpu")
    widget.model_form.set_heads(str(instance_heads))
    widget.tile_spin.setValue(64)
    job = widget.run()
    wait_for(qtbot, job)
    assert not job.errored

    labels = viewer.layers["nuclei labels"]
    ids = np.unique(labels.data)
    assert labels.data.dtype == np.uint16 and np.array_equal(ids, np.arange(ids.size))
    count = ids.size - 1
    table = labels.features
    assert list(table["index"]) == list(range(1, count + 1)) and labels.metadata["object_count"] == count
    assert list(table["area"]) == np.bincount(labels.data.ravel())[1:].tolist()
    first = labels.data == 1
    assert table["mean_intensity"].iloc[0] == pytest.approx(image[first].mean())
    assert "class_names" not in labels.metadata  # ids are objects, not classes
    assert f"{count} objects" in widget.status.text()
    assert any("Features table" in name for name in viewer.window._wrapped_dock_widgets)
    assert viewer.layers.selection.active is labels


def test_finetune_goes_on_training_instance_heads_on_instance_labels(tmp_path, instance_heads):
    """Fine-tune started from instance heads trains on the corrected instance labels (one id per object,
    here the crop's 12 nuclei, ids far beyond the 3 classes) and writes instance heads again."""
    from napari_dinounet._widgets._jobs import Stop
    from napari_dinounet._widgets._session import Session
    from napari_dinounet._widgets.finetune import FineTuneOptions, TrainingPair, finetune_job
    from napari_dinounet.engine.bundled_data import load_nuclei
    from napari_dinounet.engine.checkpoint import read_metadata
    from napari_dinounet.engine.progress import drain

    image, ids = (array[:128, :128] for array in load_nuclei())
    assert ids.max() > 2
    options = FineTuneOptions(steps=2, every=2, lr=1e-3, patch_size=64, batch_size=2, cache_features=False)
    out = tmp_path / "tuned.safetensors"
    pairs = [TrainingPair("crop", image, ids, None, False)]
    result = drain(finetune_job(Session(), "random:tiny", "cpu", instance_heads, pairs, None, out, options, Stop()))
    assert result.steps_done == 2 and result.checkpoint == out
    metadata = read_metadata(out)
    assert metadata.task == "instances" and metadata.class_names == list(INSTANCE_CLASS_NAMES)


def test_finetune_trains_fresh_instance_heads_when_each_value_is_an_object(make_napari_viewer, tmp_path):
    from napari_dinounet._widgets._jobs import Stop
    from napari_dinounet._widgets._session import Session
    from napari_dinounet._widgets.finetune import FineTuneOptions, FineTuneWidget, TrainingPair, finetune_job
    from napari_dinounet.engine.bundled_data import load_nuclei
    from napari_dinounet.engine.checkpoint import read_metadata
    from napari_dinounet.engine.names import INSTANCES
    from napari_dinounet.engine.progress import drain

    image, ids = (array[:128, :128] for array in load_nuclei())
    viewer = make_napari_viewer()
    viewer.add_image(image, name="nuclei")
    viewer.add_labels(ids, name="nuclei objects")
    widget = FineTuneWidget(viewer)
    widget.foreground_check.setChecked(True)
    widget.objects_check.setChecked(True)  # object ids must stay apart: "any value is foreground" goes off
    assert not widget.foreground_check.isChecked() and not widget.foreground_check.isEnabled()
    assert not widget.classes_edit.isEnabled() and widget._class_names() == list(INSTANCE_CLASS_NAMES)
    assert widget.classes_edit.placeholderText() == "background, interior, boundary"
    (pair,) = widget._pairs()
    np.testing.assert_array_equal(pair.labels, ids)  # the ids as they are, not merged into one class

    options = FineTuneOptions(steps=1, every=1, lr=1e-3, patch_size=64, batch_size=2, cache_features=False)
    out = tmp_path / "fresh.safetensors"
    pairs = [TrainingPair("crop", image, ids, None, False)]
    names = list(INSTANCE_CLASS_NAMES)
    drain(finetune_job(Session(), "random:tiny", "cpu", None, pairs, names, out, options, Stop(), task=INSTANCES))
    assert read_metadata(out).task == "instances"
