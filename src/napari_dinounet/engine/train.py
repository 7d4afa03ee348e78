"""Training the heads (spec section 6) as a progress generator, on one device or several (DDP).

The recipe of the paper (section IV-C) is the default (:class:`TrainSettings`): Dice + cross-entropy
(:mod:`.loss`), Adam at 1e-3 with polynomial decay (exponent 0.9, stepped every iteration), gradient
clipping at norm 12, He initialisation of the heads, AMP on CUDA (bf16 where supported, else fp16 with
a gradient scaler), nnU-Net's augmentation (:mod:`.augment`) and foreground oversampling
(:mod:`.data`), 250 iterations per epoch. The loss and the targets it compares the logits with are
parameters of :func:`train` (:mod:`.loss`: ``Loss``, ``Targets``), so another kind of training can bring
its own.

Each epoch ends with a validation Dice (mean over the foreground classes, on fixed crops of the
validation samples, masked pixels excluded; a :class:`.progress.Validation` event; on scribbles, sparse
samples, it scores the painted pixels only and says so: ``scope == "painted"``, "painted pixels only" in
its message, ``val_scope`` in the history) and a checkpoint: first
the resume state ``<out stem>.state.safetensors`` (:mod:`.run_state`), then the heads checkpoint ``out``
(:mod:`.checkpoint`). Both are written atomically and only between steps, so closing the generator
(Cancel in napari, Ctrl-C in the CLI) leaves the last ones intact. A stop request (``stop``, e.g. the
Fine-tune widget's Stop) is the other way to end early: checked between steps, it validates and writes
both files at the step reached, so no step is lost, and the generator then returns normally.
``resume`` continues a run from its state file: the step count, the learning-rate schedule (a function
of the step) and the optimiser's moments carry on; the patch sampler is reseeded with the step so the
resumed run does not replay the patches it has already seen.

The batches come from :mod:`.feature_cache` (random augmented patches, or fixed crops whose backbone
features are computed once: ``cache_features``); several processes (``torchrun``) train with DDP
(:mod:`.distributed`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import threading
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from .atomic import exclusive_run, probe_writable
from .checkpoint import MAX_PATCH_SIZE, count_non_finite
from .data import Sample, check_labels_fit, check_same_channels, default_class_names, fixed_crops, split_samples
from .device import pick_device
from .distributed import broadcast_head_buffers, process_device, rank_and_world_size, wrap_distributed
from .errors import CheckpointError, DinoUNetError, InputError, OutputError, TrainingError
from .feature_cache import BatchSource, batch_source
from .instances import check_task
from .loss import Loss, Targets, class_targets, dice_ce_loss
from .metrics import dice
from .names import SEMANTIC
from .normalize import Normalization
from .progress import Progress, Validation
from .run_state import check_resumable, check_state_backbone, load_state, save_state, state_path

PAINTED_SCOPE = "painted"  # Validation.scope when the validation samples are scribbles (painted pixels only)


@dataclass
class TrainSettings:
    """Everything that shapes a training run; the defaults are the paper's recipe.

    ``size`` checks the backbone's size (None: whatever the backbone is); ``channels`` picks up to 3
    input channels (needed for more than 3; :class:`.network.DinoUNetConfig`); ``size``, ``projection``,
    ``channels`` and ``grad_checkpointing`` describe the network and are taken from it when :func:`train`
    is given a ``model``. A run is ``epochs * iters_per_epoch`` optimiser steps, or ``max_steps`` when
    that is fewer (as in PyTorch Lightning, whichever ends first): the last epoch is then shorter, and
    is validated and saved at its end like the others. ``val_crops`` fixed crops of ``patch_size`` from
    the validation samples give the validation Dice each epoch; ``val_fraction`` is used when no
    validation samples are given (:func:`.data.split_samples`); ``dice_smooth`` is the default loss's.
    """

    size: str | None = None
    projection: str = "fapm"
    channels: tuple[int, ...] | None = None
    patch_size: int = 512
    batch_size: int = 2
    epochs: int = 200
    iters_per_epoch: int = 250
    max_steps: int | None = None
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
        if self.max_steps is not None and self.max_steps < 1:
            raise InputError(f"max steps must be at least 1 (or None: epochs x iterations), got {self.max_steps}")
        if not (math.isfinite(self.lr) and 0 < self.lr <= 1):
            # Adam moves every weight by about lr per step: beyond 1 the heads are destroyed in one step
            raise InputError(f"learning rate must be a positive number up to 1, got {self.lr} (1e-3 is usual)")
        if not 0 <= self.seed < 2**32:
            raise InputError(f"seed must be a whole number from 0 to 2**32 - 1, got {self.seed}")

    @property
    def total_steps(self) -> int:
        """The run's optimiser steps: ``epochs * iters_per_epoch``, cut to ``max_steps``."""
        return min(self.epochs * self.iters_per_epoch, self.max_steps or math.inf)

    @property
    def epoch_count(self) -> int:
        """The epochs the run has, a shorter last one included."""
        return self.epoch_of(self.total_steps)

    def epoch_of(self, step: int) -> int:
        """The (1-based) epoch optimiser step ``step`` (1-based) belongs to; 0 before the first step."""
        return math.ceil(step / self.iters_per_epoch)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "the training settings") -> TrainSettings:
        """Inverse of :meth:`to_dict`, for settings read from a file (``source`` names it in messages).

        Keys missing (a file from an older version) take their defaults. Unknown keys are a CheckpointError
        naming them, as :meth:`.network.DinoUNetConfig.from_dict` and heads files refuse theirs: a setting
        this version cannot apply would otherwise be dropped in silence. Values out of range or of the wrong
        type are a CheckpointError too (the file was edited or damaged).
        """
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise CheckpointError(
                f"{source} holds settings this version of napari-dinounet does not know ({', '.join(unknown)}): "
                "a newer napari-dinounet probably wrote it. Upgrade napari-dinounet, or start a new run without "
                "resume"
            )
        try:
            return cls(**data)
        except (DinoUNetError, TypeError, ValueError) as err:
            raise CheckpointError(
                f"{source} holds invalid settings ({err}): the file was edited or damaged; "
                "start a new run without resume"
            ) from None


