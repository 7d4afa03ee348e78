"""Sliding-window prediction (spec section 6): training-patch tiles, Gaussian blending, optional mirror TTA.

Tiling. Tiles have the training patch size (multiples of 32) and start ``int(step * tile)`` pixels apart,
the last one flush with the image's end (the placement of MONAI's ``sliding_window_inference``). A tile is
never larger than the image rounded up to a multiple of 32 (but at least :data:`MIN_FITTED_TILE`), per
axis: a 2048 tile on a 128 x 128 image took 30 s and 4.9 GB of RAM for padding, and a crafted 1048576
tile asked for an 8 TiB Gaussian. An image smaller than the tile is padded with zeros (its mean, once
normalised) and the prediction cropped back.
A step that would make more than :data:`MAX_TILE_FACTOR` times the tiles of step 0.5 (``step=0.01``:
201,601 tiles on 512 x 512 instead of 225) is refused unless ``force=True``.
Tile logits are weighted by a Gaussian importance map (sigma = tile/8, floored at 1e-3 of its peak, as
MONAI does) and overlapping tiles give the weighted mean of their logits: labels are its argmax,
probabilities its softmax.

Memory. Tiles run in raster order, ``batch_size`` at a time. Weighted sums are kept only for the image
rows that tiles still overlap: nc float32 planes (nc + 1 for probabilities: the summed weights) of about
one tile height by the image width, on the model's device. Once a row of tiles is done, the rows above
the next row of tiles are final and go to the output as labels or probabilities. Input rows are read,
checked and normalised one tile-row band at a time, so dask and zarr inputs are never loaded whole.
Peak memory is therefore the input, the output (labels: 1 byte per pixel), one band of the input as
float32, the open-row sums and one tile batch through the network; never a float copy of the whole
image per class. Measured (benchmarks/sliding_window.py, CPU, tile 512, batch 4, a 16-channel conv net,
2 classes): a 4096 x 4096 uint16 image (32 MB) peaks 252 MB above the RSS before the call, of which the
labels are 16 MB, the open rows 16 MB and the rest mostly the network's activations for one batch;
MONAI's sliding_window_inference, which holds full-size float32 input, output and weight maps, 461 MB.

Cancelling. ``predict`` is a progress generator. With ``out=None`` it fills a fresh array it returns.
With ``out`` it fills a private buffer (in memory for a NumPy ``out``, a temporary memory-mapped file for
zarr and other array-likes) and copies it into ``out`` only after its last ``yield``, so closing the
generator (``gen.close()``, a Cancel in napari) never leaves ``out`` half-written.
"""

from __future__ import annotations

import math
import numbers
import tempfile
import warnings
from collections.abc import Generator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import normalize
from .device import pick_device
from .errors import DinoUNetError, InputError
from .io import channels_last_axis
from .progress import Progress
from .values import is_number

DEFAULT_PATCH_SIZE = 512
SIGMA_SCALE = 0.125  # sigma = tile / 8 (nnU-Net, the paper's release)
MIN_IMPORTANCE = 1e-3  # floor of the importance map, relative to its peak (MONAI's choice)
MAX_TILE_FACTOR = 10  # more tiles than this times those of step 0.5 need force=True (hours for no gain)
# The smallest tile clamping leaves: a DinoUNet's 1/32 features of a 32-pixel tile are 1 x 1, which its
# InstanceNorm refuses.
MIN_FITTED_TILE = 64
_MIRRORS = ((), (-1,), (-2,), (-2, -1))  # test-time augmentation: every combination of the two flips


def gaussian_importance(tile: tuple[int, int], sigma_scale: float = SIGMA_SCALE) -> np.ndarray:
    """Importance map (th, tw) float32: a Gaussian centred on the tile (1 at its exact centre), sigma = ``sigma_scale``
    times the tile size per axis, floored at :data:`MIN_IMPORTANCE`."""
    profiles = []
    for size in tile:
        offset = np.arange(size, dtype=np.float64) - (size - 1) / 2
        profiles.append(np.exp(-(offset**2) / (2 * (sigma_scale * size) ** 2)))
    weights = np.outer(*profiles)
    return np.maximum(weights, MIN_IMPORTANCE).astype(np.float32)


