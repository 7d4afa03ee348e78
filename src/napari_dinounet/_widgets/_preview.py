"""The live preview's napari side: what the user looks at, and the "<image> preview" layer.

:class:`LivePreview` follows the viewer (camera and current slice) in the GUI thread and keeps the engine's
:class:`~..engine.preview.PreviewTarget` on the visible part of the current slice of one image layer (a
view of the layer's plane and a region in its pixels: plain arrays and numbers, read by the training
worker). The worker's :class:`~..engine.preview.Preview` events come back to :meth:`LivePreview.show`
(GUI thread), which writes the labels into the Labels layer ``"<image> preview"``: the visible region of
the latest preview, zero elsewhere, so the layer shows where the heads were last asked.
"""

from __future__ import annotations

import numpy as np
from napari.layers import Image, Labels

from ..engine.errors import DinoUNetError
from ..engine.preview import Preview, PreviewTarget, PreviewView, Region
from ._classes import class_colors
from ._layer_geometry import RunPlan, camera, plan_run, viewer_indices

PREVIEW_OPACITY = 0.6


def preview_layer_name(image_name: str) -> str:
    return f"{image_name} preview"


def visible_region(viewer, layer: Image, plane_shape: tuple[int, int], channel_axis: int | None = None) -> Region:
    """The part of ``layer``'s plane (``plane_shape``: its last two axes other than ``channel_axis``) inside
    the canvas, in the layer's pixels, from the camera (centre, zoom) and the canvas size; the whole plane
    when the view is 3D or the displayed axes are not the plane's."""
    height, width = plane_shape
    whole = ((0, height), (0, width))
    rows, cols = [axis for axis in range(layer.ndim) if axis != channel_axis][-2:]
    offset = viewer.dims.ndim - layer.ndim  # the viewer's leading axes that the layer lacks
    if viewer.dims.ndisplay != 2 or list(viewer.dims.displayed) != [rows + offset, cols + offset]:
        return whole
    canvas = np.asarray(viewer.canvas.size, dtype=float)  # (height, width) in screen pixels
    zoom = float(camera(viewer).zoom)
    if zoom <= 0 or not canvas.all():
        return whole
    center = np.asarray(camera(viewer).center[-2:], dtype=float)
    corners = []
    for sign in (-1, 1):
        world = np.asarray(viewer.dims.point, dtype=float)[offset:]
        world[[rows, cols]] = center + sign * canvas / (2 * zoom)
        corners.append(np.asarray(layer.world_to_data(world))[[rows, cols]])
    low, high = np.minimum(*corners), np.maximum(*corners)
    y0, x0 = (int(max(0, np.floor(v + 0.5))) for v in low)  # pixel i covers [i - 0.5, i + 0.5)
    y1, x1 = int(min(height, np.ceil(high[0] + 0.5))), int(min(width, np.ceil(high[1] + 0.5)))
    if y1 <= y0 or x1 <= x0:
        return whole  # the image is out of sight: preview all of it rather than nothing
    return (y0, y1), (x0, x1)


class LivePreview:
    """Keeps ``target`` on the visible part of ``image``'s current slice while a run lasts, and shows the
    run's previews in the layer ``"<image> preview"`` (created at the first one). ``close()`` stops
    following the viewer; the layer stays."""

    def __init__(self, viewer, image: Image, *, channel_axis: int | None, num_classes: int) -> None:
        self.viewer, self.image, self.channel_axis, self.num_classes = viewer, image, channel_axis, num_classes
        self.target = PreviewTarget()
        self.shown = 0  # previews written into the layer
        self._plans: dict[tuple, RunPlan] = {}
        view = camera(viewer)
        self._events = (view.events.center, view.events.zoom, viewer.dims.events.current_step)
        for event in self._events:
            event.connect(self.follow)
        self.follow()

    def follow(self, *_) -> None:
        """Point the target at what is visible now (GUI thread)."""
        try:
            plan = plan_run(
                self.image,
                channel_axis=self.channel_axis,
                whole_stack=False,
                current=viewer_indices(self.viewer, self.image),
            )
        except DinoUNetError:
            self.target.set(None)  # e.g. the layer changed under the run: no preview rather than a wrong one
            return
        axis = None if self.image.rgb else self.channel_axis
        region = visible_region(self.viewer, self.image, plan.labels_shape[-2:], axis)
        self._plans[plan.target] = plan
        has_channels = plan.layout.channel is not None
        self.target.set(
            PreviewView(plan.image, region, channel_axis=plan.image.ndim - 1 if has_channels else None, key=plan.target)
        )

    def show(self, event: Preview) -> None:
        """Write ``event``'s labels into the preview layer (GUI thread), in place: re-setting ``data`` would
        make napari redo the whole layer (several times slower)."""
        plan = self._plans.get(event.view.key)
        if plan is None:
            return
        layer = self._layer(plan)
        (y0, y1), (x0, x1) = event.view.region
        layer.data[...] = 0
        layer.data[(*plan.target, slice(y0, y1), slice(x0, x1))] = event.labels
        layer.metadata["preview_step"] = event.done
        layer.refresh()
        self.shown += 1

    def _layer(self, plan: RunPlan) -> Labels:
        name = preview_layer_name(self.image.name)
        layer = self.viewer.layers[name] if name in self.viewer.layers else None  # noqa: SIM401 (no .get)
        if isinstance(layer, Labels) and layer.data.shape == plan.labels_shape:
            return layer
        return self.viewer.add_labels(
            np.zeros(plan.labels_shape, dtype=np.uint8),
            name=name,
            scale=plan.scale,
            translate=plan.translate,
            units=plan.units or None,
            colormap=class_colors(self.num_classes),
            opacity=PREVIEW_OPACITY,
        )

    def close(self) -> None:
        for event in self._events:
            event.disconnect(self.follow)