def poly_lr(step: int, settings: TrainSettings) -> float:
    """Learning rate for optimiser step ``step`` (0-based): lr * (1 - step / total) ** exponent."""
    return settings.lr * (1 - min(step, settings.total_steps) / settings.total_steps) ** settings.poly_exponent


# ------------------------------------------------------------------------------------------- validation


@torch.no_grad()
def validation_dice(model, crops: dict, *, device: torch.device, batch_size: int, autocast: torch.autocast) -> float:
    """Mean Dice over the foreground classes on fixed crops, counting only pixels inside the crops' masks.

    crops: image (N, C, P, P), labels (N, P, P) class indices, mask (N, P, P) (:func:`.data.fixed_crops`);
    the prediction is the argmax of the logits (N, nc, P, P). The masked pixels of all crops are pooled (one
    Dice per class for the whole validation set); classes absent from both prediction and reference are
    left out; NaN if no class is present.
    """
    was_training = model.training
    model.eval()
    predicted, reference = [], []
    for start in range(0, crops["image"].shape[0], batch_size):
        part = {k: v[start : start + batch_size] for k, v in crops.items()}
        with autocast:
            logits = model(part["image"].to(device))
        if not torch.isfinite(logits).all():  # heads blown up to huge but finite weights (e.g. lr 1e6)
            raise TrainingError(
                "training stopped: the network's outputs on the validation crops became NaN or "
                "infinite, and nothing was saved over the last checkpoint. Lower the learning rate "
                "(--lr) and start again"
            )
        mask = part["mask"].numpy()
        predicted.append(logits.argmax(dim=1).cpu().numpy()[mask])
        reference.append(part["labels"].numpy()[mask])
    model.train(was_training)
    scores = dice(np.concatenate(predicted), np.concatenate(reference))
    return float(np.mean(list(scores.values()))) if scores else float("nan")


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
    loss: Loss | None = None,
    targets: Targets = class_targets,
    stop: Callable[[], bool] | threading.Event | None = None,
    task: str = SEMANTIC,
    spacing: Sequence[float] | None = None,
    planes: Sequence[int] | None = None,
) -> Generator[Progress, None, Path]:
    """Train Dino U-Net heads on ``samples``; yields Progress, returns the heads checkpoint path ``out``.

    samples: training images (:class:`.data.Sample`, normalised with ``normalization``, which the
    checkpoint records). validation: held-out samples; None splits ``samples`` with
    ``settings.val_fraction`` (:func:`.data.split_samples`), an empty list skips validation.
    backbone: a :class:`.backbone.Backbone` or a source for :func:`.backbone.load_backbone`.
    class_names: one per class, background first; None infers the number of classes from the labels.
    model: a DinoUNet to go on training (e.g. from :func:`.checkpoint.load_heads`); None builds new,
    He-initialised heads. Given, its config decides the network, and ``settings``' size, projection,
    channels and grad_checkpointing are replaced by the model's (so the checkpoint records what trained).
    resume: continue the run whose state file sits beside ``out``.
    overwrite: allow a new run to replace an existing ``out`` (otherwise an error, so nothing is lost).
    targets: ``targets(batch)`` -> what the loss compares the logits with (:data:`.loss.Targets`); default
    :func:`.loss.class_targets`, the labels (B, P, P) as class indices.
    loss: ``loss(logits (B, nc, P, P), targets, mask (B, P, P) bool)`` -> scalar (:data:`.loss.Loss`); None:
    :func:`.loss.dice_ce_loss` with ``settings.dice_smooth``. Validation scores the argmax of the logits
    against the labels (:func:`validation_dice`) whatever the loss.
    stop: a stop request, checked before every step (a callable returning True, or a ``threading.Event``
    that is set): the run validates, writes the resume state and the heads at the step it reached (its
    history's last entry is that step, a shorter epoch), yields a last event whose message is "stopped at
    step N" and returns ``out``; resuming goes on from there. Asked before the first step, nothing is
    trained and nothing written. Closing the generator instead (Cancel) leaves the files as they were.
    task: what the checkpoint records its classes to mean (:attr:`.checkpoint.HeadsMetadata.task`):
    "semantic", or "instances" for labels made by :func:`.instances.boundary_classes`.
    spacing, planes: recorded in the heads (``HeadsMetadata.spacing``/``planes``) for samples cut from
    volumes (:func:`.volume.volume_samples`): the voxel spacing and the planes (spatial axes) trained on.

    Events: ``Progress("train", step, total, metrics={loss, lr, epoch, eta_s[, val_dice]})`` after every
    step (``val_dice``: the last validation's, carried along for displays); a
    :class:`.progress.Validation` (task "train") after each validation, with its ``dice`` and the epoch's
    mean ``loss``, including one at step 0 before the first step; when resuming, a Progress saying where
    the run resumes instead (the saved heads loaded); ``Progress("cache features", ...)`` while caching;
    after a stop request, a last event (a Validation when it saved) whose message names the step.
    """
    from .backbone import Backbone, load_backbone

    settings = settings or TrainSettings()
    if model is not None:
        settings = _network_settings_of(model, settings)
    normalization = normalization or Normalization()
    loss = loss or functools.partial(dice_ce_loss, smooth=settings.dice_smooth)
    out = Path(out)
    rank, world = rank_and_world_size()
    device = process_device(pick_device(device), world)
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
    check_task(task, num_classes)
    in_channels = check_same_channels(samples + validation)

    state_file = state_path(out)
    if rank == 0:
        _check_output(out, state_file, resume=resume, overwrite=overwrite)
    with exclusive_run(out, state_file) if rank == 0 else contextlib.nullcontext():
        resumed = _read_resume_state(state_file, settings, num_classes) if resume else None
        if not isinstance(backbone, Backbone):
            backbone = load_backbone(backbone, device=device)
        if resumed is not None:
            check_state_backbone(resumed[0], backbone, state_file)
        if model is None:
            model = build_model(backbone, settings, num_classes, in_channels=in_channels)
        model.to(device)
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=settings.lr)
        step, history = 0, []
        if resumed is not None:
            step, history = _restore(resumed, model, optimizer, state_file)

        total = settings.total_steps
        if resumed is not None and step >= total:
            yield Progress(
                "train", step, total, "the run had already finished: nothing to do", {"epoch": settings.epoch_count}
            )
            return out

        run = _Run(
            model=model,
            step_module=wrap_distributed(model, device) if world > 1 else model,
            optimizer=optimizer,
            settings=settings,
            loss=loss,
            targets=targets,
            device=device,
            world=world,
            step=step,
            history=history,
            val_crops=fixed_crops(validation, settings.patch_size, settings.val_crops, seed=settings.seed)
            if validation
            else None,
            checkpoints=_Checkpoints(
                out,
                state_file,
                backbone,
                class_names,
                normalization,
                in_channels,
                num_classes,
                task,
                spacing,
                planes,
            ),
            writes=rank == 0,
            val_scope=PAINTED_SCOPE if any(s.sparse for s in validation) else "labels",
        )
        # different draws per rank and per resumption, reproducible for a given run
        run.next_batch = yield from batch_source(
            model,
            samples,
            settings,
            seed=settings.seed + 1_000_003 * rank + step,
            rank=rank,
            world=world,
            device=device,
        )
        yield run.validation("validation before training") if resumed is None else run.resumed()
        yield from run.steps(_stop_check(stop, world, device))
        if world > 1:
            torch.distributed.barrier()
    return out