def tile_starts(size: int, tile: int, step: float) -> list[int]:
    """Offsets of the tiles of ``tile`` pixels that cover ``size >= tile`` pixels: ``int(tile * step)`` apart
    (at least 1), the last one flush with the end."""
    if size <= tile:
        return [0]
    interval = max(1, int(tile * step))
    count = math.ceil((size - tile) / interval) + 1
    return [min(i * interval, size - tile) for i in range(count)]


@dataclass(frozen=True)
class _Layout:
    """Which axes of the input hold the channels, the slices of a stack, the rows and the columns."""

    channel: int | None
    channels: slice  # the channels used: all, or the first three of an RGBA image (alpha carries no content)
    slice: int | None
    rows: int
    cols: int
    spatial_shape: tuple[int, ...]  # the input's shape without its channel axis: the output's shape

    @property
    def slice_dim(self) -> int | None:
        """The slice axis counted among the spatial axes (an index into ``spatial_shape``)."""
        if self.slice is None:
            return None
        return self.slice - (self.channel is not None and self.channel < self.slice)


def _normalise_axis(axis: int, ndim: int, name: str, shape: tuple[int, ...]) -> int:
    if not -ndim <= axis < ndim:
        raise InputError(f"{name}={axis} does not exist in {shape}: use 0 to {ndim - 1} or a negative index")
    return axis % ndim


def _layout(shape: tuple[int, ...], channel_axis: int | None, slice_axis: int | None) -> _Layout:
    """Find the axes as ``engine/data.py`` does for training and ``engine/io.py`` for files: unless told
    otherwise, the last axis holds the channels by :func:`~.io.channels_last_axis` ((..., 3|4) is RGB(A),
    (H, W, 1|2) one or two channels), except that a 3D image with a ``slice_axis`` is a stack; and
    ``slice_axis`` counts the spatial axes only (the channel axis left out)."""
    ndim = len(shape)
    if 0 in shape:
        raise InputError(f"the image of shape {shape} is empty")
    channels = slice(None)
    if channel_axis is not None:
        channel = _normalise_axis(channel_axis, ndim, "channel_axis", shape)
    elif slice_axis is None or ndim == 4:
        channel = channels_last_axis(shape)
        if channel is not None and shape[channel] == 4:
            channels = slice(0, 3)  # RGBA, the way napari shows it: alpha carries no content
    else:
        channel = None
    spatial = [axis for axis in range(ndim) if axis != channel]
    if len(spatial) not in (2, 3):
        raise InputError(
            f"cannot predict an image of shape {shape}: give a 2D image (H, W), RGB (H, W, 3), a stack (Z, H, W), "
            "RGB stacks (Z, H, W, 3), or say which axis holds the channels (channel_axis=N in Python, "
            "--channel-axis N in the CLI)"
        )
    if len(spatial) == 2:
        if slice_axis is not None:
            raise InputError(f"slice_axis={slice_axis} was given but the image {shape} is 2D: leave slice_axis out")
        slice_ = None
    else:
        spatial_shape = tuple(shape[a] for a in spatial)
        slice_ = spatial[_normalise_axis(0 if slice_axis is None else slice_axis, 3, "slice_axis", spatial_shape)]
    rows, cols = (axis for axis in spatial if axis != slice_)
    return _Layout(channel, channels, slice_, rows, cols, tuple(shape[axis] for axis in spatial))


