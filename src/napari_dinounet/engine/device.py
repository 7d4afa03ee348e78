"""Choosing the torch device: CUDA, then Apple MPS, then CPU."""

from __future__ import annotations

import torch

from .errors import DinoUNetError
from .names import DEVICES

DEVICE_CHOICES = DEVICES


def pick_device(name: str | torch.device = "auto") -> torch.device:
    """Return the device for ``name`` (``auto``, ``cuda``, ``cuda:1``, ``mps`` or ``cpu``).

    ``auto`` takes CUDA when present, else MPS, else the CPU. Asking for a device that is not
    there is an error that says which devices are.
    """
    if isinstance(name, torch.device):
        return name
    name = (name or "auto").lower()
    mps_ok = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mps_ok else torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DinoUNetError(f"device {name!r} was asked for but CUDA is not available here; use 'auto' or 'cpu'")
    if name == "mps" and not mps_ok:
        raise DinoUNetError("device 'mps' was asked for but Apple MPS is not available here; use 'auto' or 'cpu'")
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise DinoUNetError(f"unknown device {name!r}: use one of {', '.join(DEVICE_CHOICES)}") from err
