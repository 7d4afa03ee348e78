"""Heads checkpoints: the trainable heads' tensors in a safetensors file, their description in its header.

One file, ``*.safetensors``. The tensors are :meth:`DinoUNet.heads_state_dict` (adapter, projection,
upsampling, decoder; never a backbone tensor). The safetensors header metadata (string to string) holds

- ``format``: ``"napari-dinounet-heads"``, ``format_version``: ``"2"`` (format 1 named the decoder's
  classifiers ``decoder.heads.N``; such files load unchanged, see :func:`current_heads_keys`);
- ``heads``: :class:`HeadsMetadata` as JSON: the network config, class names, input channels,
  normalisation, training patch size, pixel spacing, the backbone's identity (variant, SHA-256 of its
  weights, None for a random backbone, and attention head count), the library version that wrote it, and
  a training summary.

So any safetensors reader can open the file, and ``read_metadata`` reads the description without the
tensors. Writes are atomic and refuse NaN/inf tensors. Reading checks every field of the description
(:meth:`HeadsMetadata.validate`), so a damaged or edited file is a :class:`CheckpointError` naming it;
loading also checks the backbone identity (a checkpoint made for another backbone is refused unless
``allow_backbone_mismatch``) and that the tensors fit the config and are finite floats.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import reprlib
import string
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from .atomic import atomic_path
from .backbone import Backbone
from .errors import CheckpointError, DinoUNetError
from .names import INSTANCES, SEMANTIC, TASKS
from .network import SIZE_MULTIPLE, DinoUNet, DinoUNetConfig
from .normalize import Normalization
from .values import is_number

FORMAT = "napari-dinounet-heads"
# 2: the decoder's 1x1 classifiers are decoder.classifiers.N (format 1: decoder.heads.N). Raised so that a
# napari-dinounet that knows only format 1 says "written by a newer napari-dinounet" instead of missing tensors.
FORMAT_VERSION = 2
# Tensor names older files use -> today's (prefixes). The one place old names are mapped; no current name
# starts with an old prefix, so mapping a file of any version is safe.
_RENAMED_PREFIXES = {"decoder.heads.": "decoder.classifiers."}
# The largest training patch a description may give. It is the default prediction tile, so a crafted
# 1048576 once asked for an 8 TiB array; no training fits a patch beyond this in memory.
MAX_PATCH_SIZE = 8192


@dataclass
class HeadsMetadata:
    """What a heads checkpoint says about itself (JSON in the safetensors header).

    config: :meth:`DinoUNetConfig.to_dict` of the network; class_names: one per class, background first;
    in_channels: channels of the training images before the channel map (None: unknown);
    normalization: :meth:`Normalization.to_dict`; patch_size: the training patch, int or (h, w);
    spacing: pixel spacing (y, x) of the training images if known, or the voxel spacing (3 numbers) of
    the volumes tri-planar heads were trained on; planes: for those, the spatial axes the training slices
    were cut along (:mod:`.volume`; None: 2D images or one slice axis); backbone_variant, backbone_sha256,
    backbone_num_heads: the backbone the heads were trained with (sha None: random weights; head count
    None: not recorded, as in files written before it was, and then not checked; set when saving);
    library_version: the napari-dinounet that wrote the file (set when saving); training: a summary
    (settings, history); task: what the classes mean, "semantic" (classes) or "instances" (background,
    interior, boundary, decoded into objects: :mod:`.instances`); files written before it was recorded
    are semantic.

    Construction runs :meth:`validate`, so a description with a field of the wrong type or range never
    exists: a DinoUNetError names the field.
    """

    config: dict
    class_names: list[str]
    in_channels: int | None = None
    normalization: dict = field(default_factory=lambda: {"scheme": "zscore"})
    patch_size: int | tuple[int, int] | None = None
    spacing: tuple[float, ...] | None = None
    planes: tuple[int, ...] | None = None
    backbone_variant: str | None = None
    backbone_sha256: str | None = None
    backbone_num_heads: int | None = None
    library_version: str = __version__
    training: dict = field(default_factory=dict)
    task: str = SEMANTIC

    def __post_init__(self):
        # JSON gives lists back for tuples; callers may name classes with numbers
        if isinstance(self.class_names, (list, tuple)):
            self.class_names = [str(name) for name in self.class_names]
        if isinstance(self.patch_size, list):
            self.patch_size = tuple(self.patch_size)
        if isinstance(self.spacing, list):
            self.spacing = tuple(self.spacing)
        if isinstance(self.planes, list):
            self.planes = tuple(self.planes)
        self.validate()

    def validate(self) -> None:
        """Raise DinoUNetError naming the first field of the wrong type or out of range, or two that disagree.

        The one place every field is checked. Construction runs it, so it checks every description read
        from a file, and the copy :func:`save_heads` writes (fields changed after construction included).
        """
        for name, (ok, expected) in _FIELD_RULES.items():
            value = getattr(self, name)
            if not ok(value):
                raise DinoUNetError(f"{name}={reprlib.repr(value)} is not {expected}")
        config = self.network_config()
        if len(self.class_names) != config.num_classes:
            raise DinoUNetError(
                f"{len(self.class_names)} class names {reprlib.repr(self.class_names)} for a network of "
                f"{config.num_classes} classes: name every class, background first"
            )
        if config.channels is not None and self.in_channels is not None and max(config.channels) >= self.in_channels:
            raise DinoUNetError(
                f"channels={config.channels} in the network config asks for channel {max(config.channels)} but the "
                f"training images had {self.in_channels} (in_channels)"
            )
        if self.task == INSTANCES and config.num_classes != 3:
            raise DinoUNetError(
                f"task 'instances' needs 3 classes (background, interior, boundary), not {config.num_classes}"
            )
        try:
            Normalization.from_dict(self.normalization)
        except (DinoUNetError, TypeError, ValueError) as err:  # TypeError: e.g. clip 5, tuple(5)
            raise DinoUNetError(f"normalization={reprlib.repr(self.normalization)} is invalid: {err}") from None

    def network_config(self) -> DinoUNetConfig:
        """``config`` as a :class:`DinoUNetConfig`; CheckpointError (unknown keys, bad values) or
        DinoUNetError (values of the wrong type) if it cannot be one."""
        try:
            return DinoUNetConfig.from_dict(self.config)
        except (TypeError, ValueError) as err:  # e.g. taps "abcd": int("a")
            raise DinoUNetError(f"network config: {err}") from None

    @property
    def num_classes(self) -> int:
        return int(self.config["num_classes"])

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), default=_json_value)

    @classmethod
    def from_json(cls, text: str, path: Path) -> HeadsMetadata:
        """Parse and validate a description read from ``path``; CheckpointError naming the file for any fault.

        Unknown fields are refused, naming them (a newer napari-dinounet wrote the file); fields missing take
        their defaults (an older one did), except config and class_names, without which the file is damaged.
        The policy of :meth:`DinoUNetConfig.from_dict`, which checks the config inside.
        """
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as err:  # RecursionError: nesting deeper than Python's stack
            raise CheckpointError(f"{path}: the heads description is damaged ({err}); write it again") from None
        if not isinstance(data, dict):
            raise CheckpointError(
                f"{path}: the heads description ({text[:40]!r}) is not a JSON object; the file was edited or "
                "damaged: copy or train it again"
            )
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise CheckpointError(
                f"{path}: the heads description holds fields this version of napari-dinounet does not know "
                f"({', '.join(unknown)}): a newer napari-dinounet probably wrote the file. Upgrade napari-dinounet, "
                "or retrain the heads with this one"
            )
        missing = [name for name in ("config", "class_names") if name not in data]
        if missing:
            raise CheckpointError(
                f"{path}: the heads description misses {' and '.join(missing)}: the file was edited or damaged; copy "
                "or train it again"
            )
        try:
            return cls(**data)
        except CheckpointError as err:  # the network config's own errors already blame the checkpoint
            raise CheckpointError(f"{path}: {err}") from None
        except DinoUNetError as err:
            raise CheckpointError(
                f"{path}: the heads description is invalid: {err}; the file was edited or damaged: copy or train it "
                "again"
            ) from None


def _whole(value, low: int, high: float = math.inf) -> bool:
    """Whether ``value`` is an int from low to high (True and False are not numbers here)."""
    return is_number(value, numbers.Integral) and low <= value <= high


def _optional(ok):
    return lambda value: value is None or ok(value)


def _patch_side(value) -> bool:
    return _whole(value, SIZE_MULTIPLE, MAX_PATCH_SIZE) and value % SIZE_MULTIPLE == 0


def _sha256(value) -> bool:
    return isinstance(value, str) and len(value) == 64 and set(value) <= set(string.hexdigits.lower())


def _spacing(value) -> bool:
    return (
        isinstance(value, tuple)
        and 1 <= len(value) <= 3
        and all(is_number(s) and math.isfinite(s) and s > 0 for s in value)
    )


# Every field's type and range: (check, what the field must be). Cross-field checks are in validate().
_FIELD_RULES = {
    "config": (lambda v: isinstance(v, dict), "a JSON object (the network config)"),
    "class_names": (lambda v: isinstance(v, list), "a list of class names"),
    "in_channels": (_optional(lambda v: _whole(v, 1)), "a whole number >= 1 or null"),
    "normalization": (lambda v: isinstance(v, dict), "a JSON object (the normalisation)"),
    "patch_size": (
        _optional(lambda v: _patch_side(v) or (isinstance(v, tuple) and len(v) == 2 and all(map(_patch_side, v)))),
        f"null, a multiple of {SIZE_MULTIPLE} from {SIZE_MULTIPLE} to {MAX_PATCH_SIZE}, or two of them",
    ),
    "spacing": (_optional(_spacing), "null or 1 to 3 positive finite numbers"),
    "planes": (
        _optional(
            lambda v: (
                isinstance(v, tuple) and 1 <= len(v) <= 3 and len(set(v)) == len(v) and all(_whole(p, 0, 2) for p in v)
            )
        ),
        "null or 1 to 3 different spatial axes 0-2",
    ),
    "backbone_variant": (_optional(lambda v: isinstance(v, str)), "null or a variant name"),
    "backbone_sha256": (_optional(_sha256), "null or 64 lowercase hex digits"),
    "backbone_num_heads": (_optional(lambda v: _whole(v, 1)), "null or a whole number >= 1"),
    "library_version": (lambda v: isinstance(v, str), "a version string"),
    "training": (lambda v: isinstance(v, dict), "a JSON object (the training summary)"),
    "task": (lambda v: v in TASKS, " or ".join(repr(task) for task in TASKS)),
}


def _json_value(value):
    """JSON for NumPy numbers and arrays and paths, which training summaries may hold."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _describe_backbone(variant: str | None, sha256: str | None, num_heads: int | None) -> str:
    weights = f"sha256 {sha256[:12]}" if sha256 else "random weights"
    heads = f", {num_heads} attention heads" if num_heads is not None else ""
    return f"{variant!r} ({weights}{heads})"


