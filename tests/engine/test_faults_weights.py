"""Faulty backbone weights (the 2026-12 reliability report): misnamed, random, pickled, non-finite, integer or
incomplete files and lying config.json files each give a one-line WeightsError naming the file and the fix."""

from __future__ import annotations

import json
import pickle
import random
import shutil

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from napari_dinounet.engine.backbone import load_backbone
from napari_dinounet.engine.errors import WeightsError


@pytest.fixture
def official_state(dinov3_tiny_dir) -> dict[str, torch.Tensor]:
    """The official-format tiny fixture as a fresh dict of tensors, free to edit."""
    return torch.load(dinov3_tiny_dir / "official_tiny.pth", weights_only=True)


def _hf_folder(dinov3_tiny_dir, tmp_path, config_changes=None, name="hf"):
    """A copy of the HF tiny fixture with ``config_changes`` applied to config.json (None deletes a key)."""
    folder = tmp_path / name
    shutil.copytree(dinov3_tiny_dir / "hf_tiny", folder)
    config = json.loads((folder / "config.json").read_text()) | (config_changes or {})
    (folder / "config.json").write_text(json.dumps({k: v for k, v in config.items() if v is not None}))
    return folder


class _Payload:
    """Unpickling this object creates a file: a stand-in for code hidden in a checkpoint."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _evil(tmp_path) -> dict:
    return {"cls_token": torch.zeros(1, 1, 64), "extra": _Payload(tmp_path / "payload_ran")}


# ---- pickled code, under any name (defect 15) ----


def test_pickled_code_is_refused_without_running_it(tmp_path):
    pickle.loads(pickle.dumps(_Payload(tmp_path / "proof")))  # the payload is live: plain unpickling runs it
    assert (tmp_path / "proof").exists()
    torch.save(_evil(tmp_path), tmp_path / "evil.pth")
    with pytest.raises(WeightsError, match="evil.pth: refused: the file holds Python objects or code"):
        load_backbone(tmp_path / "evil.pth")
    assert not (tmp_path / "payload_ran").exists()


@pytest.mark.parametrize("zipped", [True, False])
def test_pickled_code_named_safetensors_is_refused_as_code(tmp_path, zipped):
    # torch.load hands any *.safetensors path to safetensors, whose SafetensorError used to escape
    path = tmp_path / "evil.safetensors"
    torch.save(_evil(tmp_path), path, _use_new_zipfile_serialization=zipped)
    with pytest.raises(WeightsError, match="evil.safetensors: refused: the file holds Python objects or code"):
        load_backbone(path)
    assert not (tmp_path / "payload_ran").exists()


def test_pickled_code_as_the_model_safetensors_of_a_folder(dinov3_tiny_dir, tmp_path):
    folder = _hf_folder(dinov3_tiny_dir, tmp_path)
    torch.save(_evil(tmp_path), folder / "model.safetensors")
    with pytest.raises(WeightsError, match="hf/model.safetensors: refused: the file holds Python objects or code"):
        load_backbone(folder)
    assert not (tmp_path / "payload_ran").exists()


@pytest.mark.parametrize("zipped", [True, False])
def test_pytorch_weights_named_safetensors_are_to_be_renamed(official_state, tmp_path, zipped):
    path = tmp_path / "official.safetensors"
    torch.save(official_state, path, _use_new_zipfile_serialization=zipped)
    with pytest.raises(
        WeightsError,
        match=r"official.safetensors: this is a PyTorch file with a \.safetensors name; "
        r"rename it to \.pth$",
    ):
        load_backbone(path)
    renamed = path.rename(tmp_path / "official.pth")
    assert load_backbone(renamed).format == "official"  # the advice works


def test_pytorch_weights_as_the_model_safetensors_of_a_folder(dinov3_tiny_dir, tmp_path):
    folder = _hf_folder(dinov3_tiny_dir, tmp_path)
    torch.save(load_file(dinov3_tiny_dir / "hf_tiny" / "model.safetensors"), folder / "model.safetensors")
    with pytest.raises(WeightsError, match=r"hf/model.safetensors: this is a PyTorch file with a \.safetensors name"):
        load_backbone(folder)


# ---- random bytes are corrupt, not code (defect 22) ----


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("start", [b"\x80", b"\x80\x02"])  # the legacy pickle's first byte, and its protocol 2
def test_random_bytes_that_look_like_a_pickle_are_corrupt_not_code(tmp_path, seed, start):
    path = tmp_path / "download.pth"
    path.write_bytes(start + random.Random(seed).randbytes(20_000))
    with pytest.raises(
        WeightsError,
        match="download.pth: cannot be read as a PyTorch file, it is truncated or corrupt .*; download it again",
    ) as err:
        load_backbone(path)
    assert "Python objects" not in str(err.value)


def test_a_pickle_cut_short_is_corrupt_not_code(tmp_path):
    data = pickle.dumps(_evil(tmp_path), protocol=2)
    (tmp_path / "cut.pth").write_bytes(data[: len(data) - 10])  # the global is there, the STOP is not
    with pytest.raises(WeightsError, match="cut.pth: cannot be read as a PyTorch file, it is truncated or corrupt"):
        load_backbone(tmp_path / "cut.pth")
    assert not (tmp_path / "payload_ran").exists()


# ---- non-finite and integer weights (defect 5) ----


def test_nan_and_inf_in_some_blocks_are_refused_with_the_count_and_first_tensor(official_state, tmp_path):
    official_state["blocks.1.attn.qkv.weight"][3, :2] = float("nan")
    official_state["blocks.3.mlp.fc2.bias"][0] = float("-inf")
    torch.save(official_state, tmp_path / "nan.pth")
    with pytest.raises(
        WeightsError,
        match=r"nan.pth: 3 values are NaN or infinite, in 2 tensors \(the first: "
        r"blocks\.1\.attn\.qkv\.weight\); the file is damaged: download it again$",
    ):
        load_backbone(tmp_path / "nan.pth")


def test_nan_in_an_hf_folder_names_its_weights_file(dinov3_tiny_dir, tmp_path):
    folder = _hf_folder(dinov3_tiny_dir, tmp_path)
    state = load_file(dinov3_tiny_dir / "hf_tiny" / "model.safetensors")
    state["layer.2.norm1.weight"] = torch.full_like(state["layer.2.norm1.weight"], float("nan"))
    save_file(state, folder / "model.safetensors")
    with pytest.raises(
        WeightsError,
        match=r"hf/model.safetensors: 64 values are NaN or infinite, in 1 tensor "
        r"\(the first: layer\.2\.norm1\.weight\)",
    ):
        load_backbone(folder)


def test_integer_weights_are_refused_not_cast(official_state, tmp_path):
    torch.save({k: v.to(torch.int32) for k, v in official_state.items()}, tmp_path / "int.pth")
    with pytest.raises(
        WeightsError,
        match="int.pth: tensor cls_token holds int32 values, but DINOv3 weights are floating point .*converted wrongly",
    ):
        load_backbone(tmp_path / "int.pth")


@pytest.mark.parametrize("dtype", [torch.bool, torch.uint8, torch.int64])
def test_integer_or_boolean_qkv_bias_masks_are_accepted(official_state, dinov3_tiny_dir, tmp_path, dtype):
    # Meta's forward casts its bias masks to the bias's dtype: they are masks, not weights
    masks = [k for k in official_state if k.endswith(".qkv.bias_mask")]
    assert len(masks) == 4 and set(official_state[masks[0]].unique().tolist()) == {0.0, 1.0}
    torch.save({k: v.to(dtype) if k in masks else v for k, v in official_state.items()}, tmp_path / "masks.pth")
    got, want = load_backbone(tmp_path / "masks.pth"), load_backbone(dinov3_tiny_dir / "official_tiny.pth")
    assert all(torch.equal(got.vit.state_dict()[k], v) for k, v in want.vit.state_dict().items())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_weights_are_accepted(official_state, dinov3_tiny_dir, tmp_path, dtype):
    torch.save({k: v.to(dtype) for k, v in official_state.items()}, tmp_path / "half.pth")
    x = torch.randn(1, 3, 32, 32)
    got = load_backbone(tmp_path / "half.pth").features(x)[3]
    want = load_backbone(dinov3_tiny_dir / "official_tiny.pth").features(x)[3]
    torch.testing.assert_close(got, want, atol=0.1, rtol=0)  # the weights' rounding, nothing else


# ---- config.json that lies (defects 6, 16, 23) ----


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            {"hidden_size": 128},
            "hidden_size is 128, but the weights are 64 wide; this config.json belongs to another "
            "model or was edited: download it again",
        ),
        ({"hidden_size": "abc"}, "hidden_size is 'abc', not a positive whole number; download config.json again"),
        ({"hidden_size": 64.0}, "hidden_size is 64.0, not a positive whole number"),
        ({"num_attention_heads": 0}, "num_attention_heads is 0, not a positive whole number"),
        ({"num_attention_heads": "4"}, "num_attention_heads is '4', not a positive whole number"),
        ({"num_attention_heads": True}, "num_attention_heads is True, not a positive whole number"),
        (
            {"num_attention_heads": 3},
            "num_attention_heads 3 does not split the width 64 into heads whose width is a "
            r"multiple of 4 \(as DINOv3's RoPE needs\); config.json is wrong: download it again",
        ),
        ({"num_attention_heads": 7}, "num_attention_heads 7 does not split the width 64"),
        ({"num_attention_heads": 32}, "num_attention_heads 32 does not split the width 64"),  # heads of width 2
        ({"layer_norm_eps": "abc"}, "layer_norm_eps='abc', but DINOv3 backbones use 1e-05"),
    ],
)
def test_a_config_json_that_disagrees_or_is_damaged_is_named(dinov3_tiny_dir, tmp_path, changes, message):
    with pytest.raises(WeightsError, match="hf/config.json: " + message):
        load_backbone(_hf_folder(dinov3_tiny_dir, tmp_path, changes))


def test_config_head_count_is_what_the_backbone_records(dinov3_tiny_dir, tmp_path):
    # An HF folder's tensors do not show the head count: a lie that still divides the width builds another
    # network from the same tensors. architecture.num_heads says which, for heads checkpoints to compare.
    honest = load_backbone(_hf_folder(dinov3_tiny_dir, tmp_path, name="honest"))
    lying = load_backbone(_hf_folder(dinov3_tiny_dir, tmp_path, {"num_attention_heads": 1}, name="lying"))
    assert (honest.architecture.num_heads, lying.architecture.num_heads) == (4, 1)
    assert honest.sha256 == lying.sha256  # the hash covers the tensors only
    x = torch.randn(1, 3, 32, 32)
    assert (honest.features(x)[3] - lying.features(x)[3]).abs().max() > 0.1


def test_config_without_hidden_size_takes_the_width_from_the_tensors(dinov3_tiny_dir, tmp_path):
    backbone = load_backbone(_hf_folder(dinov3_tiny_dir, tmp_path, {"hidden_size": None}))
    assert (backbone.embed_dim, backbone.num_heads) == (64, 4)


def _official_folder(official_state, tmp_path, heads: int):
    """Meta's tensors (with their RoPE periods) saved as a folder's model.safetensors, with a config.json."""
    folder = tmp_path / f"heads{heads}"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in official_state.items()}, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({"hidden_size": 64, "num_attention_heads": heads}))
    return folder


def test_config_head_count_is_checked_against_the_rope_periods(official_state, tmp_path):
    assert load_backbone(_official_folder(official_state, tmp_path, 4)).num_heads == 4
    # 4 periods: heads of width 16, so 4 heads; 2 heads of width 32 would split the width too
    with pytest.raises(
        WeightsError,
        match=r"heads2/config.json: num_attention_heads 2 means heads of width 32, but "
        r"the weights' RoPE periods are for 4 heads of width 16; config.json is wrong",
    ):
        load_backbone(_official_folder(official_state, tmp_path, 2))


def test_rope_periods_that_do_not_divide_the_width(official_state, tmp_path):
    official_state["rope_embed.periods"] = official_state["rope_embed.periods"][:3]  # heads of width 12
    torch.save(official_state, tmp_path / "periods.pth")
    with pytest.raises(
        WeightsError,
        match="periods.pth: its RoPE periods are for heads of width 12, which does not "
        "divide its width 64; the file is damaged",
    ):
        load_backbone(tmp_path / "periods.pth")


def test_an_odd_width_without_a_head_count_says_how_to_give_one(tmp_path):
    model = timm.create_model("vit_small_patch16_dinov3", embed_dim=96, depth=4, num_heads=2, num_classes=0)
    save_file(model.state_dict(), tmp_path / "w96.safetensors")
    with pytest.raises(
        WeightsError,
        match="w96.safetensors: width 96 is not a multiple of DINOv3's head width 64, "
        "and the file does not say its head count; give it as a Hugging Face folder",
    ):
        load_backbone(tmp_path / "w96.safetensors")


# ---- blocks missing (defect 23) ----


def test_a_file_without_its_last_block_looks_incomplete(official_state, tmp_path):
    torch.save({k: v for k, v in official_state.items() if not k.startswith("blocks.3.")}, tmp_path / "cut.pth")
    with pytest.raises(
        WeightsError,
        match=r"cut.pth: holds only 3 blocks \(0..2\), where a DINOv3 'tiny' backbone "
        r"of its width has 4; the file looks incomplete \(its last blocks are missing\): download it "
        "again$",
    ):
        load_backbone(tmp_path / "cut.pth")


def test_a_gap_in_the_block_numbers_is_named(official_state, tmp_path):
    torch.save({k: v for k, v in official_state.items() if not k.startswith("blocks.1.")}, tmp_path / "gap.pth")
    with pytest.raises(WeightsError, match=r"gap.pth: blocks 1 of 0..3 are missing; the file looks incomplete"):
        load_backbone(tmp_path / "gap.pth")


def test_too_few_blocks_of_a_width_no_variant_has(tmp_path):
    model = timm.create_model("vit_small_patch16_dinov3", embed_dim=128, depth=3, num_heads=2, num_classes=0)
    save_file(model.state_dict(), tmp_path / "shallow.safetensors")
    with pytest.raises(
        WeightsError,
        match=r"shallow.safetensors: holds only 3 blocks \(0..2\), fewer than the four "
        "that Dino U-Net taps; the file looks incomplete",
    ):
        load_backbone(tmp_path / "shallow.safetensors")
