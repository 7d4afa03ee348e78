"""Shared-backbone prediction: the backbone runs once per window of several tiles, each tile's heads read
their slice of the window's features."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_dinounet.engine.backbone import load_backbone
from napari_dinounet.engine.errors import InputError
from napari_dinounet.engine.predict import predict
from napari_dinounet.engine.progress import drain
from napari_dinounet.engine.tiling import shared_windows, tile_starts

from .test_fidelity import fixed_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def mixing_model(qk_gain: float):
    """The fidelity test's tiny model on a random backbone whose blocks mix the tokens: the random init's
    layer scales (1e-5) and small q/k weights leave each patch's features nearly its own, which no window
    changes; trained DINOv3 attends across the image, and so do layer scales 1 with q/k weights x ``qk_gain``."""
    with pytest.warns(UserWarning, match="RANDOM weights"):
        backbone = load_backbone("random:tiny")
    with torch.no_grad():
        for name, parameter in backbone.vit.named_parameters():
            if ".gamma_" in name:
                parameter.fill_(1.0)
            elif name.endswith("qkv.weight"):
                parameter.mul_(qk_gain)
    return fixed_model("fapm", backbone)


@pytest.fixture(scope="module")
def model():
    return mixing_model(4.0)


@pytest.fixture
def backbone_passes(model, monkeypatch):
    """The number of backbone passes (each on a batch of tiles or one window) so far."""
    passes = []
    features = model.backbone.features
    monkeypatch.setattr(model.backbone, "features", lambda *a, **k: passes.append(a[0].shape) or features(*a, **k))
    return passes


def test_windows_group_tiles_on_the_patch_grid_up_to_1024_pixels():
    assert shared_windows(tile_starts(1024, 512, 0.5), 512) == [(0, 1024)] * 3
    # 488 is off the 16-pixel grid: its own window
    assert shared_windows(tile_starts(1000, 512, 0.5), 512) == [(0, 768), (0, 768), (488, 512)]
    assert shared_windows(tile_starts(2048, 512, 0.5), 512) == [(0, 1024)] * 3 + [(768, 1024)] * 3 + [(1536, 512)]
    assert shared_windows([0], 2048) == [(0, 2048)]  # a tile larger than the limit is its own window


def image(shape, seed=3):
    return (np.random.default_rng(seed).random(shape) * 200).astype(np.float32)


def test_a_window_the_size_of_the_tile_gives_the_tile_by_tile_result(model):
    picture = image((64, 64))
    expected = drain(predict(model, picture, patch_size=64, tta=True, probabilities=True))
    got = drain(predict(model, picture, patch_size=64, tta=True, probabilities=True, shared_backbone=True))
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_one_backbone_pass_per_window_and_mirror_and_labels_close_to_tile_by_tile(model, backbone_passes):
    picture = image((96, 160))  # tiles at rows 0, 32 and columns 0, 32, 64, 96: 8 tiles
    tiled = drain(predict(model, picture, patch_size=64, tta=True, probabilities=True, batch_size=4))
    tile_passes = len(backbone_passes)
    backbone_passes.clear()
    shared = drain(predict(model, picture, patch_size=64, tta=True, probabilities=True, shared_backbone=True))
    assert tile_passes == 4 * 8 // 4  # each mirror of each batch of 4 tiles
    assert backbone_passes == [(1, 3, 96, 160)] * 4  # the whole plane is one window, once per mirror
    assert shared.shape == tiled.shape == (3, 96, 160)
    agreement = float(np.mean(shared.argmax(0) == tiled.argmax(0)))
    assert 0.99 <= agreement < 1  # the window's context changes the features a little, not the labels
    assert np.abs(shared - tiled).max() < 0.5


def test_rope_spacing_keeps_a_windows_features_close_to_the_tiles_own():
    """With the tile's RoPE spacing a tile's slice of a window's features is nearer its own features than
    with the window's standard positions (spread over [-1, 1] of the window)."""
    model = mixing_model(10.0)  # attention sharp enough for positions to matter
    torch.manual_seed(0)
    window = torch.randn(1, 3, 128, 128)
    tile = window[:, :, 32:96, 32:96]
    with torch.no_grad():
        own = model.backbone_taps(tile)
        spaced = model.backbone_taps(window, rope_spacing=(4, 4))
        standard = model.backbone_taps(window)

    def distance(maps):
        return sum(float((m[:, :, 2:6, 2:6] - o).norm() / o.norm()) for m, o in zip(maps, own))

    assert distance(spaced) < 0.97 * distance(standard)


def test_shared_backbone_needs_a_dino_unet():
    conv = torch.nn.Conv2d(1, 2, 1)
    with pytest.raises(InputError, match="shared_backbone needs a Dino U-Net"):
        drain(predict(conv, image((64, 64)), patch_size=64, shared_backbone=True))
