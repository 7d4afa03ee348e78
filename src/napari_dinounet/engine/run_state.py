"""The resume state of a training run: one safetensors file beside the heads checkpoint.

``<out stem>.state.safetensors`` holds the heads, Adam's moments, the step, the settings, the history and
the backbone's identity; :func:`.train.train` writes it (atomically, between steps) at every epoch's end,
before the heads checkpoint, and ``resume=True`` continues from it. This module reads and writes the file
and holds the checks that a resumed run is the same run: same settings (:func:`check_resumable`), same
backbone (:func:`check_state_backbone`). Settings are passed in as a :class:`.train.TrainSettings` (read
back with :meth:`.train.TrainSettings.from_dict`, which refuses keys it does not know).
"""

from __future__ import annotations

import json
import numbers
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .atomic import atomic_path
from .checkpoint import backbone_identity, current_heads_keys, identity_mismatch
from .errors import CheckpointError
from .values import is_number

if TYPE_CHECKING:
    from .train import TrainSettings

STATE_FORMAT = "napari-dinounet-train-state/1"
_IDENTITY_KEYS = ("variant", "sha256", "num_heads")  # checkpoint.backbone_identity, as the state records it


def state_path(checkpoint: str | Path) -> Path:
    """Where the resume state of the heads checkpoint ``checkpoint`` lives: ``<stem>.state.safetensors``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.stem + ".state.safetensors")


def save_state(
    path: Path,
    model,
    optimizer: torch.optim.Optimizer,
    *,
    step: int,
    settings: TrainSettings,
    history: list[dict],
    num_classes: int,
) -> None:
    """Write the resume state (heads, Adam state, step, settings, history, the backbone's identity) to one
    safetensors file, atomically."""
    from safetensors.torch import save_file

    tensors = {f"heads/{k}": v.detach().cpu().contiguous() for k, v in model.heads_state_dict().items()}
    optim = optimizer.state_dict()
    for index, values in optim["state"].items():
        for key, value in values.items():
            tensors[f"optim/{index}/{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    info = {
        "format": STATE_FORMAT,
        "step": step,
        "settings": settings.to_dict(),
        "num_classes": num_classes,
        "param_groups": optim["param_groups"],
        "history": history,
        "backbone": dict(zip(_IDENTITY_KEYS, backbone_identity(model.backbone))),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"train_state": json.dumps(info)})


def _is_count(value) -> bool:
    return is_number(value, numbers.Integral) and value >= 0


def load_state(path: Path) -> tuple[dict, dict[str, torch.Tensor], dict]:
    """Read a resume state: (info dict, heads state dict, optimizer state dict).

    Raises CheckpointError for a file that is damaged, edited or not a training state. ``info["settings"]``
    is the settings dict as written (:meth:`.train.TrainSettings.from_dict` reads it).
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            info = json.loads((f.metadata() or {}).get("train_state", "null"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (a safetensors file, not a dict)
    except (OSError, ValueError, RecursionError, SafetensorError) as err:
        raise CheckpointError(f"cannot read the training state {path}: {err}; start a new run without resume") from err
    if not isinstance(info, dict) or info.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path} is not a napari-dinounet training state; start a new run without resume")
    bad = [
        name
        for name, ok in (
            ("step", _is_count(info.get("step"))),
            ("num_classes", _is_count(info.get("num_classes")) and info.get("num_classes", 0) >= 2),
            ("settings", isinstance(info.get("settings"), dict)),
            (
                "param_groups",
                isinstance(info.get("param_groups"), list)
                and len(info["param_groups"]) == 1
                and all(isinstance(g, dict) for g in info["param_groups"]),
            ),
            ("history", isinstance(info.get("history"), list) and all(isinstance(h, dict) for h in info["history"])),
            ("backbone", isinstance(info.get("backbone", {}), dict)),
        )
        if not ok
    ]
    if bad:
        raise CheckpointError(
            f"the training state {path} is damaged or was edited (bad {', '.join(bad)}); start a new run without resume"
        )
    heads = current_heads_keys({k[len("heads/") :]: v for k, v in tensors.items() if k.startswith("heads/")})
    optim_state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, index, name = key.split("/", 2)
            if not index.isdigit():
                raise CheckpointError(f"the training state {path} is damaged (tensor {key!r}); start a new run")
            optim_state.setdefault(int(index), {})[name] = value
    return info, heads, {"state": optim_state, "param_groups": info["param_groups"]}


def check_state_backbone(info: dict, backbone, path: Path) -> None:
    """Refuse to resume a run on another backbone than it started with (as load_heads refuses heads)."""
    saved = info.get("backbone")
    if not saved:  # states written before the identity was recorded
        return
    mismatch = identity_mismatch(tuple(saved.get(key) for key in _IDENTITY_KEYS), backbone)
    if mismatch is not None:
        raise CheckpointError(
            f"cannot resume the run in {path} on this backbone: it was started on another one ({mismatch}); "
            "resume with the original backbone, or start a new run"
        )


def check_resumable(saved: TrainSettings, wanted: TrainSettings, path: Path) -> None:
    """Refuse to resume with settings that differ from the saved ones, naming each (saved -> wanted)."""
    changed = [
        f"{k} ({getattr(saved, k)} -> {getattr(wanted, k)})"
        for k in saved.to_dict()
        if getattr(saved, k) != getattr(wanted, k)
    ]
    if changed:
        raise CheckpointError(
            f"cannot resume the run in {path}: these settings differ from the ones it was started with: "
            f"{', '.join(changed)}. Use the original settings, or start a new run with another output path."
        )