class _AxisView:
    """A read-only view of an array-like (NumPy, memmap, dask, zarr) with axes picked and reordered.

    ``axes`` gives, for each axis of the view, the source axis it shows (None: a new axis of size 1);
    ``pinned`` maps source axes to an index (the axis is dropped) or a slice (the view shows that part).
    Indexing the view with slices reads only that part of the source and returns a NumPy array, so dask
    and zarr arrays are read piece by piece.
    """

    def __init__(self, source, axes: Sequence[int | None], pinned: dict[int, int | slice] | None = None):
        self.source = source
        self.axes = tuple(axes)
        self.pinned = dict(pinned or {})
        self.shape = tuple(1 if axis is None else len(self._range(axis)) for axis in self.axes)
        self.ndim = len(self.shape)

    def _range(self, axis: int) -> range:
        size = self.source.shape[axis]
        return range(*self.pinned.get(axis, slice(None)).indices(size))

    def __getitem__(self, key) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (self.ndim - len(key))
        source_key: list = [self.pinned.get(axis, slice(None)) for axis in range(len(self.source.shape))]
        for index, axis in zip(key, self.axes):
            if axis is not None:
                part = self._range(axis)[index]
                source_key[axis] = slice(part.start, part.stop, part.step)
        block = np.asarray(self.source[tuple(source_key)])
        kept = [axis for axis, index in enumerate(source_key) if isinstance(index, slice)]  # block's axes
        block = block.transpose([kept.index(axis) for axis in self.axes if axis is not None])
        for position, axis in enumerate(self.axes):
            if axis is None:
                block = np.expand_dims(block, position)
        return block


class _OpenRows:
    """Gaussian-weighted sums of tile logits over the image rows that tiles still overlap.

    ``sums`` is float32 on the device, (nc, rows, width) planes of weighted logits, plus a last plane of
    summed weights when ``weights`` is asked for (probabilities need it; the argmax does not, since
    every pixel's weight is positive); it covers image rows ``top`` to ``top + rows``.
    """

    def __init__(self, width: int, importance: torch.Tensor, weights: bool):
        self.width = width
        self.importance = importance  # (th, tw)
        self.weights = weights
        self.top = 0
        self.sums: torch.Tensor | None = None

    def add(self, logits: torch.Tensor, y: int, x: int) -> None:
        """Add one tile's logits (nc, th, tw) whose top-left corner is at image row ``y``, column ``x``."""
        classes, th, tw = logits.shape
        planes = classes + self.weights
        if self.sums is None:
            self.sums = torch.zeros((planes, 0, self.width), device=logits.device)
        needed = y + th - self.top
        if needed > self.sums.shape[1]:
            grown = torch.zeros((planes, needed, self.width), device=logits.device)
            grown[:, : self.sums.shape[1]] = self.sums
            self.sums = grown
        rows, cols = slice(y - self.top, y - self.top + th), slice(x, x + tw)
        self.sums[:classes, rows, cols].addcmul_(logits, self.importance)
        if self.weights:
            self.sums[classes, rows, cols] += self.importance

    def take(self, until: int) -> torch.Tensor:
        """Hand out the sums (planes, until - top, width) of the now final rows up to ``until`` and drop them."""
        count = until - self.top
        final, self.sums = self.sums[:, :count], self.sums[:, count:]
        self.top = until
        return final


def _label_dtype(classes: int) -> np.dtype:
    """The label type for ``classes`` classes: uint8, uint16 beyond 256 classes, uint32 beyond 65,536."""
    return np.dtype(np.uint8 if classes <= 1 << 8 else np.uint16 if classes <= 1 << 16 else np.uint32)


def _argmax_classes(planes: torch.Tensor) -> np.ndarray:
    """Per pixel, the index of the largest of ``planes`` (nc, h, w), the first one on ties: (h, w) of
    :func:`_label_dtype`. A loop over classes: torch's argmax over a leading axis is about five times
    slower on the CPU."""
    classes = planes.shape[0]
    dtype = _label_dtype(classes)
    # int32 beyond uint8: torch has no masked_fill_ for uint16/uint32, and int32 holds any class count here
    labels = torch.zeros(planes.shape[1:], dtype=torch.uint8 if dtype == np.uint8 else torch.int32,
                         device=planes.device)
    best = planes[0]
    for index in range(1, classes):
        higher = planes[index] > best
        labels.masked_fill_(higher, index)
        best = torch.where(higher, planes[index], best)
    return labels.cpu().numpy().astype(dtype, copy=False)


