"""Shared pieces of the widget tests: settings kept out of the user's, a nuclei crop, a tiny checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

# Imported while the test modules are collected, before any viewer exists: torch, timm and triton load
# before the viewer's OpenGL brings in Mesa's libLLVM, whatever order the tests run in (see
# napari_dinounet._widgets._llvm_clash; test_segment_widget checks that guard in a fresh process).
from napari_dinounet.engine.backbone import load_backbone
from napari_dinounet.engine.checkpoint import HeadsMetadata, save_heads
from napari_dinounet.engine.network import build_dinounet

CROP = (slice(0, 128), slice(0, 128))  # 128x128 of the nuclei sample with a dozen nuclei in it


def collect_errors(monkeypatch, widget_module) -> list[str]:
    """The error notifications a widget module and its jobs show, collected in a list instead of shown."""
    from napari_dinounet._widgets import _jobs

    shown: list[str] = []
    for module in (_jobs, widget_module):
        if hasattr(module, "show_error"):  # widgets that report only through _jobs do not import it
            monkeypatch.setattr(module, "show_error", shown.append)
    return shown


def nuclei_crop() -> tuple[np.ndarray, np.ndarray]:
    """A 128x128 crop of the nuclei sample: image uint16 and semantic labels uint8 (1 = nucleus)."""
    from napari_dinounet.engine.bundled_data import load_nuclei

    image, instances = load_nuclei()
    return image[CROP].copy(), (instances[CROP] > 0).astype(np.uint8)


def write_tiny_heads(
    path: Path, *, patch_size: int = 64, in_channels: int = 1, class_names=("background", "nucleus"), seed: int = 0
) -> Path:
    """A heads checkpoint for the random:tiny backbone (heads randomly initialised from ``seed``), written with
    save_heads."""
    torch.manual_seed(seed)
    model = build_dinounet("tiny", num_classes=len(class_names), backbone=load_backbone("random:tiny"))
    metadata = HeadsMetadata(
        config=model.config.to_dict(),
        class_names=list(class_names),
        in_channels=in_channels,
        normalization={"scheme": "zscore"},
        patch_size=patch_size,
        backbone_variant="tiny",
    )
    return save_heads(path, model, metadata)


def wait_for(qtbot, job, timeout_ms: int = 120_000) -> None:
    """Wait (processing Qt events) until ``job`` has finished, whatever the outcome."""
    assert job is not None, "the run did not start (see the error notification)"
    qtbot.waitUntil(lambda: job.done, timeout=timeout_ms)
