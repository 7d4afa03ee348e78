"""The frozen DINOv3 backbone: registry sizes, feature maps, equivalence with the official and HF models."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import timm
import torch
from safetensors.torch import load_file

from napari_dinounet.engine.backbone import VARIANTS, evenly_spaced_taps, load_backbone
from napari_dinounet.engine.errors import InputError, WeightsError

ATOL = 1e-5  # the fixtures README: official -> timm is exact, HF -> timm within 1.5e-6

# the timm definition each registry size must equal, tensor for tensor
TIMM_NAMES = {
    "s": "vit_small_patch16_dinov3_qkvb",
    "s+": "vit_small_plus_patch16_dinov3_qkvb",
    "b": "vit_base_patch16_dinov3_qkvb",
    "l": "vit_large_patch16_dinov3_qkvb",
    "h+": "vit_huge_plus_patch16_dinov3_qkvb",
    "7b": "vit_7b_patch16_dinov3",
}


@pytest.fixture(scope="module")
def inputs(dinov3_tiny_dir):
    return load_file(dinov3_tiny_dir / "inputs.safetensors")


@pytest.fixture(scope="module")
def official(dinov3_tiny_dir):
    return load_backbone(dinov3_tiny_dir / "official_tiny.pth")


@pytest.fixture(scope="module")
def hf(dinov3_tiny_dir):
    return load_backbone(dinov3_tiny_dir / "hf_tiny")


@pytest.mark.parametrize("name", list(TIMM_NAMES))
def test_random_variant_on_meta_matches_timm_definition(name):
    with pytest.warns(UserWarning, match="RANDOM weights"):
        backbone = load_backbone(f"random:{name}", device="meta")
    with torch.device("meta"):
        reference = timm.create_model(TIMM_NAMES[name], pretrained=False, num_classes=0)
    ours = {k: tuple(v.shape) for k, v in backbone.vit.state_dict().items()}
    assert ours == {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert backbone.num_params == sum(p.numel() for p in reference.parameters())
    assert all(p.is_meta for p in backbone.parameters())
    assert backbone.format == "random" and backbone.sha256 is None and not backbone.pretrained


def test_registry_sizes_and_taps():
    expected = {  # spec section 1; S+ and H+ evenly spaced
        "s": (384, 12, 6, (2, 5, 8, 11)),
        "s+": (384, 12, 6, (2, 5, 8, 11)),
        "b": (768, 12, 12, (2, 5, 8, 11)),
        "l": (1024, 24, 16, (4, 11, 17, 23)),
        "h+": (1280, 32, 20, (7, 15, 23, 31)),
        "7b": (4096, 40, 32, (9, 19, 29, 39)),
        "tiny": (64, 4, 4, (0, 1, 2, 3)),
    }
    for name, (dim, depth, heads, taps) in expected.items():
        with pytest.warns(UserWarning):
            b = load_backbone(f"random:{name}", device="meta")
        assert (b.variant, b.embed_dim, b.depth, b.num_heads, b.taps) == (name, dim, depth, heads, taps)
    assert VARIANTS["7b"].architecture.qkv_bias is False
    taps = [evenly_spaced_taps(d) for d in (4, 12, 32, 5)]
    assert taps == [(0, 1, 2, 3), (2, 5, 8, 11), (7, 15, 23, 31), (0, 1, 2, 4)]
    # the 7B head count the widgets show without allocating 27 GB
    assert load_backbone("random:7b", device="meta").num_params == 6_716_030_976


def test_unknown_random_variant_names_the_choices():
    with pytest.raises(WeightsError, match="use one of s, s\\+, b, l, h\\+, 7b, tiny"):
        load_backbone("random:xl")


# a digest of random:tiny's tensors, printed by a fresh interpreter (its own torch seed and hash salt)
_RANDOM_TINY_DIGEST = """
import hashlib, warnings
from napari_dinounet.engine.backbone import load_backbone
warnings.simplefilter("ignore")
digest = hashlib.sha256()
for name, tensor in load_backbone("random:tiny").vit.state_dict().items():
    digest.update(name.encode() + tensor.numpy().tobytes())
