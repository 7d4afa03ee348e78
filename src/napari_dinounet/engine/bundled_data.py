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


def load_mni152_slices() -> MNI152Slices:
    """The bundled MNI152 sample (derived by ``tools/make_mni152_sample.py``)."""
    with resources.as_file(_data_file("mni152", "slices.npz")) as path, np.load(path, allow_pickle=False) as npz:
        return MNI152Slices(
            image=npz["image"],
            labels=npz["labels"],
            spacing=tuple(float(s) for s in npz["spacing"]),
            affine=npz["affine"],
            class_names=tuple(str(name) for name in npz["class_names"]),
        )
