"""The training loss (spec section 6): soft Dice + cross-entropy, 1:1, masked for partial labels.

As in nnU-Net's ``DC_and_CE_loss`` with ``MemoryEfficientSoftDiceLoss(batch_dice=True, do_bg=False,
smooth=1e-5)``: the Dice is computed over the whole batch at once (one number per class, not per image),
background excluded, and averaged over the foreground classes. We report ``1 - Dice`` rather than
nnU-Net's ``-Dice``: the same gradient, and a loss that reaches 0.

Partial labels: pixels where ``mask`` is False contribute nothing, to either term. Their label values are
never read (they may be anything, even out of range), so annotating part of an image is enough.

:func:`.train.train` takes the loss and the targets as parameters (``loss=``, ``targets=``), so that
another kind of training (instance maps, say) can bring its own: ``targets(batch)`` turns an augmented
training batch into what ``loss(logits, targets, mask)`` compares the logits with. The defaults are
:func:`class_targets` (the labels as class indices) and :func:`dice_ce_loss`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Targets = Callable[[dict[str, torch.Tensor]], torch.Tensor]
"""batch -> targets: ``batch`` as :class:`.data.PatchSampler` gives it, on the training device and augmented:
image (B, C, P, P) float32, labels (B, P, P) int64, mask (B, P, P) bool. Geometric augmentation has moved
the labels already, so targets derived from them (distances, boundaries) line up with the image."""

Loss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""(logits (B, nc, P, P) in the autocast dtype, targets, mask (B, P, P) bool) -> scalar tensor to minimise;
pixels where ``mask`` is False must not count (partial labels, padding)."""


def class_targets(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The default targets: the batch's labels, (B, P, P) int64 class indices (0 = background)."""
    return batch["labels"]


def dice_ce_loss(
    logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None, smooth: float = 1e-5
) -> torch.Tensor:
    """Soft batch Dice (foreground classes) + cross-entropy, both restricted to ``mask``.

    logits (B, nc, H, W) any float dtype; labels (B, H, W) integer class indices; mask (B, H, W) bool or
    None (every pixel counts). Returns a scalar float32 tensor. Computed in float32 whatever the autocast
    dtype, because the sums over a batch of 512x512 patches overflow float16.
    """
    logits = logits.float()
    num_classes = logits.shape[1]
    if mask is None:
        mask = torch.ones_like(labels, dtype=torch.bool)
    weight = mask.to(logits.dtype)
    # labels outside the mask may be arbitrary: replace them by 0 so one_hot and the CE gather stay valid
    target = torch.where(mask, labels, torch.zeros_like(labels)).long()

    pixel_ce = F.cross_entropy(logits, target, reduction="none")  # (B, H, W)
    ce = (pixel_ce * weight).sum() / weight.sum().clamp_min(1.0)

    if num_classes < 2:
        return ce
    probs = logits.softmax(dim=1)[:, 1:]  # (B, nc-1, H, W): foreground classes only
    onehot = F.one_hot(target, num_classes).permute(0, 3, 1, 2)[:, 1:].to(logits.dtype)
    weight = weight.unsqueeze(1)
    intersect = (probs * onehot * weight).sum(dim=(0, 2, 3))
    predicted = (probs * weight).sum(dim=(0, 2, 3))
    reference = (onehot * weight).sum(dim=(0, 2, 3))
    dice = (2 * intersect + smooth) / (predicted + reference + smooth).clamp_min(1e-8)
    return ce + (1 - dice.mean())
