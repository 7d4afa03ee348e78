"""How unsure the prediction is, per pixel: outputs for the sliding window (:mod:`.outputs`) and the
measure that checks them.

- :class:`Uncertainty`: the normalised entropy of the predicted class probabilities, float32 in [0, 1]
  (0: one class has all the probability; 1: all classes equally likely). The probabilities are the
  blended softmax; with mirror TTA the mean of the four mirrors' blended softmax, whose entropy is the
  mirrors' average entropy *plus* their disagreement (the mutual information below), so one map covers
  both "each view is unsure" and "the views disagree".
- :class:`MirrorDisagreement`: that disagreement alone, float32 in [0, 1]: the entropy of the mirrors'
  mean probabilities minus the mean of their entropies (the mutual information between the prediction
  and the mirror, as in BALD), over log(nc). 0 everywhere without TTA. Per class variances are
  :class:`.outputs.MirrorVariance`.
- :func:`error_detection_auroc`: how well a map finds the wrong pixels (1: every wrong pixel is more
  uncertain than every right one; 0.5: no better than chance).

Both outputs ask the tiler for each mirror's blended logits (:class:`.tiling.Blending` ``per_mirror``:
M x nc more open planes, M = 1 without TTA).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .outputs import ArrayOutput
from .tiling import Blending, LogitRows


def _entropy(probabilities: torch.Tensor, dim: int) -> torch.Tensor:
    """Entropy in nats along ``dim`` (0 log 0 = 0)."""
    return -(probabilities * torch.log(probabilities.clamp_min(1e-12))).sum(dim=dim)


def normalized_entropy(probabilities, axis: int = 0) -> np.ndarray:
    """Entropy of class probabilities (an array or a tensor on any device) along ``axis`` over log(nc),
    float32 in [0, 1]: (nc, ...) -> (...). One class (nc = 1) carries no uncertainty: zeros."""
    probabilities = torch.as_tensor(probabilities, dtype=torch.float32)
    classes = probabilities.shape[axis]
    if classes < 2:
        return np.zeros(probabilities.shape[:axis] + probabilities.shape[axis + 1 :], np.float32)
    return (_entropy(probabilities, axis) / math.log(classes)).clamp(0, 1).cpu().numpy()


def _mirror_probabilities(logits: LogitRows) -> torch.Tensor:
    """Each mirror's blended softmax (M, nc, h, W)."""
    return torch.softmax(logits.per_mirror, dim=1)


class Uncertainty(ArrayOutput):
    """Normalised entropy (*spatial) float32 in [0, 1] of the (mirror-averaged) blended class probabilities;
    see the module docstring. ``out``: a float array of the spatial shape."""

    name = "uncertainty"
    blending = Blending(per_mirror=True)

    def block(self, logits: LogitRows) -> np.ndarray:
        return normalized_entropy(_mirror_probabilities(logits).mean(dim=0))  # of (nc, h, W)


class MirrorDisagreement(ArrayOutput):
    """How much the mirror images disagree, (*spatial) float32 in [0, 1]: the mutual information between
    the class and the mirror, over log(nc) (0 without TTA); see the module docstring."""

    name = "mirror disagreement"
    blending = Blending(per_mirror=True)

    def block(self, logits: LogitRows) -> np.ndarray:
        each = _mirror_probabilities(logits)  # (M, nc, h, W)
        classes = each.shape[1]
        if classes < 2:
            return np.zeros(each.shape[2:], np.float32)
        information = _entropy(each.mean(dim=0), 0) - _entropy(each, 1).mean(dim=0)
        return (information / math.log(classes)).clamp(0, 1).cpu().numpy()


def error_detection_auroc(uncertainty, wrong) -> float:
    """The area under the ROC curve of ``uncertainty`` as a detector of ``wrong`` pixels (same shape; bool):
    the chance that a random wrong pixel is more uncertain than a random right one (ties count half).
    NaN when every pixel is right, or every one wrong."""
    from scipy.stats import rankdata

    scores = np.asarray(uncertainty, np.float64).ravel()
    wrong = np.asarray(wrong, bool).ravel()
    positives = int(wrong.sum())
    negatives = wrong.size - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = rankdata(scores)  # average ranks for ties: the Mann-Whitney U statistic
    return float((ranks[wrong].sum() - positives * (positives + 1) / 2) / (positives * negatives))
