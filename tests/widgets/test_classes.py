"""One colour and one name per class (_widgets/_classes.py), the same in the samples' ground truth and in
Segment's labels."""

from __future__ import annotations

import numpy as np
from napari.layers import Labels

from napari_dinounet._sample_data import mni152_sample, nuclei_sample
from napari_dinounet._widgets._classes import CLASS_PALETTE, class_color, class_colors, class_features


def _mapped(colormap, values) -> np.ndarray:
    return Labels(np.zeros((2, 2), np.uint8), colormap=colormap).colormap.map(np.asarray(values))


def test_each_class_value_has_one_colour_and_background_is_transparent():
    colours = class_colors(4)
    assert colours[0] == "transparent" and None in colours
    assert [colours[v] for v in (1, 2, 3)] == [class_color(1), class_color(2), class_color(3)]
    assert len({colours[v] for v in (1, 2, 3)}) == 3
    assert class_color(1 + len(CLASS_PALETTE)) == class_color(1)  # many classes cycle
    # a colormap for 2 classes and one for 4 agree on the classes they share
    np.testing.assert_allclose(_mapped(class_colors(2), [0, 1]), _mapped(class_colors(4), [0, 1]))
    assert _mapped(colours, [0])[0][3] == 0


def test_sample_ground_truth_uses_the_class_colours_and_names_its_classes():
    for sample in (nuclei_sample(), mni152_sample()):
        data, meta, kind = sample[1]
        assert kind == "labels"
        names = meta["metadata"]["class_names"]
        layer = Labels(data, **meta)
        values = list(range(len(names)))
        np.testing.assert_allclose(layer.colormap.map(np.array(values)), _mapped(class_colors(len(names)), values))
        assert list(layer.features["class_name"]) == names
        y, x = np.argwhere(data[0] == 1)[0] if data.ndim == 3 else np.argwhere(data == 1)[0]
        position = (0, y, x) if data.ndim == 3 else (y, x)
        position = tuple(p * s for p, s in zip(position, layer.scale))
        assert layer.get_status(position, world=True)["value"] == f"1; class_name: {names[1]}"


def test_features_are_indexed_by_label_value():
    assert class_features(["background", "nucleus"]) == {"index": [0, 1], "class_name": ["background", "nucleus"]}
