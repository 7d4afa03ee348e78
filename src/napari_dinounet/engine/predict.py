"""Sliding-window prediction (spec section 6): :func:`predict`, and :func:`sliding_window`, which runs the
tiler (:mod:`.tiling`) over an image and feeds its blended logit rows to outputs (:mod:`.outputs`).

``predict`` is the one-call form (labels or probabilities); :class:`~.predictor.Predictor` adds the heads
checkpoint and its checks. Both go through :func:`sliding_window`, so they agree bit for bit.

Memory. Weighted sums are kept only for the image rows that tiles still overlap (see :mod:`.tiling`),
nc float32 planes (nc + 1 for probabilities: the summed weights) of about one tile height by the image
width; input rows are read one tile-row band at a time. Peak memory is therefore the input, the output
(labels: 1 byte per pixel), one band of the input as float32, the open-row sums and one tile batch through
the network; never a float copy of the whole image per class. Measured (benchmarks/sliding_window.py,
CPU, tile 512, batch 4, a 16-channel conv net, 2 classes): a 4096 x 4096 uint16 image (32 MB) peaks
252 MB above the RSS before the call, of which the labels are 16 MB, the open rows 16 MB and the rest
mostly the network's activations for one batch; MONAI's sliding_window_inference, which holds full-size
float32 input, output and weight maps, 461 MB.

Cancelling. ``predict`` is a progress generator. With ``out=None`` it fills a fresh array it returns.
With ``out`` it fills a private buffer (in memory for a NumPy ``out``, a temporary memory-mapped file for
zarr and other array-likes) and copies it into ``out`` only after its last ``yield``, so closing the
generator (``gen.close()``, a Cancel in napari) never leaves ``out`` half-written.
"""

from __future__ import annotations

import dataclasses
import numbers
import warnings
from collections.abc import Generator, Sequence

import numpy as np
import torch

from . import normalize
from .device import pick_device
from .errors import InputError
from .layout import ImageLayout, infer_layout
from .outputs import Labels, Output, Probabilities
from .progress import Progress
from .tiling import AxisView, Blending, LogitRows, Tiler, check_tile_count, fit_tile, tile_shape, tile_starts
from .values import is_number


def _check_array(image) -> None:
    """An InputError, naming the fix, for an image that is not an array-like with a shape and a NumPy dtype."""
    if isinstance(image, torch.Tensor):  # its dtype is torch's, which NumPy cannot interpret
        raise InputError("predict takes a NumPy, dask or zarr array, not a torch tensor: pass tensor.cpu().numpy()")
    if not (hasattr(image, "shape") and hasattr(image, "dtype")):
        raise InputError(
            f"predict takes a NumPy, dask or zarr array, not a {type(image).__name__}: wrap it in np.asarray(...)"
        )


def image_layout(image, channel_axis: int | None = None, slice_axis: int | None = None) -> ImageLayout:
    """The layout of an image to predict (:func:`~.layout.infer_layout`, the axis rules :func:`predict` gives): an
    InputError for anything that is not an integer or float array of a shape prediction understands."""
    _check_array(image)
    layout = infer_layout(image.shape, channel_axis, slice_axis)
    if np.dtype(image.dtype).kind not in "biuf":
        raise InputError(f"cannot predict an image of dtype {image.dtype}: use integer or float pixels")
    return layout


def _as_normalization(normalization) -> normalize.Normalization:
    if isinstance(normalization, normalize.Normalization):
        return normalization
    if isinstance(normalization, dict):
        return normalize.Normalization.from_dict(normalization)
    return normalize.Normalization(str(normalization))


Region = Sequence[tuple[int, int]]  # ((y0, y1), (x0, x1)), or ((z0, z1), (y0, y1), (x0, x1)) for stacks


@dataclasses.dataclass(frozen=True)
class RegionPlan:
    """Where a region prediction reads and what it keeps, in pixels of the image's planes.

    slices: the planes predicted (range(1) for a 2D image). rows, cols: the region (what is returned).
    read_rows, read_cols: the part of each plane the tiler runs over: the whole-image tiles that overlap
    the region, so the tiles (positions, Gaussian weights, normalisation) and hence every result inside the
    region are those of a whole-image run.
    """

    slices: range
    rows: slice
    cols: slice
    read_rows: slice
    read_cols: slice


def _bounds(pair, size: int, axis: str) -> slice:
    try:
        start, stop = (int(v) for v in pair)
    except (TypeError, ValueError):
        raise InputError(f"region {axis} {pair!r} must be a (start, stop) pair of pixel indices") from None
    if not 0 <= start < stop <= size:
        raise InputError(
            f"region {axis} ({start}, {stop}) must satisfy 0 <= start < stop <= {size}, the image's size there: "
            "give a region inside the image"
        )
    return slice(start, stop)


