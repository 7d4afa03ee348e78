"""Sliding-window tiling (spec section 6): tiles, Gaussian blending, mirror TTA, bands read from lazy arrays.

The tiler turns a 2D plane (C, H, W) into **blended per-class logit rows**: float32 (nc, h, W) tensors on
the model's device, final rows of the plane in raster order. It knows nothing of what is made of them
(argmax, softmax, uncertainty): that is :mod:`.outputs`, which says what it needs through a
:class:`Blending` request. Logits are the interchange type between the two.

Tiling. Tiles have the training patch size (multiples of 32) and start ``int(step * tile)`` pixels apart,
the last one flush with the image's end (the placement of MONAI's ``sliding_window_inference``). A tile is
never larger than the image rounded up to a multiple of 32 (but at least :data:`MIN_FITTED_TILE`), per
axis: a 2048 tile on a 128 x 128 image took 30 s and 4.9 GB of RAM for padding, and a crafted 1048576
tile asked for an 8 TiB Gaussian. An image smaller than the tile is padded with zeros (its mean, once
normalised) and the prediction cropped back.
A step that would make more than :data:`MAX_TILE_FACTOR` times the tiles of step 0.5 (``step=0.01``:
201,601 tiles on 512 x 512 instead of 225) is refused unless ``force=True``.
Tile logits are weighted by a Gaussian importance map (sigma = tile/8, floored at 1e-3 of its peak, as
MONAI does) and overlapping tiles give the weighted mean of their logits. Mirror TTA averages the logits
of the four mirror images of each tile before blending.

Memory. Tiles run in raster order, ``batch_size`` at a time. Weighted sums are kept only for the image
rows that tiles still overlap (:class:`OpenRows`): nc float32 planes (plus one of summed weights when
an output needs the weighted mean, plus M x nc when it asks for each mirror's logits) of about one tile
height by the image width, on the model's device. Once a row of tiles is done, the rows above the next
row of tiles are final and are handed out. Input rows are read, checked and normalised one tile-row band
at a time, so dask and zarr inputs are never loaded whole.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from . import normalize
from .errors import DinoUNetError, InputError

DEFAULT_PATCH_SIZE = 512
SIGMA_SCALE = 0.125  # sigma = tile / 8 (nnU-Net, the paper's release)
MIN_IMPORTANCE = 1e-3  # floor of the importance map, relative to its peak (MONAI's choice)
MAX_TILE_FACTOR = 10  # more tiles than this times those of step 0.5 need force=True (hours for no gain)
# The smallest tile clamping leaves: a DinoUNet's 1/32 features of a 32-pixel tile are 1 x 1, which its
# InstanceNorm refuses.
MIN_FITTED_TILE = 64
MIRRORS = ((), (-1,), (-2,), (-2, -1))  # test-time augmentation: every combination of the two flips


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


def tile_shape(patch_size) -> tuple[int, int]:
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


def fit_tile(tile: tuple[int, int], height: int, width: int) -> tuple[int, int]:
    """``tile`` (th, tw) no larger than a plane (height, width) rounded up to a multiple of 32 per axis, nor
    below :data:`MIN_FITTED_TILE` unless ``tile`` itself is: a larger tile only adds padding to compute."""
    return tuple(
        min(size, max(MIN_FITTED_TILE, 32 * math.ceil(extent / 32))) for size, extent in zip(tile, (height, width))
    )


def grid(height: int, width: int, tile: tuple[int, int], step: float) -> tuple[list[int], list[int]]:
    """Tile row and column offsets for a plane (height, width), padded up to a tile where smaller."""
    return (tile_starts(max(height, tile[0]), tile[0], step), tile_starts(max(width, tile[1]), tile[1], step))


def check_tile_count(slices: int, height: int, width: int, tile: tuple[int, int], step: float, force: bool) -> int:
    """The number of tiles of ``slices`` planes (height, width); an InputError when it is more than
    :data:`MAX_TILE_FACTOR` times the tiles of step 0.5 and not ``force``."""
    ys, xs = grid(height, width, tile, step)
    total = slices * len(ys) * len(xs)
    usual = slices * math.prod(len(starts) for starts in grid(height, width, tile, 0.5))
    if total > MAX_TILE_FACTOR * usual and not force:
        raise InputError(
            f"step={step} makes {total} tiles, {total / usual:.0f} times the {usual} at step 0.5: use a step near 0.5, "
            "or pass --force (force=True) to run them all"
        )
    return total


class AxisView:
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


@dataclass(frozen=True)
class Blending:
    """What an output needs from the tiler beyond the cheapest blend (:meth:`merge` joins several requests).

    normalized: the logits handed out are the weighted mean over the tiles (divided by the summed weights:
        one more open plane). False: the weighted sums, each pixel's logits times its positive summed weight,
        which leaves an argmax unchanged and saves that plane.
    per_mirror: also hand out each mirror image's blended logits (M x nc more open planes; M = 4 with TTA,
        1 without), for statistics over the mirrors such as their variance. Implies ``normalized``.
    """

    normalized: bool = True
    per_mirror: bool = False

    @staticmethod
    def merge(requests: Sequence[Blending]) -> Blending:
        per_mirror = any(r.per_mirror for r in requests)
        return Blending(normalized=per_mirror or any(r.normalized for r in requests), per_mirror=per_mirror)


@dataclass(frozen=True)
class LogitRows:
    """Final rows of a plane, blended, as the tiler hands them to the outputs (tensors on the model's device).

    logits: (nc, h, W) float32: the weighted mean of the tiles' (mirror-averaged) logits, or with
        ``normalized`` False, their weighted sums (same argmax; see :class:`Blending`).
    per_mirror: (M, nc, h, W) float32, each mirror's blended logits (``MIRRORS`` order), when asked; None otherwise.
    """

    logits: torch.Tensor
    normalized: bool
    per_mirror: torch.Tensor | None = None


class OpenRows:
    """Gaussian-weighted sums of tile values over the image rows that tiles still overlap.

    ``sums`` is float32 on the device, (planes, rows, width): the weighted sums of each value plane a tile
    brings, plus a last plane of summed weights when ``weights`` is asked for; it covers image rows
    ``top`` to ``top + rows``: never more than one tile height plus what a batch spills into the next row.
    """

    def __init__(self, width: int, importance: torch.Tensor, weights: bool):
        self.width = width
        self.importance = importance  # (th, tw)
        self.weights = weights
        self.top = 0
        self.sums: torch.Tensor | None = None

    def add(self, values: torch.Tensor, y: int, x: int) -> None:
        """Add one tile's values (p, th, tw) whose top-left corner is at image row ``y``, column ``x``."""
        count, th, tw = values.shape
        planes = count + self.weights
        if self.sums is None:
            self.sums = torch.zeros((planes, 0, self.width), device=values.device)
        needed = y + th - self.top
        if needed > self.sums.shape[1]:
            grown = torch.zeros((planes, needed, self.width), device=values.device)
            grown[:, : self.sums.shape[1]] = self.sums
            self.sums = grown
        rows, cols = slice(y - self.top, y - self.top + th), slice(x, x + tw)
        self.sums[:count, rows, cols].addcmul_(values, self.importance)
        if self.weights:
            self.sums[count, rows, cols] += self.importance

    def take(self, until: int) -> torch.Tensor:
        """Hand out the sums (planes, until - top, width) of the now final rows up to ``until`` and drop them."""
        count = until - self.top
        final, self.sums = self.sums[:, :count], self.sums[:, count:]
        self.top = until
        return final


def autocast(device: torch.device):
    """bf16 autocast on CUDA (fp16 where bf16 is missing); nothing elsewhere."""
    if device.type != "cuda":
        return nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


class Tiler:
    """Runs a model over the tiles of planes and blends their logits, for one prediction run.

    model: maps normalised tiles (B, C, th, tw) to logits (B, nc, th, tw) (deep supervision: a list, the
    first at full resolution); ``normalization`` with its image ``statistics`` (:func:`.normalize.statistics_for`)
    turns raw bands into its input. ``saw_nonfinite`` tells whether any band held NaN or inf (read as 0).
    """

    def __init__(
        self,
        model,
        *,
        device: torch.device,
        tile: tuple[int, int],
        step: float,
        batch_size: int,
        mirror: bool,
        normalization: normalize.Normalization,
        statistics,
        blending: Blending = Blending(),
    ):
        self.model = model
        self.device = device
        self.tile = tile
        self.step = step
        self.batch_size = batch_size
        self.mirrors = MIRRORS if mirror else MIRRORS[:1]
        self.normalization = normalization
        self.statistics = statistics
        self.blending = blending
        self.importance = torch.from_numpy(gaussian_importance(tile)).to(device)
        self.saw_nonfinite = False

    def _band(self, plane: AxisView, y: int) -> np.ndarray:
        """Rows ``y`` to ``y + th`` of the plane (C, h, W), normalised to float32; NaN/inf become 0."""
        raw = plane[:, y : y + self.tile[0]]
        if raw.dtype.kind == "f" and not np.isfinite(raw).all():
            self.saw_nonfinite = True
        return normalize.apply(raw, self.normalization, self.statistics)

    def _forward(self, batch: np.ndarray) -> torch.Tensor:
        """Values (n, p, th, tw) float32 to blend for a batch of tiles (n, C, th, tw): the logits (nc) averaged
        over the mirrors, then, when asked, each mirror's logits (M x nc); a DinoUNetError when any is NaN or
        infinite."""
        x = torch.from_numpy(batch).to(self.device)
        total, each = None, []
        with torch.no_grad(), autocast(self.device):
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
                if self.blending.per_mirror:
                    each.append(logits)
        if not torch.isfinite(total).all():  # NaN would argmax to class 0 everywhere: all background, no error
            raise DinoUNetError(
                "the network produced NaN/inf logits: its weights are damaged or the training diverged; retrain "
                "or check the backbone file"
            )
        mean = total / len(self.mirrors)
        return torch.cat([mean, *each], dim=1) if each else mean

    def _final(self, sums: torch.Tensor, width: int) -> LogitRows:
        """The outputs' view of open-row sums (planes, h, Wp) cropped to the plane's ``width``."""
        sums = sums[:, :, :width]
        if not self.blending.normalized:
            return LogitRows(sums, normalized=False)
        classes = (sums.shape[0] - 1) // (1 + len(self.mirrors) * self.blending.per_mirror)
        weights = sums[-1]
        logits = sums[:classes] / weights
        if not self.blending.per_mirror:
            return LogitRows(logits, normalized=True)
        per_mirror = sums[classes:-1] / weights
        return LogitRows(logits, True, per_mirror.reshape(len(self.mirrors), classes, *per_mirror.shape[1:]))

    def plane(self, plane: AxisView) -> Generator[tuple[int, slice | None, LogitRows | None], None, None]:
        """Predict one plane (C, H, W). Yields, per tile batch, (tiles done, rows, their :class:`LogitRows`)
        for the rows that batch made final, or (tiles done, None, None) when it made none."""
        channels, height, width = plane.shape
        th, tw = self.tile
        ys, xs = grid(height, width, self.tile, self.step)
        positions = [(y, x) for y in ys for x in xs]
        open_rows = OpenRows(max(width, tw), self.importance, weights=self.blending.normalized)
        band_top, band = None, None
        for first in range(0, len(positions), self.batch_size):
            chunk = positions[first : first + self.batch_size]
            batch = np.zeros((len(chunk), channels, th, tw), np.float32)  # zeros: the padding
            for i, (y, x) in enumerate(chunk):
                if y != band_top:
                    band_top, band = y, self._band(plane, y)
                part = band[:, :, x : x + tw]
                batch[i, :, : part.shape[1], : part.shape[2]] = part
            values = self._forward(batch)
            rows, final = None, None
            # never yield inside no_grad: the caller's thread would run with gradients off until the generator
            # resumes, and a generator dropped there would leave them off in that (pooled worker) thread
            with torch.no_grad():
                for (y, x), tile_values in zip(chunk, values):
                    open_rows.add(tile_values, y, x)
                rows_done = (first + len(chunk)) // len(xs)
                until = min(ys[rows_done] if rows_done < len(ys) else height, height)
                if until > open_rows.top:
                    rows = slice(open_rows.top, until)
                    final = self._final(open_rows.take(until), width)
            yield len(chunk), rows, final
