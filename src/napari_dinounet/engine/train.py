"""Training the heads (spec section 6) as a progress generator, on one device or several (DDP).

The recipe of the paper (section IV-C) is the default (:class:`TrainSettings`): Dice + cross-entropy
(:mod:`.loss`), Adam at 1e-3 with polynomial decay (exponent 0.9, stepped every iteration), gradient
clipping at norm 12, He initialisation of the heads, AMP on CUDA (bf16 where supported, else fp16 with
a gradient scaler), nnU-Net's augmentation (:mod:`.augment`) and foreground oversampling
(:mod:`.data`), 250 iterations per epoch.

Each epoch ends with a validation Dice (mean over the foreground classes, on fixed crops of the
validation samples, masked pixels excluded) and a checkpoint: first the resume state
``<out stem>.state.safetensors`` (heads, Adam moments, step, settings, history; one atomic file), then
the heads checkpoint ``out`` (:mod:`.checkpoint`). Both are written atomically and only between steps,
so closing the generator (Cancel in napari, Ctrl-C in the CLI) leaves the last ones intact. ``resume``
continues a run from its state file: the step count, the learning-rate schedule (a function of the
step) and the optimiser's moments carry on; the patch sampler is reseeded with the step so the resumed
run does not replay the patches it has already seen.

Feature caching (``cache_features=True``): the backbone is frozen, so the features of a fixed crop never
change. We draw ``cache_crops`` fixed training crops, compute their backbone features once, and train on
them, skipping the backbone in every step. Geometric augmentation would need new features, so the cache
keeps only what stays exact: mirroring, by caching every crop's flipped versions too (4 variants: 4x the
memory and caching time), and intensity augmentation (noise, blur, brightness, contrast, gamma,
low resolution) applied to the SPM input only: the adapter's convolutional branch sees the augmented
crop while the backbone features stay those of the clean crop. Fewer distinct patches and weaker
augmentation than full training: meant for fast fine-tuning, see ``benchmarks/train_step.py``.

Several processes (``torchrun``, see :mod:`napari_dinounet.train`): when ``torch.distributed`` is
initialised, the model is wrapped in DistributedDataParallel (the frozen backbone is excluded from its
synchronisation), the heads' BatchNorm becomes SyncBatchNorm on CUDA, each rank samples patches from its
own shard of the training images (:class:`.data.PatchSampler`), and only rank 0 writes files. PyTorch's
SyncBatchNorm needs a GPU: on CPU (gloo) each rank normalises with its own batch statistics and the
running statistics are taken from rank 0 (DDP broadcasts them before every forward and we broadcast them
again before validating and saving), so all ranks always hold identical weights.
"""

from __future__ import annotations

import contextlib
import json
import math
import numbers
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_path, exclusive_run, probe_writable
from .augment import Augmenter
from .checkpoint import (
    MAX_PATCH_SIZE,
    backbone_identity,
    count_non_finite,
    identity_mismatch,
)
from .data import (
    PatchSampler,
    Sample,
    check_labels_fit,
    check_same_channels,
    default_class_names,
    fixed_crops,
    split_samples,
)
from .device import pick_device
from .errors import (
    CheckpointError,
    DinoUNetError,
    InputError,
    OutputError,
    TrainingError,
)
from .loss import dice_ce_loss
from .metrics import dice
from .normalize import Normalization
from .progress import Progress
from .values import is_number

_STATE_FORMAT = "napari-dinounet-train-state/1"


