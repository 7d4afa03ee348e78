"""Heads checkpoints: round trip, backbone identity, damaged files, tensors that do not fit, atomic writes."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from napari_dinounet import __version__
from napari_dinounet.engine.checkpoint import (
    FORMAT_VERSION,
    HeadsMetadata,
    current_heads_keys,
    load_heads,
    read_metadata,
    save_heads,
)
from napari_dinounet.engine.errors import CheckpointError, DinoUNetError, OutputError
from napari_dinounet.engine.network import build_dinounet


@pytest.fixture(scope="module")
def backbones(dinov3_tiny_dir):
    """Three tiny backbones of the same shape but different weights: official file, HF folder, random."""
    from napari_dinounet.engine.backbone import load_backbone

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random backbone's loud warning
        return {
            "official": load_backbone(dinov3_tiny_dir / "official_tiny.pth"),
            "hf": load_backbone(dinov3_tiny_dir / "hf_tiny"),
            "random": load_backbone("random:tiny"),
        }


def trained_heads(backbone, num_classes=3, channels=None, seed=0):
    torch.manual_seed(seed)
    model = build_dinounet(num_classes=num_classes, backbone=backbone, channels=channels).eval()
    for p in model.heads_state_dict().values():  # move the heads away from their init, as training would
        p.add_(torch.randn_like(p.float()).to(p.dtype) * 0.01 if p.is_floating_point() else 0)
    return model


def metadata_for(model, backbone, **extra) -> HeadsMetadata:
    names = ["background"] + [f"class {i}" for i in range(1, model.config.num_classes)]
    return HeadsMetadata(
        config=model.config.to_dict(),
        class_names=names,
        in_channels=extra.pop("in_channels", 1),
        normalization={"scheme": "zscore", "clip": None, "mean": None, "std": None},
        patch_size=64,
        spacing=(0.5, 0.25),
        backbone_variant=backbone.variant,
        backbone_sha256=backbone.sha256,
        library_version="0.0.0-ignored",
        training={"steps": 10, "final_loss": np.float32(0.25), "dice": np.array([0.5, 0.75])},
        **extra,
    )


def test_round_trip_gives_identical_outputs_and_metadata(backbones, tmp_path):
    backbone = backbones["official"]
    model = trained_heads(backbone, channels=(0, 2, 3))
    path = save_heads(tmp_path / "heads.safetensors", model, metadata_for(model, backbone, in_channels=5))
    loaded, meta = load_heads(path, backbone)
    assert not loaded.training
    x = torch.randn(2, 5, 64, 96)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert meta.config == model.config.to_dict()
    assert meta.class_names == ["background", "class 1", "class 2"] and meta.num_classes == 3
    assert meta.in_channels == 5 and meta.network_config().channels == (0, 2, 3)
    assert meta.patch_size == 64 and meta.spacing == (0.5, 0.25)
    assert meta.backbone_variant == "tiny" and meta.backbone_sha256 == backbone.sha256
    assert meta.backbone_num_heads == backbone.architecture.num_heads == 4  # recorded by save_heads
    assert len(meta.backbone_sha256) == 64
    assert meta.library_version == __version__
    assert meta.training == {"steps": 10, "final_loss": 0.25, "dice": [0.5, 0.75]}
    assert read_metadata(path) == meta


def test_file_holds_the_heads_and_no_backbone_tensor(backbones, tmp_path):
    backbone = backbones["random"]
    model = trained_heads(backbone, num_classes=2)
    path = save_heads(tmp_path / "heads.safetensors", model, metadata_for(model, backbone))
    with safe_open(str(path), framework="pt") as handle:
        keys = set(handle.keys())
        header = handle.metadata()
    assert keys == set(model.heads_state_dict())
    assert not any(k.startswith("backbone.") for k in keys)
    backbone_elements = sum(p.numel() for p in backbone.parameters())
    heads_bytes = sum(t.numel() * t.element_size() for t in model.heads_state_dict().values())
    assert path.stat().st_size < heads_bytes + 100_000 < heads_bytes + backbone_elements * 4
    assert header["format"] == "napari-dinounet-heads" and header["format_version"] == "2"


def test_checkpoint_for_another_backbone_is_refused_naming_both(backbones, tmp_path):
    official, hf, rand = backbones["official"], backbones["hf"], backbones["random"]
    model = trained_heads(official)
    path = save_heads(tmp_path / "heads.safetensors", model, metadata_for(model, official))
    with pytest.raises(CheckpointError) as err:
        load_heads(path, hf)
    message = str(err.value)
    assert official.sha256[:12] in message and hf.sha256[:12] in message and "'tiny'" in message
    assert "allow_backbone_mismatch" in message
    with pytest.raises(CheckpointError, match="random weights"):
        load_heads(path, rand)


def test_allow_backbone_mismatch_loads_anyway(backbones, tmp_path):
    official, hf = backbones["official"], backbones["hf"]
    model = trained_heads(official)
    path = save_heads(tmp_path / "heads.safetensors", model, metadata_for(model, official))
    with pytest.warns(UserWarning, match="using it anyway"):
        loaded, _ = load_heads(path, hf, allow_backbone_mismatch=True)
    assert loaded.backbone is hf
    for name, tensor in model.heads_state_dict().items():
        assert torch.equal(loaded.heads_state_dict()[name], tensor), name


def test_backbone_of_another_width_fails_even_when_allowed(backbones, tmp_path):
    from napari_dinounet.engine.backbone import load_backbone

    official = backbones["official"]
    model = trained_heads(official)
    path = save_heads(tmp_path / "heads.safetensors", model, metadata_for(model, official))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        small = load_backbone("random:s", device="meta")
        with pytest.raises(CheckpointError, match="width 64"):
            load_heads(path, small, allow_backbone_mismatch=True)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "pickle"])
def test_damaged_files_are_checkpoint_errors(backbones, tmp_path, damage):
    backbone = backbones["random"]
    model = trained_heads(backbone, num_classes=2)
    good = save_heads(tmp_path / "good.safetensors", model, metadata_for(model, backbone))
    bad = tmp_path / "bad.safetensors"
    content = good.read_bytes()
    if damage == "truncated":
        bad.write_bytes(content[: len(content) // 2])
    elif damage == "garbage":
        bad.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    elif damage == "empty":
        bad.write_bytes(b"")
    else:
        torch.save(model.heads_state_dict(), bad)
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        load_heads(bad, backbone)
    if damage != "truncated":  # a truncated file keeps its header: only the tensors are gone
        with pytest.raises(CheckpointError):
            read_metadata(bad)


def test_missing_file_and_backbone_weights_given_as_heads(backbones, dinov3_tiny_dir, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_heads(tmp_path / "nothing.safetensors", backbones["random"])
    with pytest.raises(CheckpointError, match="give it as the backbone"):
        read_metadata(dinov3_tiny_dir / "hf_tiny" / "model.safetensors")


def test_newer_format_asks_for_an_upgrade(backbones, tmp_path):
    backbone = backbones["random"]
    model = trained_heads(backbone, num_classes=2)
    header = {
        "format": "napari-dinounet-heads",
        "format_version": str(FORMAT_VERSION + 1),
        "heads": metadata_for(model, backbone).to_json(),
    }
    tensors = {k: v.contiguous() for k, v in model.heads_state_dict().items()}
    save_file(tensors, str(tmp_path / "h.safetensors"), metadata=header)
    with pytest.raises(CheckpointError, match="newer napari-dinounet"):
        read_metadata(tmp_path / "h.safetensors")


def test_format_1_files_with_the_old_classifier_names_give_identical_logits(backbones, tmp_path):
    """Format 1 (before "heads" meant only the trainable set) named the decoder's classifiers decoder.heads.N:
    such a file, written as that version wrote it (the same tensors, the old names, format_version 1), loads
    with outputs equal bit for bit, deep-supervision classifiers included."""
    backbone = backbones["official"]
    torch.manual_seed(0)
    model = build_dinounet(num_classes=3, backbone=backbone, deep_supervision=True).eval()
    for p in model.heads_state_dict().values():
        p.add_(torch.randn_like(p) * 0.01 if p.is_floating_point() else 0)
    new = save_heads(tmp_path / "new.safetensors", model, metadata_for(model, backbone))
    with safe_open(str(new), framework="pt") as handle:
        header = dict(handle.metadata(), format_version="1")
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118 (a safetensors file)
    old_names = {k.replace("decoder.classifiers.", "decoder.heads."): v for k, v in tensors.items()}
    assert sum(k.startswith("decoder.heads.") for k in old_names) == 6  # 3 classifiers, weight and bias
    save_file(old_names, str(tmp_path / "old.safetensors"), metadata=header)

    loaded, _ = load_heads(tmp_path / "old.safetensors", backbone)
    x = torch.randn(2, 1, 64, 96)
    with torch.no_grad():
        for got, expected in zip(loaded(x), model(x)):
            assert torch.equal(got, expected)
    assert current_heads_keys(old_names).keys() == model.heads_state_dict().keys()
    assert current_heads_keys(tensors).keys() == tensors.keys()  # today's names are left as they are


def test_tensors_that_do_not_fit_the_config_are_named(backbones, tmp_path):
    backbone = backbones["random"]
    two = trained_heads(backbone, num_classes=2)
    three = trained_heads(backbone, num_classes=3)
    path = tmp_path / "mixed.safetensors"
    header = {
        "format": "napari-dinounet-heads",
        "format_version": str(FORMAT_VERSION),
        "heads": metadata_for(three, backbone).to_json(),
    }  # says 3 classes
    save_file({k: v.contiguous() for k, v in two.heads_state_dict().items()}, str(path), metadata=header)
    with pytest.raises(CheckpointError, match="do not fit this network.*3 classes.*wrong shape"):
        load_heads(path, backbone)


def test_save_is_atomic_and_checks_its_metadata(backbones, tmp_path, monkeypatch):
    import safetensors.torch

    backbone = backbones["random"]
    model = trained_heads(backbone, num_classes=2)
    path = save_heads(tmp_path / "heads.safetensors", model, metadata_for(model, backbone))
    before = path.read_bytes()

    def fails_halfway(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", fails_halfway)
    other = trained_heads(backbone, num_classes=2, seed=1)
    with pytest.raises(OutputError, match="cannot write .*heads.safetensors.*disk full"):
        save_heads(path, other, metadata_for(other, backbone))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["heads.safetensors"]

    meta = metadata_for(model, backbone)
    meta.class_names = ["background"]
    with pytest.raises(DinoUNetError, match="name every class"):
        save_heads(tmp_path / "x.safetensors", model, meta)
    with pytest.raises(DinoUNetError, match="not the model's config"):
        save_heads(tmp_path / "x.safetensors", model, metadata_for(trained_heads(backbone, num_classes=3), backbone))
