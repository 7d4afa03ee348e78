"""Keeping triton's LLVM from crashing napari.

Linux torch wheels come with triton, which torch imports while timm and torchvision load. Triton carries
its own LLVM; when the system's libLLVM is already in the process, as it is once napari's canvas runs on
Mesa's software renderer or an AMD driver (Xvfb, VMs, remote desktops), importing triton crashes the
whole process with a segmentation fault. Nothing here uses ``torch.compile``, the only user of triton, so
in that situation we mark triton as unavailable before torch is first imported; torch then runs as it
does wherever triton is not installed.

That holds for the whole napari process, so for every other plugin too: it is logged (a warning, once),
and :data:`KEEP_TRITON_ENV` set to 1 before napari starts leaves triton alone.
"""

from __future__ import annotations

import logging
import os
import sys

KEEP_TRITON_ENV = "NAPARI_DINOUNET_KEEP_TRITON"

logger = logging.getLogger(__name__)


def _llvm_loaded() -> bool:
    """Whether a libLLVM is mapped into this process (Linux only; elsewhere there is no clash to avoid)."""
    try:
        with open("/proc/self/maps") as maps:
            return "libLLVM" in maps.read()
    except OSError:
        return False


def avoid_triton_llvm_clash() -> bool:
    """Mark triton unavailable if libLLVM is loaded and triton is not yet (unless :data:`KEEP_TRITON_ENV`
    is 1); returns whether it did."""
    if "triton" in sys.modules or os.environ.get(KEEP_TRITON_ENV) == "1" or not _llvm_loaded():
        return False
    sys.modules["triton"] = None  # `import triton` now raises ImportError, which torch handles
    logger.warning(
        "napari-dinounet: libLLVM is loaded (napari's OpenGL on Mesa or an AMD driver), and importing triton "
        "beside it crashes the process; triton is therefore marked unavailable for this napari session, for every "
        "plugin (torch.compile cannot use it). To keep triton, at the risk of that crash, start napari with %s=1.",
        KEEP_TRITON_ENV,
    )
    return True
