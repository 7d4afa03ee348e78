"""The adapter (spec section 2): a spatial prior module and deformable cross-attention extractors.

The adapter turns the input image and the four frozen backbone taps into four feature maps of width D at
strides 4, 8, 16 and 32. A small CNN (the spatial prior module, SPM) gives stride 4-32 maps; the stride
8/16/32 maps, flattened to 21n query tokens (n = H/32 * W/32), attend to the backbone taps through
multi-scale deformable attention (one level: the stride-16 tap) in six extractors. Features flow one way,
backbone -> adapter: the backbone is never changed.

Everything is plain, differentiable PyTorch: the deformable sampling is one ``grid_sample`` per extractor
over all heads and points, run in fp32 even under autocast.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn
from torch.utils.checkpoint import checkpoint

from .errors import DinoUNetError

SPM_WIDTH = 64  # channels of the SPM stem (the release's conv_inplane)
ATTENTION_HEADS = 16
SAMPLING_POINTS = 4
VALUE_RATIO = 0.5  # value width = D * VALUE_RATIO
FFN_RATIO = 0.25  # ConvFFN hidden width = D * FFN_RATIO
DROP_PATH = 0.3  # the same rate for every extractor, on the FFN branch only
LAYER_NORM_EPS = 1e-6
# Which tap each extractor attends to, in order: blocks 0-2 run one extractor each, the last block runs
# two more (six in all).
EXTRACTOR_TAPS = (0, 1, 2, 3, 3, 3)


def _conv_bn_relu(in_ch: int, out_ch: int, stride: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    ]


class SpatialPriorModule(nn.Module):
    """A small CNN giving the adapter's own multi-scale maps.

    forward: x (B, 3, H, W), H and W multiples of 32 -> c1..c4, each (B, D, H/s, W/s) for s = 4, 8, 16, 32.
    """

    def __init__(self, embed_dim: int, width: int = SPM_WIDTH):
        super().__init__()
        self.stem = nn.Sequential(
            *_conv_bn_relu(3, width, 2),
            *_conv_bn_relu(width, width, 1),
            *_conv_bn_relu(width, width, 1),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )
        self.conv2 = nn.Sequential(*_conv_bn_relu(width, 2 * width, 2))
        self.conv3 = nn.Sequential(*_conv_bn_relu(2 * width, 4 * width, 2))
        self.conv4 = nn.Sequential(*_conv_bn_relu(4 * width, 4 * width, 2))
        self.fc = nn.ModuleList(nn.Conv2d(ch, embed_dim, 1) for ch in (width, 2 * width, 4 * width, 4 * width))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c1 = self.stem(x)
        c2 = self.conv2(c1)
        c3 = self.conv3(c2)
        c4 = self.conv4(c3)
        return [fc(c) for fc, c in zip(self.fc, (c1, c2, c3, c4))]


def reference_points(shapes: list[tuple[int, int]], device=None) -> torch.Tensor:
    """Centres of the cells of each query grid, normalised to [0, 1], in (x, y) order.

    shapes: (h, w) of each grid, in token order. Returns (sum h*w, 2), rows in row-major order per grid.
    """
    points = []
    for h, w in shapes:
        y = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
        x = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
        yy, xx = torch.meshgrid(y, x, indexing="ij")
        points.append(torch.stack((xx.reshape(-1), yy.reshape(-1)), dim=-1))
    return torch.cat(points, dim=0)


def deformable_sample(value: torch.Tensor, locations: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted bilinear samples of per-head value maps: the core of deformable attention.

    value: (B, heads, Dh, Hv, Wv). locations: (B, Nq, heads, P, 2) in [0, 1], (x, y) order, where 0 and 1
    are the outer edges of the map (align_corners=False); outside samples read zeros.
    weights: (B, Nq, heads, P). Returns (B, Nq, heads * Dh) = sum over points of weight * sample.
    Runs in fp32 whatever the autocast state: bf16/fp16 sampling positions lose sub-pixel precision.
    """
    b, heads, dh, hv, wv = value.shape
    nq, points = locations.shape[1], locations.shape[3]
    with torch.autocast(device_type=value.device.type, enabled=False):
        maps = value.float().reshape(b * heads, dh, hv, wv)
        grid = (2 * locations.float() - 1).permute(0, 2, 1, 3, 4).reshape(b * heads, nq, points, 2)
        samples = F.grid_sample(maps, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        # samples: (B*heads, Dh, Nq, P)
        w = weights.float().permute(0, 2, 1, 3).reshape(b * heads, 1, nq, points)
        out = (samples * w).sum(dim=-1)  # (B*heads, Dh, Nq)
    return out.view(b, heads * dh, nq).transpose(1, 2)


class DeformableAttention(nn.Module):
    """Single-level multi-head deformable cross-attention (the MSDA of ViT-Adapter with one level).

    Each query predicts, per head, P sampling offsets (in value-map pixels) around its reference point and
    P softmax weights; the value map is sampled bilinearly there.
    forward: query (B, Nq, D), reference (Nq, 2) in [0, 1] (x, y), value (B, Hv*Wv, D) tokens of a
    (Hv, Wv) map -> (B, Nq, D).
    """

    def __init__(self, dim: int, num_heads: int = ATTENTION_HEADS, points: int = SAMPLING_POINTS, ratio=VALUE_RATIO):
        super().__init__()
        value_dim = int(dim * ratio)
        if value_dim % num_heads:
            raise DinoUNetError(
                f"backbone width {dim} does not split into {num_heads} attention heads of width "
                f"{dim}*{ratio}/{num_heads}; "
                f"use a backbone whose width is a multiple of {int(num_heads / ratio)}"
            )
        self.num_heads, self.points, self.value_dim = num_heads, points, value_dim
        self.sampling_offsets = nn.Linear(dim, num_heads * points * 2)
        self.attention_weights = nn.Linear(dim, num_heads * points)
        self.value_proj = nn.Linear(dim, value_dim)
        self.output_proj = nn.Linear(value_dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Offsets start as a fixed star: head h looks along angle 2*pi*h/heads, point p at distance p+1
        (max-norm), so the heads cover all directions from the first step; weights start uniform."""
        nn.init.zeros_(self.sampling_offsets.weight)
        angle = torch.arange(self.num_heads, dtype=torch.float32) * (2 * math.pi / self.num_heads)
        direction = torch.stack((angle.cos(), angle.sin()), dim=-1)
        direction = direction / direction.abs().max(dim=-1, keepdim=True).values
        distance = torch.arange(1, self.points + 1, dtype=torch.float32)
        bias = direction[:, None, :] * distance[None, :, None]  # (heads, points, 2)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(bias.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for linear in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)

    def forward(
        self, query: torch.Tensor, reference: torch.Tensor, value: torch.Tensor, value_shape: tuple[int, int]
    ) -> torch.Tensor:
        b, nq, _ = query.shape
        hv, wv = value_shape
        heads, points = self.num_heads, self.points
        v = self.value_proj(value).view(b, hv * wv, heads, -1).permute(0, 2, 3, 1)
        v = v.reshape(b, heads, -1, hv, wv)
        offsets = self.sampling_offsets(query).view(b, nq, heads, points, 2)
        weights = self.attention_weights(query).view(b, nq, heads, points).softmax(dim=-1)
        # offsets are in value-map pixels; locations in [0, 1] of the map's width and height
        scale = torch.tensor([wv, hv], dtype=offsets.dtype, device=offsets.device)
        locations = reference[None, :, None, None, :] + offsets / scale
        return self.output_proj(deformable_sample(v, locations, weights))


class ConvFFN(nn.Module):
    """Token MLP with a depthwise 3x3 conv in the middle, applied to each query grid with shared weights.

    forward: tokens (B, N, D) made of the row-major grids ``shapes`` (N = sum h*w) -> (B, N, D).
    """

    def __init__(self, dim: int, ratio: float = FFN_RATIO):
        super().__init__()
        hidden = int(dim * ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, tokens: torch.Tensor, shapes: list[tuple[int, int]]) -> torch.Tensor:
        h = self.fc1(tokens)
        parts = h.split([hh * ww for hh, ww in shapes], dim=1)
        # contiguous, as in the authors' release, so that the conv sums in the release's order (a channels-last
        # view gives the same values, rounded differently)
        convolved = [
            self.dwconv(part.transpose(1, 2).unflatten(2, shape).contiguous()).flatten(2).transpose(1, 2)
            for part, shape in zip(parts, shapes)
        ]
        return self.fc2(self.act(torch.cat(convolved, dim=1)))


class Extractor(nn.Module):
    """One extractor: the query tokens read from a backbone tap, then go through a ConvFFN.

    ``c += MSDA(LN(c), ref, LN(tap))``; ``c += DropPath(ConvFFN(LN(c)))``.
    forward: c (B, N, D), reference (N, 2), tap (B, Hv*Wv, D) -> (B, N, D).
    """

    def __init__(self, dim: int, drop_path: float = DROP_PATH):
        super().__init__()
        self.query_norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.tap_norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attention = DeformableAttention(dim)
        self.ffn_norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.ffn = ConvFFN(dim)
        self.drop_path = DropPath(drop_path)

    def forward(self, c, reference, tap, tap_shape, query_shapes):
        c = c + self.attention(self.query_norm(c), reference, self.tap_norm(tap), tap_shape)
        return c + self.drop_path(self.ffn(self.ffn_norm(c), query_shapes))


class Adapter(nn.Module):
    """SPM + six extractors + output assembly: the trainable encoder next to the frozen backbone.

    forward: x (B, 3, H, W) (H, W multiples of 32) and taps, four (B, D, H/16, W/16) backbone maps ->
    [f1 (B, D, H/4, W/4), f2 (H/8), f3 (H/16), f4 (H/32)].
    grad_checkpointing: recompute each extractor in the backward pass instead of storing its activations
    (the deformable sampling of every head and point is large at high resolution).
    """

    def __init__(self, embed_dim: int, grad_checkpointing: bool = False):
        super().__init__()
        self.grad_checkpointing = grad_checkpointing
        # the layout of the output maps (DinoUNet.use_channels_last sets it with the weights' layout)
        self.memory_format = torch.contiguous_format
        self.spm = SpatialPriorModule(embed_dim)
        self.level_embed = nn.Parameter(torch.empty(3, embed_dim))
        self.extractors = nn.ModuleList(Extractor(embed_dim) for _ in EXTRACTOR_TAPS)
        self.up = nn.ConvTranspose2d(embed_dim, embed_dim, 2, stride=2)
        self.norms = nn.ModuleList(nn.BatchNorm2d(embed_dim) for _ in range(4))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The ViT-Adapter initialisation: truncated-normal linears, fan-out normal convs, then the
        attention's own start (see DeformableAttention.reset_parameters) and a N(0, 1) level embedding."""
        for module in (self.spm, self.extractors, self.up):
            module.apply(_init_weights)
        for extractor in self.extractors:
            extractor.attention.reset_parameters()
        nn.init.normal_(self.level_embed)

    def forward(self, x: torch.Tensor, taps: list[torch.Tensor]) -> list[torch.Tensor]:
        c1, c2, c3, c4 = self.spm(x)
        query_shapes = [tuple(c.shape[-2:]) for c in (c2, c3, c4)]
        c = torch.cat([m.flatten(2).transpose(1, 2) + self.level_embed[i] for i, m in enumerate((c2, c3, c4))], dim=1)
        reference = reference_points(query_shapes, device=x.device)
        tap_shape = tuple(taps[0].shape[-2:])
        tap_tokens = [t.flatten(2).transpose(1, 2) for t in taps]
        for extractor, tap_index in zip(self.extractors, EXTRACTOR_TAPS):
            args = (c, reference, tap_tokens[tap_index], tap_shape, query_shapes)
            if self.grad_checkpointing and torch.is_grad_enabled():
                c = checkpoint(extractor, *args, use_reentrant=False)
            else:
                c = extractor(*args)
        # contiguous, as in the authors' release: at batch 1, `view + interpolate` below is a channels-last
        # tensor with a non-canonical batch stride, for which PyTorch's CPU BatchNorm backward returns wrong
        # input gradients whenever the gradient arrives NCHW-contiguous (a loss taken on f1..f4 directly)
        c2, c3, c4 = (
            part.transpose(1, 2).unflatten(2, shape).contiguous(memory_format=self.memory_format)
            for part, shape in zip(c.split([h * w for h, w in query_shapes], dim=1), query_shapes)
        )
        c1 = self.up(c2) + c1
        return [
            norm(m + F.interpolate(tap, size=m.shape[-2:], mode="bilinear", align_corners=False))
            for norm, m, tap in zip(self.norms, (c1, c2, c3, c4), taps)
        ]


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
        if module.bias is not None:
            nn.init.zeros_(module.bias)