class _Output:
    """Where predictions go while they run: the array returned, or a private buffer copied into ``out`` at the end.

    Labels are (spatial...) of :func:`_label_dtype`; probabilities (nc, spatial...) float32.
    """

    def __init__(self, layout: _Layout, probabilities: bool, out):
        self.layout = layout
        self.probabilities = probabilities
        self.out = out
        self.array = None
        self._tempdir: tempfile.TemporaryDirectory | None = None
        if out is not None:
            self._check_out_layout()

    def _check_out_layout(self) -> None:
        spatial = self.layout.spatial_shape
        shape, kind = tuple(self.out.shape), np.dtype(self.out.dtype).kind
        if self.probabilities and (shape[1:] != spatial or kind != "f"):
            raise InputError(f"out must be float (classes, *{spatial}) for probabilities; got {shape} {self.out.dtype}")
        if not self.probabilities and (shape != spatial or kind not in "iu"):
            raise InputError(f"out must be integer {spatial} for labels; got {shape} {self.out.dtype}")
        # NumPy (and memmaps) say so in their flags, zarr in read_only; found out only at the end otherwise
        if getattr(self.out, "read_only", False) or (isinstance(self.out, np.ndarray) and not self.out.flags.writeable):
            raise InputError(f"out is read-only ({type(self.out).__name__}): pass a writable array, e.g. "
                             f"np.empty({shape}, {self.out.dtype}), or a zarr array opened with mode='r+'")

    def _allocate(self, block: np.ndarray) -> None:
        shape = ((block.shape[0],) if self.probabilities else ()) + self.layout.spatial_shape
        if self.out is not None:
            if tuple(self.out.shape) != shape:
                raise InputError(
                    f"out has shape {tuple(self.out.shape)} but the model predicts {shape[0]} classes: expected {shape}"
                )
            if not self.probabilities and not np.can_cast(block.dtype, self.out.dtype):
                raise InputError(f"out has dtype {self.out.dtype}, too small for these labels: use {block.dtype}")
        if self.out is None or isinstance(self.out, np.ndarray):
            self.array = np.empty(shape, block.dtype)
        else:  # zarr and other array-likes stand for data too big to hold twice in memory
            self._tempdir = tempfile.TemporaryDirectory(prefix="dinounet-predict-")
            path = Path(self._tempdir.name) / "prediction.dat"
            self.array = np.memmap(path, dtype=block.dtype, mode="w+", shape=shape)

    def write(self, slice_index: int, rows: slice, block: np.ndarray) -> None:
        """Store ``block``, labels (h, W) or probabilities (nc, h, W), at ``rows`` of slice ``slice_index``."""
        if self.array is None:
            self._allocate(block)
        index: list = [slice(None)] * len(self.layout.spatial_shape)
        if self.layout.slice_dim is not None:
            index[self.layout.slice_dim] = slice_index
        row_dim = next(dim for dim in range(len(index)) if dim != self.layout.slice_dim)
        index[row_dim] = rows
        if self.probabilities:
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


def _tile_shape(patch_size) -> tuple[int, int]:
    """``patch_size`` (None, an int or (th, tw)) as (th, tw), or an InputError suggesting a valid tile."""
    size = DEFAULT_PATCH_SIZE if patch_size is None else patch_size
    try:
        tile = (int(size), int(size)) if np.isscalar(size) else tuple(int(s) for s in size)
    except (TypeError, ValueError):  # "abc", NaN, None inside a tuple
        tile = ()
    if len(tile) != 2 or any(s <= 0 or s % 32 for s in tile):
        sizes = (list(tile) * 2)[:2] if tile else [DEFAULT_PATCH_SIZE] * 2  # (64,) means (64, 64)
        fix = tuple(max(32, 32 * round(s / 32)) for s in sizes)
        raise InputError(f"tile size {size} must be two positive multiples of 32, e.g. {fix}")
    return tile


