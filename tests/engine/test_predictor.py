"""The Predictor (engine/predictor.py): heads loaded once onto their backbone, checked, predicting images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _random_heads import random_heads

from napari_dinounet.engine import predictor as predictor_module
from napari_dinounet.engine.checkpoint import save_heads
from napari_dinounet.engine.errors import CheckpointError, InputError
from napari_dinounet.engine.outputs import Labels, Probabilities
from napari_dinounet.engine.predict import predict
from napari_dinounet.engine.predictor import Predictor
from napari_dinounet.engine.progress import drain
from napari_dinounet.engine.tiling import tile_starts


@pytest.fixture(scope="module")
def heads(tmp_path_factory, tiny_backbone):
    """Random tiny heads on random:tiny, trained (so to speak) on 1-channel images with 64-pixel patches."""
    model, metadata = random_heads(tiny_backbone)
    return save_heads(tmp_path_factory.mktemp("heads") / "heads.safetensors", model, metadata)


def image(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 4000, shape).astype(np.uint16)


def test_built_once_it_predicts_several_images_equal_to_predict(heads, tiny_backbone):
    predictor = Predictor.from_checkpoint(heads, tiny_backbone)
    assert predictor.class_names == ["background", "a", "b"] and predictor.device == torch.device("cpu")
    assert predictor.path == heads and predictor.metadata.patch_size == 64
    flat, stack = image((100, 130)), image((2, 70, 90), seed=1)
    events = []
    (labels,) = drain(predictor.predict(flat), events.append)
    (stacked,) = drain(predictor.predict(stack))
    reference = {"patch_size": 64, "normalization": {"scheme": "zscore"}}
    np.testing.assert_array_equal(labels, drain(predict(predictor.model, flat, **reference)))
    np.testing.assert_array_equal(stacked, drain(predict(predictor.model, stack, **reference)))
    assert labels.shape == (100, 130) and stacked.shape == (2, 70, 90) and len(np.unique(labels)) > 1
    # the training patch is the default tile: 64-pixel tiles at step 0.5
    assert events[-1].total == len(tile_starts(100, 64, 0.5)) * len(tile_starts(130, 64, 0.5))
    probabilities, again = drain(
        predictor.predict(flat, tile=96, mirror=True, step=0.75, outputs=(Probabilities(), Labels()))
    )
    expected = drain(
        predict(
            predictor.model,
            flat,
            patch_size=96,
            tta=True,
            step=0.75,
            probabilities=True,
            normalization={"scheme": "zscore"},
        )
    )
    assert probabilities.shape == (3, 100, 130)
    np.testing.assert_array_equal(probabilities, expected)  # bit for bit
    np.testing.assert_array_equal(again, probabilities.argmax(0))


def test_an_image_with_the_wrong_channel_count_is_refused_before_any_tile(heads, tiny_backbone):
    predictor = Predictor.from_checkpoint(heads, tiny_backbone)
    calls = []
    predictor.model.register_forward_hook(lambda *_: calls.append(1))
    for img, given in [(image((70, 90, 3)), 3), (image((70, 90, 4)), 3), (image((2, 70, 90)), 2)]:
        axis = 0 if given == 2 else None
        with pytest.raises(InputError, match=rf"trained on 1-channel images but this image has {given}: .*channel"):
            drain(predictor.predict(img, channel_axis=axis))
    assert calls == []
    (labels,) = drain(predictor.predict(image((1, 70, 90)), channel_axis=0))  # one channel, on an axis of its own
    assert labels.shape == (70, 90)


def test_a_weights_source_is_loaded_after_the_heads_are_checked(heads, tmp_path, monkeypatch, tiny_backbone):
    from_source = Predictor.from_checkpoint(heads, "random:tiny", device="cpu")
    flat = image((70, 90))
    np.testing.assert_array_equal(
        drain(from_source.predict(flat))[0], drain(Predictor.from_checkpoint(heads, tiny_backbone).predict(flat))[0]
    )

    def no_loading(*args, **kwargs):
        raise AssertionError("the backbone was loaded before the heads were checked")

    monkeypatch.setattr(predictor_module, "load_backbone", no_loading)
    with pytest.raises(CheckpointError, match="does not exist"):
        Predictor.from_checkpoint(tmp_path / "missing.safetensors", "random:tiny")


def test_heads_of_another_backbone_are_refused_unless_allowed(heads, dinov3_tiny_dir):
    from napari_dinounet.engine.backbone import load_backbone

    other = load_backbone(dinov3_tiny_dir / "official_tiny.pth")
    with pytest.raises(CheckpointError, match="was trained with backbone"):
        Predictor.from_checkpoint(heads, other)
    with pytest.warns(UserWarning, match="using it anyway"):
        allowed = Predictor.from_checkpoint(heads, other, allow_backbone_mismatch=True)
    assert drain(allowed.predict(image((70, 90))))[0].shape == (70, 90)
