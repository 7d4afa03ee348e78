"""Keep my corrections: which pixels of a labels layer the user changed since Segment last wrote there.

Segment records, per labels layer, what it last wrote (the layer's *baseline*: a private copy kept while
the layer lives, never in ``layer.metadata``, which writers may save). Pixels whose value now differs from
the baseline are the user's corrections, however they were made (brush, fill, eraser, ``data_setitem``,
another plugin). A layer Segment never wrote has a baseline of zeros: every painted pixel is the user's.
A re-run that keeps corrections writes the new prediction everywhere else, as one undoable edit
(``Labels.data_setitem``), and the new prediction becomes the baseline, so kept pixels stay corrections
for the next run too. After Ctrl+Z of a run the restored pixels differ from the baseline, so the next run
keeps them as well (what the user went back to); untick the option to replace them.
"""

from __future__ import annotations

from weakref import WeakKeyDictionary

import numpy as np
from napari.layers import Labels

Target = tuple  # ints (the leading axes' indices) then slices (the spatial region): an index of layer.data

_BASELINES: WeakKeyDictionary[Labels, np.ndarray] = WeakKeyDictionary()


def baseline(layer: Labels) -> np.ndarray:
    """What Segment last wrote into ``layer`` (zeros where it never wrote), of the layer's shape and dtype."""
    recorded = _BASELINES.get(layer)
    if recorded is None or recorded.shape != layer.data.shape or recorded.dtype != layer.data.dtype:
        recorded = np.zeros(layer.data.shape, dtype=layer.data.dtype)
        _BASELINES[layer] = recorded
    return recorded


def record_prediction(layer: Labels, target: Target, labels: np.ndarray) -> None:
    """Remember ``labels`` as what Segment wrote at ``layer.data[target]`` (a new layer: its whole data)."""
    baseline(layer)[target] = labels


def corrections(layer: Labels, target: Target = ()) -> np.ndarray:
    """The pixels of ``layer.data[target]`` the user changed since Segment wrote them (bool, that shape)."""
    return np.asarray(layer.data[target]) != baseline(layer)[target]


def write_labels_undoable(layer: Labels, target: Target, labels: np.ndarray, *, keep: np.ndarray | None = None) -> int:
    """Write ``labels`` at ``layer.data[target]`` as one undoable edit (only the pixels that change), except
    where ``keep`` (bool, ``labels``' shape) is set; the prediction becomes the layer's baseline. Returns the
    number of kept pixels that the prediction would have changed."""
    region = np.asarray(layer.data[target])
    labels = labels.astype(layer.data.dtype, copy=False)
    changes = region != labels
    kept = 0
    if keep is not None:
        kept = int(np.count_nonzero(changes & keep))
        changes &= ~keep
    changed = np.nonzero(changes)
    if changed[0].size:
        layer.data_setitem(_layer_indices(target, changed, layer.data.ndim), labels[changed])
    record_prediction(layer, target, labels)
    return kept


def _layer_indices(target: Target, changed: tuple[np.ndarray, ...], ndim: int) -> tuple[np.ndarray, ...]:
    """``changed`` (indices into ``layer.data[target]``) as indices into ``layer.data``."""
    target = tuple(target) + (slice(None),) * (ndim - len(target))
    count, inner, indices = changed[0].size, iter(changed), []
    for index in target:
        if isinstance(index, slice):
            indices.append(next(inner) + (index.start or 0))
        else:
            indices.append(np.full(count, index))
    return tuple(indices)
