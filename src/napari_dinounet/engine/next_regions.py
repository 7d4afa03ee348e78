"""Where to correct next: regions of an image ranked by how much correcting them should pay.

From an uncertainty map (:mod:`.uncertainty`, values in [0, 1]) and, optionally, the pixels already labelled
(painted strokes, corrected regions), :func:`next_regions` scores square tiles by the uncertainty still
unlabelled in them: the sum over the tile's unlabelled pixels of their uncertainty, over the tile's full
area (so a half-labelled tile counts half, and a labelled one not at all), and returns the best ones,
most worth correcting first, spread out (``gap``). :func:`object_regions` is the same
for objects (instance labels: one id per object) instead of tiles; :func:`shapes_data` turns either into
napari Shapes rectangles.

Shapes: uncertainty and labelled are (H, W) for an image or (Z, H, W) for a stack (ranked over all its
slices; each region lies in one slice). Pure NumPy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError


@dataclass(frozen=True)
class NextRegion:
    """One region to correct: rows [y0, y1) and columns [x0, x1) of slice ``slice_index`` (None for a 2D
    image), its ``score`` (mean unlabelled uncertainty over the region, in [0, 1]), ``kind`` "tile" or
    "object", and ``label`` (the object's id, for objects)."""

    rows: tuple[int, int]
    cols: tuple[int, int]
    score: float
    slice_index: int | None = None
    kind: str = "tile"
    label: int | None = None

    @property
    def bounds(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """((y0, y1), (x0, x1)): what ``Predictor.predict(region=...)`` takes (with the slice for stacks:
        ``((z, z + 1), *bounds)``)."""
        return self.rows, self.cols

    @property
    def centre(self) -> tuple[float, ...]:
        """The centre in pixels, (y, x) or (z, y, x): where a viewer's camera goes."""
        centre = ((self.rows[0] + self.rows[1]) / 2, (self.cols[0] + self.cols[1]) / 2)
        return centre if self.slice_index is None else (float(self.slice_index), *centre)

    @property
    def area(self) -> int:
        return (self.rows[1] - self.rows[0]) * (self.cols[1] - self.cols[0])


def _as_stack(uncertainty, labelled) -> tuple[np.ndarray, np.ndarray, bool]:
    """(Z, H, W) float32 uncertainty with labelled pixels zeroed, the labelled mask, and whether it was 2D."""
    uncertainty = np.asarray(uncertainty, np.float32)
    if uncertainty.ndim not in (2, 3):
        raise InputError(f"uncertainty of shape {uncertainty.shape} must be (H, W) or a stack (Z, H, W)")
    if not np.all(np.isfinite(uncertainty)):
        raise InputError("the uncertainty map holds NaN or infinite values: predict it again")
    flat = uncertainty.ndim == 2
    labelled = np.zeros(uncertainty.shape, bool) if labelled is None else np.asarray(labelled) != 0
    if labelled.shape != uncertainty.shape:
        raise InputError(
            f"labelled pixels of shape {labelled.shape} do not match the uncertainty's {uncertainty.shape}: give a "
            "mask of the image's shape"
        )
    remaining = np.where(labelled, 0, uncertainty)
    return (remaining[None] if flat else remaining), (labelled[None] if flat else labelled), flat


def next_regions(uncertainty, *, tile: int = 64, count: int = 10, labelled=None, gap: int = 1) -> list[NextRegion]:
    """The ``count`` tiles most worth correcting, best first (ties: raster order).

    uncertainty: (H, W) or (Z, H, W) floats in [0, 1]. labelled: bool of the same shape, the pixels already
    labelled (they add nothing). Tiles are ``tile`` x ``tile`` pixels on a grid from the top-left corner
    (the last row and column of tiles cut at the image's edge); a tile's score is the sum of its unlabelled
    pixels' uncertainty over ``tile * tile``. Tiles scoring 0 (nothing uncertain left) are never returned.
    gap: spread before rank: a tile within ``gap`` tiles (rows and columns, diagonals too) of a better
    tile already picked in its slice is moved behind every tile that is not, so that the first suggestions
    spread over the image instead of crowding one uncertain spot (whose neighbours mostly hold the same
    mistake, and which the next round re-ranks anyway); the moved tiles follow in their own order, so a
    small image still gets ``count`` suggestions. 0: plain ranking.
    """
    if tile < 1 or count < 0 or gap < 0:
        raise InputError(f"tile={tile} must be at least 1 pixel, count={count} and gap={gap} not negative")
    remaining, _, flat = _as_stack(uncertainty, labelled)
    depth, height, width = remaining.shape
    rows, cols = -(-height // tile), -(-width // tile)
    padded = np.zeros((depth, rows * tile, cols * tile), np.float64)
    padded[:, :height, :width] = remaining
    scores = padded.reshape(depth, rows, tile, cols, tile).sum(axis=(2, 4)).ravel() / (tile * tile)
    order = np.argsort(-scores, kind="stable")
    order = order[scores[order] > 0]
    spread, crowded = [], []
    taken = np.zeros((depth, rows, cols), bool)  # the picked tiles and their ``gap`` neighbours
    for index in order:
        if len(spread) == count:
            break
        z, row, col = np.unravel_index(index, (depth, rows, cols))
        if taken[z, row, col]:
            crowded.append(index)
            continue
        taken[z, max(row - gap, 0) : row + gap + 1, max(col - gap, 0) : col + gap + 1] = True
        spread.append(index)
    regions = []
    for index in (spread + crowded)[:count]:
        z, row, col = np.unravel_index(index, (depth, rows, cols))
        regions.append(
            NextRegion(
                (int(row * tile), int(min((row + 1) * tile, height))),
                (int(col * tile), int(min((col + 1) * tile, width))),
                float(scores[index]),
                None if flat else int(z),
            )
        )
    return regions


def object_regions(uncertainty, instances, *, count: int = 10, labelled=None) -> list[NextRegion]:
    """The ``count`` objects most worth correcting, best first: each object (an id > 0 of ``instances``, the
    uncertainty's shape) scored by the mean unlabelled uncertainty over its pixels; its region is its
    bounding box. The hook for instance segmentation: the same ranking over objects instead of tiles."""
    from scipy import ndimage

    remaining, _, flat = _as_stack(uncertainty, labelled)
    instances = np.asarray(instances)
    if instances.shape != np.shape(uncertainty):
        raise InputError(f"instances of shape {instances.shape} do not match the uncertainty's {np.shape(uncertainty)}")
    stack = instances[None] if flat else instances
    regions = []
    for z in range(stack.shape[0]):
        ids = np.unique(stack[z])
        ids = ids[ids > 0]
        if not ids.size:
            continue
        means = ndimage.mean(remaining[z], labels=stack[z], index=ids)
        boxes = ndimage.find_objects(stack[z].astype(np.int64))
        for label, mean in zip(ids, means):
            box = boxes[int(label) - 1]
            if mean > 0:
                regions.append(
                    NextRegion(
                        (box[0].start, box[0].stop),
                        (box[1].start, box[1].stop),
                        float(mean),
                        None if flat else z,
                        "object",
                        int(label),
                    )
                )
    regions.sort(key=lambda region: -region.score)
    return regions[:count]


def shapes_data(regions: list[NextRegion]) -> list[np.ndarray]:
    """napari Shapes rectangles for ``regions``: one (4, 2) array of (y, x) corners per region, or (4, 3)
    (z, y, x) for regions of a stack, corners at the pixel edges (y0 - 0.5, ...: napari's pixel centres
    are whole numbers)."""
    shapes = []
    for region in regions:
        (y0, y1), (x0, x1) = region.rows, region.cols
        corners = np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]], np.float64) - 0.5
        if region.slice_index is not None:
            corners = np.column_stack([np.full(4, float(region.slice_index)), corners])
        shapes.append(corners)
    return shapes
