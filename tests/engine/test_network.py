"""DinoUNet: the spec's parameter counts, shapes and channel handling, input errors, the frozen backbone,
gradients, heads state round trips, cached taps, config round trips, He init and the decoder."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from napari_dinounet.engine.backbone import load_backbone
from napari_dinounet.engine.decoder import SkipUpsampling, UNetDecoder
from napari_dinounet.engine.errors import CheckpointError, DinoUNetError, InputError
from napari_dinounet.engine.network import SIZES, DinoUNet, DinoUNetConfig, build_dinounet

# spec section 5: trainable parameters with nc = 2, all three decoder heads counted
SPEC_COUNTS = {
    ("s", "fapm"): 6_194_948, ("s", "compact"): 5_106_084, ("s", "plain"): 4_638_854,
    ("b", "fapm"): 13_182_020, ("b", "compact"): 11_650_788, ("b", "plain"): 11_318_726,
    ("l", "fapm"): 19_969_988, ("l", "compact"): 18_143_844, ("l", "plain"): 17_901_894,
    ("7b", "fapm"): 234_332_612, ("7b", "compact"): 228_967_524, ("7b", "plain"): 229_806_918,
}  # fmt: skip


def closed_form(d: int, projection: str, nc: int) -> float:
    linear, constant = {"fapm": (3219.5, 3_041_278), "compact": (2067.5, 2_394_782), "plain": (2419.5, 1_792_384)}[
        projection
    ]
    return 13 * d * d + linear * d + constant + 227 * nc


_meta_backbones: dict[str, object] = {}


def meta_model(size: str, projection: str, nc: int = 2) -> DinoUNet:
    """The network on the meta device: no memory, so 7B counts anywhere."""
    if size not in _meta_backbones:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the random backbone's not-pretrained warning
            _meta_backbones[size] = load_backbone(f"random:{size}", device="meta")
    return build_dinounet(projection=projection, num_classes=nc, backbone=_meta_backbones[size])


@pytest.mark.parametrize("size, projection", list(SPEC_COUNTS))
def test_trainable_parameters_equal_the_spec_table(size, projection):
    model = meta_model(size, projection)
    assert next(model.adapter.parameters()).is_meta
    counts = model.trainable_params()
    assert counts["total"] == SPEC_COUNTS[size, projection]
    assert counts["total"] == closed_form(model.config.embed_dim, projection, 2)
    assert counts["total"] == sum(counts[k] for k in ("adapter", "projection", "upsampling", "decoder"))


@pytest.mark.parametrize("size, d", [("s+", 384), ("h+", 1280)])
@pytest.mark.parametrize("projection", ["fapm", "compact", "plain"])
def test_trainable_parameters_follow_the_closed_forms_for_s_plus_and_h_plus(size, d, projection):
    model = meta_model(size, projection, nc=5)
    assert model.config.embed_dim == d
    assert model.trainable_params()["total"] == closed_form(d, projection, 5)


def test_the_size_registry():
    assert set(SIZES) == {"s", "s+", "b", "l", "h+", "7b", "tiny"}
    assert (SIZES["l"].embed_dim, SIZES["l"].taps) == (1024, (4, 11, 17, 23))
    assert (SIZES["7b"].embed_dim, SIZES["7b"].taps) == (4096, (9, 19, 29, 39))
    assert SIZES["s"].projection == "fapm" and SIZES["s"].num_classes == 2


@pytest.fixture(scope="module")
def model(tiny_backbone):
    torch.manual_seed(0)
    return build_dinounet(backbone=tiny_backbone, num_classes=3).eval()


@pytest.mark.parametrize("projection", ["fapm", "compact", "plain"])
def test_non_square_input_gives_full_resolution_logits(tiny_backbone, projection):
    torch.manual_seed(1)
    net = build_dinounet(backbone=tiny_backbone, projection=projection, num_classes=4).eval()
    with torch.no_grad():
        logits = net(torch.randn(2, 1, 96, 160))
    assert logits.shape == (2, 4, 96, 160)
    assert torch.isfinite(logits).all()


def test_one_two_and_three_channel_inputs(model):
    torch.manual_seed(2)
    x = torch.randn(1, 3, 64, 96)
    assert torch.equal(model.to_three_channels(x[:, :1]), x[:, [0, 0, 0]])
    assert torch.equal(model.to_three_channels(x[:, :2]), x[:, [0, 1, 0]])
    assert torch.equal(model.to_three_channels(x), x)
    with torch.no_grad():
        for c in (1, 2, 3):
            assert model(x[:, :c]).shape == (1, 3, 64, 96)
        torch.testing.assert_close(model(x[:, :1]), model(x[:, [0, 0, 0]]))
        torch.testing.assert_close(model(x[:, :2]), model(x[:, [0, 1, 0]]))


def test_more_than_three_channels_need_a_channel_choice(model, tiny_backbone):
    x = torch.randn(1, 4, 64, 64)
    with pytest.raises(InputError, match=r"4 channels.*channels=\(i, j, k\)"):
        model(x)
    chosen = build_dinounet(backbone=tiny_backbone, num_classes=3, channels=(0, 2, 3)).eval()
    chosen.load_heads_state_dict(model.heads_state_dict())
    with torch.no_grad():
        torch.testing.assert_close(chosen(x), model(x[:, [0, 2, 3]]))
    with pytest.raises(InputError, match="asks for channel 3 but the input has 3 channels"):
        chosen(x[:, :3])


@pytest.mark.parametrize(
    "x, message",
    [
        (torch.randn(1, 1, 100, 96), "100x96 is not a multiple of 32"),
        (torch.randn(1, 1, 64, 80), "64x80 is not a multiple of 32"),
        (torch.ones(1, 1, 64, 64, dtype=torch.uint8), "float tensor"),
        (torch.randn(64, 64), r"\(B, C, H, W\) tensor, got \(64, 64\)"),
    ],
)
def test_bad_inputs_are_clear_errors(model, x, message):
    with pytest.raises(InputError, match=message):
        model(x)


def test_train_mode_keeps_the_backbone_frozen_and_every_used_head_gets_a_gradient(tiny_backbone):
    torch.manual_seed(3)
    net = build_dinounet(backbone=tiny_backbone, num_classes=3)
    net.train()
    assert not net.backbone.training and not any(m.training for m in net.backbone.modules())
    assert net.adapter.training and net.decoder.training
    net(torch.randn(2, 2, 64, 96)).logsumexp(1).mean().backward()
    unused = [
        "decoder.classifiers.0.weight",
        "decoder.classifiers.0.bias",
        "decoder.classifiers.1.weight",
        "decoder.classifiers.1.bias",
    ]
    assert net.unused_parameter_names() == unused
    without = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert without == unused
    assert all(p.grad is None and not p.requires_grad for p in net.backbone.parameters())
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert all(torch.isfinite(g).all() for g in grads)
    assert sum(int(torch.count_nonzero(g)) for g in grads) > 0.9 * sum(g.numel() for g in grads)


def test_deep_supervision_returns_three_resolutions_and_uses_every_head(tiny_backbone):
    torch.manual_seed(4)
    net = build_dinounet(backbone=tiny_backbone, num_classes=3, deep_supervision=True).train()
    outputs = net(torch.randn(1, 1, 64, 96))
    assert [tuple(o.shape) for o in outputs] == [(1, 3, 64, 96), (1, 3, 32, 48), (1, 3, 16, 24)]
    sum(o.mean() for o in outputs).backward()
    assert net.unused_parameter_names() == []
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


def test_heads_state_dict_has_no_backbone_tensor_and_round_trips(model, tiny_backbone):
    state = model.heads_state_dict()
    backbone_tensors = set(tiny_backbone.state_dict())
    assert state and not any(k.startswith("backbone.") for k in state)
    assert {k.split(".")[0] for k in state} == {"adapter", "projection", "upsampling", "decoder"}
    assert "adapter.norms.0.running_var" in state  # batch-norm statistics travel with the heads
    assert len(state) + len(backbone_tensors) == len(model.state_dict())
    torch.manual_seed(99)
    fresh = build_dinounet(backbone=tiny_backbone, num_classes=3).eval()
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        before, expected = fresh(x), model(x)
        assert not torch.allclose(before, expected)
        fresh.load_heads_state_dict({k: v.clone() for k, v in state.items()})
        assert torch.equal(fresh(x), expected)


def test_loading_heads_of_another_configuration_is_a_clear_error(model, tiny_backbone):
    plain = build_dinounet(backbone=tiny_backbone, projection="plain", num_classes=3)
    with pytest.raises(CheckpointError, match="missing.*projection.*build the network from the checkpoint"):
        plain.load_heads_state_dict(model.heads_state_dict())
    two_classes = build_dinounet(backbone=tiny_backbone, num_classes=2)
    with pytest.raises(CheckpointError, match=r"wrong shape \['decoder.classifiers.0.bias'"):
        two_classes.load_heads_state_dict(model.heads_state_dict())


def test_precomputed_taps_give_the_same_logits(model):
    x = torch.randn(2, 2, 64, 96)
    with torch.no_grad():
        taps = model.backbone_taps(x)
        assert [tuple(t.shape) for t in taps] == [(2, 64, 4, 6)] * 4
        assert torch.equal(model(x, taps=taps), model(x))
        # a cache may keep them in bf16: the result only moves by the rounding of the features
        torch.testing.assert_close(model(x, taps=[t.bfloat16() for t in taps]), model(x), atol=0.1, rtol=0)
        with pytest.raises(InputError, match="compute them with model.backbone_taps"):
            model(x, taps=taps[:3])
        with pytest.raises(InputError, match=r"shape \(1, 64, 4, 6\)"):
            model(x[:1], taps=taps)


def test_config_round_trips_through_json(tiny_backbone):
    net = build_dinounet(backbone=tiny_backbone, projection="compact", num_classes=5, channels=[2, 0])
    data = json.loads(json.dumps(net.config.to_dict()))
    assert data["taps"] == [0, 1, 2, 3] and data["channels"] == [2, 0] and data["size"] == "tiny"
    config = DinoUNetConfig.from_dict(data)
    assert config == net.config and config.channels == (2, 0)
    with pytest.raises(CheckpointError, match=r"does not know \(rank, zoom\): a newer napari-dinounet probably"):
        DinoUNetConfig.from_dict({**data, "rank": 3, "zoom": 2})
    with pytest.raises(CheckpointError, match="misses keys embed_dim: the checkpoint was edited or damaged"):
        DinoUNetConfig.from_dict({k: v for k, v in data.items() if k != "embed_dim"})
    older = {k: v for k, v in data.items() if k not in ("grad_checkpointing", "deep_supervision")}
    assert DinoUNetConfig.from_dict(older) == config  # a file from before those options: their defaults
    with pytest.raises(CheckpointError, match="invalid.*unknown projection 'x'"):
        DinoUNetConfig.from_dict({**data, "projection": "x"})


def test_building_checks_its_options(tiny_backbone):
    with pytest.raises(DinoUNetError, match=r"size 's' does not match the backbone given \('tiny'\)"):
        build_dinounet("s", backbone=tiny_backbone)
    with pytest.raises(DinoUNetError, match="unknown size 'xl'"):
        build_dinounet("xl")
    with pytest.raises(DinoUNetError, match="at least 2"):
        build_dinounet(backbone=tiny_backbone, num_classes=1)
    with pytest.raises(DinoUNetError, match="1 to 3 input channel indices"):
        build_dinounet(backbone=tiny_backbone, channels=(0, 1, 2, 3))
    with pytest.raises(CheckpointError, match="width 384.*width 64"):
        DinoUNet(SIZES["s"], tiny_backbone)
    net = build_dinounet("tiny", backbone=tiny_backbone, grad_checkpointing=True)
    assert net.adapter.grad_checkpointing and net.config.grad_checkpointing


def test_he_initialisation_of_the_heads_keeps_the_adapter_init(model, tiny_backbone):
    torch.manual_seed(5)
    net = build_dinounet(backbone=tiny_backbone, num_classes=3)
    adapter_before = {k: v.clone() for k, v in net.adapter.state_dict().items()}
    net.init_heads_he()
    assert all(torch.equal(v, net.adapter.state_dict()[k]) for k, v in adapter_before.items())
    conv = net.decoder.stages[0].convs[0][0]  # 256 -> 128, 3x3: fan_in 2304
    expected_std = (2 / (1 + 0.01**2) / 2304) ** 0.5
    assert abs(conv.weight.std().item() - expected_std) < 0.03 * expected_std
    assert torch.count_nonzero(conv.bias) == 0
    assert torch.count_nonzero(net.projection.film[0].bias) == 0


def test_skip_upsampling_applies_one_transposed_conv_twice():
    torch.manual_seed(6)
    up = SkipUpsampling((4, 8, 8, 8))
    maps = [torch.randn(1, c, 8 >> i, 16 >> i) for i, c in enumerate((4, 8, 8, 8))]
    skips = up(maps, (32, 64))
    assert [tuple(s.shape[-2:]) for s in skips] == [(32, 64), (16, 32), (8, 16), (4, 8)]
    torch.testing.assert_close(skips[1], up.convs[1](up.convs[1](maps[1])))
    # a leftover mismatch is resized bilinearly; without learnable convs resizing does it all
    odd = up([torch.randn(1, 4, 5, 5)] + maps[1:], (24, 64))[0]
    assert odd.shape == (1, 4, 24, 64)
    bilinear = SkipUpsampling((4, 8, 8, 8), learnable=False)
    assert sum(p.numel() for p in bilinear.parameters()) == 0
    assert [tuple(s.shape[-2:]) for s in bilinear(maps, (32, 64))] == [(32, 64), (16, 32), (8, 16), (4, 8)]


def test_decoder_stage_widths():
    decoder = UNetDecoder(num_classes=2)
    assert [(s.up.in_channels, s.up.out_channels) for s in decoder.stages] == [(256, 128), (128, 64), (64, 32)]
    assert [(s.convs[0][0].in_channels, s.convs[1][0].out_channels) for s in decoder.stages] == [
        (256, 128),
        (128, 64),
        (64, 32),
    ]
    assert [c.in_channels for c in decoder.classifiers] == [128, 64, 32]
