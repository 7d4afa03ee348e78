"""The channels-last layout (``DinoUNet.use_channels_last``) computes today's logits: the fidelity
reference within 1e-5 relative, for every projection, and switching back gives the reference exactly."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from napari_dinounet.engine.projection import InstanceNorm

from .test_fidelity import PROJECTIONS, REFERENCE, fixed_inputs, fixed_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    return load_file(str(REFERENCE))


@pytest.fixture(scope="module")
def backbone():
    from napari_dinounet.engine.backbone import load_backbone

    with pytest.warns(UserWarning, match="RANDOM weights"):
        return load_backbone("random:tiny")


def relative_difference(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got - expected).abs().max() / expected.abs().max())


@pytest.mark.parametrize("projection", PROJECTIONS)
def test_channels_last_logits_equal_the_reference_within_1e_5(reference, backbone, projection):
    model = fixed_model(projection, backbone).use_channels_last()
    conv = model.decoder.stages[0].convs[0][0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    x, _ = fixed_inputs()
    with torch.no_grad():
        got = model(x)
    expected = reference[f"logits_{projection}"]
    assert got.shape == expected.shape and got.is_contiguous()
    assert relative_difference(got, expected) < 1e-5

    model.use_channels_last(False)
    assert conv.is_contiguous()
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-6, atol=4e-6)  # another CPU's fp32 rounding


def test_channels_last_keeps_the_heads_checkpoint(backbone):
    """The weights keep their names and values: a checkpoint written in either layout is the same."""
    model = fixed_model("fapm", backbone)
    before = {name: t.clone() for name, t in model.heads_state_dict().items()}
    after = model.use_channels_last().heads_state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[name], after[name]) for name in before)


def test_channels_last_deep_supervision_outputs_come_back_in_the_default_layout(backbone):
    from napari_dinounet.engine.network import build_dinounet

    torch.manual_seed(0)
    model = build_dinounet("tiny", num_classes=3, backbone=backbone, deep_supervision=True).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        got = model.use_channels_last()(x)
    assert [t.shape for t in got] == [t.shape for t in expected] == [(1, 3, 64, 64), (1, 3, 32, 32), (1, 3, 16, 16)]
    for g, e in zip(got, expected):
        assert g.is_contiguous() and relative_difference(g, e) < 1e-5


def test_instance_norm_keeps_channels_last_and_equals_pytorchs():
    torch.manual_seed(0)
    norm = InstanceNorm(8, eps=1e-5, affine=True)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = 3 * torch.randn(2, 8, 40, 24) + 1
    expected = torch.nn.functional.instance_norm(x, weight=norm.weight, bias=norm.bias, eps=1e-5)
    got = norm(x.contiguous(memory_format=torch.channels_last))
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert relative_difference(got, expected) < 1e-5
    assert torch.equal(norm(x), expected)  # the default layout takes PyTorch's own path
