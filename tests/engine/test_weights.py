"""Weight files: timm / custom / SwiGLU layouts load exactly; bad files give a WeightsError naming the problem."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from napari_dinounet.engine.backbone import load_backbone
from napari_dinounet.engine.errors import WeightsError
from napari_dinounet.engine.weights import hf_to_timm, read_weights, sha256_of

ATOL = 1e-5


@pytest.fixture(scope="module")
def inputs(dinov3_tiny_dir):
    return load_file(dinov3_tiny_dir / "inputs.safetensors")


def _timm_dinov3(swiglu: bool, qkv_bias: bool, num_heads: int = 2) -> torch.nn.Module:
    """A non-standard DINOv3 ViT straight from timm (width 128, depth 6, MLP 200) with busy weights."""
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_small_patch16_dinov3",
        embed_dim=128,
        depth=6,
        num_heads=num_heads,
        mlp_ratio=200 / 128,
        swiglu_mlp=swiglu,
        swiglu_align_to=8 if swiglu else 0,
        qkv_bias=qkv_bias,
        num_classes=0,
    ).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():  # timm's init leaves layer scales at 1e-5: blocks would be idle
            p.copy_(torch.randn_like(p) * (0.5 if "gamma" in name else 0.1) + (1.0 if "norm" in name else 0.0))
    return model


def _timm_features(model, x, periods=None):
    if periods is not None:
        model.rope.periods.copy_(periods)
    with torch.no_grad():
        return model.forward_intermediates(x, indices=list(range(6)), norm=True, intermediates_only=True)


def _to_official(state: dict) -> dict:
    """timm keys -> Meta's (what Meta's 7B .pth looks like when qkv bias is off), plus pretraining-only tensors."""
    out = {}
    for key, value in state.items():
        for timm_name, meta_name in (
            ("reg_token", "storage_tokens"),
            ("gamma_1", "ls1.gamma"),
            ("gamma_2", "ls2.gamma"),
            ("mlp.fc1_g", "mlp.w1"),
            ("mlp.fc1_x", "mlp.w2"),
            ("mlp.fc2", "mlp.w3"),
        ):
            key = key.replace(timm_name, meta_name)
        out[key] = value
    dim = state["cls_token"].shape[-1]
    out["mask_token"] = torch.randn(1, dim)
    out["local_cls_norm.weight"], out["local_cls_norm.bias"] = torch.randn(dim), torch.randn(dim)
    return out


def _to_hf(state: dict) -> dict:
    """timm keys -> Hugging Face DINOv3ViTModel keys (gated MLP), with a k bias softmax must ignore."""
    out = {
        "embeddings.cls_token": state["cls_token"],
        "embeddings.register_tokens": state["reg_token"],
        "embeddings.mask_token": torch.zeros_like(state["cls_token"]),
        "embeddings.patch_embeddings.weight": state["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.bias": state["patch_embed.proj.bias"],
        "norm.weight": state["norm.weight"],
        "norm.bias": state["norm.bias"],
    }
    for i in range(6):
        b, h = f"blocks.{i}.", f"layer.{i}."
        q, k, v = state[b + "attn.qkv.weight"].chunk(3)
        out |= {h + "attention.q_proj.weight": q, h + "attention.k_proj.weight": k, h + "attention.v_proj.weight": v}
        out[h + "attention.q_proj.bias"] = state[b + "attn.q_bias"]
        out[h + "attention.v_proj.bias"] = state[b + "attn.v_bias"]
        out[h + "attention.k_proj.bias"] = torch.randn_like(state[b + "attn.q_bias"])
        for timm_name, hf_name in (
            ("attn.proj", "attention.o_proj"),
            ("mlp.fc1_g", "mlp.gate_proj"),
            ("mlp.fc1_x", "mlp.up_proj"),
            ("mlp.fc2", "mlp.down_proj"),
            ("norm1", "norm1"),
            ("norm2", "norm2"),
        ):
            for leaf in ("weight", "bias"):
                out[f"{h}{hf_name}.{leaf}"] = state[f"{b}{timm_name}.{leaf}"]
        out[h + "layer_scale1.lambda1"], out[h + "layer_scale2.lambda1"] = state[b + "gamma_1"], state[b + "gamma_2"]
    return out


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_timm_layout_file_reloads_equal_to_hf_reference(dinov3_tiny_dir, inputs, tmp_path, suffix):
    hf = load_backbone(dinov3_tiny_dir / "hf_tiny")
    path = tmp_path / f"timm_tiny{suffix}"
    state = hf.vit.state_dict()
    save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)
    timm_backbone = load_backbone(path)
    assert (timm_backbone.format, timm_backbone.variant, timm_backbone.num_heads) == ("timm", "tiny", 4)
    ref = load_file(dinov3_tiny_dir / "hf_reference_outputs.safetensors")
    for name in ("x1", "x2"):
        raw = timm_backbone.features(inputs[name], [0, 1, 2, 3], norm=False)
        for i in range(4):
            torch.testing.assert_close(raw[i], ref[f"{name}.block{i}_raw_nchw"], atol=ATOL, rtol=0)


def test_official_saved_in_timm_layout_has_timm_fp32_periods(dinov3_tiny_dir, inputs, tmp_path):
    official = load_backbone(dinov3_tiny_dir / "official_tiny.pth")
    save_file(official.vit.state_dict(), tmp_path / "t.safetensors")
    got = load_backbone(tmp_path / "t.safetensors").features(inputs["x2"], [3])[0]
    ref = load_file(dinov3_tiny_dir / "official_reference_outputs.safetensors")
    # a timm file carries no periods: it reproduces Meta's model run with exact fp32 periods
    torch.testing.assert_close(got, ref["x2.fp32periods.final_norm_patch_nchw"], atol=ATOL, rtol=0)


def test_custom_size_timm_file_is_detected_from_shapes(tmp_path):
    model = _timm_dinov3(swiglu=False, qkv_bias=True)
    save_file(model.state_dict(), tmp_path / "custom.safetensors")
    backbone = load_backbone(tmp_path / "custom.safetensors")
    assert (backbone.variant, backbone.embed_dim, backbone.depth, backbone.num_heads) == ("custom", 128, 6, 2)
    assert backbone.taps == (0, 2, 3, 5)
    x = torch.randn(1, 3, 48, 32)
    for got, want in zip(backbone.features(x, range(6)), _timm_features(model, x)):
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def test_official_7b_style_swiglu_without_qkv_bias(tmp_path):
    model = _timm_dinov3(swiglu=True, qkv_bias=False)
    periods = model.rope.periods.bfloat16()  # as in Meta's files
    torch.save({**_to_official(model.state_dict()), "rope_embed.periods": periods}, tmp_path / "meta.pth")
    backbone = load_backbone(tmp_path / "meta.pth")
    assert (backbone.format, backbone.variant, backbone.num_heads) == ("official", "custom", 2)
    assert backbone.architecture.swiglu and not backbone.architecture.qkv_bias
    x = torch.randn(2, 3, 32, 64)
    for got, want in zip(backbone.features(x, range(6)), _timm_features(model, x, periods.float())):
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def test_hf_gated_folder_takes_heads_from_config(tmp_path):
    # 4 heads of 32, not timm's default 64: only config.json can tell
    model = _timm_dinov3(swiglu=True, qkv_bias=True, num_heads=4)
    (tmp_path / "hf").mkdir()
    save_file(_to_hf(model.state_dict()), tmp_path / "hf" / "model.safetensors")
    config = {
        "model_type": "dinov3_vit",
        "hidden_size": 128,
        "num_attention_heads": 4,
        "use_gated_mlp": True,
        "layer_norm_eps": 1e-5,
        "rope_theta": 100.0,
        "patch_size": 16,
    }
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    backbone = load_backbone(tmp_path / "hf")
    assert (backbone.format, backbone.num_heads, backbone.vit.rope.periods.numel()) == ("hf", 4, 8)
    x = torch.randn(1, 3, 32, 32)
    for got, want in zip(backbone.features(x, range(6)), _timm_features(model, x)):
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def test_hf_keys_inside_transformers_have_a_model_prefix(dinov3_tiny_dir):
    plain = load_file(dinov3_tiny_dir / "hf_tiny" / "model.safetensors")
    prefixed = {f"model.{k}": v for k, v in plain.items()}
    a, b = hf_to_timm(plain), hf_to_timm(prefixed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_official_checkpoint_wrapped_in_a_training_dict(dinov3_tiny_dir, tmp_path):
    state = torch.load(dinov3_tiny_dir / "official_tiny.pth", weights_only=True)
    torch.save({"model": state, "epoch": torch.tensor(3)}, tmp_path / "wrapped.pth")
    weights = read_weights(tmp_path / "wrapped.pth")
    assert weights.format == "official" and weights.head_dim == 16
    assert "blocks.3.attn.q_bias" in weights.state_dict and "mask_token" not in weights.state_dict


def test_sha256_streams_over_all_files(tmp_path):
    (tmp_path / "a").write_bytes(b"x" * 100_000)
    (tmp_path / "b").write_bytes(b"yz")
    expected = hashlib.sha256(b"x" * 100_000 + b"yz").hexdigest()
    assert sha256_of([tmp_path / "a", tmp_path / "b"]) == expected


# ---- bad input: a WeightsError naming the file and the problem ----


def test_missing_path(tmp_path):
    with pytest.raises(WeightsError, match="nope.pth: no such file or folder.*dinov3-downloads"):
        load_backbone(tmp_path / "nope.pth")


def test_text_file(tmp_path):
    (tmp_path / "notes.pth").write_text("these are not weights\n")
    with pytest.raises(WeightsError, match="notes.pth: a text file, not model weights"):
        load_backbone(tmp_path / "notes.pth")


@pytest.mark.parametrize("name", ["official_tiny.pth", "hf_tiny/model.safetensors"])
def test_truncated_file(dinov3_tiny_dir, tmp_path, name):
    data = (dinov3_tiny_dir / name).read_bytes()
    cut = tmp_path / ("cut" + (dinov3_tiny_dir / name).suffix)
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match=f"{cut.name}: cannot be read .* truncated or corrupt"):
        load_backbone(cut)


def test_other_network(tmp_path):
    import torchvision

    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "resnet.pth")
    with pytest.raises(WeightsError, match=r"resnet.pth: not a DINOv3 ViT checkpoint \(122 tensors, keys like conv1"):
        load_backbone(tmp_path / "resnet.pth")


def test_dinov3_file_with_a_tensor_missing_or_misshapen(dinov3_tiny_dir, tmp_path):
    state = torch.load(dinov3_tiny_dir / "official_tiny.pth", weights_only=True)
    del state["blocks.2.mlp.fc2.weight"]
    state["blocks.1.attn.proj.weight"] = torch.zeros(64, 32)
    torch.save(state, tmp_path / "holey.pth")
    with pytest.raises(WeightsError, match="holey.pth: does not fit .* missing blocks.2.mlp.fc2.weight") as err:
        load_backbone(tmp_path / "holey.pth")
    assert "blocks.1.attn.proj.weight is (64, 32), expected (64, 64)" in str(err.value)


def test_hf_folder_without_weights(dinov3_tiny_dir, tmp_path):
    shutil.copy(dinov3_tiny_dir / "hf_tiny" / "config.json", tmp_path / "config.json")
    with pytest.raises(WeightsError, match="has no weights \\(no model.safetensors\\)"):
        load_backbone(tmp_path)


def test_hf_folder_of_another_rope_or_norm(dinov3_tiny_dir, tmp_path):
    shutil.copytree(dinov3_tiny_dir / "hf_tiny", tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config | {"layer_norm_eps": 1e-6}))
    with pytest.raises(WeightsError, match="layer_norm_eps=1e-06, but DINOv3 backbones use 1e-05"):
        load_backbone(tmp_path / "hf")
