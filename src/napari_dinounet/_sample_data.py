"""napari sample data: the DSB 2018 nuclei, a stack of MNI152 MRI slices and the whole MNI152 brain at 2 mm,
each with its labels.

Every layer carries its pixel spacing as ``scale``; labels layers carry ``metadata["class_names"]``
(index = label value), a ``features`` table of the same names (napari shows the class under the cursor)
and the fixed colour per class value Segment's labels get too (:mod:`._widgets._classes`); the MNI152 layers also carry
``metadata["affine"]`` (see :mod:`napari_dinounet._writer`), so exporting their labels as NIfTI lands
them back in template space. The labels layers are named "<image> ground truth", apart from the
"<image> labels" layer the Segment widget writes, so a segmentation never overwrites the reference
and the two can be compared. No torch here: napari imports this module when the File > Open Sample menu
is used.
"""

from __future__ import annotations

import numpy as np

from napari_dinounet._layer_metadata import AFFINE_KEY, CLASS_NAMES_KEY
from napari_dinounet._widgets._classes import class_colors, class_features
from napari_dinounet.engine.bundled_data import MNI152Slices, load_mni152_slices, load_mni152_volume, load_nuclei

NUCLEI_CLASSES = ("background", "nuclei")
NUCLEI_COLORS = class_colors(len(NUCLEI_CLASSES))


def nuclei_sample() -> list[tuple]:
    """DSB 2018 nuclei: image (512, 512) uint16 and semantic labels (512, 512) uint8 (1 = nucleus).

    The hand-drawn instance masks are merged into one foreground class, which is what the Fine-tune
    widget trains on; the pixel size of the source is unknown, so the scale is one unit per pixel.
    """
    image, instances = load_nuclei()
    scale = (1.0, 1.0)
    labels = (instances > 0).astype(np.uint8)
    return [
        (image, {"name": "nuclei", "colormap": "gray", "scale": scale}, "image"),
        (
            labels,
            {
                "name": "nuclei ground truth",
                "scale": scale,
                "colormap": NUCLEI_COLORS,
                "opacity": 0.5,
                "features": class_features(NUCLEI_CLASSES),
                "metadata": {CLASS_NAMES_KEY: list(NUCLEI_CLASSES)},
            },
            "labels",
        ),
    ]


def mni152_sample() -> list[tuple]:
    """MNI152 T1: 20 axial slices (20, 188, 151) uint8, 1 mm, with grey/white-matter labels uint8."""
    return _mni152_layers(load_mni152_slices(), "MNI152 T1")


def mni152_volume_sample() -> list[tuple]:
    """The whole MNI152 brain: T1 (80, 95, 77) uint8 on a 2 mm grid (scale 2 mm), with its tissue labels."""
    return _mni152_layers(load_mni152_volume(), "MNI152 brain 2 mm")


def _mni152_layers(sample: MNI152Slices, name: str) -> list[tuple]:
    affine = sample.affine.tolist()
    return [
        (
            sample.image,
            {
                "name": name,
                "colormap": "gray",
                "scale": sample.spacing,
                "units": "mm",
                "metadata": {AFFINE_KEY: affine},
            },
            "image",
        ),
        (
            sample.labels,
            {
                "name": f"{name} ground truth",
                "scale": sample.spacing,
                "units": "mm",
                "colormap": class_colors(len(sample.class_names)),
                "opacity": 0.4,
                "features": class_features(sample.class_names),
                "metadata": {CLASS_NAMES_KEY: list(sample.class_names), AFFINE_KEY: affine},
            },
            "labels",
        ),
    ]
