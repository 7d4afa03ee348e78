"""One colour and one name per class value, wherever labels are shown: ground truth, prediction, preview.

Pure data (no Qt, no torch): :func:`class_colors` is the colour dict napari's Labels layers take as
``colormap`` (a fixed colour per class value, background transparent), :func:`class_features` the
``features`` table whose ``class_name`` column napari shows next to the label value under the cursor
(status bar). The sample data's ground truth and Segment's labels use both, so class 1 is the same
colour in a reference and in a prediction.
"""

from __future__ import annotations

from collections.abc import Sequence

# class 1, 2, ...: distinct on grey images and on each other; more classes cycle through the list
CLASS_PALETTE = (
    "magenta",
    "dodgerblue",
    "limegreen",
    "orange",
    "cyan",
    "red",
    "yellow",
    "blueviolet",
    "saddlebrown",
    "pink",
)
UNLISTED_COLOR = "white"  # a value no class has (painted by hand past the last class)


def class_color(value: int) -> str:
    """The colour of class ``value`` (0, the background, is transparent)."""
    return "transparent" if value == 0 else CLASS_PALETTE[(value - 1) % len(CLASS_PALETTE)]


def class_colors(num_classes: int) -> dict[int | None, str]:
    """``{value: colour}`` for classes 0 .. num_classes - 1, and ``None`` (any other value): a napari
    Labels ``colormap``."""
    colors: dict[int | None, str] = {value: class_color(value) for value in range(max(num_classes, 1))}
    colors[None] = UNLISTED_COLOR
    return colors


def class_features(class_names: Sequence[str]) -> dict[str, list]:
    """The Labels ``features`` table for ``class_names`` (indexed by label value): napari's status bar then
    reads ``value; class_name: <name>`` under the cursor."""
    return {"index": list(range(len(class_names))), "class_name": [str(name) for name in class_names]}
