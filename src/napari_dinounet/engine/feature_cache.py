"""The batches a training run learns from: augmented random patches, or fixed crops with cached features.

Feature caching (``TrainSettings.cache_features``): the backbone is frozen, so the features of a fixed
crop never change. We draw ``cache_crops`` fixed training crops, compute their backbone features once, and
train on them, skipping the backbone in every step. Geometric augmentation would need new features, so the
cache keeps only what stays exact: mirroring, by caching every crop's flipped versions too (4 variants: 4x
the memory and caching time), and intensity augmentation (noise, blur, brightness, contrast, gamma, low
resolution) applied to the SPM input only: the adapter's convolutional branch sees the augmented crop while
the backbone features stay those of the clean crop. Fewer distinct patches and weaker augmentation than
full training: meant for fast fine-tuning, see ``benchmarks/train_step.py``.

This sits beside :mod:`.data` rather than in it: :mod:`.data` knows images and labels only, the cache
needs the model (its backbone computes the features).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from typing import TYPE_CHECKING

import torch

from .augment import Augmenter
from .data import PatchSampler, Sample, fixed_crops
from .progress import Progress

if TYPE_CHECKING:
    from .train import TrainSettings

BatchSource = Callable[[], tuple[dict[str, torch.Tensor], list[torch.Tensor] | None]]


def intensity_augmenter(seed: int) -> Augmenter:
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
    def build(
        model, crops: dict, *, mirror: bool, augment: Augmenter | None, seed: int, device: torch.device, batch_size: int
    ) -> Generator[Progress, None, FeatureCache]:
        """Compute the features of ``crops`` (a :func:`.data.fixed_crops` dict), ``batch_size`` crops at a time,
        yielding progress; ``augment``: the intensity augmenter applied to each drawn batch (or None)."""
        crops = {k: crops[k].to(device) for k in ("image", "labels", "mask")}
        if mirror:
            flips = [(), (-1,), (-2,), (-2, -1)]
            crops = {k: torch.cat([v.flip(dims) if dims else v for dims in flips]) for k, v in crops.items()}
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


def batch_source(
    model, samples: Sequence[Sample], settings: TrainSettings, *, seed: int, rank: int, world: int, device: torch.device
) -> Generator[Progress, None, BatchSource]:
    """The training batches: a function giving (batch on ``device``, cached backbone taps or None).

    batch: image (B, C, P, P) float32, labels (B, P, P) int64, mask (B, P, P) bool (the :class:`.data.PatchSampler`
    layout). Without the cache, augmented random patches from this rank's shard; with it, the cache is built
    first (yielding its progress) from crops that differ per rank through ``seed``.
    """
    if not settings.cache_features:
        sampler = PatchSampler(
            samples,
            settings.patch_size,
            settings.batch_size,
            foreground_fraction=settings.foreground_fraction,
            augment=Augmenter(seed=seed) if settings.augment else None,
            seed=seed,
            rank=rank,
            world_size=world,
        )
        return lambda: (sampler.next_batch(device), None)
    crops = fixed_crops(
        samples, settings.patch_size, settings.cache_crops, seed=seed, foreground_fraction=settings.foreground_fraction
    )
    cache = yield from FeatureCache.build(
        model,
        crops,
        mirror=settings.augment,
        augment=intensity_augmenter(seed) if settings.augment else None,
        seed=seed,
        device=device,
        batch_size=settings.batch_size,
    )
    return lambda: cache.next_batch(settings.batch_size)
