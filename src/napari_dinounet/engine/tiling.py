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
from .backbone import PATCH_SIZE
from .errors import DinoUNetError, InputError

DEFAULT_PATCH_SIZE = 512
SIGMA_SCALE = 0.125  # sigma = tile / 8 (nnU-Net, the paper's release)
MIN_IMPORTANCE = 1e-3  # floor of the importance map, relative to its peak (MONAI's choice)
MAX_TILE_FACTOR = 10  # more tiles than this times those of step 0.5 need force=True (hours for no gain)
# The smallest tile clamping leaves: a DinoUNet's 1/32 features of a 32-pixel tile are 1 x 1, which its
# InstanceNorm refuses.
MIN_FITTED_TILE = 64
MIRRORS = ((), (-1,), (-2,), (-2, -1))  # test-time augmentation: every combination of the two flips
# The largest side of a window whose backbone features several tiles share (shared-backbone mode): 64 x 64
# patches, the size of a 1024 x 1024 image, so that the attention (quadratic in the tokens) stays below
# the MLPs' cost for the large backbones while a 1024 x 1024 image needs one backbone pass.
SHARED_WINDOW = 1024


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


def shared_windows(starts: Sequence[int], tile: int, limit: int = SHARED_WINDOW) -> list[tuple[int, int]]:
    """The window (first, span) of each of the tile ``starts`` (one axis, ascending): consecutive tiles
    grouped into windows of at most ``max(limit, tile)`` pixels, each tile starting a whole number of
    backbone patches after its window, so that its features are a slice of the window's. A start off the
    patch grid (the last tile, flush with the end) opens a window of its own."""
    groups: list[list[int]] = []
    for start in starts:
        first = groups[-1][0] if groups else None
        if first is not None and (start - first) % PATCH_SIZE == 0 and start + tile - first <= max(limit, tile):
            groups[-1].append(start)
        else:
            groups.append([start])
    return [(group[0], group[-1] + tile - group[0]) for group in groups for _ in group]


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

    shared_backbone: run the frozen backbone once per window of up to :data:`SHARED_WINDOW` pixels a side
    (:func:`shared_windows`; a 1024 x 1024 image is one window) instead of once per tile, and give each
    tile's heads its slice of the window's features (each mirror image of the window once, with TTA). The
    model must be a :class:`~.network.DinoUNet` (``backbone_taps`` and ``forward(x, taps)``). Overlapping
    tiles then stop recomputing the backbone on the same pixels: at step 0.5 a 1024 x 1024 image takes one
    backbone pass of 4096 tokens instead of nine of 1024. The RoPE positions keep the tile's spacing
    (``rope_spacing``), so a tile's features differ from its own pass only by the context the window adds;
    the labels agree with tile-by-tile ones on most pixels, not all (benchmarks/sliding_window.py measures
    it). A window the size of the tile gives the tile-by-tile numbers. Memory: the features of one row of
    windows stay cached (4 maps of D x 64 x 64 floats per window and mirror: 64 MiB for ViT-L).
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
        shared_backbone: bool = False,
    ):
        if shared_backbone and not hasattr(model, "backbone_taps"):
            raise InputError(
                f"shared_backbone needs a Dino U-Net (a model with backbone_taps), not a {type(model).__name__}; "
                "leave shared_backbone off for other models"
            )
        self.model = model
        self.shared_backbone = shared_backbone
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

    def _band(self, plane: AxisView, y: int, rows: int | None = None, cols: slice = slice(None)) -> np.ndarray:
        """Rows ``y`` to ``y + rows`` (default the tile height) and columns ``cols`` of the plane (C, h, w),
        normalised to float32; NaN/inf become 0."""
        raw = plane[:, y : y + (rows or self.tile[0]), cols]
        if raw.dtype.kind == "f" and not np.isfinite(raw).all():
            self.saw_nonfinite = True
        return normalize.apply(raw, self.normalization, self.statistics)

    def _window_taps(self, plane: AxisView, window: tuple[int, int, int, int]) -> list[list[torch.Tensor]]:
        """Backbone maps of a window (y0, x0, height, width) of the plane, zero-padded past its end as tiles
        are: per mirror, four (1, D, height/16, width/16) maps of the mirrored window."""
        y0, x0, height, width = window
        part = self._band(plane, y0, height, slice(x0, x0 + width))
        image = np.zeros((1, part.shape[0], height, width), np.float32)
        image[0, :, : part.shape[1], : part.shape[2]] = part
        x = torch.from_numpy(image).to(self.device)
        spacing = (self.tile[0] // PATCH_SIZE, self.tile[1] // PATCH_SIZE)
        return [self.model.backbone_taps(x.flip(dims) if dims else x, rope_spacing=spacing) for dims in self.mirrors]

    def _tile_taps(self, windows: dict, position: tuple[int, int], window: tuple[int, int, int, int]):
        """Per mirror, the four maps (1, D, th/16, tw/16) of the tile at ``position``: slices of its window's."""
        (y, x), (y0, x0, height, width) = position, window
        th, tw = self.tile
        out = []
        for dims, taps in zip(self.mirrors, windows[window]):
            top = height - (y - y0) - th if -2 in dims else y - y0
            left = width - (x - x0) - tw if -1 in dims else x - x0
            rows = slice(top // PATCH_SIZE, (top + th) // PATCH_SIZE)
            cols = slice(left // PATCH_SIZE, (left + tw) // PATCH_SIZE)
            out.append([t[:, :, rows, cols] for t in taps])
        return out

    def _forward(self, batch: np.ndarray, taps: list[list[list[torch.Tensor]]] | None = None) -> torch.Tensor:
        """Values (n, p, th, tw) float32 to blend for a batch of tiles (n, C, th, tw): the logits (nc) averaged
        over the mirrors, then, when asked, each mirror's logits (M x nc); a DinoUNetError when any is NaN or
        infinite. taps: per tile, :meth:`_tile_taps` (shared-backbone mode); None runs the whole model."""
        x = torch.from_numpy(batch).to(self.device)
        total, each = None, []
        with torch.no_grad(), autocast(self.device):
            for mirror, dims in enumerate(self.mirrors):
                tile = x.flip(dims) if dims else x
                if taps is None:
                    logits = self.model(tile)
                else:
                    logits = self.model(tile, taps=[torch.cat(maps) for maps in zip(*(t[mirror] for t in taps))])
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
        if self.shared_backbone:
            row_windows, col_windows = dict(zip(ys, shared_windows(ys, th))), dict(zip(xs, shared_windows(xs, tw)))
        windows: dict[tuple[int, int, int, int], list] = {}  # the current row of windows' maps
        band_top, band = None, None
        for first in range(0, len(positions), self.batch_size):
            chunk = positions[first : first + self.batch_size]
            batch = np.zeros((len(chunk), channels, th, tw), np.float32)  # zeros: the padding
            taps = [] if self.shared_backbone else None
            for i, (y, x) in enumerate(chunk):
                if y != band_top:
                    band_top, band = y, self._band(plane, y)
                part = band[:, :, x : x + tw]
                batch[i, :, : part.shape[1], : part.shape[2]] = part
                if self.shared_backbone:
                    (y0, rows), (x0, cols) = row_windows[y], col_windows[x]
                    window = (y0, x0, rows, cols)
                    if window not in windows:
                        windows = {w: maps for w, maps in windows.items() if w[0] == y0}  # rows above are done
                        windows[window] = self._window_taps(plane, window)
                    taps.append(self._tile_taps(windows, (y, x), window))
            values = self._forward(batch, taps)
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