@dataclass
class TrainSettings:
    """Everything that shapes a training run; the defaults are the paper's recipe.

    ``size`` checks the backbone's size (None: whatever the backbone is); ``channels`` picks up to 3
    input channels (needed for more than 3; :class:`.network.DinoUNetConfig`);
    ``epochs * iters_per_epoch`` optimiser steps in all; ``val_crops`` fixed crops of ``patch_size``
    from the validation samples give the validation Dice each epoch; ``val_fraction`` is used when no
    validation samples are given (:func:`.data.split_samples`).
    """

    size: str | None = None
    projection: str = "fapm"
    channels: tuple[int, ...] | None = None
    patch_size: int = 512
    batch_size: int = 2
    epochs: int = 200
    iters_per_epoch: int = 250
    lr: float = 1e-3
    poly_exponent: float = 0.9
    grad_clip: float = 12.0
    dice_smooth: float = 1e-5
    amp: bool = True  # only on CUDA
    augment: bool = True
    foreground_fraction: float = 0.33
    val_fraction: float = 0.2
    val_crops: int = 8
    cache_features: bool = False
    cache_crops: int = 64
    grad_checkpointing: bool = False
    seed: int = 0

    def __post_init__(self):
        if self.channels is not None:
            self.channels = tuple(int(c) for c in self.channels)  # JSON gives a list back
        if not 64 <= self.patch_size <= MAX_PATCH_SIZE or self.patch_size % 32:
            raise InputError(
                f"patch size {self.patch_size} does not fit the network: use a multiple of 32 from 64 to "
                f"{MAX_PATCH_SIZE} (e.g. {min(MAX_PATCH_SIZE, max(64, round(self.patch_size / 32) * 32))})"
            )
        for name in ("batch_size", "epochs", "iters_per_epoch", "val_crops", "cache_crops"):
            if getattr(self, name) < 1:
                raise InputError(f"{name.replace('_', ' ')} must be at least 1, got {getattr(self, name)}")
        if not (math.isfinite(self.lr) and 0 < self.lr <= 1):
            # Adam moves every weight by about lr per step: beyond 1 the heads are destroyed in one step
            raise InputError(f"learning rate must be a positive number up to 1, got {self.lr} (1e-3 is usual)")
        if not 0 <= self.seed < 2**32:
            raise InputError(f"seed must be a whole number from 0 to 2**32 - 1, got {self.seed}")

    @property
    def total_steps(self) -> int:
        return self.epochs * self.iters_per_epoch

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainSettings:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def poly_lr(step: int, settings: TrainSettings) -> float:
    """Learning rate for optimiser step ``step`` (0-based): lr * (1 - step / total) ** exponent."""
    return settings.lr * (1 - min(step, settings.total_steps) / settings.total_steps) ** settings.poly_exponent


