"""The Paint class picker in a real viewer: the brush's label chosen by class name, both ways."""

import numpy as np
import pytest

from napari_dinounet._widgets._class_picker import ClassPicker


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


def test_the_picker_lists_the_active_layers_classes_and_sets_the_brush(viewer, qtbot):
    picker = ClassPicker(viewer)
    qtbot.addWidget(picker)
    assert not picker.isEnabled()  # no labels layer yet
    labels = viewer.add_labels(
        np.zeros((16, 16), np.uint8),
        name="cells labels",
        metadata={"class_names": ["background", "nucleus", "membrane"]},
    )
    assert picker.isEnabled()
    assert [picker.itemText(i) for i in range(picker.count())] == ["0 background", "1 nucleus", "2 membrane"]

    picker.activated.emit(2)  # what a click on "2 membrane" sends
    assert labels.selected_label == 2
    labels.paint((3, 3), labels.selected_label)  # the brush now paints the membrane class
    assert labels.data[3, 3] == 2

    labels.selected_label = 1  # chosen in napari's own number box: the picker follows
    assert picker.currentText() == "1 nucleus"


def test_classes_named_after_the_layer_was_added_are_listed(viewer, qtbot):
    """Segment adds its labels layer, then sets the class names and the features table."""
    picker = ClassPicker(viewer)
    qtbot.addWidget(picker)
    labels = viewer.add_labels(np.zeros((8, 8), np.uint8), name="nuclei labels")
    assert not picker.isEnabled()
    labels.metadata["class_names"] = ["background", "nuclei"]
    labels.features = {"index": [0, 1], "class_name": ["background", "nuclei"]}
    assert picker.isEnabled() and picker.itemText(1) == "1 nuclei"


def test_a_layer_without_class_names_disables_the_picker_and_says_why(viewer, qtbot):
    picker = ClassPicker(viewer)
    qtbot.addWidget(picker)
    viewer.add_labels(np.zeros((8, 8), np.uint8), name="drawn")
    assert not picker.isEnabled() and picker.currentText() == "this layer names no classes"
    viewer.add_image(np.zeros((8, 8)))
    assert picker.currentText() == "select a labels layer with class names"
