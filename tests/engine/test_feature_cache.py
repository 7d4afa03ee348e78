"""Feature caching: fixed crops, their mirrored variants and their backbone features, computed once; and the
batch source that picks between it and random patches."""

from __future__ import annotations

import pytest
import torch

from napari_dinounet.engine.data import fixed_crops
from napari_dinounet.engine.feature_cache import FeatureCache, batch_source
from napari_dinounet.engine.progress import Progress, drain
from napari_dinounet.engine.train import TrainSettings, build_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # training: one thread (see conftest.py)

TINY = {"size": "tiny", "patch_size": 64, "batch_size": 2, "val_crops": 2}


@pytest.fixture(scope="module")
def nuclei():
    from _nuclei_training import nuclei_samples

    return nuclei_samples([(slice(None), slice(0, 256))])


@pytest.fixture(scope="module")
def model(tiny_backbone):
    return build_model(tiny_backbone, TrainSettings(**TINY), num_classes=2, in_channels=1)


def test_feature_cache_holds_mirrored_crops_with_their_exact_features(model, nuclei):
    crops = fixed_crops(nuclei[:1], 64, 3, seed=1)
    cache = drain(
        FeatureCache.build(model, crops, mirror=True, augment=None, seed=0, device=torch.device("cpu"), batch_size=2)
    )
    assert len(cache) == 12
    flipped = crops["image"].flip(-1)  # the second group of 3: left-right mirrors
    assert torch.equal(cache.crops["image"][3:6], flipped)
    assert torch.equal(cache.crops["labels"][3:6], crops["labels"].flip(-1))
    for cached, fresh in zip(cache.taps, model.backbone_taps(flipped)):
        torch.testing.assert_close(cached[3:6], fresh)
    batch, taps = cache.next_batch(5)
    assert batch["image"].shape == (5, 1, 64, 64) and taps[0].shape == (5, 64, 4, 4)


def test_the_batch_source_is_random_patches_or_the_cache(model, nuclei):
    device = torch.device("cpu")
    plain = drain(batch_source(model, nuclei, TrainSettings(**TINY), seed=0, rank=0, world=1, device=device))
    batch, taps = plain()
    assert taps is None and batch["image"].shape == (2, 1, 64, 64) and batch["labels"].dtype == torch.int64

    events: list[Progress] = []
    settings = TrainSettings(**TINY, cache_features=True, cache_crops=3)
    cached = drain(batch_source(model, nuclei, settings, seed=0, rank=0, world=1, device=device), events.append)
    assert [(e.task, e.done, e.total) for e in events][-1] == ("cache features", 12, 12)  # 3 crops x 4 mirrors
    batch, taps = cached()
    assert batch["image"].shape == (2, 1, 64, 64) and [t.shape for t in taps] == [(2, 64, 4, 4)] * 4