def state_path(checkpoint: str | Path) -> Path:
    """Where the resume state of the heads checkpoint ``checkpoint`` lives: ``<stem>.state.safetensors``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.stem + ".state.safetensors")


# ---------------------------------------------------------------------------------------------- batches


def _intensity_augmenter(seed: int) -> Augmenter:
    """The augmentations that leave pixel positions alone: valid with cached backbone features."""
    return Augmenter(rotation=False, scaling=None, elastic=False, mirror=False, seed=seed)


class FeatureCache:
    """Fixed training crops and their backbone features, computed once (see the module docstring).

    crops: image (N, C, P, P), labels (N, P, P), mask (N, P, P) on ``device``; taps: 4 maps
    (N, D, P/16, P/16). With ``mirror`` each crop appears 4 times (as is, flipped left-right, up-down, both).
    """

    def __init__(self, crops: dict, taps: list[torch.Tensor], augment: Augmenter | None, seed: int):
        self.crops = crops
        self.taps = taps
        self.augment = augment
        self.rng = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.crops["image"].shape[0]

    @staticmethod
    def build(model, crops: dict, *, mirror: bool, augment: Augmenter | None, seed: int, device: torch.device,
              batch_size: int) -> Generator[Progress, None, FeatureCache]:
        """Compute the features of ``crops`` (a :func:`.data.fixed_crops` dict), ``batch_size`` crops at a time,
        yielding progress; ``augment``: the intensity augmenter applied to each drawn batch (or None)."""
        crops = {k: crops[k].to(device) for k in ("image", "labels", "mask")}
        if mirror:
            flips = [(), (-1,), (-2,), (-2, -1)]
            crops = {
                k: torch.cat([v.flip(dims) if dims else v for dims in flips]) for k, v in crops.items()
            }
        count = crops["image"].shape[0]
        parts: list[list[torch.Tensor]] = []
        for start in range(0, count, batch_size):
            parts.append(model.backbone_taps(crops["image"][start : start + batch_size]))
            yield Progress("cache features", min(start + batch_size, count), count)
        taps = [torch.cat(level) for level in zip(*parts)]
        return FeatureCache(crops, taps, augment, seed)

    def next_batch(self, batch_size: int) -> tuple[dict, list[torch.Tensor]]:
        """A random batch of cached crops (intensity-augmented SPM input) and their backbone features."""
        index = torch.randint(len(self), (batch_size,), generator=self.rng).to(self.crops["image"].device)
        batch = {k: v[index] for k, v in self.crops.items()}
        if self.augment is not None:
            batch = self.augment(batch)
        return batch, [t[index] for t in self.taps]


# ------------------------------------------------------------------------------------------- validation


@torch.no_grad()
def validation_dice(model, crops: dict, *, device: torch.device, batch_size: int, autocast: torch.autocast) -> float:
    """Mean Dice over the foreground classes on fixed crops, counting only pixels inside the crops' masks.

    The masked pixels of all crops are pooled (one Dice per class for the whole validation set); classes
    absent from both prediction and reference are left out; NaN if no class is present.
    """
    was_training = model.training
    model.eval()
    predicted, reference = [], []
    for start in range(0, crops["image"].shape[0], batch_size):
        part = {k: v[start : start + batch_size] for k, v in crops.items()}
        with autocast:
            logits = model(part["image"].to(device))
        if not torch.isfinite(logits).all():  # heads blown up to huge but finite weights (e.g. lr 1e6)
            raise TrainingError("training stopped: the network's outputs on the validation crops became NaN or "
                                "infinite, and nothing was saved over the last checkpoint. Lower the learning rate "
                                "(--lr) and start again")
        mask = part["mask"].numpy()
        predicted.append(logits.argmax(dim=1).cpu().numpy()[mask])
        reference.append(part["labels"].numpy()[mask])
    model.train(was_training)
    scores = dice(np.concatenate(predicted), np.concatenate(reference))
    return float(np.mean(list(scores.values()))) if scores else float("nan")


# ------------------------------------------------------------------------------------------- run state


_IDENTITY_KEYS = ("variant", "sha256", "num_heads")  # checkpoint.backbone_identity, as the state records it


def save_state(path: Path, model, optimizer: torch.optim.Optimizer, *, step: int, settings: TrainSettings,
               history: list[dict], num_classes: int) -> None:
    """Write the resume state (heads, Adam state, step, settings, history, the backbone's identity) to one
    safetensors file, atomically."""
    from safetensors.torch import save_file

    tensors = {f"heads/{k}": v.detach().cpu().contiguous() for k, v in model.heads_state_dict().items()}
    optim = optimizer.state_dict()
    for index, values in optim["state"].items():
        for key, value in values.items():
            tensors[f"optim/{index}/{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    info = {
        "format": _STATE_FORMAT,
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

    Raises CheckpointError for a file that is damaged, edited or not a training state.
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            info = json.loads((f.metadata() or {}).get("train_state", "null"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (OSError, ValueError, RecursionError, SafetensorError) as err:
        raise CheckpointError(f"cannot read the training state {path}: {err}; start a new run without resume") from err
    if not isinstance(info, dict) or info.get("format") != _STATE_FORMAT:
        raise CheckpointError(f"{path} is not a napari-dinounet training state; start a new run without resume")
    bad = [name for name, ok in (
        ("step", _is_count(info.get("step"))),
        ("num_classes", _is_count(info.get("num_classes")) and info.get("num_classes", 0) >= 2),
        ("settings", isinstance(info.get("settings"), dict)),
        ("param_groups", isinstance(info.get("param_groups"), list) and len(info["param_groups"]) == 1
         and all(isinstance(g, dict) for g in info["param_groups"])),
        ("history", isinstance(info.get("history"), list) and all(isinstance(h, dict) for h in info["history"])),
        ("backbone", isinstance(info.get("backbone", {}), dict)),
    ) if not ok]
    if bad:
        raise CheckpointError(f"the training state {path} is damaged or was edited (bad {', '.join(bad)}); start a "
                              "new run without resume")
    heads = {k[len("heads/"):]: v for k, v in tensors.items() if k.startswith("heads/")}
    optim_state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, index, name = key.split("/", 2)
            if not index.isdigit():
                raise CheckpointError(f"the training state {path} is damaged (tensor {key!r}); start a new run")
            optim_state.setdefault(int(index), {})[name] = value
    return info, heads, {"state": optim_state, "param_groups": info["param_groups"]}


def _check_state_backbone(info: dict, backbone, path: Path) -> None:
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


def _check_resumable(saved: TrainSettings, wanted: TrainSettings, path: Path) -> None:
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


# ------------------------------------------------------------------------------------------ distributed


def _distributed() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) when torch.distributed is not initialised."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _backbone_names(model) -> list[str]:
    names = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
    return [n for n in names if n.startswith("backbone.")]


def wrap_distributed(model, device: torch.device):
    """Prepare ``model`` for DDP: SyncBatchNorm heads on CUDA, backbone left out of the synchronisation.

    Returns the module to call in training steps (the DDP wrapper; ``model`` itself is trained in place).
    """
    from torch.nn.parallel import DistributedDataParallel

    if device.type == "cuda":
        for name, child in list(model.named_children()):
            if name != "backbone":
                setattr(model, name, torch.nn.SyncBatchNorm.convert_sync_batchnorm(child))
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, _backbone_names(model))
    # heads this configuration never calls (deep-supervision outputs when it is off) get no gradient
    return DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=bool(model.unused_parameter_names()),
    )


def _broadcast_head_buffers(model) -> None:
    """Give every rank rank 0's BatchNorm running statistics (they drift apart without SyncBatchNorm)."""
    skip = set(_backbone_names(model))
    for name, buffer in model.named_buffers():
        if name not in skip:
            torch.distributed.broadcast(buffer, src=0)


# ------------------------------------------------------------------------------------------------ train


def train(
    samples: Sequence[Sample],
    *,
    out: str | Path,
    backbone,
    settings: TrainSettings | None = None,
    validation: Sequence[Sample] | None = None,
    class_names: Sequence[str] | None = None,
    normalization: Normalization | None = None,
    model=None,
    resume: bool = False,
    overwrite: bool = False,
    device: str | torch.device = "auto",
) -> Generator[Progress, None, Path]:
    """Train Dino U-Net heads on ``samples``; yields Progress, returns the heads checkpoint path ``out``.

    samples: training images (:class:`.data.Sample`, normalised with ``normalization``, which the
    checkpoint records). validation: held-out samples; None splits ``samples`` with
    ``settings.val_fraction`` (:func:`.data.split_samples`), an empty list skips validation.
    backbone: a :class:`.backbone.Backbone` or a source for :func:`.backbone.load_backbone`.
    class_names: one per class, background first; None infers the number of classes from the labels.
    model: a DinoUNet to go on training (e.g. from :func:`.checkpoint.load_heads`); None builds new,
    He-initialised heads. resume: continue the run whose state file sits beside ``out``.
    overwrite: allow a new run to replace an existing ``out`` (otherwise an error, so nothing is lost).

    Events: ``Progress("train", step, total, metrics={loss, lr, epoch, eta_s[, val_dice]})`` after every
    step, and one with ``val_dice`` (and the epoch's mean ``loss``) after each validation, including one
    before the first step (or, when resuming, one saying where the run resumes, the saved heads loaded);
    ``Progress("cache features", ...)`` while caching.
    """
    from .backbone import Backbone, load_backbone

    settings = settings or TrainSettings()
    normalization = normalization or Normalization()
    out = Path(out)
    rank, world = _distributed()
    device = pick_device(device)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())  # one GPU per process, set by the launcher
    samples = list(samples)
    if not samples:
        raise InputError("no training images: give at least one image with its labels")
    if validation is None:
        samples, validation = split_samples(samples, settings.val_fraction, seed=settings.seed)
    validation = list(validation)
    if model is not None:
        num_classes = model.config.num_classes
        class_names = list(class_names) if class_names else default_class_names(num_classes)
    else:
        class_names = list(class_names) if class_names else _default_class_names(samples + validation)
        num_classes = len(class_names)
    check_labels_fit(samples + validation, num_classes)
    in_channels = check_same_channels(samples + validation)

    state_file = state_path(out)
    if rank == 0:
        _check_output(out, state_file, resume=resume, overwrite=overwrite)
    with exclusive_run(out, state_file) if rank == 0 else contextlib.nullcontext():
        resumed = None
        if resume:
            if not state_file.exists():
                raise CheckpointError(f"nothing to resume: {state_file} does not exist; start the run without resume")
            resumed = load_state(state_file)
            _check_resumable(TrainSettings.from_dict(resumed[0]["settings"]), settings, state_file)
            if resumed[0]["num_classes"] != num_classes:
                raise CheckpointError(
                    f"cannot resume the run in {state_file}: it trained {resumed[0]['num_classes']} classes, these "
                    f"labels have {num_classes}; resume with the original data or start a new run"
                )

        if not isinstance(backbone, Backbone):
            backbone = load_backbone(backbone, device=device)
        if resumed is not None:
            _check_state_backbone(resumed[0], backbone, state_file)
        if model is None:
            model = build_model(backbone, settings, num_classes, in_channels=in_channels)
        model.to(device)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(trainable, lr=settings.lr)
        step = 0
        history: list[dict] = []
        if resumed is not None:
            info, heads, optim_state = resumed
            model.load_heads_state_dict(heads)
            try:
                optimizer.load_state_dict(optim_state)
            except (ValueError, KeyError, RuntimeError) as err:
                raise CheckpointError(f"the training state {state_file} does not fit this network ({err}); start a "
                                      "new run without resume") from None
            step, history = info["step"], list(info["history"])

        step_module = wrap_distributed(model, device) if world > 1 else model
        use_amp = settings.amp and device.type == "cuda"
        amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
        autocast = torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp)
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

        total = settings.total_steps
        if resumed is not None and step >= total:
            yield Progress("train", step, total, "the run had already finished: nothing to do",
                           {"epoch": settings.epochs})
            return out

        val_crops = None
        if validation:
            val_crops = fixed_crops(validation, settings.patch_size, settings.val_crops, seed=settings.seed)
        # different draws per rank and per resumption, reproducible for a given run
        next_batch = yield from _batch_source(model, samples, settings,
                                              seed=settings.seed + 1_000_003 * rank + step,
                                              rank=rank, world=world, device=device)

        def validate() -> float | None:
            if world > 1:
                _broadcast_head_buffers(model)
            if val_crops is None:
                return None
            value = validation_dice(model, val_crops, device=device, batch_size=settings.batch_size,
                                    autocast=autocast)
            return None if math.isnan(value) else value

        def save(val_dice: float | None, epoch_loss: float) -> None:
            _check_finite_heads(model, step)
            history.append({"epoch": step // settings.iters_per_epoch, "step": step, "loss": epoch_loss,
                            "val_dice": val_dice, "lr": poly_lr(step, settings)})
            if rank != 0:
                return
            save_state(state_file, model, optimizer, step=step, settings=settings, history=history,
                       num_classes=num_classes)
            _save_heads(out, model, backbone, settings, class_names, normalization, in_channels, history)

        def with_val(metrics: dict, val_dice: float | None) -> dict:
            return metrics if val_dice is None else {**metrics, "val_dice": val_dice}

        if resumed is None:
            last_val = validate()
            yield Progress("train", 0, total, "validation before training", with_val({"epoch": 0}, last_val))
        else:
            last_val = history[-1].get("val_dice") if history else None
            metrics = {"epoch": step // settings.iters_per_epoch, "lr": poly_lr(step, settings)}
            yield Progress("train", step, total, f"resumed at step {step}", with_val(metrics, last_val))

        model.train()
        started, first_step = time.perf_counter(), step
        epoch_losses: list[float] = []
        while step < total:
            lr = poly_lr(step, settings)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch, taps = next_batch()
            with autocast:
                logits = step_module(batch["image"], taps=taps) if taps is not None else step_module(batch["image"])
            loss = dice_ce_loss(logits, batch["labels"], batch["mask"], smooth=settings.dice_smooth)
            if not torch.isfinite(loss.detach()):
                raise TrainingError(
                    f"training stopped: the loss became {float(loss)} at step {step + 1}, and nothing was saved over "
                    f"{out}. Lower the learning rate (--lr), check the images for extreme values, and check that the "
                    "backbone file is not damaged"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(trainable, settings.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            step += 1
            epoch_losses.append(float(loss.detach()))

            per_step = (time.perf_counter() - started) / (step - first_step)
            epoch = math.ceil(step / settings.iters_per_epoch)
            metrics = {"loss": epoch_losses[-1], "lr": lr, "epoch": epoch, "eta_s": per_step * (total - step)}
            yield Progress("train", step, total, f"epoch {epoch}/{settings.epochs}", with_val(metrics, last_val))

            if step % settings.iters_per_epoch == 0 or step == total:
                last_val = validate()
                epoch_loss = float(np.mean(epoch_losses))
                epoch_losses = []
                save(last_val, epoch_loss)
                model.train()
                yield Progress("train", step, total, f"epoch {epoch}/{settings.epochs} validated",
                               with_val({**metrics, "loss": epoch_loss}, last_val))
        if world > 1:
            torch.distributed.barrier()
    return out


def _check_finite_heads(model, step: int) -> None:
    """Stop before saving heads that hold NaN or inf (a step diverged after the last finite loss)."""
    count, first = count_non_finite(model.heads_state_dict())
    if count:
        raise TrainingError(f"training stopped: the weights became NaN or infinite at step {step} (first in "
                            f"{first}); nothing was saved over the last checkpoint. Lower the learning rate "
                            "(--lr) and start again")


def _check_output(out: Path, state_file: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse outputs that would lose something, and find unwritable ones before any work starts."""
    from .checkpoint import read_metadata

    if out.is_dir():
        raise OutputError(f"{out} is a folder: give the path of the heads file to write, e.g. "
                          f"{out / 'heads.safetensors'}")
    if not resume:
        if out.exists() and not overwrite:
            raise InputError(f"{out} already exists: continue that run (--resume / resume=True), choose another "
                             "output path, or replace it (--overwrite / overwrite=True)")
        if out.exists():
            try:
                read_metadata(out)
            except DinoUNetError:
                raise InputError(f"{out} is not a napari-dinounet heads checkpoint, and overwriting only ever replaces "
                                 "one: choose another output path (e.g. ending in .safetensors)") from None
        if state_file.exists() and not overwrite:
            raise InputError(f"{state_file} holds the resume state of an earlier run: continue it (--resume / "
                             "resume=True), or replace it with a new run (--overwrite / overwrite=True)")
    probe_writable(out)


def _batch_source(model, samples: list[Sample], settings: TrainSettings, *, seed: int, rank: int, world: int,
                  device: torch.device) -> Generator[Progress, None, Callable[[], tuple[dict, list | None]]]:
    """The training batches: a function giving (batch on ``device``, cached backbone taps or None).

    Without the cache, augmented random patches from this rank's shard (:class:`.data.PatchSampler`); with
    it, the cache is built first (yielding its progress) from crops that differ per rank through ``seed``.
    """
    if not settings.cache_features:
        sampler = PatchSampler(
            samples, settings.patch_size, settings.batch_size, foreground_fraction=settings.foreground_fraction,
            augment=Augmenter(seed=seed) if settings.augment else None, seed=seed, rank=rank, world_size=world,
        )
        return lambda: (sampler.next_batch(device), None)
    crops = fixed_crops(samples, settings.patch_size, settings.cache_crops, seed=seed,
                        foreground_fraction=settings.foreground_fraction)
    cache = yield from FeatureCache.build(
        model, crops, mirror=settings.augment, augment=_intensity_augmenter(seed) if settings.augment else None,
        seed=seed, device=device, batch_size=settings.batch_size,
    )
    return lambda: cache.next_batch(settings.batch_size)


def _default_class_names(samples: Sequence[Sample]) -> list[str]:
    return default_class_names(max(max(int(s.labels.max()) for s in samples), 1) + 1)


def build_model(backbone, settings: TrainSettings, num_classes: int, in_channels: int):
    """A DinoUNet on ``backbone`` for these settings, its heads He-initialised (nnU-Net's ``InitWeights_He``)
    from ``settings.seed``.

    in_channels: channels of the training images; more than 3 need ``settings.channels`` (which 3 to use).
    """
    from .network import build_dinounet

    if in_channels > 3 and settings.channels is None:
        raise InputError(
            f"the training images have {in_channels} channels but the backbone takes at most 3: choose which to "
            "use (channels, e.g. (0, 1, 2))"
        )
    with torch.random.fork_rng(devices=[]):  # reproducible heads for a given seed, the caller's RNG untouched
        torch.manual_seed(settings.seed)
        model = build_dinounet(
            size=settings.size, projection=settings.projection, num_classes=num_classes, backbone=backbone,
            channels=settings.channels, grad_checkpointing=settings.grad_checkpointing,
        )
        model.init_heads_he()
    return model


def _save_heads(out, model, backbone, settings, class_names, normalization, in_channels: int, history) -> None:
    from .checkpoint import HeadsMetadata, save_heads

    metadata = HeadsMetadata(
        config=model.config.to_dict(),
        class_names=list(class_names),
        in_channels=in_channels,
        normalization=normalization.to_dict(),
        patch_size=settings.patch_size,
        backbone_variant=backbone.variant,
        backbone_sha256=backbone.sha256,
        training={"settings": settings.to_dict(), "history": history},
    )
    save_heads(out, model, metadata)
