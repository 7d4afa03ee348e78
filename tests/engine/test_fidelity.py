"""The network and the sliding window compute today's numbers: logits of a fixed tiny model on a fixed input,
stored in ``tests/fixtures/fidelity/reference.safetensors`` (written by ``python tests/test_fidelity.py``).

The heads are not stored (a tiny model's decoder alone is megabytes): every head tensor is filled from one
seeded generator in the order the network registers its modules, independent of how the modules initialise
themselves. A refactor that keeps the architecture keeps that order and therefore the numbers; renaming a
module keeps it too. The random tiny backbone is itself seeded from its name.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_dinounet.engine.backbone import load_backbone
from napari_dinounet.engine.network import build_dinounet
from napari_dinounet.engine.predict import predict
from napari_dinounet.engine.progress import drain

REFERENCE = Path(__file__).parents[1] / "fixtures" / "fidelity" / "reference.safetensors"
PROJECTIONS = ("fapm", "compact", "plain")
SEED = 20261202


def fixed_model(projection: str, backbone):
    """A tiny 3-class Dino U-Net whose head tensors come from one seeded generator, in registration order."""
    model = build_dinounet("tiny", projection=projection, num_classes=3, backbone=backbone)
    generator = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, tensor in model.heads_state_dict().items():
            if not tensor.is_floating_point():
                continue
            values = torch.randn(tensor.shape, generator=generator)
            if name.endswith("running_var"):
                values = 0.5 + values.abs()
            elif tensor.ndim > 1:
                values = values / math.sqrt(tensor[0].numel())  # fan-in scaling keeps activations O(1)
            else:
                values = 0.1 * values
            tensor.copy_(values)
    return model.eval()


def fixed_inputs():
    """(2, 3, 64, 96) network input and a (2, 90, 120) float32 stack for the sliding window."""
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(7))
    image = (np.random.default_rng(3).random((2, 90, 120)) * 200).astype(np.float32)
    return x, image


def compute(backbone) -> dict[str, torch.Tensor]:
    x, image = fixed_inputs()
    out = {}
    for projection in PROJECTIONS:
        model = fixed_model(projection, backbone)
        with torch.no_grad():
            out[f"logits_{projection}"] = model(x)
    probabilities = drain(
        predict(
            fixed_model("fapm", backbone),
            image,
            patch_size=64,
            step=0.5,
            tta=True,
            normalization="zscore",
            probabilities=True,
        )
    )
    out["probabilities_fapm"] = torch.from_numpy(np.ascontiguousarray(probabilities))
    return out


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(REFERENCE))


@pytest.fixture(scope="module")
def computed(quiet_backbone) -> dict[str, torch.Tensor]:
    return compute(quiet_backbone)


@pytest.fixture(scope="module")
def quiet_backbone():
    with pytest.warns(UserWarning, match="RANDOM weights"):
        return load_backbone("random:tiny")


@pytest.mark.parametrize("projection", PROJECTIONS)
def test_network_logits_equal_the_stored_reference(reference, computed, projection):
    expected, got = reference[f"logits_{projection}"], computed[f"logits_{projection}"]
    assert got.shape == expected.shape == (2, 3, 64, 96)
    assert expected.abs().max() > 0.1  # the reference is not a degenerate all-zero map
    # 4e-6: fp32 rounding of another CPU's kernels (an AMD EPYC differs from the reference's by up to 1.5e-6)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=4e-6)


def test_sliding_window_probabilities_equal_the_stored_reference(reference, computed):
    expected, got = reference["probabilities_fapm"], computed["probabilities_fapm"]
    assert got.shape == expected.shape == (3, 2, 90, 120)
    assert 0.05 < float(expected[1].mean()) < 0.95  # the classes compete: argmax is not constant
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_the_fill_reaches_every_head_tensor(quiet_backbone):
    """A head tensor the fill missed would keep its own random init, and the reference would not pin it."""
    model = fixed_model("fapm", quiet_backbone)
    fresh = build_dinounet("tiny", projection="fapm", num_classes=3, backbone=quiet_backbone).heads_state_dict()
    for name, tensor in model.heads_state_dict().items():
        if tensor.is_floating_point() and tensor.numel() > 1:
            assert not torch.equal(tensor, fresh[name]), name


if __name__ == "__main__":  # regenerate the reference (only when the numbers are meant to change)
    import warnings

    from safetensors.torch import save_file

    warnings.simplefilter("ignore")
    tensors = compute(load_backbone("random:tiny"))
    REFERENCE.parent.mkdir(parents=True, exist_ok=True)
    save_file({name: t.contiguous() for name, t in tensors.items()}, str(REFERENCE))
    print(json.dumps({name: list(t.shape) for name, t in tensors.items()}))
