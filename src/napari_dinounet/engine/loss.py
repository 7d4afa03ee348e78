"""The training loss (spec section 6): soft Dice + cross-entropy, 1:1, masked for partial labels.

As in nnU-Net's ``DC_and_CE_loss`` with ``MemoryEfficientSoftDiceLoss(batch_dice=True, do_bg=False,
smooth=1e-5)``: the Dice is computed over the whole batch at once (one number per class, not per image),
background excluded, and averaged over the foreground classes. We report ``1 - Dice`` rather than
nnU-Net's ``-Dice``: the same gradient, and a loss that reaches 0.

Partial labels: pixels where ``mask`` is False contribute nothing, to either term. Their label values are
never read (they may be anything, even out of range), so annotating part of an image is enough.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dice_ce_loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None,
                 smooth: float = 1e-5) -> torch.Tensor:
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