def count_non_finite(tensors: dict[str, torch.Tensor]) -> tuple[int, str | None]:
    """How many NaN/inf values ``tensors`` hold, and the name of the first tensor holding one."""
    count, first = 0, None
    for name, tensor in tensors.items():
        bad = int((~torch.isfinite(tensor)).sum()) if tensor.is_floating_point() else 0
        if bad and first is None:
            first = name
        count += bad
    return count, first


def save_heads(path: str | Path, model: DinoUNet, metadata: HeadsMetadata) -> Path:
    """Write ``model``'s heads and ``metadata`` to ``path`` (atomically); returns the path.

    The library version and the backbone's attention head count are recorded from this library and
    ``model.backbone``. ``metadata.config`` must be the model's config and ``class_names`` must name every
    class. Heads holding NaN or inf (a diverged training) are refused: such a file would only predict
    background.
    """
    path = Path(path)
    config = model.config.to_dict()
    if metadata.config != config:
        raise DinoUNetError(
            f"metadata.config {metadata.config} is not the model's config {config}: pass model.config.to_dict()"
        )
    metadata = dataclasses.replace(
        metadata, library_version=__version__, backbone_num_heads=backbone_identity(model.backbone)[2]
    )  # replace() constructs anew, so this validates every field as it is now
    try:
        header = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "heads": metadata.to_json()}
    except TypeError as err:
        raise DinoUNetError(
            f"the heads description cannot be saved: {err}; keep numbers, strings, lists and dicts in it"
        ) from None
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in model.heads_state_dict().items()}
    count, first = count_non_finite(tensors)
    if count:
        raise DinoUNetError(
            f"not writing {path}: the heads hold {count} non-finite values, e.g. in {first}: the training diverged; "
            "train again with a lower learning rate"
        )
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
    """The description stored in a heads checkpoint, without loading its tensors; every field checked."""
    path = Path(path)
    return HeadsMetadata.from_json(_header(path).get("heads", ""), path)


