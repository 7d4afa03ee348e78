"""The frozen DINOv3 ViT backbone: the variant registry, :func:`load_backbone` and :class:`Backbone`.

Every backbone is a timm DINOv3 ``Eva`` model (patch 16, CLS + register tokens, DINOv3 RoPE, layer scale,
LayerNorm eps 1e-5). Its size (:class:`Architecture`) comes either from the variant registry
(``"random:<variant>"``) or from the tensor shapes of a weights file (read by :mod:`.weights`).
"""

from __future__ import annotations

import re
import warnings
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .errors import InputError, WeightsError
from .weights import WeightsFile, read_weights

PATCH_SIZE = 16

# Every timm DINOv3 definition shares all settings except the ones in Architecture, which we pass
# explicitly; so one definition serves every size.
_TIMM_BASE = "vit_small_patch16_dinov3"


@dataclass(frozen=True)
class Architecture:
    """The shape of a DINOv3 ViT: what differs between S, S+, B, L, H+, 7B and custom sizes.

    num_heads: the attention head count the model is built with, from the registry or, for a file, its RoPE
    periods, its config.json or the registry size of its width. The tensors of an HF folder do not show it
    (config.json alone says it), so heads checkpoints record it: a later backbone with another count is not
    the one they were trained on.
    """

    embed_dim: int
    depth: int
    num_heads: int
    mlp_hidden: int  # hidden width of the MLP (of each SwiGLU branch)
    swiglu: bool  # SwiGLU MLP (S+, H+, 7B) instead of a GELU MLP
    qkv_bias: bool  # learnt q and v biases (all but 7B); the k bias never matters (softmax shift)
    num_reg_tokens: int = 4

    def timm_kwargs(self) -> dict:
        """Keyword arguments that make ``timm.create_model(_TIMM_BASE, ...)`` this architecture."""
        return {
            "embed_dim": self.embed_dim,
            "depth": self.depth,
            "num_heads": self.num_heads,
            # +0.5 so that int(embed_dim * mlp_ratio) inside timm is exactly mlp_hidden despite rounding
            "mlp_ratio": (self.mlp_hidden + 0.5) / self.embed_dim,
            "swiglu_mlp": self.swiglu,
            # align_to=1 keeps mlp_hidden as is and selects timm's SwiGLU with separate gate/x layers
            # (fc1_g, fc1_x), the layout of every DINOv3 checkpoint
            "swiglu_align_to": 1 if self.swiglu else 0,
            "qkv_bias": self.qkv_bias,
            "num_reg_tokens": self.num_reg_tokens,
            "num_classes": 0,
        }


def evenly_spaced_taps(depth: int) -> tuple[int, int, int, int]:
    """Four 0-based blocks, evenly spaced, ending at the last: 4 -> (0,1,2,3), 12 -> (2,5,8,11), 32 -> (7,15,23,31)."""
    if depth < 4:
        raise WeightsError(f"a backbone with {depth} blocks is too shallow: Dino U-Net taps four blocks")
    return tuple((i + 1) * depth // 4 - 1 for i in range(4))


@dataclass(frozen=True)
class Variant:
    """A named backbone size from the spec (section 1) and the blocks its adapter taps."""

    name: str
    architecture: Architecture
    taps: tuple[int, int, int, int]


def _variant(name, embed_dim, depth, num_heads, mlp_hidden, swiglu, qkv_bias=True, taps=None) -> Variant:
    arch = Architecture(embed_dim, depth, num_heads, mlp_hidden, swiglu, qkv_bias)
    return Variant(name, arch, taps or evenly_spaced_taps(depth))


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        _variant("s", 384, 12, 6, 1536, swiglu=False, taps=(2, 5, 8, 11)),
        _variant("s+", 384, 12, 6, 1536, swiglu=True),
        _variant("b", 768, 12, 12, 3072, swiglu=False, taps=(2, 5, 8, 11)),
        _variant("l", 1024, 24, 16, 4096, swiglu=False, taps=(4, 11, 17, 23)),
        _variant("h+", 1280, 32, 20, 5120, swiglu=True),
        _variant("7b", 4096, 40, 32, 8192, swiglu=True, qkv_bias=False, taps=(9, 19, 29, 39)),
        # the shape of tests/fixtures/dinov3_tiny: fast tests and demos
        _variant("tiny", 64, 4, 4, 256, swiglu=False, taps=(0, 1, 2, 3)),
    )
}


