"""The training loss: nnU-Net's Dice + cross-entropy (checked against MONAI), masked for partial labels."""

from __future__ import annotations

import pytest
import torch

from napari_dinounet.engine.loss import class_targets, dice_ce_loss


def _logits_and_labels(seed=0, batch=2, classes=3, size=16):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, classes, size, size, generator=g)
    labels = torch.randint(0, classes, (batch, size, size), generator=g)
    return logits, labels


def test_loss_equals_monai_dice_ce_with_batch_dice_without_background():
    from monai.losses import DiceCELoss

    logits, labels = _logits_and_labels()
    reference = DiceCELoss(
        include_background=False, to_onehot_y=True, softmax=True, batch=True, smooth_nr=1e-5, smooth_dr=1e-5
    )(logits, labels[:, None])
    assert dice_ce_loss(logits, labels).item() == pytest.approx(reference.item(), rel=1e-5)


def test_masked_loss_equals_loss_on_the_masked_region_alone():
    logits, labels = _logits_and_labels(seed=1)
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[..., :6] = True  # the left 6 columns count
    masked = dice_ce_loss(logits, labels, mask)
    cropped = dice_ce_loss(logits[..., :6], labels[..., :6])
    assert masked.item() == pytest.approx(cropped.item(), rel=1e-6)
    assert masked.item() != pytest.approx(dice_ce_loss(logits, labels).item(), rel=1e-3)


def test_labels_outside_the_mask_change_neither_loss_nor_gradient():
    logits, labels = _logits_and_labels(seed=2)
    g = torch.Generator().manual_seed(3)
    mask = torch.rand(labels.shape, generator=g) < 0.4
    other = labels.clone()
    other[~mask] = torch.randint(0, 3, (int((~mask).sum()),), generator=g)
    other[0, 0, 0] = 7 if not mask[0, 0, 0] else other[0, 0, 0]  # even out-of-range values are never read
    assert not torch.equal(other, labels)

    results = []
    for lab in (labels, other):
        x = logits.clone().requires_grad_(True)
        loss = dice_ce_loss(x, lab, mask)
        loss.backward()
        results.append((loss.detach(), x.grad))
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])
    # and the gradient is zero exactly where the mask is False... for CE; Dice couples pixels through the
    # sums, but a masked pixel's own logits get no gradient from either term
    assert torch.all(results[0][1].permute(1, 0, 2, 3)[:, ~mask] == 0)


def test_perfect_prediction_gives_near_zero_loss():
    _, labels = _logits_and_labels(seed=4)
    logits = torch.nn.functional.one_hot(labels, 3).permute(0, 3, 1, 2).float() * 50
    assert dice_ce_loss(logits, labels).item() < 1e-6


def test_the_default_targets_are_the_batch_labels_as_they_come():
    _, labels = _logits_and_labels(seed=5)
    batch = {"image": torch.zeros(2, 1, 16, 16), "labels": labels, "mask": torch.ones_like(labels, dtype=torch.bool)}
    assert class_targets(batch) is labels