def _covering_tiles(region: slice, size: int, tile: int, step: float) -> slice:
    """The extent of the whole-axis tiles (of ``size`` padded up to ``tile``) that overlap ``region``."""
    starts = tile_starts(max(size, tile), tile, step)
    overlapping = [s for s in starts if s < region.stop and s + tile > region.start]
    return slice(overlapping[0], min(overlapping[-1] + tile, size))


def plan_region(region: Region, layout: ImageLayout, tile: tuple[int, int], step: float) -> RegionPlan:
    """Check ``region`` against the image and plan its prediction (see :class:`RegionPlan`).

    region: ((y0, y1), (x0, x1)) in each plane's rows and columns (for a stack: of every slice), or for a
    stack three pairs over its spatial axes in their order (the slice axis included), which also picks
    the planes. Half-open pixel ranges. ``tile`` is the whole image's (fitted) tile.
    """
    spatial = layout.spatial_shape
    pairs = list(region)
    if len(pairs) == 3 and layout.slice_dim is not None:
        slice_pair = pairs.pop(layout.slice_dim)
        slices = _bounds(slice_pair, spatial[layout.slice_dim], "slices")
    elif len(pairs) == 2:
        slices = slice(0, 1 if layout.slice is None else layout.shape[layout.slice])
    else:
        raise InputError(
            f"region {region!r} must be ((y0, y1), (x0, x1)) (for a stack also ((z0, z1), (y0, y1), (x0, x1))) "
            f"for an image of spatial shape {spatial}"
        )
    height, width = layout.shape[layout.rows], layout.shape[layout.cols]
    rows, cols = _bounds(pairs[0], height, "rows"), _bounds(pairs[1], width, "columns")
    return RegionPlan(
        range(slices.start, slices.stop),
        rows,
        cols,
        _covering_tiles(rows, height, tile[0], step),
        _covering_tiles(cols, width, tile[1], step),
    )


def _region_layout(layout: ImageLayout, plan: RegionPlan) -> ImageLayout:
    """The layout of the region's result, as the outputs see it (the image's axes, the region's sizes)."""
    shape = list(layout.shape)
    shape[layout.rows] = plan.rows.stop - plan.rows.start
    shape[layout.cols] = plan.cols.stop - plan.cols.start
    if layout.slice is not None:
        shape[layout.slice] = len(plan.slices)
    return dataclasses.replace(layout, shape=tuple(shape))


def _region_rows(plan: RegionPlan, rows: slice, logits: LogitRows) -> tuple[slice, LogitRows] | None:
    """Final rows of the read part (its coordinates) cut to the region: (region rows, their logits), or None."""
    top, bottom = plan.rows.start - plan.read_rows.start, plan.rows.stop - plan.read_rows.start
    start, stop = max(rows.start, top), min(rows.stop, bottom)
    if start >= stop:
        return None
    band = slice(start - rows.start, stop - rows.start)
    cols = slice(plan.cols.start - plan.read_cols.start, plan.cols.stop - plan.read_cols.start)
    per_mirror = None if logits.per_mirror is None else logits.per_mirror[:, :, band, cols]
    cut = LogitRows(logits.logits[:, band, cols], logits.normalized, per_mirror)
    return slice(start - top, stop - top), cut


