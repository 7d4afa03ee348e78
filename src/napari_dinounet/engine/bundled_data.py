"""Data bundled with the package: real images with ground truth (notices beside the files, in ``data/``).

Named for what it is: "samples" in the engine are training samples (:class:`.data.Sample`). napari offers
these images as sample data (``_sample_data.py``); the demo and the tests train and measure on them. No torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import numpy as np


def _data_file(*parts: str):
    return resources.files("napari_dinounet").joinpath("data", *parts)


def load_nuclei() -> tuple[np.ndarray, np.ndarray]:
    """The DSB 2018 nuclei sample: image (512, 512) uint16 and instance labels (512, 512) uint16.

    ``labels > 0`` is the foreground. Source and licence: ``data/dsb2018_nuclei/NOTICE.md``.
    """
    import tifffile

    with resources.as_file(_data_file("dsb2018_nuclei", "image.tif")) as path:
        image = tifffile.imread(path)
    with resources.as_file(_data_file("dsb2018_nuclei", "mask.tif")) as path:
        labels = tifffile.imread(path)
    return image, labels


@dataclass(frozen=True)
class MNI152Slices:
    """A stack of axial MNI152 T1 slices with tissue labels; see ``data/mni152/NOTICE.md``.

    image: (20, 188, 151) uint8 T1; labels: same shape, uint8, values index ``class_names``
    (0 background, 1 grey matter, 2 white matter, 3 other brain); spacing: (3,) mm per axis;
    affine: (4, 4) map from (slice, row, column, 1) to MNI millimetres (RAS).
    """

    image: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray
    class_names: tuple[str, ...]


@dataclass(frozen=True)
class MNI152Volume(MNI152Slices):
    """The whole MNI152 brain on a 2 mm grid, the same fields as :class:`MNI152Slices`.

    image: (80, 95, 77) uint8 T1 (the mean of each 2 x 2 x 2 block of the 1 mm template), axial slices
    stacked along the first axis as in the slices sample; labels: same shape, derived at 2 mm from the
    block means of the T1 and the GM/WM probabilities; spacing: (2.0, 2.0, 2.0) mm; affine: (slice, row,
    column, 1) -> MNI millimetres (RAS).
    """


def _load_mni152(file_name: str, kind: type[MNI152Slices]) -> MNI152Slices:
    with resources.as_file(_data_file("mni152", file_name)) as path, np.load(path, allow_pickle=False) as npz:
        return kind(
            image=npz["image"],
            labels=npz["labels"],
            spacing=tuple(float(s) for s in npz["spacing"]),
            affine=npz["affine"],
            class_names=tuple(str(name) for name in npz["class_names"]),
        )


def load_mni152_slices() -> MNI152Slices:
    """The bundled MNI152 sample (derived by ``tools/make_mni152_sample.py``)."""
    return _load_mni152("slices.npz", MNI152Slices)


def load_mni152_volume() -> MNI152Volume:
    """The bundled whole-brain MNI152 volume at 2 mm (``tools/make_mni152_sample.py --volume``)."""
    return _load_mni152("volume_2mm.npz", MNI152Volume)
