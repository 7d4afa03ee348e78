"""Training data cut from the bundled nuclei sample, shared by the training, DDP and CLI tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def nuclei_foreground() -> tuple[np.ndarray, np.ndarray]:
    """The nuclei image (512, 512) uint16 and its foreground (labels > 0) as uint8 class indices."""
    from napari_dinounet.engine.bundled_data import load_nuclei

    image, instances = load_nuclei()
    return image, (instances > 0).astype(np.uint8)


def nuclei_samples(regions) -> list:
    """Training samples for the given (rows, cols) slice pairs of the nuclei image, one per region."""
    from napari_dinounet.engine.data import samples_from_arrays

    image, foreground = nuclei_foreground()
    return samples_from_arrays(
        [image[r] for r in regions],
        [foreground[r] for r in regions],
        names=[f"region{i}" for i in range(len(regions))],
        num_classes=2,
    )


def write_nuclei_folders(root: Path, size: int = 128, count: int = 2) -> tuple[Path, Path]:
    """``count`` nuclei crops of size x size as TIFF pairs in root/images and root/labels."""
    import tifffile

    image, foreground = nuclei_foreground()
    images, labels = root / "images", root / "labels"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    for i in range(count):
        cols = slice(i * size, (i + 1) * size)
        tifffile.imwrite(images / f"crop{i}.tif", image[:size, cols])
        tifffile.imwrite(labels / f"crop{i}.tif", foreground[:size, cols])
    return images, labels


# The heads the issue-12 tests compare with: fresh tiny heads trained on the left half of the nuclei
# image, scored on its right half.
NUCLEI_STEPS = 40


def train_nuclei_heads(samples, out, backbone, *, validation=(), steps: int = NUCLEI_STEPS) -> list:
    """Train fresh tiny heads on ``samples`` for ``steps`` steps (patch 64, batch 4, lr 4e-3, seed 0); returns
    the run's Validation events."""
    from napari_dinounet.engine.progress import Validation, drain
    from napari_dinounet.engine.train import TrainSettings, train

    settings = TrainSettings(
        size="tiny", patch_size=64, batch_size=4, epochs=1, iters_per_epoch=steps, val_crops=2, lr=4e-3
    )
    events = []
    drain(train(samples, validation=list(validation), out=out, backbone=backbone, settings=settings), events.append)
    return [e for e in events if isinstance(e, Validation)]
