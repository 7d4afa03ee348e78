"""Segment on a multiscale layer of dask levels: the chosen level only, labels placed on level 0."""

from __future__ import annotations

import numpy as np
import pytest
from _widget_helpers import nuclei_crop, wait_for, write_tiny_heads

da = pytest.importorskip("dask.array")
pytestmark = pytest.mark.gui


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


def nuclei_levels(count: int) -> list:
    """Dask levels of the nuclei crop, finest first: level 0 at twice its size (256 x 256), level 1 the crop."""
    image, _ = nuclei_crop()
    big = np.kron(image, np.ones((2, 2), image.dtype))
    return [da.from_array(level, chunks=64) for level in (big, image, image[::2, ::2])][:count]


def segment_widget(viewer, layer, heads):
    """A Segment widget on ``layer`` with the tiny random backbone, ``heads``, on the CPU, tile 64."""
    from napari_dinounet._widgets.segment import SegmentWidget

    widget = SegmentWidget(viewer)
    widget.model_form.set_backbone("random:tiny")
    widget.model_form.device_combo.setCurrentText("cpu")
    widget.model_form.set_heads(str(heads))
    widget.tile_spin.setValue(64)
    widget.image_combo.set_layer(layer)
    return widget


def test_segment_a_chosen_level_of_a_multiscale_layer(qtbot, viewer, tmp_path):
    from napari_dinounet.engine.predictor import Predictor
    from napari_dinounet.engine.progress import drain

    levels = nuclei_levels(3)
    layer = viewer.add_image(levels, multiscale=True, name="slide", scale=(0.5, 0.25), translate=(10.0, -4.0))
    heads = write_tiny_heads(tmp_path / "heads.safetensors")
    widget = segment_widget(viewer, layer, heads)
    combo = widget.level_combo
    assert combo.isEnabled() and combo.count() == 3
    assert combo.itemText(1).startswith("1: 128 x 128, about") and combo.currentIndex() == 0  # small: level 0 fits
    combo.setCurrentIndex(1)
    job = widget.run()
    wait_for(qtbot, job)
    assert not job.errored

    labels = viewer.layers["slide labels"]
    assert labels.data.shape == (128, 128)
    np.testing.assert_allclose(labels.scale, (1.0, 0.5))  # level 1: each pixel two of level 0
    np.testing.assert_allclose(labels.translate, (10.0, -4.0))
    # a point of the image lands on the label pixel that covers it
    world = layer.data_to_world((100.0, 60.0))
    assert tuple(np.round(labels.world_to_data(world)).astype(int)) == (50, 30)
    predictor = Predictor.from_checkpoint(heads, widget.session.backbone("random:tiny", "cpu"))
    (expected,) = drain(predictor.predict(np.asarray(levels[1]), tile=64))
    np.testing.assert_array_equal(labels.data, expected)


def test_a_single_level_layer_has_no_level_to_choose(viewer):
    from napari_dinounet._widgets.segment import SegmentWidget

    viewer.add_image(np.zeros((64, 64), np.uint8), name="flat")
    widget = SegmentWidget(viewer)
    assert not widget.level_combo.isEnabled() and widget.level_combo.currentText() == "single level"


def test_the_part_in_view_of_a_coarser_level_is_predicted_as_the_whole_level_is(qtbot, viewer, tmp_path):
    from napari_dinounet._widgets._layer_geometry import camera
    from napari_dinounet._widgets._preview import visible_region
    from napari_dinounet.engine.predictor import Predictor
    from napari_dinounet.engine.progress import drain

    levels = nuclei_levels(2)
    layer = viewer.add_image(levels, multiscale=True, name="slide", scale=(0.5, 0.5))
    heads = write_tiny_heads(tmp_path / "heads.safetensors")
    widget = segment_widget(viewer, layer, heads)
    widget.level_combo.setCurrentIndex(1)
    # world (20, 15) is level-0 pixel (40, 30), level-1 pixel (20, 15); about 25 world units (50 level-0 px) in view
    camera(viewer).center, camera(viewer).zoom = (20, 15), max(viewer.canvas.size) / 25
    widget.where_combo.setCurrentText("the part in view")
    wait_for(qtbot, job := widget.run())
    assert not job.errored

    labels = viewer.layers["slide labels"].data
    assert labels.shape == (128, 128)
    (y0, y1), (x0, x1) = visible_region(viewer, layer, (256, 256))  # in level-0 pixels
    rows, cols = (y0 // 2, -(-y1 // 2)), (x0 // 2, -(-x1 // 2))  # the level-1 pixels covering them
    assert rows[0] <= 20 < rows[1] and cols[0] <= 15 < cols[1]
    assert (rows[1] - rows[0]) * (cols[1] - cols[0]) < 128**2 / 4  # a part of the level, not all of it
    predictor = Predictor.from_checkpoint(heads, widget.session.backbone("random:tiny", "cpu"))
    (whole,) = drain(predictor.predict(np.asarray(levels[1]), tile=64))
    inside = (slice(*rows), slice(*cols))
    np.testing.assert_array_equal(labels[inside], whole[inside])  # as a whole-level run there
    outside = np.ones(labels.shape, bool)
    outside[inside] = False
    assert not labels[outside].any()  # nothing predicted outside the view
    assert whole[outside].any()  # (which a whole-level run would have filled)
