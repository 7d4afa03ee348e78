"""The output interface (engine/outputs.py): an output added without touching the tiler, several outputs
from one run, the mirror variance, and the calls every output gets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_dinounet.engine import normalize
from napari_dinounet.engine.errors import InputError
from napari_dinounet.engine.layout import infer_layout
from napari_dinounet.engine.outputs import ArrayOutput, Labels, MirrorVariance, Output, Probabilities
from napari_dinounet.engine.predict import predict, sliding_window
from napari_dinounet.engine.progress import drain
from napari_dinounet.engine.tiling import Blending


class MaxLogit(ArrayOutput):
    """A new output, written here and nowhere else: the largest blended logit per pixel, float32."""

    name = "max logits"
    blending = Blending(normalized=True)

    def block(self, logits):
        return logits.logits.max(dim=0).values.cpu().numpy()


def conv_net(in_channels=1, classes=3, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(in_channels, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, classes, 3, padding=1)
    ).eval()


def blobs(shape, seed=0):
    from scipy.ndimage import gaussian_filter

    field = gaussian_filter(np.random.default_rng(seed).normal(size=shape), 3)
    return ((field - field.min()) / (field.max() - field.min()) * 100).astype(np.float32)


def run(model, img, outputs, **kwargs):
    return drain(
        sliding_window(
            model,
            img,
            infer_layout(img.shape, kwargs.pop("channel_axis", None), kwargs.pop("slice_axis", None)),
            outputs,
            **{"patch_size": 64, **kwargs},
        )
    )


def normalized(img):
    norm = normalize.Normalization("zscore")
    planar = img[None]
    return torch.from_numpy(normalize.apply(planar, norm, normalize.statistics_for(planar, norm)))[None]


def test_an_output_added_outside_the_engine_gets_the_blended_logits():
    model = torch.nn.Conv2d(1, 3, 1).eval()  # pointwise: blending identical tile logits gives them back
    img = blobs((150, 170))
    (maxima,) = run(model, img, [MaxLogit()])
    assert maxima.shape == (150, 170) and maxima.dtype == np.float32
    with torch.no_grad():
        expected = model(normalized(img))[0].max(0).values.numpy()
    np.testing.assert_allclose(maxima, expected, atol=1e-5)
    volume = np.stack([img, img[::-1]])  # stacks too: each plane goes to its place
    (stacked,) = run(
        model, volume, [MaxLogit()], normalization=normalize.Normalization("ct", clip=(-1e9, 1e9), mean=0.0, std=1.0)
    )
    assert stacked.shape == (2, 150, 170)
    with torch.no_grad():
        flipped = model(torch.from_numpy(img[::-1].copy())[None, None])[0].max(0).values.numpy()
    np.testing.assert_allclose(stacked[1], flipped, atol=1e-4)


def test_several_outputs_come_from_one_run_equal_to_separate_runs():
    model = conv_net()
    img = blobs((150, 170))
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    probabilities, labels, maxima = run(model, img, [Probabilities(), Labels(), MaxLogit()])
    one_run = len(calls)
    np.testing.assert_array_equal(probabilities, drain(predict(model, img, patch_size=64, probabilities=True)))
    np.testing.assert_array_equal(labels, drain(predict(model, img, patch_size=64)))
    np.testing.assert_array_equal(labels, probabilities.argmax(0))
    assert 2 * one_run == len(calls) - one_run  # the two predict() calls ran the tiles once each, like the three
    assert maxima.shape == (150, 170) and np.all(np.isfinite(maxima))


def test_mirror_variance_is_the_variance_of_the_mirrors_probabilities():
    model = conv_net()
    img = blobs((64, 64))  # one tile: blending is the identity
    variance, probabilities = run(model, img, [MirrorVariance(), Probabilities()], mirror=True)
    x = normalized(img)
    with torch.no_grad():
        each = torch.stack([torch.softmax(model(x.flip(d)).flip(d)[0], 0) for d in ([], [-1], [-2], [-2, -1])])
    assert variance.shape == (3, 64, 64) and variance.dtype == np.float32
    np.testing.assert_allclose(variance, each.var(0, unbiased=False).numpy(), atol=1e-6)
    assert variance.max() > 1e-4  # the conv net is not mirror-symmetric
    # asking for each mirror's logits leaves the other outputs as they are
    np.testing.assert_array_equal(
        probabilities, drain(predict(model, img, patch_size=64, tta=True, probabilities=True))
    )
    (without,) = run(model, img, [MirrorVariance()])
    assert np.all(without == 0)  # one mirror: nothing to disagree with


class Calls(Output):
    """Records the calls an output gets."""

    def __init__(self):
        self.calls = []

    def start(self, layout):
        self.calls.append(("start", layout.spatial_shape, layout.slice_dim))

    def write(self, slice_index, rows, logits):
        self.calls.append(("write", slice_index))

    def finish(self):
        self.calls.append(("finish",))
        return "done"

    def close(self):
        self.calls.append(("close",))


def test_every_output_is_started_fed_finished_and_closed_in_order():
    output = Calls()
    assert run(conv_net(), blobs((3, 70, 90)), [output], slice_axis=2) == ("done",)
    assert output.calls[0] == ("start", (3, 70, 90), 2)
    writes = [call[1] for call in output.calls if call[0] == "write"]
    assert sorted(set(writes)) == list(range(90)) and writes == sorted(writes)
    assert output.calls[-2:] == [("finish",), ("close",)]


def test_a_closed_or_failed_run_closes_its_outputs_without_finishing_them():
    output = Calls()
    gen = sliding_window(conv_net(), blobs((300, 300)), infer_layout((300, 300)), [output], patch_size=64)
    for _ in range(3):
        next(gen)
    gen.close()
    assert output.calls[-1] == ("close",) and ("finish",) not in output.calls
    failing = Calls()
    with pytest.raises(InputError, match="turned tiles"):
        run(torch.nn.Conv2d(1, 2, 3), blobs((70, 90)), [failing])
    assert failing.calls[-1] == ("close",) and ("finish",) not in failing.calls


def test_an_out_that_does_not_fit_an_output_is_refused_before_any_tile():
    model = conv_net()
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    with pytest.raises(InputError, match=r"out must be float \(70, 90\) for max logits"):
        run(model, blobs((70, 90)), [Labels(), MaxLogit(out=np.zeros((70, 90), np.uint8))])
    assert calls == []
    out = np.zeros((70, 90), np.float32)
    (result,) = run(model, blobs((70, 90)), [MaxLogit(out=out)])
    assert result is out and out.any()