def backbone_identity(backbone: Backbone) -> tuple[str, str | None, int]:
    """What identifies the backbone heads were trained on: (variant, weights sha256 or None for random
    weights, attention head count). Heads checkpoints and training states record it."""
    return backbone.variant, backbone.sha256, int(backbone.architecture.num_heads)


def identity_mismatch(recorded: tuple[str | None, str | None, int | None], backbone: Backbone) -> str | None:
    """None if ``backbone`` is the recorded one, else "backbone X but the backbone given is Y".

    The head count is compared too: an HF config.json can change it without changing the weights' hash,
    and it changes the features. A record without it (files written before it was kept) is not checked for it.
    """
    variant, sha256, num_heads = backbone_identity(backbone)
    given = (variant, sha256, None if recorded[2] is None else num_heads)
    if tuple(recorded) == given:
        return None
    return f"backbone {_describe_backbone(*recorded)} but the backbone given is {_describe_backbone(*given)}"


def _check_backbone(metadata: HeadsMetadata, backbone: Backbone, path: Path, allow_mismatch: bool) -> None:
    """Refuse (or, if allowed, warn about) a backbone other than the one the heads were trained with."""
    mismatch = identity_mismatch(
        (metadata.backbone_variant, metadata.backbone_sha256, metadata.backbone_num_heads), backbone
    )
    if mismatch is None:
        return
    message = f"{path} was trained with {mismatch}"
    if not allow_mismatch:
        raise CheckpointError(
            f"{message}: load the backbone the heads were trained with, or allow the mismatch "
            "(allow_backbone_mismatch=True, --allow-backbone-mismatch) if you know the features agree"
        )
    warnings.warn(f"{message}; using it anyway, as asked", UserWarning, stacklevel=3)