def _fit_tile(tile: tuple[int, int], height: int, width: int) -> tuple[int, int]:
    """``tile`` (th, tw) no larger than a plane (height, width) rounded up to a multiple of 32 per axis, nor
    below :data:`MIN_FITTED_TILE` unless ``tile`` itself is: a larger tile only adds padding to compute."""
    return tuple(min(size, max(MIN_FITTED_TILE, 32 * math.ceil(extent / 32)))
                 for size, extent in zip(tile, (height, width)))


def _check_array(image) -> None:
    """An InputError, naming the fix, for an image that is not an array-like with a shape and a NumPy dtype."""
    if isinstance(image, torch.Tensor):  # its dtype is torch's, which NumPy cannot interpret
        raise InputError("predict takes a NumPy, dask or zarr array, not a torch tensor: pass tensor.cpu().numpy()")
    if not (hasattr(image, "shape") and hasattr(image, "dtype")):
        raise InputError(
            f"predict takes a NumPy, dask or zarr array, not a {type(image).__name__}: wrap it in np.asarray(...)"
        )


def _as_normalization(normalization) -> normalize.Normalization:
    if isinstance(normalization, normalize.Normalization):
        return normalization
    if isinstance(normalization, dict):
        return normalize.Normalization.from_dict(normalization)
    return normalize.Normalization(str(normalization))


def _grid(height: int, width: int, tile: tuple[int, int], step: float) -> tuple[list[int], list[int]]:
    """Tile row and column offsets for a plane (height, width), padded up to a tile where smaller."""
    return (tile_starts(max(height, tile[0]), tile[0], step), tile_starts(max(width, tile[1]), tile[1], step))


def _autocast(device: torch.device):
    if device.type != "cuda":
        return nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