print(digest.hexdigest())
"""


def test_random_variant_is_the_same_network_in_every_process():
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    runs = [  # side by side: two imports of torch cost seconds each
        subprocess.Popen([sys.executable, "-c", _RANDOM_TINY_DIGEST], stdout=subprocess.PIPE, text=True, env=env)
        for _ in range(2)
    ]
    digests = [run.communicate(timeout=300)[0].strip() for run in runs]
    assert [run.returncode for run in runs] == [0, 0]
    assert len(digests[0]) == 64 and digests[0] == digests[1]


def test_random_variant_ignores_and_keeps_the_callers_rng():
    weights = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        state = torch.get_rng_state()
        with pytest.warns(UserWarning, match="RANDOM weights"):  # still loud
            weights.append(load_backbone("random:tiny").vit.state_dict())
        assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert weights[0]["blocks.0.attn.qkv.weight"].std() > 0  # really drawn, not left at a constant


def test_tiny_features_shapes_frozen_and_eval(tiny_backbone):
    x = torch.randn(2, 3, 64, 96)
    maps = tiny_backbone.features(x)
    assert [tuple(m.shape) for m in maps] == [(2, 64, 4, 6)] * 4
    assert all(m.dtype == torch.float32 and not m.requires_grad for m in maps)
    tiny_backbone.train()
    assert not tiny_backbone.training and not any(m.training for m in tiny_backbone.modules())
    assert not any(p.requires_grad for p in tiny_backbone.parameters())
    # gradients stay off even when the caller records a graph (the heads train on top)
    with torch.enable_grad():
        assert not tiny_backbone.features(x.requires_grad_())[0].requires_grad


def test_features_returns_blocks_in_the_order_asked(official):
    x = torch.randn(1, 3, 32, 48)
    ordered = official.features(x, [0, 1, 2, 3])
    shuffled = official.features(x, [3, 0, 3])
    for got, want in zip(shuffled, [ordered[3], ordered[0], ordered[3]]):
        torch.testing.assert_close(got, want, atol=0, rtol=0)
    assert (ordered[0] - ordered[3]).abs().max() > 0.1  # different blocks really differ


@pytest.mark.parametrize(
    "x, blocks, message",
    [
        (torch.randn(1, 3, 50, 64), None, "not a multiple of 16"),
        (torch.randn(1, 1, 64, 64), None, r"\(B, 3, H, W\)"),
        (torch.randn(3, 64, 64), None, r"\(B, 3, H, W\)"),
        (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), None, "float tensor"),
        (torch.randn(1, 3, 64, 64), [4], "blocks 0..3"),
    ],
)
def test_bad_input_is_an_input_error(tiny_backbone, x, blocks, message):
    with pytest.raises(InputError, match=message):
        tiny_backbone.features(x, blocks)


@pytest.mark.parametrize("name", ["x1", "x2"])
def test_official_fixture_equals_official_reference_every_block(official, inputs, dinov3_tiny_dir, name):
    ref = load_file(dinov3_tiny_dir / "official_reference_outputs.safetensors")
    x = inputs[name]
    normed = official.features(x, [0, 1, 2, 3])
    raw = official.features(x, [0, 1, 2, 3], norm=False)
    for i in range(4):
        torch.testing.assert_close(normed[i], ref[f"{name}.block{i}_norm_nchw"], atol=ATOL, rtol=0)
        torch.testing.assert_close(raw[i], ref[f"{name}.block{i}_raw_nchw"], atol=ATOL, rtol=0)
    torch.testing.assert_close(official.features(x)[3], ref[f"{name}.final_norm_patch_nchw"], atol=ATOL, rtol=0)


def test_official_fixture_uses_the_checkpoint_rope_periods(official, inputs, dinov3_tiny_dir):
    ref = load_file(dinov3_tiny_dir / "official_reference_outputs.safetensors")
    got = official.features(inputs["x1"], [3])[0]
    # the exact-fp32-period reference differs by ~1e-3: only the bf16 checkpoint periods give 1e-5
    assert (got - ref["x1.fp32periods.final_norm_patch_nchw"]).abs().max() > 1e-4
    assert official.vit.rope.periods.tolist() == [1.0, 3.15625, 10.0, 31.625]
    official.to(torch.bfloat16).to(torch.float32)  # a cast makes timm recompute fp32 periods; ours come back
    assert official.vit.rope.periods.tolist() == [1.0, 3.15625, 10.0, 31.625]


@pytest.mark.parametrize("name", ["x1", "x2"])
def test_hf_fixture_equals_hf_reference_every_block(hf, inputs, dinov3_tiny_dir, name):
    ref = load_file(dinov3_tiny_dir / "hf_reference_outputs.safetensors")
    x = inputs[name]
    raw = hf.features(x, [0, 1, 2, 3], norm=False)
    for i in range(4):
        torch.testing.assert_close(raw[i], ref[f"{name}.block{i}_raw_nchw"], atol=ATOL, rtol=0)
    torch.testing.assert_close(hf.features(x, [3])[0], ref[f"{name}.final_norm_patch_nchw"], atol=ATOL, rtol=0)


def test_fixture_backbones_report_what_they_are(official, hf, dinov3_tiny_dir):
    assert (official.format, official.variant, official.embed_dim, official.depth, official.num_heads) == (
        "official",
        "tiny",
        64,
        4,
        4,
    )
    assert (hf.format, hf.variant, hf.num_heads, hf.taps) == ("hf", "tiny", 4, (0, 1, 2, 3))
    # the manifest's SHA-256 of each file
    assert official.sha256 == "9c3a1a5bbd0767557d00e4842c5c1418e8882d6031ac416659a85429638d846c"
    assert hf.sha256 == "1aacee96b12c54446ae6d480631f47609c973cc37134b7358ff167c9aad04987"
    assert official.pretrained and hf.pretrained


def test_file_on_meta_device_is_checked_but_not_loaded(dinov3_tiny_dir):
    backbone = load_backbone(dinov3_tiny_dir / "official_tiny.pth", device="meta")
    assert all(p.is_meta for p in backbone.parameters())
    assert backbone.num_params == 249_856 and backbone.sha256.startswith("9c3a1a5b")
    with pytest.raises(InputError, match="meta device"):
        backbone.features(torch.randn(1, 3, 32, 32))