@dataclass
class _Run:
    """A training run once set up: one optimiser step at a time, a validation and the checkpoints at each
    epoch's end. ``model`` is trained in place (``step_module`` is what a step calls: the model, or its DDP
    wrapper); ``writes``: whether this process writes the checkpoints (rank 0 only); ``next_batch``: set
    once the batch source is ready (building a feature cache yields progress of its own).
    """

    model: torch.nn.Module
    step_module: torch.nn.Module
    optimizer: torch.optim.Optimizer
    settings: TrainSettings
    loss: Loss
    targets: Targets
    device: torch.device
    world: int
    step: int
    history: list[dict]
    val_crops: dict | None
    checkpoints: _Checkpoints
    writes: bool
    next_batch: BatchSource | None = None
    val_scope: str = "labels"
    last_val: float | None = None
    epoch_losses: list[float] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        use_amp = self.settings.amp and self.device.type == "cuda"
        amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
        self.autocast = torch.autocast(self.device.type, dtype=amp_dtype, enabled=use_amp)
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
        self.trainable = [p for group in self.optimizer.param_groups for p in group["params"]]
        if self.history:  # resumed: the last validation carries on until the next one
            self.last_val = self.history[-1].get("val_dice")

    def steps(self, stop_requested: Callable[[], bool] = lambda: False) -> Generator[Progress, None, None]:
        """Train to the end, or until ``stop_requested()``: an event after every step, a
        :class:`.progress.Validation` after every epoch (and at a stop that saves)."""
        settings, total = self.settings, self.settings.total_steps
        self.model.train()
        started, first_step = time.perf_counter(), self.step
        saved = self.step  # the step the files on disk hold (none before the first epoch of a new run)
        metrics: dict = {}
        while self.step < total:
            if stop_requested():
                yield self.stopped(saved, metrics)
                return
            lr = poly_lr(self.step, settings)
            loss = self.train_step(lr)
            per_step = (time.perf_counter() - started) / (self.step - first_step)
            epoch = settings.epoch_of(self.step)
            metrics = {"loss": loss, "lr": lr, "epoch": epoch, "eta_s": per_step * (total - self.step)}
            message = f"epoch {epoch}/{settings.epoch_count}"
            yield Progress("train", self.step, total, message, self._with_val(metrics))
            if self.step % settings.iters_per_epoch == 0 or self.step == total:
                yield self.end_epoch(metrics, f"{message} validated")
                saved = self.step

    def stopped(self, saved: int, metrics: dict) -> Progress:
        """End at a stop request: validate and save the step reached (a shorter epoch), unless the files
        already hold it; the event names the step."""
        if self.step == saved:
            written = "nothing was trained yet, nothing written" if self.step == 0 else "its heads are saved"
            return Progress(
                "train",
                self.step,
                self.settings.total_steps,
                f"stopped at step {self.step}: {written}",
                self._with_val({"epoch": self.settings.epoch_of(self.step), **metrics}),
            )
        return self.end_epoch(metrics, f"stopped at step {self.step}: validated, heads saved")

    def train_step(self, lr: float) -> float:
        """One optimiser step at learning rate ``lr`` on the next batch; returns its loss."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batch, taps = self.next_batch()
        with self.autocast:
            logits = self.step_module(batch["image"], taps=taps)  # taps None: the backbone runs
        loss = self.loss(logits, self.targets(batch), batch["mask"])
        if not torch.isfinite(loss.detach()):
            raise TrainingError(
                f"training stopped: the loss became {float(loss)} at step {self.step + 1}, and nothing was saved "
                f"over {self.checkpoints.out}. Lower the learning rate (--lr), check the images for extreme values, "
                "and check that the backbone file is not damaged"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.trainable, self.settings.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        self.epoch_losses.append(float(loss.detach()))
        return self.epoch_losses[-1]

    def validate(self) -> float | None:
        """The validation Dice (None without validation crops, or with no class present); all ranks agree."""
        if self.world > 1:
            broadcast_head_buffers(self.model)
        if self.val_crops is None:
            return None
        value = validation_dice(
            self.model, self.val_crops, device=self.device, batch_size=self.settings.batch_size, autocast=self.autocast
        )
        return None if math.isnan(value) else value

    def validation(self, message: str, metrics: dict | None = None, loss: float | None = None) -> Validation:
        """Validate now and report it."""
        self.last_val = self.validate()
        metrics = {"epoch": self.settings.epoch_of(self.step), **(metrics or {})}
        if loss is not None:
            metrics["loss"] = loss
        if self.val_scope == PAINTED_SCOPE:
            message += " (painted pixels only)"
        return Validation(
            "train",
            self.step,
            self.settings.total_steps,
            message,
            self._with_val(metrics),
            dice=self.last_val,
            loss=loss,
            scope=self.val_scope,
        )

    def end_epoch(self, metrics: dict, message: str) -> Validation:
        """Validate, record the epoch in the history and write the checkpoints; report the validation."""
        epoch_loss = float(np.mean(self.epoch_losses))
        self.epoch_losses = []
        event = self.validation(message, metrics, loss=epoch_loss)
        _check_finite_heads(self.model, self.step)
        self.history.append(
            {
                "epoch": self.settings.epoch_of(self.step),
                "step": self.step,
                "loss": epoch_loss,
                "val_dice": self.last_val,
                "lr": poly_lr(self.step, self.settings),
                **({"val_scope": PAINTED_SCOPE} if self.val_scope == PAINTED_SCOPE else {}),
            }
        )
        if self.writes:
            self.checkpoints.write(self.model, self.optimizer, self.settings, self.step, self.history)
        self.model.train()
        return event

    def resumed(self) -> Progress:
        """The first event of a resumed run: where it goes on (with the last validation it saved)."""
        metrics = {"epoch": self.settings.epoch_of(self.step), "lr": poly_lr(self.step, self.settings)}
        return Progress(
            "train", self.step, self.settings.total_steps, f"resumed at step {self.step}", self._with_val(metrics)
        )

    def _with_val(self, metrics: dict) -> dict:
        return metrics if self.last_val is None else {**metrics, "val_dice": self.last_val}


def _stop_check(stop, world: int, device: torch.device) -> Callable[[], bool]:
    """``stop`` as a function for the step loop; with several processes they all stop when any was asked
    to (one tiny all-reduce per step), so they keep stepping and saving together."""
    if stop is None:
        return lambda: False
    asked = stop.is_set if isinstance(stop, threading.Event) else stop
    if world == 1:
        return lambda: bool(asked())

    def any_rank_asked() -> bool:
        flag = torch.tensor([1.0 if asked() else 0.0], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    return any_rank_asked


def _network_settings_of(model, settings: TrainSettings) -> TrainSettings:
    """``settings`` with the fields that describe the network taken from ``model``'s config: a given model
    is trained as it is, and the checkpoint's training summary must say so."""
    config = model.config
    return dataclasses.replace(
        settings,
        size=config.size,
        projection=config.projection,
        channels=config.channels,
        grad_checkpointing=config.grad_checkpointing,
    )


