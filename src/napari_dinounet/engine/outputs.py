"""What prediction makes of blended logits: labels, probabilities, and any output added later.

The tiler (:mod:`.tiling`) hands every final row band of every plane to each output as
:class:`~.tiling.LogitRows` (per-class logits, float32, on the model's device); an output turns them into
its result. Adding an output is a new :class:`Output` (usually an :class:`ArrayOutput`): the tiler is not
touched. An output that needs more than the blended logits says so in its ``blending``
(:class:`~.tiling.Blending`: the weighted mean rather than the sums, each mirror's logits).

The run calls, in order:

- ``start(layout)`` once before any tile: ``layout.spatial_shape`` is the result's spatial shape (the
  input's without its channel axis) and ``layout.slice_dim`` (None for a 2D image) the axis among them
  the planes are stacked along. Check what can be checked (a given ``out``) here: nothing has run yet.
- ``write(slice_index, rows, logits)`` for each band, in raster order per plane, planes in order:
  ``logits.logits`` (nc, h, W) are rows ``rows`` of plane ``slice_index`` (0 for a 2D image). The tensors
  are valid during the call only: copy what is kept.
- ``finish()`` after the last band: returns the result (only then may a caller's ``out`` be written, so a
  closed run leaves it untouched).
- ``close()`` always, last, also after an error or a cancel: release temporaries.

An output object may be used for one run at a time; ``start`` begins afresh.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from .errors import InputError
from .tiling import Blending, LogitRows


class Output:
    """The interface every output implements (see the module docstring for the order of the calls)."""

    blending: Blending = Blending(normalized=False)  # what it needs of the tiler; the cheapest by default

    def start(self, layout) -> None:
        raise NotImplementedError

    def write(self, slice_index: int, rows: slice, logits: LogitRows) -> None:
        raise NotImplementedError

    def finish(self):
        raise NotImplementedError

    def close(self) -> None:
        """Release temporaries (always called, last)."""


class ArrayOutput(Output):
    """An output that is one array: (*spatial) per pixel, or (k, *spatial) with ``per_class`` (k from the
    first block, e.g. the number of classes), filled band by band from :meth:`block`.

    out: a writable array (NumPy, zarr) to fill and return; checked in :meth:`start`, written only in
    :meth:`finish`. Meanwhile the result lives in a private buffer: in memory for a NumPy ``out`` (or none),
    a temporary memory-mapped file for zarr and other array-likes (data too big to hold twice in memory).
    Subclasses set ``name`` (for messages), ``per_class``, ``kinds`` (the NumPy kinds ``out`` may have,
    e.g. "iu" or "f") and implement :meth:`block`.
    """

    name = "values"
    per_class = False
    kinds = "f"

    def __init__(self, out=None):
        self.out = out
        self.array = None
        self.layout = None
        self._tempdir: tempfile.TemporaryDirectory | None = None

    def block(self, logits: LogitRows) -> np.ndarray:
        """The result for these rows: (h, W), or (k, h, W) with ``per_class``; a NumPy array."""
        raise NotImplementedError

    def start(self, layout) -> None:
        self.close()
        self.layout = layout
        self.array = None
        if self.out is not None:
            self._check_out()

    def _check_out(self) -> None:
        spatial = self.layout.spatial_shape
        shape, kind = tuple(self.out.shape), np.dtype(self.out.dtype).kind
        expected = f"(classes, *{spatial})" if self.per_class else f"{spatial}"
        kind_name = {"f": "float", "iu": "integer"}.get(self.kinds, f"of kind {self.kinds!r}")
        if (shape[1:] if self.per_class else shape) != spatial or kind not in self.kinds:
            raise InputError(f"out must be {kind_name} {expected} for {self.name}; got {shape} {self.out.dtype}")
        # NumPy (and memmaps) say so in their flags, zarr in read_only; found out only at the end otherwise
        if getattr(self.out, "read_only", False) or (isinstance(self.out, np.ndarray) and not self.out.flags.writeable):
            raise InputError(
                f"out is read-only ({type(self.out).__name__}): pass a writable array, e.g. "
                f"np.empty({shape}, {self.out.dtype}), or a zarr array opened with mode='r+'"
            )

    def _allocate(self, block: np.ndarray) -> None:
        shape = ((block.shape[0],) if self.per_class else ()) + self.layout.spatial_shape
        if self.out is not None:
            if tuple(self.out.shape) != shape:
                raise InputError(
                    f"out has shape {tuple(self.out.shape)} but the model predicts {shape[0]} classes: expected {shape}"
                )
            if block.dtype.kind in "iu" and not np.can_cast(block.dtype, self.out.dtype):
                raise InputError(f"out has dtype {self.out.dtype}, too small for these {self.name}: use {block.dtype}")
        if self.out is None or isinstance(self.out, np.ndarray):
            self.array = np.empty(shape, block.dtype)
        else:
            self._tempdir = tempfile.TemporaryDirectory(prefix="dinounet-predict-")
            path = Path(self._tempdir.name) / "prediction.dat"
            self.array = np.memmap(path, dtype=block.dtype, mode="w+", shape=shape)

    def write(self, slice_index: int, rows: slice, logits: LogitRows) -> None:
        block = self.block(logits)
        if self.array is None:
            self._allocate(block)
        slice_dim = self.layout.slice_dim
        index: list = [slice(None)] * len(self.layout.spatial_shape)
        if slice_dim is not None:
            index[slice_dim] = slice_index
        row_dim = next(dim for dim in range(len(index)) if dim != slice_dim)
        index[row_dim] = rows
        if self.per_class:
            index.insert(0, slice(None))
        self.array[tuple(index)] = block

    def finish(self):
        """The result: the array itself, or ``out`` once the buffer is copied into it."""
        if self.out is None:
            return self.array
        self.out[...] = self.array
        return self.out

    def close(self) -> None:
        if self._tempdir is not None:
            self.array = None  # the memmap must be released before its file is removed
            self._tempdir.cleanup()
            self._tempdir = None


def label_dtype(classes: int) -> np.dtype:
    """The label type for ``classes`` classes: uint8, uint16 beyond 256 classes, uint32 beyond 65,536."""
    return np.dtype(np.uint8 if classes <= 1 << 8 else np.uint16 if classes <= 1 << 16 else np.uint32)


def argmax_classes(planes: torch.Tensor) -> np.ndarray:
    """Per pixel, the index of the largest of ``planes`` (nc, h, w), the first one on ties: (h, w) of
    :func:`label_dtype`. A loop over classes: torch's argmax over a leading axis is about five times
    slower on the CPU."""
    classes = planes.shape[0]
    dtype = label_dtype(classes)
    # int32 beyond uint8: torch has no masked_fill_ for uint16/uint32, and int32 holds any class count here
    labels = torch.zeros(
        planes.shape[1:], dtype=torch.uint8 if dtype == np.uint8 else torch.int32, device=planes.device
    )
    best = planes[0]
    for index in range(1, classes):
        higher = planes[index] > best
        labels.masked_fill_(higher, index)
        best = torch.where(higher, planes[index], best)
    return labels.cpu().numpy().astype(dtype, copy=False)


class Labels(ArrayOutput):
    """Class labels (*spatial) of :func:`label_dtype`: the argmax of the blended logits, the first class on ties.

    Asks for the weighted sums (no division): the argmax is the same and one open plane is saved.
    ``out``: an integer array of the spatial shape.
    """

    name = "labels"
    kinds = "iu"
    blending = Blending(normalized=False)

    def block(self, logits: LogitRows) -> np.ndarray:
        return argmax_classes(logits.logits)


class Probabilities(ArrayOutput):
    """Class probabilities (nc, *spatial) float32, classes first: the softmax of the blended logits.

    ``out``: a float array (nc, *spatial).
    """

    name = "probabilities"
    per_class = True
    blending = Blending(normalized=True)

    def block(self, logits: LogitRows) -> np.ndarray:
        return torch.softmax(logits.logits, dim=0).cpu().numpy()


class MirrorVariance(ArrayOutput):
    """How much the mirror images disagree: per class, the variance over the M mirrors of their blended
    softmax probabilities, (nc, *spatial) float32 (0 everywhere without mirror TTA, where M = 1).

    An uncertainty map: high where flipping the tile changes the prediction. ``out``: float (nc, *spatial).
    """

    name = "mirror variance"
    per_class = True
    blending = Blending(per_mirror=True)

    def block(self, logits: LogitRows) -> np.ndarray:
        probabilities = torch.softmax(logits.per_mirror, dim=1)  # (M, nc, h, W)
        return probabilities.var(dim=0, unbiased=False).cpu().numpy()
