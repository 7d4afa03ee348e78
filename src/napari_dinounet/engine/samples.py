"""Sample data bundled with the package (real images with ground truth; notices beside the files)."""

from __future__ import annotations

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