def _read_resume_state(state_file: Path, settings: TrainSettings, num_classes: int):
    """The resume state beside the output, checked against this run's settings and classes (before the
    backbone loads, so a wrong resume fails fast)."""
    if not state_file.exists():
        raise CheckpointError(f"nothing to resume: {state_file} does not exist; start the run without resume")
    resumed = load_state(state_file)
    saved = TrainSettings.from_dict(resumed[0]["settings"], source=f"the training state {state_file}")
    check_resumable(saved, settings, state_file)
    if resumed[0]["num_classes"] != num_classes:
        raise CheckpointError(
            f"cannot resume the run in {state_file}: it trained {resumed[0]['num_classes']} classes, these "
            f"labels have {num_classes}; resume with the original data or start a new run"
        )
    return resumed


def _restore(resumed, model, optimizer: torch.optim.Optimizer, state_file: Path) -> tuple[int, list[dict]]:
    """Load the saved heads and Adam moments into ``model`` and ``optimizer``; returns (step, history)."""
    info, heads, optim_state = resumed
    model.load_heads_state_dict(heads)
    try:
        optimizer.load_state_dict(optim_state)
    except (ValueError, KeyError, RuntimeError) as err:
        raise CheckpointError(
            f"the training state {state_file} does not fit this network ({err}); start a new run without resume"
        ) from None
    return info["step"], list(info["history"])


