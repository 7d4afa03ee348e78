"""Fixtures shared by engine test modules."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def nuclei_left_heads(tmp_path_factory, tiny_backbone):
    """A Predictor of heads trained on full labels of the nuclei image's left half (columns 0-255), with the
    Validation events of a full-label validation crop of the right half."""
    import numpy as np
    import torch
    from _nuclei_training import train_nuclei_heads

    from napari_dinounet.engine.bundled_data import load_nuclei
    from napari_dinounet.engine.checkpoint import load_heads
    from napari_dinounet.engine.data import samples_from_arrays
    from napari_dinounet.engine.predictor import Predictor

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        image, instances = load_nuclei()
        left = (instances[:, :256] > 0).astype(np.int64)
        samples = samples_from_arrays([image[:, :256]], [left], num_classes=2)
        checked = samples_from_arrays([image[:64, 256:320]], [instances[:64, 256:320] > 0], num_classes=2)
        out = tmp_path_factory.mktemp("nuclei") / "full.safetensors"
        validations = train_nuclei_heads(samples, out, tiny_backbone, validation=checked)
    finally:
        torch.set_num_threads(threads)
    return Predictor(*load_heads(out, tiny_backbone)), validations