class _Tiler:
    """Runs the model over tiles of one plane and blends them, for one ``predict`` call."""

    def __init__(self, model, device, tile, step, batch_size, tta, norm, stats, probabilities):
        self.model = model
        self.device = device
        self.tile = tile
        self.step = step
        self.batch_size = batch_size
        self.mirrors = _MIRRORS if tta else _MIRRORS[:1]
        self.norm = norm
        self.stats = stats
        self.probabilities = probabilities
        self.importance = torch.from_numpy(gaussian_importance(tile)).to(device)
        self.saw_nonfinite = False

    def _band(self, plane: _AxisView, y: int) -> np.ndarray:
        """Rows ``y`` to ``y + th`` of the plane (C, h, W), normalised to float32; NaN/inf become 0."""
        raw = plane[:, y : y + self.tile[0]]
        if raw.dtype.kind == "f" and not np.isfinite(raw).all():
            self.saw_nonfinite = True
        return normalize.apply(raw, self.norm, self.stats)

    def _forward(self, batch: np.ndarray) -> torch.Tensor:
        """Logits (n, nc, th, tw) float32 for a batch of tiles (n, C, th, tw), averaged over the mirrors;
        a DinoUNetError when any is NaN or infinite."""
        x = torch.from_numpy(batch).to(self.device)
        total = None
        with torch.no_grad(), _autocast(self.device):
            for dims in self.mirrors:
                logits = self.model(x.flip(dims) if dims else x)
                if isinstance(logits, (list, tuple)):  # deep supervision: full resolution comes first
                    logits = logits[0]
                if logits.ndim != 4 or logits.shape[0] != x.shape[0] or logits.shape[2:] != x.shape[2:]:
                    raise InputError(
                        f"the model turned tiles {tuple(x.shape)} into {tuple(logits.shape)}: predict needs a model "
                        "mapping (B, C, H, W) to logits (B, classes, H, W)"
                    )
                logits = (logits.flip(dims) if dims else logits).float()
                total = logits if total is None else total + logits
        if not torch.isfinite(total).all():  # NaN would argmax to class 0 everywhere: all background, no error
            raise DinoUNetError(
                "the network produced NaN/inf logits: its weights are damaged or the training diverged; retrain "
                "or check the backbone file"
            )
        return total / len(self.mirrors)

    def _final(self, sums: torch.Tensor, width: int) -> np.ndarray:
        """Labels (h, W) or probabilities (nc, h, W) from open-row sums (planes, h, Wp)."""
        if self.probabilities:
            return torch.softmax(sums[:-1, :, :width] / sums[-1, :, :width], dim=0).cpu().numpy()
        return _argmax_classes(sums[:, :, :width])

    def plane(self, plane: _AxisView, write) -> Generator[int, None, None]:
        """Predict one plane (C, H, W); ``write(rows, block)`` receives final rows; yields tiles done per batch."""
        channels, height, width = plane.shape
        th, tw = self.tile
        ys, xs = _grid(height, width, self.tile, self.step)
        padded_width = max(width, tw)
        positions = [(y, x) for y in ys for x in xs]
        open_rows = _OpenRows(padded_width, self.importance, weights=self.probabilities)
        band_top, band = None, None
        for first in range(0, len(positions), self.batch_size):
            chunk = positions[first : first + self.batch_size]
            batch = np.zeros((len(chunk), channels, th, tw), np.float32)  # zeros: the padding
            for i, (y, x) in enumerate(chunk):
                if y != band_top:
                    band_top, band = y, self._band(plane, y)
                part = band[:, :, x : x + tw]
                batch[i, :, : part.shape[1], : part.shape[2]] = part
            logits = self._forward(batch)
            with torch.no_grad():
                for (y, x), tile_logits in zip(chunk, logits):
                    open_rows.add(tile_logits, y, x)
                rows_done = (first + len(chunk)) // len(xs)
                until = min(ys[rows_done] if rows_done < len(ys) else height, height)
                if until > open_rows.top:
                    top = open_rows.top
                    write(slice(top, until), self._final(open_rows.take(until), width))
            yield len(chunk)