def match_variant(arch: Architecture) -> Variant | None:
    """The registry variant with this width, depth and MLP kind, or None for a non-standard size."""
    for variant in VARIANTS.values():
        known = variant.architecture
        if (known.embed_dim, known.depth, known.swiglu) == (arch.embed_dim, arch.depth, arch.swiglu):
            return variant
    return None


def check_image_batch(x, taker: str, multiple: int, *, channels: int | None = None, size_note: str = "") -> None:
    """An InputError naming the fix unless x is a float (B, C, H, W) tensor (C == ``channels`` if given)
    with H and W multiples of ``multiple``; ``taker`` (backbone, network) is what takes it."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or channels is not None and x.shape[1] != channels:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        fix = f"; map channels to {channels} first" if channels is not None else ""
        raise InputError(f"the {taker} takes a (B, {channels or 'C'}, H, W) tensor, got {shape}{fix}")
    if not x.is_floating_point():
        raise InputError(f"the {taker} takes a float tensor, got {x.dtype}; normalise the image first")
    h, w = x.shape[-2:]
    if h % multiple or w % multiple:
        raise InputError(
            f"image size {h}x{w} is not a multiple of {multiple}: pad or crop it to a multiple of {multiple}{size_note}"
        )


class Backbone(torch.nn.Module):
    """A frozen DINOv3 ViT that returns the feature maps of chosen blocks.

    Always in eval mode with ``requires_grad=False``: ``train()`` leaves it in eval, because the official
    and HF models jitter RoPE coordinates in train mode and the spec keeps the backbone fixed.
    """

    def __init__(
        self,
        vit: torch.nn.Module,
        *,
        variant: str,
        format: str,
        architecture: Architecture,
        taps: tuple[int, int, int, int],
        sha256: str | None,
        rope_periods: torch.Tensor | None = None,
    ):
        super().__init__()
        self.vit = vit
        self.variant = variant
        self.format = format
        self.architecture = architecture
        self.embed_dim = architecture.embed_dim
        self.depth = architecture.depth
        self.num_heads = architecture.num_heads
        self.taps = tuple(taps)
        self.sha256 = sha256
        self.pretrained = format != "random"
        # the checkpoint's (bf16-rounded) periods reproduce Meta's numerics; kept off the module's buffers
        # so that .to()/.half() cannot round them again (see _apply)
        self._rope_periods = None if rope_periods is None else rope_periods.detach().float().cpu()
        self._restore_rope_periods()
        self.requires_grad_(False)
        self.train(False)

    def _apply(self, fn, *args, **kwargs):
        # timm recomputes rope.periods in fp32 when a cast lowers their precision: put the checkpoint's back
        super()._apply(fn, *args, **kwargs)
        self._restore_rope_periods()
        return self

    def _restore_rope_periods(self) -> None:
        periods = self.vit.rope.periods
        if self._rope_periods is not None and not periods.is_meta:
            periods.copy_(self._rope_periods)

    def train(self, mode: bool = True) -> Backbone:
        """Stay in eval mode whatever ``mode`` is (the backbone is frozen; see the class docstring)."""
        return super().train(False)

    @property
    def num_params(self) -> int:
        """Number of parameters (works on the meta device too)."""
        return sum(p.numel() for p in self.parameters())

    def features(
        self, x: torch.Tensor, blocks=None, *, norm: bool = True, rope_spacing: tuple[int, int] | None = None
    ) -> list[torch.Tensor]:
        """Feature maps of the given blocks.

        x: (B, 3, H, W) float, normalised, H and W multiples of 16.
        blocks: 0-based block indices (default: ``self.taps``), returned in the order given.
        norm: pass each block output through the final LayerNorm (the spec's taps); False gives raw
        block outputs.
        rope_spacing: (h, w) patches: space the RoPE positions as in an image of h x w patches (a tile)
        instead of spreading them over x's own grid. DINOv3 normalises positions to [-1, 1] over the
        image, so on a window larger than the tile every pair of patches would otherwise sit at another
        relative phase than in the tile; with the tile's spacing it keeps the tile's (the window only
        adds context). None, or x's own grid, is the standard embedding.
        Returns one float32 (B, D, H/16, W/16) map per block, prefix (CLS + register) tokens removed.
        Runs without gradients, in bf16 autocast when x is on CUDA.
        """
        blocks = self.taps if blocks is None else tuple(int(b) for b in blocks)
        self._check_input(x, blocks)
        wanted = sorted(set(blocks))
        grid = (x.shape[-2] // PATCH_SIZE, x.shape[-1] // PATCH_SIZE)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=x.is_cuda)
        with torch.no_grad(), autocast, self._rope_spaced(grid, rope_spacing):
            maps = self.vit.forward_intermediates(
                x, indices=wanted, norm=norm, stop_early=True, output_fmt="NCHW", intermediates_only=True
            )
        by_block = dict(zip(wanted, maps))
        return [by_block[b].float() for b in blocks]

    @contextmanager
    def _rope_spaced(self, grid: tuple[int, int], spacing: tuple[int, int] | None):
        """While open, the ViT's RoPE embedding for a grid (h, w) of patches has positions spaced as in
        ``spacing`` patches: timm's DINOv3 formula ((i + 0.5 + offset) / size mapped to [-1, 1]) with the
        spacing's size as the divisor, so that ``spacing == grid`` is exactly timm's embedding."""
        rope = self.vit.rope
        if spacing is None or tuple(spacing) == tuple(grid):
            yield
            return
        if rope.normalize_coords != "separate" or rope.grid_indexing != "ij":
            raise InputError(
                f"rope_spacing needs DINOv3's per-axis RoPE ({rope.normalize_coords!r}, {rope.grid_indexing!r} "
                "here); run tile by tile instead"
            )
        axes = [(torch.arange(0.5, n, dtype=torch.float32) + rope.grid_offset) / d for n, d in zip(grid, spacing)]
        coords = 2.0 * torch.stack(torch.meshgrid(axes, indexing="ij"), dim=-1) - 1.0
        sin, cos = rope._get_pos_embed_from_coords(coords.flatten(0, -2))
        embed = torch.cat([sin, cos], dim=-1)
        rope.get_embed = lambda shape=None, dtype=None: embed if dtype is None else embed.to(dtype)
        try:
            yield
        finally:
            del rope.get_embed  # the class's method again

    def _check_input(self, x: torch.Tensor, blocks: tuple[int, ...]) -> None:
        check_image_batch(x, "backbone", PATCH_SIZE, channels=3)
        weight = self.vit.patch_embed.proj.weight
        if weight.is_meta:
            raise InputError("this backbone was built on the meta device (shapes only); load it on 'cpu' or 'cuda'")
        if x.device != weight.device:
            raise InputError(f"the image is on {x.device} but the backbone on {weight.device}; move one to the other")
        bad = [b for b in blocks if not 0 <= b < self.depth]
        if bad or not blocks:
            raise InputError(f"blocks {list(blocks)} invalid: this backbone has blocks 0..{self.depth - 1}")

    def extra_repr(self) -> str:
        return (
            f"variant={self.variant!r}, format={self.format!r}, embed_dim={self.embed_dim}, depth={self.depth}, "
            f"num_heads={self.num_heads}, taps={self.taps}"
        )


_RANDOM = re.compile(r"random:(?P<variant>.+)")


def load_backbone(source: str | Path, device: str | torch.device = "cpu") -> Backbone:
    """Build the frozen backbone from a weights file or folder, or a random one for tests and demos.

    source: a Meta official ``.pth``, a Hugging Face folder (``config.json`` + ``model.safetensors``), a
    timm-layout ``.safetensors``/``.pth``, or ``"random:<variant>"`` (s, s+, b, l, h+, 7b, tiny): random
    weights, but the same ones in every process (seeded by the variant's name).
    device: where the weights go; ``"meta"`` builds the structure without memory (for counting
    parameters), still checking that a file's tensors fit the model.
    Raises WeightsError for anything wrong with the source.
    """
    device = torch.device(device)
    match = _RANDOM.fullmatch(str(source))
    if match:
        return _random_backbone(match["variant"].lower(), device)
    return _pretrained_backbone(read_weights(source), device)


def _random_backbone(name: str, device: torch.device) -> Backbone:
    variant = VARIANTS.get(name)
    if variant is None:
        raise WeightsError(f"unknown backbone variant {name!r} in 'random:{name}'; use one of {', '.join(VARIANTS)}")
    message = (
        f"backbone 'random:{name}' has RANDOM weights, not pretrained DINOv3: its features are meaningless "
        "and segmentation will be poor. Fix: download DINOv3 weights (Meta's .pth or a Hugging Face "
        "facebook/dinov3-* folder) and pass their path as the backbone."
    )
    warnings.warn(message, UserWarning, stacklevel=3)
    # one fixed network per variant in every process, so that heads trained on 'random:tiny' fit the
    # 'random:tiny' of a later run: seeded from the name (crc32, not the per-process salted hash()), drawn on
    # the CPU whatever the device (CUDA draws other numbers), leaving the caller's RNG as it was
    with torch.random.fork_rng(devices=[]), torch.device("meta" if device.type == "meta" else "cpu"):
        torch.manual_seed(zlib.crc32(f"random:{name}".encode()))
        vit = _create_vit(variant.architecture)
    vit = vit.to(device)
    return Backbone(
        vit, variant=name, format="random", architecture=variant.architecture, taps=variant.taps, sha256=None
    )


def _pretrained_backbone(weights: WeightsFile, device: torch.device) -> Backbone:
    arch = infer_architecture(weights)
    variant = match_variant(arch)
    name, taps = (variant.name, variant.taps) if variant else ("custom", evenly_spaced_taps(arch.depth))
    # built on the meta device so that no memory is spent on a random init about to be overwritten
    with torch.device("meta"):
        vit = _create_vit(arch)
    _check_fits(vit, weights, arch)
    if device.type != "meta":
        vit = vit.to_empty(device=device)
        vit.load_state_dict(weights.state_dict, strict=True)
        for module in vit.modules():  # buffers no file holds: RoPE periods, the zero k bias
            if hasattr(module, "init_non_persistent_buffers"):
                module.init_non_persistent_buffers()
    return Backbone(
        vit,
        variant=name,
        format=weights.format,
        architecture=arch,
        taps=taps,
        sha256=weights.sha256,
        rope_periods=weights.rope_periods,
    )


def infer_architecture(weights: WeightsFile) -> Architecture:
    """The architecture from the tensor shapes of a timm-keyed state dict (and the head width if known).

    Head width: from the file (RoPE periods or config.json), else the registry's for a standard size, else
    64 (128 at width 4096, as 7B).
    """
    state, path = weights.state_dict, weights.path
    try:
        patch = state["patch_embed.proj.weight"]  # (D, 3, 16, 16)
        embed_dim = patch.shape[0]
        blocks = {int(k.split(".")[1]) for k in state if k.startswith("blocks.")}
        depth = 1 + max(blocks)
        swiglu = "blocks.0.mlp.fc1_g.weight" in state
        mlp_hidden = state["blocks.0.mlp.fc1_g.weight" if swiglu else "blocks.0.mlp.fc1.weight"].shape[0]
        num_reg_tokens = state["reg_token"].shape[1]
    except (KeyError, ValueError, IndexError) as err:
        raise WeightsError(f"{path}: incomplete DINOv3 checkpoint (missing {err}); download it again") from None
    if tuple(patch.shape[1:]) != (3, PATCH_SIZE, PATCH_SIZE):
        raise WeightsError(
            f"{path}: patch embedding {tuple(patch.shape)} is not RGB with patch {PATCH_SIZE}; "
            "only DINOv3 ViT/16 backbones are supported"
        )
    shape_only = Architecture(embed_dim, depth, 0, mlp_hidden, swiglu, "blocks.0.attn.q_bias" in state, num_reg_tokens)
    _check_complete(blocks, shape_only, path)
    known = match_variant(shape_only)
    if weights.head_dim:
        head_dim = weights.head_dim  # read_weights checked that it divides the width
    elif known:
        head_dim = embed_dim // known.architecture.num_heads
    else:
        head_dim = 128 if embed_dim == 4096 else 64
        if embed_dim % head_dim:
            raise WeightsError(
                f"{path}: width {embed_dim} is not a multiple of DINOv3's head width {head_dim}, and the file does "
                "not say its head count; give it as a Hugging Face folder whose config.json has num_attention_heads"
            )
    return replace(shape_only, num_heads=embed_dim // head_dim)


def _check_complete(blocks: set[int], arch: Architecture, path: Path) -> None:
    """WeightsError when blocks are missing: a gap in the block numbers, or fewer than the four blocks Dino U-Net
    taps (no DINOv3 model is that shallow: the file lost its last blocks), compared with the registry size of
    that width when there is one."""
    missing = sorted(set(range(arch.depth)) - blocks)
    if missing:
        raise WeightsError(
            f"{path}: blocks {', '.join(map(str, missing))} of 0..{arch.depth - 1} are missing; the file looks "
            "incomplete: download it again"
        )
    if arch.depth >= 4:
        return
    kind = (arch.embed_dim, arch.swiglu)
    variant = next((v for v in VARIANTS.values() if (v.architecture.embed_dim, v.architecture.swiglu) == kind), None)
    expected = (
        f"where a DINOv3 '{variant.name}' backbone of its width has {variant.architecture.depth}"
        if variant
        else "fewer than the four that Dino U-Net taps"
    )
    raise WeightsError(
        f"{path}: holds only {arch.depth} blocks (0..{arch.depth - 1}), {expected}; the file looks incomplete "
        "(its last blocks are missing): download it again"
    )


def _check_fits(vit: torch.nn.Module, weights: WeightsFile, arch: Architecture) -> None:
    """WeightsError naming the mismatched tensors when the file does not fit the architecture it implies."""
    expected = {k: tuple(v.shape) for k, v in vit.state_dict().items()}
    given = {k: tuple(v.shape) for k, v in weights.state_dict.items()}
    problems = [f"missing {k}" for k in expected if k not in given]
    problems += [f"unexpected {k}" for k in given if k not in expected]
    problems += [
        f"{k} is {given[k]}, expected {shape}" for k, shape in expected.items() if given.get(k, shape) != shape
    ]
    if problems:
        shown = "; ".join(problems[:6]) + (f"; and {len(problems) - 6} more" if len(problems) > 6 else "")
        raise WeightsError(
            f"{weights.path}: does not fit a {weights.format}-format DINOv3 ViT of width {arch.embed_dim} and "
            f"depth {arch.depth} (what its tensors suggest): {shown}. The file is incomplete or from another model."
        )


def _create_vit(arch: Architecture) -> torch.nn.Module:
    import timm

    return timm.create_model(_TIMM_BASE, pretrained=False, **arch.timm_kwargs())
