"""From projected maps to logits (spec sections 3-4): upsampling to the skip resolutions and the U-Net decoder.

The projected maps sit at strides 4, 8, 16, 32; the decoder wants skips at strides 1, 2, 4, 8 (the
deepest one is its bottleneck). Each map is therefore upsampled x4, by one learnable transposed conv
applied twice (or by bilinear resizing for the ``plain`` projection), then an nnU-Net style decoder with
three stages brings the bottleneck back to full resolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .projection import norm_act

SKIP_CHANNELS = (32, 64, 128, 256)  # skip widths at strides 1, 2, 4, 8


class SkipUpsampling(nn.Module):
    """Upsample each projected map x4 to its skip resolution.

    learnable: one ConvTranspose2d(oc, oc, 2, stride 2) per scale, applied twice with the same weights,
    then bilinear resizing of any leftover mismatch; otherwise bilinear resizing only.
    forward: maps [(B, oc_i, H/4/2^i, W/4/2^i)], size (H, W) -> skips [(B, oc_i, H/2^i, W/2^i)].
    """

    def __init__(self, channels: tuple[int, ...] = SKIP_CHANNELS, learnable: bool = True):
        super().__init__()
        self.convs = nn.ModuleList(nn.ConvTranspose2d(oc, oc, 2, stride=2) for oc in channels) if learnable else None

    def forward(self, maps: list[torch.Tensor], size: tuple[int, int]) -> list[torch.Tensor]:
        h, w = size
        skips = []
        for i, y in enumerate(maps):
            target = (h >> i, w >> i)
            if self.convs is not None:
                y = self.convs[i](self.convs[i](y))
            if tuple(y.shape[-2:]) != target:
                y = F.interpolate(y, size=target, mode="bilinear", align_corners=False)
            skips.append(y)
        return skips


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 conv (bias) + InstanceNorm + LeakyReLU."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1), *norm_act(out_channels))


class DecoderStage(nn.Module):
    """Transposed conv up to the skip, concat [up, skip], two conv blocks.

    forward: below (B, 2c, h, w), skip (B, c, 2h, 2w) -> (B, c, 2h, 2w).
    """

    def __init__(self, below_channels: int, skip_channels: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(below_channels, skip_channels, 2, stride=2)
        self.convs = nn.Sequential(
            conv_block(2 * skip_channels, skip_channels), conv_block(skip_channels, skip_channels)
        )

    def forward(self, below: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.convs(torch.cat((self.up(below), skip), dim=1))


class UNetDecoder(nn.Module):
    """Three decoder stages (256 -> 128 @H/4, -> 64 @H/2, -> 32 @H) and a 1x1 classifier per stage.

    ``classifiers[s]`` maps stage s's features to class logits (nnU-Net's ``seg_layers``; not called heads:
    "heads" is the whole trainable set, see :meth:`.network.DinoUNet.heads`). All three always exist (the
    parameter counts include them); without deep supervision only the last, full-resolution one is used.
    forward: skips [(B, 32, H, W), (B, 64, H/2, W/2), (B, 128, H/4, W/4), (B, 256, H/8, W/8)] ->
    logits (B, nc, H, W); with deep supervision a list [(B, nc, H, W), (B, nc, H/2, W/2), (B, nc, H/4, W/4)].
    """

    def __init__(self, num_classes: int, channels: tuple[int, ...] = SKIP_CHANNELS, deep_supervision: bool = False):
        super().__init__()
        self.deep_supervision = deep_supervision
        # stages and classifiers from the deepest up: stage s joins skip len-2-s
        widths = list(reversed(channels))
        self.stages = nn.ModuleList(DecoderStage(below, skip) for below, skip in zip(widths, widths[1:]))
        self.classifiers = nn.ModuleList(nn.Conv2d(skip, num_classes, 1) for skip in widths[1:])

    def forward(self, skips: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        x = skips[-1]
        outputs = []
        for stage, classifier, skip in zip(self.stages, self.classifiers, reversed(skips[:-1])):
            x = stage(x, skip)
            if self.deep_supervision:
                outputs.append(classifier(x))
        if self.deep_supervision:
            return outputs[::-1]
        return self.classifiers[-1](x)