def _check_finite_heads(model, step: int) -> None:
    """Stop before saving heads that hold NaN or inf (a step diverged after the last finite loss)."""
    count, first = count_non_finite(model.heads_state_dict())
    if count:
        raise TrainingError(
            f"training stopped: the weights became NaN or infinite at step {step} (first in "
            f"{first}); nothing was saved over the last checkpoint. Lower the learning rate "
            "(--lr) and start again"
        )


def _check_output(out: Path, state_file: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse outputs that would lose something, and find unwritable ones before any work starts."""
    from .checkpoint import read_metadata

    if out.is_dir():
        raise OutputError(
            f"{out} is a folder: give the path of the heads file to write, e.g. {out / 'heads.safetensors'}"
        )
    if not resume:
        if out.exists() and not overwrite:
            raise InputError(
                f"{out} already exists: continue that run (--resume / resume=True), choose another "
                "output path, or replace it (--overwrite / overwrite=True)"
            )
        if out.exists():
            try:
                read_metadata(out)
            except DinoUNetError:
                raise InputError(
                    f"{out} is not a napari-dinounet heads checkpoint, and overwriting only ever replaces "
                    "one: choose another output path (e.g. ending in .safetensors)"
                ) from None
        if state_file.exists() and not overwrite:
            raise InputError(
                f"{state_file} holds the resume state of an earlier run: continue it (--resume / "
                "resume=True), or replace it with a new run (--overwrite / overwrite=True)"
            )
    probe_writable(out)


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
            size=settings.size,
            projection=settings.projection,
            num_classes=num_classes,
            backbone=backbone,
            channels=settings.channels,
            grad_checkpointing=settings.grad_checkpointing,
        )
        model.init_heads_he()
    return model


@dataclass(frozen=True)
class _Checkpoints:
    """What every epoch's end writes: the resume state (:mod:`.run_state`), then the heads checkpoint ``out``
    with what it needs beside the weights (classes, normalisation, input channels, the training summary)."""

    out: Path
    state_file: Path
    backbone: object
    class_names: list[str]
    normalization: Normalization
    in_channels: int
    num_classes: int
    task: str = SEMANTIC
    spacing: Sequence[float] | None = None
    planes: Sequence[int] | None = None

    def write(
        self, model, optimizer: torch.optim.Optimizer, settings: TrainSettings, step: int, history: list[dict]
    ) -> None:
        from .checkpoint import HeadsMetadata, save_heads

        save_state(
            self.state_file,
            model,
            optimizer,
            step=step,
            settings=settings,
            history=history,
            num_classes=self.num_classes,
        )
        metadata = HeadsMetadata(
            config=model.config.to_dict(),
            class_names=list(self.class_names),
            in_channels=self.in_channels,
            normalization=self.normalization.to_dict(),
            patch_size=settings.patch_size,
            spacing=None if self.spacing is None else tuple(float(v) for v in self.spacing),
            planes=None if self.planes is None else tuple(int(p) for p in self.planes),
            backbone_variant=self.backbone.variant,
            backbone_sha256=self.backbone.sha256,
            training={"settings": settings.to_dict(), "history": history},
            task=self.task,
        )
        save_heads(self.out, model, metadata)