def predict(
    model: torch.nn.Module,
    image,
    *,
    patch_size: int | tuple[int, int] | None = None,
    step: float = 0.5,
    tta: bool = False,
    batch_size: int = 4,
    normalization: str | dict | normalize.Normalization = "zscore",
    channel_axis: int | None = None,
    slice_axis: int | None = None,
    probabilities: bool = False,
    out=None,
    device: str | torch.device | None = None,
    force: bool = False,
) -> Generator[Progress, None, np.ndarray]:
    """Segment ``image`` with a sliding window; yields ``Progress(task="predict")`` per tile batch.

    model: any module mapping normalised tiles (B, C, th, tw) to logits (B, nc, th, tw), e.g. a DinoUNet
        (which maps C input channels to its backbone's three itself).
    image: a NumPy, dask or zarr array (not a list: ``np.asarray`` it; not a torch tensor: ``.cpu().numpy()``
        it); integer or float pixels, float64 beyond float32's range included (NaN and inf are predicted as
        the image mean, with a warning). 2D (H, W); (H, W, 3|4) and (Z, H, W, 3|4) are RGB(A) (alpha is
        dropped); (H, W, 1|2) and (Z, H, W, 1|2) with H and W over 4 are one or two channels, never a stack
        of slices 1 or 2 pixels wide; ``channel_axis`` (counted in the input's axes) marks the channels of
        any other multichannel image; stacks go slice by slice along ``slice_axis``, counted in the spatial
        axes (the output's), default 0, and a 3D image given a ``slice_axis`` is always a stack; all as
        ``engine/data.py`` reads training images and ``engine/io.py`` files.
    patch_size: the tile, an int or (th, tw), multiples of 32 (default 512; use the training patch); never
        larger than the image rounded up to a multiple of 32 (at least :data:`MIN_FITTED_TILE`).
    step: tile offset as a fraction of the tile (0.5: tiles overlap by half); a step that makes more than
        :data:`MAX_TILE_FACTOR` times the tiles of step 0.5 is an InputError unless ``force``.
    tta: also predict the three mirror images of each tile and average (4x slower).
    normalization: the scheme (``zscore``, ``rgb``) or a fitted :class:`~.normalize.Normalization`
        (``ct``); statistics span the whole image or stack, computed block-wise.
    probabilities: return class probabilities (nc, *spatial) float32 instead of labels.
    out: a writable array (NumPy, zarr) of the result's shape to fill; it is written only at the very end.
    device: where to run the model (moved there); default: where its parameters are.
    force: run a step that makes more than :data:`MAX_TILE_FACTOR` times the tiles of step 0.5 (``--force``).

    Returns labels of the input's spatial shape (its shape without the channel axis), uint8 (uint16
    beyond 256 classes, uint32 beyond 65,536), or the probabilities; ``out`` itself when given. A network
    producing NaN or infinite logits stops the run with a DinoUNetError (``out`` is left as it was).
    """
    _check_array(image)
    layout = _layout(tuple(image.shape), channel_axis, slice_axis)
    if np.dtype(image.dtype).kind not in "biuf":
        raise InputError(f"cannot predict an image of dtype {image.dtype}: use integer or float pixels")
    height, width = image.shape[layout.rows], image.shape[layout.cols]
    tile = _fit_tile(_tile_shape(patch_size), height, width)
    if not is_number(step) or not 0 < step <= 1:
        raise InputError(f"step={step} must be in (0, 1]: the tile offset as a fraction of the tile (0.5 is usual)")
    if not is_number(batch_size, numbers.Integral) or batch_size < 1:
        raise InputError(f"batch_size={batch_size!r} must be a whole number, at least 1: tiles per step (4 is usual)")
    slices = 1 if layout.slice is None else image.shape[layout.slice]
    ys, xs = _grid(height, width, tile, step)
    total = slices * len(ys) * len(xs)
    usual = slices * math.prod(len(starts) for starts in _grid(height, width, tile, 0.5))
    if total > MAX_TILE_FACTOR * usual and not force:
        raise InputError(
            f"step={step} makes {total} tiles, {total / usual:.0f} times the {usual} at step 0.5: use a step near 0.5, "
            "or pass --force (force=True) to run them all"
        )
    norm = _as_normalization(normalization)
    output = _Output(layout, probabilities, out)
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    else:
        device = pick_device(device)
        model.to(device)
    was_training = model.training
    model.eval()
    try:
        channel_pin = {layout.channel: layout.channels} if layout.channel is not None else {}
        stack_axes = (layout.slice,) if layout.slice is not None else ()
        whole = _AxisView(image, (layout.channel, *stack_axes, layout.rows, layout.cols), channel_pin)
        yield Progress("predict", 0, total, "image statistics")
        stats = normalize.statistics_for(whole, norm)
        tiler = _Tiler(model, device, tile, step, batch_size, tta, norm, stats, probabilities)
        done = 0
        for index in range(slices):
            pinned = {**channel_pin, **({layout.slice: index} if layout.slice is not None else {})}
            plane = _AxisView(image, (layout.channel, layout.rows, layout.cols), pinned)
            message = f"slice {index + 1}/{slices}" if slices > 1 else ""
            for count in tiler.plane(plane, lambda rows, block, index=index: output.write(index, rows, block)):
                done += count
                yield Progress("predict", done, total, message)
        if tiler.saw_nonfinite:
            warnings.warn(
                "the image contains NaN or infinite values: they were predicted as the image mean (0 once normalised)",
                RuntimeWarning,
                stacklevel=2,
            )
        return output.finish()
    finally:
        output.close()
        model.train(was_training)
