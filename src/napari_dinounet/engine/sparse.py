"""Sparse labels (scribbles): strokes on an otherwise unpainted label map.

In a scribble map 0 means *unknown* (not painted): those pixels are left out of the loss through the
samples' masks (:class:`.data.Sample`). The user paints background with a value of their choice,
``background`` (B), which becomes class 0; every other painted value keeps its value as its class, so the
prediction's colours match the strokes. The classes are 0..max painted value (B aside); values between
may be unused (a class never painted is simply never predicted by heads trained only on strokes).

    classes, painted = scribble_targets(strokes, background=2)
    # strokes 1 (nuclei), 2 (background), 0 elsewhere -> classes 1 / 0, painted = strokes != 0

Pure NumPy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import InputError

# At most this many classes from scribbles: the prediction is a label layer whose colours are the
# values, and a stray value of 70000 must not build 70001 classes (labels are uint8 up to 256 classes).
MAX_SCRIBBLE_CLASS = 255


def check_background(background) -> int:
    """``background`` as an int, or an InputError: it must be a positive whole number (0 is "unknown")."""
    if isinstance(background, bool) or not isinstance(background, (int, np.integer)):
        raise InputError(f"background label {background!r} must be a whole number, the value painted as background")
    if background <= 0:
        raise InputError(
            f"background label {background}: 0 means 'not painted' in sparse labels, so paint background with "
            "another value (e.g. the largest class + 1) and give that value"
        )
    return int(background)


def check_scribbles(labels: Sequence[np.ndarray], background: int, names: Sequence[str]) -> int:
    """Check scribble maps (integer arrays) together; return the number of classes, max painted value + 1
    (B counted as 0). InputErrors name the problem and the fix: negative values, values beyond
    :data:`MAX_SCRIBBLE_CLASS`, nothing painted, B painted nowhere, or nothing painted but B."""
    background = check_background(background)
    present = np.unique(np.concatenate([np.unique(lab) for lab in labels]))
    where = ", ".join(list(names)[:5])
    if present.size and present[0] < 0:
        raise InputError(f"sparse labels of {where} hold negative values: paint with 1, 2, ... (0 = not painted)")
    painted = present[present > 0]
    if painted.size == 0:
        raise InputError(
            f"nothing is painted in {where}: in sparse labels 0 means 'not painted'; paint a few strokes of "
            f"each class and some of background with label {background}"
        )
    if background not in painted:
        raise InputError(
            f"background label {background} is painted nowhere in {where} (painted: "
            f"{', '.join(str(v) for v in painted[:10])}): paint some background strokes with label {background}, "
            "or give the label you painted background with"
        )
    classes = painted[painted != background]
    if classes.size == 0:
        raise InputError(
            f"only background (label {background}) is painted in {where}: paint some strokes of at least one "
            "object class with another label"
        )
    if classes[-1] > MAX_SCRIBBLE_CLASS:
        raise InputError(
            f"sparse labels of {where} hold the value {classes[-1]}: classes go up to {MAX_SCRIBBLE_CLASS}; paint "
            "with small label values (1, 2, ...), one per class"
        )
    return int(classes[-1]) + 1


def scribble_class_map(labels: np.ndarray, background: int) -> tuple[np.ndarray, np.ndarray]:
    """Class indices and the painted mask of one (already checked) scribble map, any shape: int64 classes
    (B -> 0, unpainted 0 too, masked out) and bool mask (True where painted)."""
    labels = np.asarray(labels)
    painted = labels != 0
    classes = np.where(labels == background, 0, labels).astype(np.int64)
    return classes, painted


def scribble_targets(labels, background: int, name: str = "labels") -> tuple[np.ndarray, np.ndarray]:
    """Training targets from one scribble map (any shape, integer or bool values; 0 = not painted).

    Returns ``(classes, painted)``: classes int64 of the same shape (background B -> 0, other painted values
    unchanged, unpainted pixels 0) and painted bool (True where the loss counts). An InputError (naming
    ``name``) when B is not a positive whole number, nothing is painted, B is painted nowhere, only B is
    painted, or values are negative or beyond :data:`MAX_SCRIBBLE_CLASS`.
    """
    labels = np.asarray(labels)
    if labels.dtype == bool:
        labels = labels.astype(np.int64)
    if not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"{name}: sparse labels must be whole numbers (a Labels layer), got {labels.dtype}")
    check_scribbles([labels], background, [name])
    return scribble_class_map(labels, background)


def simulated_scribbles(
    classes: np.ndarray, background: int, *, coverage: float = 0.03, edge_gap: int = 2, block: int = 16, seed: int = 0
) -> np.ndarray:
    """Strokes a user might paint, drawn from a full labelling: what benchmarks and tests train on.

    classes: (H, W) int class indices (0 = background). Per class, its strokes are the skeleton of the class
    region shrunk by ``edge_gap`` pixels (lines along the middle of objects, as users scribble them);
    background also gets a ring ``edge_gap + 1`` pixels outside the foreground (users paint background
    near the objects' edges, where it matters). Each class gets at most ``coverage / number of classes`` of
    the pixels: beyond that only its strokes inside randomly chosen ``block`` x ``block`` squares stay
    (pieces of lines, not scattered pixels). Returns (H, W) int32 scribbles: class values on their strokes,
    ``background`` on background strokes, 0 elsewhere; at most ``coverage`` of the pixels painted.
    """
    from scipy import ndimage
    from skimage.morphology import skeletonize

    classes = np.asarray(classes)
    rng = np.random.default_rng(seed)
    present = [int(c) for c in np.unique(classes)]
    budget = int(coverage * classes.size / len(present))
    foreground = classes > 0
    ring = ndimage.binary_dilation(foreground, iterations=edge_gap + 1) & ~ndimage.binary_dilation(
        foreground, iterations=edge_gap
    )
    scribbles = np.zeros(classes.shape, np.int32)
    for value in present:
        strokes = skeletonize(ndimage.binary_erosion(classes == value, iterations=edge_gap))
        if value == 0:
            strokes |= ring & (classes == 0)
        strokes = _within_budget(strokes, budget, block, rng)
        scribbles[strokes] = background if value == 0 else value
    return scribbles


def _within_budget(strokes: np.ndarray, budget: int, block: int, rng: np.random.Generator) -> np.ndarray:
    """``strokes`` (H, W) bool kept only inside random ``block`` squares until at most ``budget`` pixels remain."""
    if strokes.sum() <= budget:
        return strokes
    height, width = strokes.shape
    rows, cols = -(-height // block), -(-width // block)
    padded = np.zeros((rows * block, cols * block), bool)
    padded[:height, :width] = strokes
    counts = padded.reshape(rows, block, cols, block).sum(axis=(1, 3)).ravel()
    kept = np.zeros(rows * cols, bool)
    total = 0
    for index in rng.permutation(rows * cols):
        if counts[index] and total + counts[index] <= budget:
            kept[index] = True
            total += counts[index]
    keep = np.repeat(np.repeat(kept.reshape(rows, cols), block, axis=0), block, axis=1)[:height, :width]
    return strokes & keep
