"""Shared test fixtures: paths to the bundled fixtures and a tiny random backbone."""

from __future__ import annotations

from pathlib import Path

import pytest

TESTS = Path(__file__).parent
DINOV3_TINY = TESTS / "fixtures" / "dinov3_tiny"


@pytest.fixture(scope="session")
def dinov3_tiny_dir() -> Path:
    """Random-weight DINOv3 fixtures (official .pth, HF folder, reference outputs); see its README."""
    return DINOV3_TINY


@pytest.fixture(scope="session")
def tiny_backbone():
    """A randomly initialised tiny DINOv3-style backbone (D=64, depth 4, 4 heads), on the CPU."""
    from napari_dinounet.engine.backbone import load_backbone

    return load_backbone("random:tiny")


@pytest.fixture
def quiet_random_backbone(monkeypatch):
    """For CLI tests: no DINOUNET_BACKBONE from the environment, and the random backbone's warning (tested in
    test_backbone) silenced."""
    import warnings

    monkeypatch.delenv("DINOUNET_BACKBONE", raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@pytest.fixture(scope="module")
def one_torch_thread():
    """Train with one thread: on a shared 2-core machine, two OpenMP threads per process that compete with
    other work made a training step about 10x slower than one thread (measured: 3 s against 0.2 s).
    Modules that train ask for it: ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