def sliding_window(
    model: torch.nn.Module,
    image,
    layout: ImageLayout,
    outputs: Sequence[Output],
    *,
    patch_size: int | tuple[int, int] | None = None,
    step: float = 0.5,
    mirror: bool = False,
    batch_size: int = 4,
    normalization: str | dict | normalize.Normalization = "zscore",
    device: str | torch.device | None = None,
    force: bool = False,
    slices: Sequence[int] | None = None,
    region: Region | None = None,
    shared_backbone: bool = False,
) -> Generator[Progress, None, tuple]:
    """Run ``model`` over ``image`` (laid out as ``layout``, from :func:`image_layout`) tile by tile and feed
    the blended logit rows to every one of ``outputs``; yields ``Progress(task="predict")`` per tile batch
    and returns the outputs' results, in their order. The other arguments are :func:`predict`'s
    (``mirror`` is its ``tta``); ``predict`` and :class:`~.predictor.Predictor` both run through here.
    Every output is closed at the end, also when the run fails or the generator is closed.

    slices: for a stack, the indices of the slices to predict (default: all); the outputs' other slices
    are left unwritten (undefined). Statistics still span the whole stack, so each predicted slice equals
    the whole run's: how :mod:`napari_dinounet.predict` shares one volume's slices between processes.
    region: predict only this part (:func:`plan_region`; not with ``slices``: a region picks its own); the
    outputs then see the region's shape. Only the whole-image tiles overlapping it run, with the whole
    image's normalisation statistics, so its results equal a whole-image run's inside it (up to float
    rounding of other tile batches)."""
    height, width = image.shape[layout.rows], image.shape[layout.cols]
    tile = fit_tile(tile_shape(patch_size), height, width)
    if not is_number(step) or not 0 < step <= 1:
        raise InputError(f"step={step} must be in (0, 1]: the tile offset as a fraction of the tile (0.5 is usual)")
    if not is_number(batch_size, numbers.Integral) or batch_size < 1:
        raise InputError(f"batch_size={batch_size!r} must be a whole number, at least 1: tiles per step (4 is usual)")
    stack_size = 1 if layout.slice is None else image.shape[layout.slice]
    indices = range(stack_size) if slices is None else [range(stack_size)[index] for index in slices]
    plan = None if region is None else plan_region(region, layout, tile, step)
    if plan is not None:
        if slices is not None:
            raise InputError("give either slices or a region (its three pairs pick slices), not both")
        indices = plan.slices
        read_height, read_width = (p.stop - p.start for p in (plan.read_rows, plan.read_cols))
        total = check_tile_count(len(indices), read_height, read_width, tile, step, force)
    else:
        total = check_tile_count(len(indices), height, width, tile, step, force)
    norm = _as_normalization(normalization)
    try:
        for output in outputs:
            output.start(layout if plan is None else _region_layout(layout, plan))  # refuses a bad out before any tile
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
            whole = AxisView(image, (layout.channel, *stack_axes, layout.rows, layout.cols), channel_pin)
            yield Progress("predict", 0, total, "image statistics")
            stats = normalize.statistics_for(whole, norm)
            tiler = Tiler(
                model,
                device=device,
                tile=tile,
                step=step,
                batch_size=batch_size,
                mirror=mirror,
                normalization=norm,
                statistics=stats,
                blending=Blending.merge([output.blending for output in outputs]),
                shared_backbone=shared_backbone,
            )
            done = 0
            crop = {} if plan is None else {layout.rows: plan.read_rows, layout.cols: plan.read_cols}
            for number, index in enumerate(indices):
                pinned = {**channel_pin, **crop, **({layout.slice: index} if layout.slice is not None else {})}
                plane = AxisView(image, (layout.channel, layout.rows, layout.cols), pinned)
                message = f"slice {index + 1}/{stack_size}" if stack_size > 1 else ""
                written = index if plan is None else number  # a region's outputs hold its slices only
                for tiles, rows, logits in tiler.plane(plane):
                    if rows is not None and plan is not None:
                        rows, logits = _region_rows(plan, rows, logits) or (None, None)
                    if rows is not None:
                        for output in outputs:
                            output.write(written, rows, logits)
                    done += tiles
                    yield Progress("predict", done, total, message)
            if tiler.saw_nonfinite:
                warnings.warn(
                    "the image contains NaN or infinite values: they were predicted as the image mean (0 once "
                    "normalised)",
                    RuntimeWarning,
                    stacklevel=3,
                )
            return tuple(output.finish() for output in outputs)
        finally:
            model.train(was_training)
    finally:
        for output in outputs:
            output.close()


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
    shared_backbone: bool = False,
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
        axes (the output's), default 0, and a 3D image given a ``slice_axis`` is always a stack: the rule of
        :func:`~.layout.infer_layout`.
    patch_size: the tile, an int or (th, tw), multiples of 32 (default 512; use the training patch); never
        larger than the image rounded up to a multiple of 32 (at least :data:`~.tiling.MIN_FITTED_TILE`).
    step: tile offset as a fraction of the tile (0.5: tiles overlap by half); a step that makes more than
        :data:`~.tiling.MAX_TILE_FACTOR` times the tiles of step 0.5 is an InputError unless ``force``.
    tta: also predict the three mirror images of each tile and average (4x slower).
    normalization: the scheme (``zscore``, ``rgb``) or a fitted :class:`~.normalize.Normalization`
        (``ct``); statistics span the whole image or stack, computed block-wise.
    probabilities: return class probabilities (nc, *spatial) float32 instead of labels.
    out: a writable array (NumPy, zarr) of the result's shape to fill; it is written only at the very end.
    device: where to run the model (moved there); default: where its parameters are.
    force: run a step that makes more than :data:`~.tiling.MAX_TILE_FACTOR` times the tiles of step 0.5 (``--force``).
    shared_backbone: a DinoUNet's backbone runs once per window of several tiles, not once per tile (faster for
        the large backbones; labels close to, not equal to, tile-by-tile ones): see :class:`~.tiling.Tiler`.

    Returns labels of the input's spatial shape (its shape without the channel axis), uint8 (uint16
    beyond 256 classes, uint32 beyond 65,536), or the probabilities; ``out`` itself when given. A network
    producing NaN or infinite logits stops the run with a DinoUNetError (``out`` is left as it was).
    """
    layout = image_layout(image, channel_axis, slice_axis)
    output = Probabilities(out) if probabilities else Labels(out)
    (result,) = yield from sliding_window(
        model,
        image,
        layout,
        [output],
        patch_size=patch_size,
        step=step,
        mirror=tta,
        batch_size=batch_size,
        normalization=normalization,
        device=device,
        force=force,
        shared_backbone=shared_backbone,
    )
    return result
