"""Correct here next: Segment's ranked regions as a Shapes layer, and the Next button's walk through them.

From the uncertainty of the last run and the pixels the user already corrected, :mod:`..engine.next_regions`
ranks square tiles by the uncertainty still uncorrected in them. They become ``"<image> next"`` (rectangles
numbered 1, 2, ... best first). Each Next centres the view (and, for stacks, the slice) on the next one and
adds it to ``"<image> checked"``: the regions the user was shown and corrected, which Fine-tune takes as the
region that counts for ``"<image> labels"``.
"""

from __future__ import annotations

import numpy as np

from ..engine.next_regions import NextRegion, next_regions, shapes_data
from ._layer_geometry import RunPlan, camera

TILE = 64  # pixels: a region a user corrects in a minute or so
COUNT = 10
NEXT_COLOR, CHECKED_COLOR = "yellow", "limegreen"


def next_layer_name(image_name: str) -> str:
    return f"{image_name} next"


def checked_layer_name(image_name: str) -> str:
    return f"{image_name} checked"


class NextRegions:
    """The ranked regions of one Segment run (``uncertainty`` and ``labelled``: the labels layer's shape)."""

    def __init__(self, viewer, image, plan: RunPlan, uncertainty: np.ndarray, labelled: np.ndarray) -> None:
        self.viewer, self.image, self.plan = viewer, image, plan
        self.leading = plan.labels_shape[:-2]
        plane = plan.labels_shape[-2:]
        flat = (lambda a: np.asarray(a).reshape((-1, *plane))) if self.leading else np.asarray
        self.regions: list[NextRegion] = next_regions(
            flat(uncertainty), tile=TILE, count=COUNT, labelled=flat(labelled)
        )
        self.position = -1
        self.layer = self._shapes(next_layer_name(image.name), self.regions, NEXT_COLOR, numbered=True)

    def _corners(self, regions: list[NextRegion]) -> list[np.ndarray]:
        """Rectangles in the labels layer's axes: the leading indices (a stack's slice) before (y, x)."""
        shapes = []
        for region, corners in zip(regions, shapes_data([NextRegion(r.rows, r.cols, r.score) for r in regions])):
            if self.leading:
                index = np.unravel_index(region.slice_index, self.leading)
                corners = np.column_stack([np.tile(np.asarray(index, float), (4, 1)), corners])
            shapes.append(corners)
        return shapes

    def _shapes(self, name: str, regions: list[NextRegion], color: str, *, numbered: bool = False):
        """A fresh Shapes layer ``name`` of ``regions`` (an earlier one of that name replaced)."""
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        if not regions:
            return None
        active = self.viewer.layers.selection.active  # the labels being corrected stay the active layer
        extra = {}
        if numbered:
            extra = {
                "features": {"rank": list(range(1, len(regions) + 1)), "score": [r.score for r in regions]},
                "text": {"string": "{rank}", "color": color, "size": 12, "anchor": "upper_left"},
            }
        layer = self.viewer.add_shapes(
            self._corners(regions),
            shape_type="rectangle",
            name=name,
            edge_color=color,
            face_color="transparent",
            edge_width=2,
            scale=self.plan.scale,
            translate=self.plan.translate,
            units=self.plan.units or None,
            **extra,
        )
        if active is not None and active in self.viewer.layers:
            self.viewer.layers.selection.active = active
        return layer

    def go_to_next(self) -> str:
        """Centre the view on the next region, mark it checked; returns what the status line says."""
        if not self.regions:
            return "nothing left to correct: the heads are sure everywhere that is not corrected yet"
        self.position = (self.position + 1) % len(self.regions)
        region = self.regions[self.position]
        index = np.unravel_index(region.slice_index, self.leading) if self.leading else ()
        scale, translate = np.asarray(self.plan.scale), np.asarray(self.plan.translate)
        centre = np.array([*index, *region.centre[-2:]], float)
        world = translate + scale * centre
        offset = self.viewer.dims.ndim - len(self.plan.labels_shape)  # the viewer's axes before the labels'
        for axis, value in enumerate(world[:-2]):
            self.viewer.dims.set_point(offset + axis, value)
        view = camera(self.viewer)
        view.center = tuple(world[-2:])
        extent = max(region.rows[1] - region.rows[0], region.cols[1] - region.cols[0]) * float(scale[-1])
        view.zoom = 0.5 * min(self.viewer.canvas.size) / extent
        self._mark_checked(region)
        (y0, y1), (x0, x1) = region.bounds
        where = f"slice {index} " if index else ""
        return (
            f"region {self.position + 1}/{len(self.regions)}: {where}rows {y0}-{y1}, columns {x0}-{x1} "
            f"(uncertainty {region.score:.2f}): correct the labels there, then Next; Fine-tune counts the checked "
            "regions in"
        )

    def _mark_checked(self, region: NextRegion) -> None:
        name = checked_layer_name(self.image.name)
        layer = self.viewer.layers[name] if name in self.viewer.layers else None  # noqa: SIM401 (no .get)
        corners = self._corners([region])[0]
        if layer is None:
            self._shapes(name, [region], CHECKED_COLOR)
        elif not any(np.array_equal(corners, shape) for shape in layer.data):
            layer.add_rectangles([corners], edge_color=CHECKED_COLOR, face_color="transparent", edge_width=2)
