"""Projection of the adapter maps (width D) to the decoder widths (spec section 3): three variants.

Every variant takes the four adapter maps [f1 (B, D, H/4, W/4), f2 (H/8), f3 (H/16), f4 (H/32)] and
returns four maps of the same sizes with ``out_channels`` = (32, 64, 128, 256) channels:

- ``fapm`` (default): the fidelity-aware projection the paper describes and the release runs: a shared
  and a per-scale basis (rank 256), FiLM of the per-scale basis by the shared one, a refinement branch
  and a shortcut.
- ``plain``: the paper's "w/o FAPM" ablation, a 1x1 conv + InstanceNorm + LeakyReLU per scale.
- ``compact``: a shared 1x1 conv to 128 channels and the refinement branch only: the configuration whose
  parameter counts equal the paper's Table IV.

Each variant says whether the skips are then reached with learnable upsamplers (``learnable_upsampling``).
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import DinoUNetError

FAPM_RANK = 256
COMPACT_RANK = 128
SE_REDUCTION = 16
LEAKY_SLOPE = 0.01


class InstanceNorm(nn.InstanceNorm2d):
    """``nn.InstanceNorm2d`` that keeps a channels-last input channels-last.

    PyTorch's instance norm copies a channels-last (B, C, H, W) tensor to the default layout and returns it
    there, which costs a copy at every norm of a channels-last network (and one more at the next conv). Per
    sample it is a batch norm over (H, W) with batch statistics, which the CPU runs in channels-last
    directly; the default layout takes PyTorch's instance norm unchanged (the same numbers as before).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or not x.is_contiguous(memory_format=torch.channels_last) or x.is_contiguous():
            return super().forward(x)
        # Welford statistics (var_mean) as accurate as PyTorch's own; one fused pass applies them
        var, mean = torch.var_mean(x, dim=(2, 3), keepdim=True, correction=0)
        scale = self.weight.view(1, -1, 1, 1) * torch.rsqrt(var + self.eps)
        return torch.addcmul(self.bias.view(1, -1, 1, 1) - mean * scale, x, scale)


def norm_act(channels: int) -> list[nn.Module]:
    """InstanceNorm (affine, eps 1e-5) + LeakyReLU(0.01): the nnU-Net norm/activation pair."""
    return [InstanceNorm(channels, eps=1e-5, affine=True), nn.LeakyReLU(LEAKY_SLOPE, inplace=True)]


class SqueezeExcitation(nn.Module):
    """Channel gating: x * sigmoid(W2 relu(W1 mean_hw(x))), hidden width max(1, C // reduction).

    forward: (B, C, h, w) -> (B, C, h, w).
    """

    def __init__(self, channels: int, reduction: int = SE_REDUCTION):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


def refinement_branch(in_channels: int, out_channels: int) -> nn.Sequential:
    """1x1 conv + IN + LReLU, depthwise-separable 3x3 (dw 3x3, pw 1x1, IN, LReLU), 1x1 conv, SE.

    (B, in_channels, h, w) -> (B, out_channels, h, w).
    """
    oc = out_channels
    return nn.Sequential(
        nn.Conv2d(in_channels, oc, 1),
        *norm_act(oc),
        nn.Conv2d(oc, oc, 3, padding=1, groups=oc),
        nn.Conv2d(oc, oc, 1),
        *norm_act(oc),
        nn.Conv2d(oc, oc, 1),
        SqueezeExcitation(oc),
    )


class FidelityAwareProjection(nn.Module):
    """FAPM: per scale, z = gamma * specific + beta with (gamma, beta) = G_i(shared); out = refine(z) + shortcut(z).

    shared: one 1x1 conv D -> R for all scales; specific: a 1x1 conv D -> R per scale; G_i: 1x1 R -> 2R;
    shortcut: 1x1 R -> oc, identity when oc == R.
    """

    learnable_upsampling = True

    def __init__(self, embed_dim: int, out_channels: tuple[int, ...], rank: int = FAPM_RANK):
        super().__init__()
        self.shared_basis = nn.Conv2d(embed_dim, rank, 1)
        self.scale_bases = nn.ModuleList(nn.Conv2d(embed_dim, rank, 1) for _ in out_channels)
        self.film = nn.ModuleList(nn.Conv2d(rank, 2 * rank, 1) for _ in out_channels)
        self.refinements = nn.ModuleList(refinement_branch(rank, oc) for oc in out_channels)
        self.shortcuts = nn.ModuleList(nn.Identity() if oc == rank else nn.Conv2d(rank, oc, 1) for oc in out_channels)

    def forward(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for i, x in enumerate(maps):
            gamma, beta = self.film[i](self.shared_basis(x)).chunk(2, dim=1)
            z = gamma * self.scale_bases[i](x) + beta
            out.append(self.refinements[i](z) + self.shortcuts[i](z))
        return out


class PlainProjection(nn.Module):
    """The ablation: per scale a 1x1 conv D -> oc + IN + LeakyReLU; reaches the skips by bilinear resizing."""

    # the release's ablation (and its "w/o FAPM" parameter count) has no learnable upsamplers
    learnable_upsampling = False

    def __init__(self, embed_dim: int, out_channels: tuple[int, ...]):
        super().__init__()
        self.scales = nn.ModuleList(nn.Sequential(nn.Conv2d(embed_dim, oc, 1), *norm_act(oc)) for oc in out_channels)

    def forward(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        return [scale(x) for scale, x in zip(self.scales, maps)]


class CompactProjection(nn.Module):
    """Table IV's projection: a shared 1x1 conv D -> 128 for all scales, then a refinement branch per scale."""

    learnable_upsampling = True

    def __init__(self, embed_dim: int, out_channels: tuple[int, ...], rank: int = COMPACT_RANK):
        super().__init__()
        self.shared_basis = nn.Conv2d(embed_dim, rank, 1)
        self.refinements = nn.ModuleList(refinement_branch(rank, oc) for oc in out_channels)

    def forward(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        return [refine(self.shared_basis(x)) for refine, x in zip(self.refinements, maps)]


PROJECTIONS = {"fapm": FidelityAwareProjection, "plain": PlainProjection, "compact": CompactProjection}


def build_projection(kind: str, embed_dim: int, out_channels: tuple[int, ...]) -> nn.Module:
    """The projection named ``kind`` (fapm, plain, compact) from width ``embed_dim`` to ``out_channels``."""
    try:
        cls = PROJECTIONS[kind]
    except KeyError:
        raise DinoUNetError(f"unknown projection {kind!r}; use one of {', '.join(PROJECTIONS)}") from None
    return cls(embed_dim, tuple(out_channels))
