"""NumPy ``.npy``: the array as saved, its channel axis guessed from its shape
(:func:`~..layout.channels_last_axis`: ``(Y, X, 2)`` is two channels, four are RGBA with alpha dropped)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .formats import Format
from .images import ImageFile, _guessed_channels


def _read_npy(path: Path) -> ImageFile:
    data = np.load(path, allow_pickle=False)
    if not isinstance(data, np.ndarray) or data.dtype.kind not in "biuf":
        raise InputError(f"{path}: holds {data.dtype} data; an image must be a numeric array")
    metadata: dict[str, Any] = {}
    data, channel_axis = _guessed_channels(data, metadata)
    return ImageFile(data, "npy", channel_axis=channel_axis, metadata=metadata)


def _write_npy(tmp: Path, labels: np.ndarray, like: ImageFile | None) -> None:
    np.save(tmp, labels)


NPY = Format("npy", (".npy",), read=_read_npy, write=_write_npy, title="NumPy")
