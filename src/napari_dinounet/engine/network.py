"""Dino U-Net: the frozen backbone plus the trainable adapter, projection, upsampling and decoder.

Data flow (spec section 0): x (B, C, H, W) -> 3 channels -> backbone taps (4 x (B, D, H/16, W/16)) ->
adapter (B, D, H/4..H/32) -> projection (32, 64, 128, 256 channels) -> x4 upsampling to skips at
H..H/8 -> U-Net decoder -> logits (B, nc, H, W).

Sizes are named like the backbones (s, s+, b, l, h+, 7b, tiny): :data:`SIZES` holds one
:class:`DinoUNetConfig` per size; :func:`build_dinounet` starts from it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from .adapter import Adapter
from .backbone import PATCH_SIZE, VARIANTS, Backbone, check_image_batch, load_backbone
from .decoder import SKIP_CHANNELS, SkipUpsampling, UNetDecoder
from .errors import CheckpointError, DinoUNetError, InputError
from .projection import LEAKY_SLOPE, PROJECTIONS, build_projection

SIZE_MULTIPLE = 32  # the adapter's deepest map is at stride 32


@dataclass
class DinoUNetConfig:
    """Everything needed to rebuild the trainable heads; stored in every heads checkpoint.

    size: backbone size name ("s", ..., "tiny", or "custom"); embed_dim, taps: the backbone's width and
    the 0-based blocks the adapter reads; channels: input channel indices used (at most 3), None to use
    the input as is (1 to 3 channels).
    """

    size: str
    embed_dim: int
    taps: tuple[int, int, int, int]
    projection: str = "fapm"
    num_classes: int = 2
    channels: tuple[int, ...] | None = None
    deep_supervision: bool = False
    grad_checkpointing: bool = False

    def __post_init__(self):
        self.taps = tuple(int(t) for t in self.taps)
        if self.channels is not None:
            self.channels = tuple(int(c) for c in self.channels)
        self.validate()

    def validate(self) -> None:
        """Raise DinoUNetError naming the first unusable option."""
        if self.projection not in PROJECTIONS:
            raise DinoUNetError(f"unknown projection {self.projection!r}; use one of {', '.join(PROJECTIONS)}")
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 2:
            raise DinoUNetError(
                f"num_classes={self.num_classes!r}: give the number of classes including background (at least 2)"
            )
        if len(self.taps) != 4:
            raise DinoUNetError(f"taps={self.taps}: the adapter reads exactly four backbone blocks")
        if self.channels is not None and not (1 <= len(self.channels) <= 3 and min(self.channels) >= 0):
            raise DinoUNetError(
                f"channels={self.channels}: choose 1 to 3 input channel indices (0-based), e.g. channels=(0, 1, 2)"
            )

    def to_dict(self) -> dict:
        """JSON-ready dict (tuples become lists)."""
        out = dataclasses.asdict(self)
        out["taps"] = list(self.taps)
        out["channels"] = None if self.channels is None else list(self.channels)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> DinoUNetConfig:
        """Inverse of :meth:`to_dict`, for a config read from a checkpoint.

        The policy of every file napari-dinounet reads back (heads descriptions, resume states): optional keys
        missing (a file from an older version) take their defaults; a required key missing is a
        CheckpointError (the file was edited or damaged); unknown keys are a CheckpointError naming them
        (a newer version wrote the file, and an option this version cannot apply must not be dropped in
        silence). Values of the wrong type or range are a CheckpointError too.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING}
        unknown, missing = sorted(set(data) - names), sorted(required - set(data))
        if unknown:
            raise CheckpointError(
                f"the network config holds keys this version of napari-dinounet does not know ({', '.join(unknown)}): "
                "a newer napari-dinounet probably wrote the checkpoint. Upgrade napari-dinounet, or retrain the heads "
                "with this one"
            )
        if missing:
            raise CheckpointError(
                f"the network config misses keys {', '.join(missing)}: the checkpoint was edited or damaged; copy or "
                "train it again"
            )
        try:
            return cls(**data)
        except DinoUNetError as err:
            raise CheckpointError(f"network config in the checkpoint is invalid: {err}") from None


SIZES: dict[str, DinoUNetConfig] = {
    name: DinoUNetConfig(size=name, embed_dim=variant.architecture.embed_dim, taps=variant.taps)
    for name, variant in VARIANTS.items()
}