def _build_network(metadata: HeadsMetadata, backbone: Backbone, path: Path) -> DinoUNet:
    """The network the checkpoint's config describes, on ``backbone``.

    Errors its config causes are the checkpoint's fault and say so, naming the file; a backbone of
    another width keeps its own message, which names the fix.
    """
    config = metadata.network_config()  # valid: read_metadata checked it
    try:
        if not all(0 <= tap < backbone.depth for tap in config.taps):
            # otherwise only the first forward pass finds out, blaming the input
            raise DinoUNetError(
                f"taps={list(config.taps)} asks for blocks this backbone lacks (it has blocks 0..{backbone.depth - 1})"
            )
        with torch.device(next(backbone.parameters()).device):
            return DinoUNet(config, backbone)
    except CheckpointError:
        raise
    except (DinoUNetError, TypeError, ValueError) as err:  # TypeError: e.g. embed_dim 64.0 reaching nn.Linear
        raise CheckpointError(f"{path}: its network config is invalid: {err}; the file was edited or damaged") from None


def _check_tensors(state: dict[str, torch.Tensor], model: DinoUNet, path: Path) -> None:
    """Refuse head tensors that are not floats where the network's are, or that hold NaN/inf: both only
    ever came from damaged files or diverged trainings, and gave an all-background map without a word."""
    own = model.heads_state_dict()
    for name, tensor in state.items():
        if name in own and own[name].is_floating_point() and not tensor.is_floating_point():
            raise CheckpointError(
                f"{path}: head tensor {name} is {tensor.dtype}, not floating point; the file was edited or damaged: "
                "copy or train it again"
            )
    count, first = count_non_finite(state)
    if count:
        raise CheckpointError(
            f"{path}: {count} non-finite values, e.g. in {first}: the training diverged or the file is damaged; retrain"
        )


def current_heads_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` (heads tensors by name, from any file version) under today's names; tensors are not copied.

    Heads checkpoints and resume states written before a module was renamed keep loading, with identical
    outputs: format 1 called ``decoder.classifiers.N`` ``decoder.heads.N``.
    """
    renamed = {}
    for name, tensor in state.items():
        old = next((prefix for prefix in _RENAMED_PREFIXES if name.startswith(prefix)), None)
        renamed[name if old is None else _RENAMED_PREFIXES[old] + name[len(old) :]] = tensor
    return renamed


def load_heads(
    path: str | Path,
    backbone: Backbone,
    *,
    allow_backbone_mismatch: bool = False,
    device: str | torch.device | None = None,
) -> tuple[DinoUNet, HeadsMetadata]:
    """Rebuild the network a heads checkpoint describes on ``backbone`` and load its heads (eval mode).

    The backbone must be the one the heads were trained with (same variant, weights hash and, where
    recorded, head count); with ``allow_backbone_mismatch`` another one of the same width is used
    anyway, with a warning. Head tensors must be finite floats.
    device: where the network goes; default: the backbone's device.
    """
    path = Path(path)
    metadata = read_metadata(path)
    _check_backbone(metadata, backbone, path, allow_backbone_mismatch)
    model = _build_network(metadata, backbone, path)
    from safetensors.torch import load_file

    try:
        state = load_file(str(path), device="cpu")
    except Exception as err:
        raise CheckpointError(
            f"{path}: the heads' tensors cannot be read ({err}); the file is damaged, copy or train it again"
        ) from None
    state = current_heads_keys(state)
    _check_tensors(state, model, path)
    model.load_heads_state_dict(state)
    if device is not None:
        model.to(device)
    return model.eval(), metadata
