"""Keeping triton's LLVM from crashing napari.

Linux torch wheels come with triton, which torch imports while timm and torchvision load. Triton carries
its own LLVM; when the system's libLLVM is already in the process, as it is once napari's canvas runs on
Mesa's software renderer or an AMD driver (Xvfb, VMs, remote desktops), importing triton crashes the
whole process with a segmentation fault. Nothing here uses ``torch.compile``, the only user of triton, so
in that situation we mark triton as unavailable before torch is first imported; torch then runs as it
does wherever triton is not installed.
"""

from __future__ import annotations

import sys


def avoid_triton_llvm_clash() -> bool:
    """Mark triton unavailable if libLLVM is loaded and triton is not yet; returns whether it did."""
    if "triton" in sys.modules:
        return False
    try:
        with open("/proc/self/maps") as maps:  # Linux only; elsewhere there is no clash to avoid
            llvm_loaded = "libLLVM" in maps.read()
    except OSError:
        return False
    if llvm_loaded:
        sys.modules["triton"] = None  # `import triton` now raises ImportError, which torch handles
    return llvm_loaded
