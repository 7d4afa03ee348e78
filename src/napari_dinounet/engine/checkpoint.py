"""Heads checkpoints: the trainable heads' tensors in a safetensors file, their description in its header.

One file, ``*.safetensors``. The tensors are :meth:`DinoUNet.heads_state_dict` (adapter, projection,
upsampling, decoder; never a backbone tensor). The safetensors header metadata (string to string) holds

- ``format``: ``"napari-dinounet-heads"``, ``format_version``: ``"1"``;
- ``heads``: :class:`HeadsMetadata` as JSON: the network config, class names, input channels,
  normalisation, training patch size, pixel spacing, the backbone's identity (variant and SHA-256 of its
  weights; None for a random backbone), the library version that wrote it, and a training summary.

So any safetensors reader can open the file, and ``read_metadata`` reads the description without the
tensors. Writes are atomic. Loading checks the file, the backbone identity (a checkpoint made for
another backbone is refused unless ``allow_backbone_mismatch``) and that the tensors fit the config.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from .atomic import atomic_path
from .backbone import Backbone
from .errors import CheckpointError, DinoUNetError
from .network import DinoUNet, DinoUNetConfig

FORMAT = "napari-dinounet-heads"
FORMAT_VERSION = 1


@dataclass
class HeadsMetadata:
    """What a heads checkpoint says about itself (JSON in the safetensors header).

    config: :meth:`DinoUNetConfig.to_dict` of the network; class_names: one per class, background first;
    in_channels: channels of the training images before the channel map (None: unknown);
    normalization: :meth:`Normalization.to_dict`; patch_size: the training patch, int or (h, w);
    spacing: pixel spacing (y, x) of the training images if known; backbone_variant, backbone_sha256:
    the backbone the heads were trained with (sha None: random weights); library_version: the
    napari-dinounet that wrote the file (set when saving); training: a summary (settings, history).
    """

    config: dict
    class_names: list[str]
    in_channels: int | None = None
    normalization: dict = field(default_factory=lambda: {"scheme": "zscore"})
    patch_size: int | tuple[int, int] | None = None
    spacing: tuple[float, ...] | None = None
    backbone_variant: str | None = None
    backbone_sha256: str | None = None
    library_version: str = __version__
    training: dict = field(default_factory=dict)

    def __post_init__(self):
        self.class_names = [str(name) for name in self.class_names]
        if isinstance(self.patch_size, (list, tuple)):
            self.patch_size = tuple(int(s) for s in self.patch_size)
        if self.spacing is not None:
            self.spacing = tuple(float(s) for s in self.spacing)

    @property
    def channel_map(self) -> tuple[int, ...] | None:
        """The input channels the network uses (``config["channels"]``); None: the input as is (1 to 3)."""
        channels = self.config.get("channels")
        return None if channels is None else tuple(channels)

    @property
    def num_classes(self) -> int:
        return int(self.config["num_classes"])

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), default=_json_value)

    @classmethod
    def from_json(cls, text: str, path: Path) -> HeadsMetadata:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{path}: the heads description is damaged ({err}); write it again") from None
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown or not isinstance(data.get("config"), dict) or "class_names" not in data:
            raise CheckpointError(
                f"{path}: the heads description has unknown fields {unknown} or misses config/class_names: it was "
                "written by another version of napari-dinounet; use that version or retrain"
            )
        try:
            return cls(**data)
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"{path}: the heads description has a bad field ({err}); write it again") from None


def _json_value(value):
    """JSON for NumPy numbers and arrays and paths, which training summaries may hold."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _describe_backbone(variant: str | None, sha256: str | None) -> str:
    weights = f"sha256 {sha256[:12]}" if sha256 else "random weights"
    return f"{variant!r} ({weights})"