class DinoUNet(nn.Module):
    """The segmentation network; see the module docstring for the data flow.

    Only ``adapter``, ``projection``, ``upsampling`` and ``decoder`` train; ``backbone`` is frozen and
    stays in eval mode (``train()`` does not change it).
    """

    def __init__(self, config: DinoUNetConfig, backbone: Backbone):
        super().__init__()
        if backbone.embed_dim != config.embed_dim:
            raise CheckpointError(
                f"these heads were made for a backbone of width {config.embed_dim} (size {config.size!r}) but the "
                f"backbone given has width {backbone.embed_dim} ({backbone.variant!r}); load the backbone they "
                "were trained with"
            )
        self.config = config
        self.backbone = backbone
        self.adapter = Adapter(config.embed_dim, grad_checkpointing=config.grad_checkpointing)
        self.projection = build_projection(config.projection, config.embed_dim, SKIP_CHANNELS)
        self.upsampling = SkipUpsampling(SKIP_CHANNELS, learnable=self.projection.learnable_upsampling)
        self.decoder = UNetDecoder(config.num_classes, SKIP_CHANNELS, deep_supervision=config.deep_supervision)
        self.channels_last = False

    def use_channels_last(self, enabled: bool = True) -> DinoUNet:
        """Run the heads in the channels-last (NHWC) memory layout, or back in the default one; returns self.

        oneDNN's convolutions read and write NHWC directly, so the transposed convolutions and the
        projection stop copying between layouts (CPU: see benchmarks/forward.py for the speed-up). The
        logits equal the default layout's up to float rounding (sums in another order, within 1e-5
        relative); they come back in the default layout. Weights keep their values and names: a heads
        checkpoint is the same file in either layout.
        """
        memory_format = torch.channels_last if enabled else torch.contiguous_format
        for module in self.heads().values():
            module.to(memory_format=memory_format)
        self.adapter.memory_format = memory_format
        self.channels_last = enabled
        return self

    def heads(self) -> dict[str, nn.Module]:
        """The heads: the trainable modules by name, what a heads checkpoint stores (everything but the backbone)."""
        return {
            "adapter": self.adapter,
            "projection": self.projection,
            "upsampling": self.upsampling,
            "decoder": self.decoder,
        }

    def to_three_channels(self, x: torch.Tensor) -> torch.Tensor:
        """Check x and map it to the backbone's 3 channels.

        x: (B, C, H, W) float, H and W multiples of 32. ``config.channels`` first picks channels; then
        1 channel is repeated, 2 channels become [c0, c1, c0], 3 are kept. Returns (B, 3, H, W).
        """
        check_image_batch(x, "network", SIZE_MULTIPLE, size_note=" (prediction pads automatically)")
        c = x.shape[1]
        channels = self.config.channels
        if channels is not None:
            if max(channels) >= c:
                raise InputError(f"channels={channels} asks for channel {max(channels)} but the input has {c} channels")
            x = x[:, list(channels)]
        elif c > 3:
            raise InputError(
                f"the input has {c} channels but the backbone takes at most 3: choose which to use with "
                "channels=(i, j, k) (1 to 3 indices)"
            )
        elif c == 0:
            raise InputError("the input has 0 channels")
        if x.shape[1] == 1:
            return x.expand(-1, 3, -1, -1)
        if x.shape[1] == 2:
            return x[:, [0, 1, 0]]
        return x

    def backbone_taps(self, x: torch.Tensor, rope_spacing: tuple[int, int] | None = None) -> list[torch.Tensor]:
        """The four frozen backbone maps (B, D, H/16, W/16) for x as :meth:`forward` takes it.

        rope_spacing: see :meth:`.backbone.Backbone.features` (a window shared by several tiles)."""
        return self.backbone.features(self.to_three_channels(x), blocks=self.config.taps, rope_spacing=rope_spacing)

    def forward(self, x: torch.Tensor, taps: list[torch.Tensor] | None = None):
        """x (B, C, H, W) -> logits (B, nc, H, W) (a list, full resolution first, with deep supervision).

        taps: the result of :meth:`backbone_taps` for this x (any float dtype), to skip the backbone
        (feature caching).
        """
        x3 = self.to_three_channels(x)
        if taps is None:
            taps = self.backbone.features(x3, blocks=self.config.taps)
        else:
            self._check_taps(x3, taps)
            # a feature cache may hold them in lower precision to save memory
            taps = [t.to(x3.dtype) for t in taps]
        h, w = x3.shape[-2:]
        if self.channels_last:
            x3 = x3.contiguous(memory_format=torch.channels_last)
            taps = [t.contiguous(memory_format=torch.channels_last) for t in taps]
        maps = self.adapter(x3, taps)
        logits = self.decoder(self.upsampling(self.projection(maps), (h, w)))
        if not self.channels_last:
            return logits
        if isinstance(logits, list):
            return [t.contiguous() for t in logits]
        return logits.contiguous()

    def _check_taps(self, x3: torch.Tensor, taps: list[torch.Tensor]) -> None:
        b, _, h, w = x3.shape
        expected = (b, self.config.embed_dim, h // PATCH_SIZE, w // PATCH_SIZE)
        shapes = [tuple(t.shape) if isinstance(t, torch.Tensor) else None for t in taps]
        if len(shapes) != 4 or any(s != expected for s in shapes):
            raise InputError(
                f"taps must be four tensors of shape {expected} for this input, got {shapes}; "
                "compute them with model.backbone_taps(x)"
            )

    def unused_parameter_names(self) -> list[str]:
        """Trainable parameters that forward never uses, so never get a gradient: the two low-resolution
        deep-supervision classifiers when deep supervision is off (they exist to match the spec's counts).
        DDP needs ``find_unused_parameters=True`` when this is not empty."""
        if self.config.deep_supervision:
            return []
        unused = self.decoder.classifiers[:-1]
        return [
            f"decoder.classifiers.{i}.{name}"
            for i, classifier in enumerate(unused)
            for name, _ in classifier.named_parameters()
        ]

    def heads_state_dict(self) -> dict[str, torch.Tensor]:
        """Parameters and buffers of the trainable modules (what a heads checkpoint stores): no backbone tensor."""
        return {name: t for name, t in self.state_dict().items() if not name.startswith("backbone.")}

    def load_heads_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load what :meth:`heads_state_dict` gave; CheckpointError if keys or shapes do not match."""
        own = self.heads_state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
        if missing or unexpected or wrong:
            raise CheckpointError(
                f"the heads do not fit this network ({self.config.size}, {self.config.projection}, "
                f"{self.config.num_classes} classes): missing {missing[:5]}, unexpected {unexpected[:5]}, "
                f"wrong shape {wrong[:5]}; build the network from the checkpoint's own config"
            )
        self.load_state_dict(state, strict=False)

    def init_heads_he(self, negative_slope: float = LEAKY_SLOPE) -> None:
        """Re-initialise the conv weights of projection, upsampling and decoder with He (kaiming normal for
        LeakyReLU(negative_slope)) and zero biases, as nnU-Net does. The adapter keeps its own init."""
        for part in (self.projection, self.upsampling, self.decoder):
            for module in part.modules():
                if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                    nn.init.kaiming_normal_(module.weight, a=negative_slope)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)

    def trainable_params(self) -> dict[str, int]:
        """Trainable parameter count per head module and in total (``"total"``); works on the meta device."""
        counts = {
            name: sum(p.numel() for p in module.parameters() if p.requires_grad)
            for name, module in self.heads().items()
        }
        counts["total"] = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return counts


def build_dinounet(
    size: str | None = None,
    projection: str = "fapm",
    num_classes: int = 2,
    backbone: Backbone | None = None,
    *,
    channels: tuple[int, ...] | None = None,
    deep_supervision: bool = False,
    grad_checkpointing: bool = False,
    device: str | torch.device | None = None,
) -> DinoUNet:
    """Build a Dino U-Net.

    size: a name in :data:`SIZES`; None means the backbone's own size ("s" without a backbone).
    backbone: a loaded :class:`Backbone`, which decides D and the taps; None builds "random:<size>"
    (random weights: tests, demos, counting).
    device: where the network goes (default: the backbone's device, CPU for a random one); "meta" builds
    without memory, for counting parameters.
    """
    if backbone is None:
        size = size or "s"
        if size not in SIZES:
            raise DinoUNetError(f"unknown size {size!r}; use one of {', '.join(SIZES)}")
        backbone = load_backbone(f"random:{size}", device=device or "cpu")
        base = SIZES[size]
    else:
        if size is not None and size != backbone.variant:
            raise DinoUNetError(
                f"size {size!r} does not match the backbone given ({backbone.variant!r}); leave size out to use "
                "the backbone's own"
            )
        base = DinoUNetConfig(size=backbone.variant, embed_dim=backbone.embed_dim, taps=backbone.taps)
    config = dataclasses.replace(
        base,
        projection=projection,
        num_classes=num_classes,
        channels=channels,
        deep_supervision=deep_supervision,
        grad_checkpointing=grad_checkpointing,
    )
    with torch.device(next(backbone.parameters()).device):
        model = DinoUNet(config, backbone)
    return model if device is None else model.to(device)
