"""How long a training run will take on the CPU, estimated before it starts (Fine-tune shows it by Start).

The estimate comes from a small table, not from a step measured on the spot: measuring needs the
backbone loaded and a step or two run, tens of seconds on a CPU before any number appears, and again at
every change of the form; the table answers at once as patch, batch, steps and cache change. The table
holds seconds per optimiser step of Dino U-Net S (ViT-S/16 shapes, FAPM, 2 classes, batch 2) measured
with ``benchmarks/train_step.py`` on the 2-core development CPU (medians, OMP_WAIT_POLICY=PASSIVE; the
256 and 512 rows are ``benchmarks/results/train_step.json``, 128 and 64 were measured the same way),
per patch size, with and without cached features, and the backbone's time per crop (what building the
feature cache and each validation cost). Other patch sizes are interpolated on the pixel count in log-log
(extrapolated with the nearest slope), batches scale linearly. It is an estimate: a faster CPU, a larger
backbone (B, L: about 2x per step) or a busy machine change it, and the widget says so. GPUs and Apple
MPS are not tabled (no estimate; the time left shows once training runs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MEASURED_BATCH = 2
# patch: (seconds per step without the cache, with it, backbone seconds per crop and mirror variant)
CPU_SECONDS = {
    64: (0.40, 0.22, 0.019),
    128: (0.46, 0.53, 0.044),
    256: (2.69, 2.49, 0.157),
    512: (14.18, 8.22, 0.436),
}
CACHE_VARIANTS = 4  # mirror variants per cached crop (with augmentation)
BASIS = "an estimate for a 2-core laptop CPU, ViT-S"


@dataclass(frozen=True)
class RunEstimate:
    """Seconds of a run, split into what happens before the first step and the steps themselves."""

    setup_s: float  # feature cache (when on) and the validation before training
    steps_s: float  # the steps, with the validations at each checkpoint

    @property
    def total_s(self) -> float:
        return self.setup_s + self.steps_s


def _interpolated(patch_size: int, column: int) -> float:
    sizes = sorted(CPU_SECONDS)
    low = max([s for s in sizes if s <= patch_size] or sizes[:1])
    high = min([s for s in sizes if s > low] or sizes[-1:])
    if low == high:  # beyond the largest: the last slope
        low, high = sizes[-2], sizes[-1]
    a, b = CPU_SECONDS[low][column], CPU_SECONDS[high][column]
    slope = math.log(b / a) / math.log((high / low) ** 2)
    return a * ((patch_size / low) ** 2) ** slope


def cpu_run_estimate(
    *,
    steps: int,
    patch_size: int,
    batch_size: int,
    cache_features: bool,
    checkpoints: int,
    val_crops: int = 8,
    cache_crops: int = 64,
) -> RunEstimate:
    """The table's estimate for a run of ``steps`` at ``patch_size`` and ``batch_size`` on the CPU, with
    ``checkpoints`` validations (one per epoch) besides the one before training."""
    per_step = _interpolated(patch_size, 1 if cache_features else 0) * batch_size / MEASURED_BATCH
    per_crop = _interpolated(patch_size, 2)
    cache = cache_crops * CACHE_VARIANTS * per_crop if cache_features else 0.0
    validation = val_crops * per_crop
    return RunEstimate(setup_s=cache + validation, steps_s=steps * per_step + checkpoints * validation)


def format_duration(seconds: float) -> str:
    """``seconds`` rounded the way a person says it: "about 40 s", "about 3 min", "about 1 h 20 min"."""
    if seconds < 60:
        return f"about {max(5, round(seconds / 5) * 5)} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"about {minutes} min"
    hours, rest = divmod(minutes, 60)
    return f"about {hours} h {rest} min" if rest else f"about {hours} h"