def save_heads(path: str | Path, model: DinoUNet, metadata: HeadsMetadata) -> Path:
    """Write ``model``'s heads and ``metadata`` to ``path`` (atomically); returns the path.

    The library version is recorded as this one. ``metadata.config`` must be the model's config and
    ``class_names`` must name every class.
    """
    path = Path(path)
    config = model.config.to_dict()
    if metadata.config != config:
        raise DinoUNetError(
            f"metadata.config {metadata.config} is not the model's config {config}: pass model.config.to_dict()"
        )
    if len(metadata.class_names) != model.config.num_classes:
        raise DinoUNetError(
            f"{len(metadata.class_names)} class names {metadata.class_names} for a network of "
            f"{model.config.num_classes} classes: name every class, background first"
        )
    metadata = dataclasses.replace(metadata, library_version=__version__)
    try:
        header = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "heads": metadata.to_json()}
    except TypeError as err:
        raise DinoUNetError(
            f"the heads description cannot be saved: {err}; keep numbers, strings, lists and dicts in it"
        ) from None
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in model.heads_state_dict().items()}
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=header)
    return path


def _header(path: Path) -> dict[str, str]:
    """The safetensors header metadata of a heads checkpoint; CheckpointError for anything else."""
    from safetensors import safe_open

    if not path.is_file():
        raise CheckpointError(f"heads checkpoint {path} does not exist or is not a file: check the path")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
    except Exception as err:  # safetensors reports damage with several exception types
        raise CheckpointError(
            f"{path} is not a readable heads checkpoint (damaged, truncated, or not a safetensors file: {err}); "
            "copy or train it again"
        ) from None
    if header.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is a safetensors file but not napari-dinounet heads (no '{FORMAT}' header); if it holds "
            "DINOv3 weights, give it as the backbone instead"
        )
    version = header.get("format_version", "")
    if not version.isdigit():
        raise CheckpointError(f"{path}: the heads header has no valid format_version ({version!r}); write it again")
    if int(version) > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer napari-dinounet (heads format {version}): upgrade it")
    return header


def read_metadata(path: str | Path) -> HeadsMetadata:
    """The description stored in a heads checkpoint, without loading its tensors."""
    path = Path(path)
    return HeadsMetadata.from_json(_header(path).get("heads", ""), path)


def load_heads(
    path: str | Path,
    backbone: Backbone,
    *,
    allow_backbone_mismatch: bool = False,
    device: str | torch.device | None = None,
) -> tuple[DinoUNet, HeadsMetadata]:
    """Rebuild the network a heads checkpoint describes on ``backbone`` and load its heads (eval mode).

    The backbone must be the one the heads were trained with (same variant and weights hash); with
    ``allow_backbone_mismatch`` another one of the same width is used anyway, with a warning.
    device: where the network goes; default: the backbone's device.
    """
    path = Path(path)
    metadata = read_metadata(path)
    trained_with = (metadata.backbone_variant, metadata.backbone_sha256)
    given = (backbone.variant, backbone.sha256)
    if trained_with != given:
        message = (
            f"{path} was trained with backbone {_describe_backbone(*trained_with)} but the backbone given is "
            f"{_describe_backbone(*given)}"
        )
        if not allow_backbone_mismatch:
            raise CheckpointError(
                f"{message}: load the backbone the heads were trained with, or allow the mismatch "
                "(allow_backbone_mismatch=True, --allow-backbone-mismatch) if you know the features agree"
            )
        warnings.warn(f"{message}; using it anyway, as asked", UserWarning, stacklevel=2)
    config = DinoUNetConfig.from_dict(metadata.config)
    from safetensors.torch import load_file

    try:
        state = load_file(str(path), device="cpu")
    except Exception as err:
        raise CheckpointError(
            f"{path}: the heads' tensors cannot be read ({err}); the file is damaged, copy or train it again"
        ) from None
    with torch.device(next(backbone.parameters()).device):
        model = DinoUNet(config, backbone)
    model.load_heads_state_dict(state)
    if device is not None:
        model.to(device)
    return model.eval(), metadata
