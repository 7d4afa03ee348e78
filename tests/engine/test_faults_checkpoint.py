"""Faults of heads checkpoints from the December reliability report: crafted and damaged files, diverged heads,
a backbone whose config.json lies about its head count.

Every crafted file is built here from a good one by editing its header (as the report's fixtures were): each must
be a CheckpointError naming the file, never a traceback or a silently wrong network.
"""

from __future__ import annotations

import json
import shutil
import struct
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from napari_dinounet.engine.backbone import load_backbone
from napari_dinounet.engine.checkpoint import FORMAT_VERSION, HeadsMetadata, load_heads, read_metadata, save_heads
from napari_dinounet.engine.errors import CheckpointError, DinoUNetError
from napari_dinounet.engine.network import build_dinounet


@pytest.fixture(scope="module")
def backbone():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random backbone's loud warning
        return load_backbone("random:tiny")


def two_class_heads(backbone, path: Path, **fields) -> Path:
    """A 2-class heads checkpoint for ``backbone`` trained on 1-channel images, as training writes one."""
    torch.manual_seed(0)
    model = build_dinounet(num_classes=2, backbone=backbone)
    metadata = HeadsMetadata(
        config=model.config.to_dict(),
        class_names=["background", "nucleus"],
        in_channels=1,
        normalization={"scheme": "zscore"},
        patch_size=64,
        backbone_variant=backbone.variant,
        backbone_sha256=backbone.sha256,
        **fields,
    )
    return save_heads(path, model, metadata)


@pytest.fixture(scope="module")
def good(backbone, tmp_path_factory) -> Path:
    return two_class_heads(backbone, tmp_path_factory.mktemp("heads") / "good.safetensors")


def craft(good: Path, path: Path, heads_text: str) -> Path:
    """``good`` with its header's ``heads`` description replaced by ``heads_text`` (tensors untouched)."""
    content = good.read_bytes()
    size = struct.unpack("<Q", content[:8])[0]
    header = json.loads(content[8 : 8 + size])
    header["__metadata__"]["heads"] = heads_text
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)  # safetensors aligns the tensor data to 8 bytes
    path.write_bytes(struct.pack("<Q", len(text)) + text + content[8 + size :])
    return path


def edited(good: Path, path: Path, **changes) -> Path:
    """``good`` with fields of its description changed; ``config_<key>`` changes a network config key and a
    value of ``...`` removes the field."""
    heads = json.loads(read_metadata(good).to_json())
    for name, value in changes.items():
        where, key = (heads["config"], name[len("config_") :]) if name.startswith("config_") else (heads, name)
        if value is ...:
            where.pop(key)
        else:
            where[key] = value
    return craft(good, path, json.dumps(heads))


def refused(path: Path, backbone, match: str) -> str:
    """The CheckpointError load_heads gives for ``path``; it must name the file and match ``match``."""
    with pytest.raises(CheckpointError, match=match) as err:
        load_heads(path, backbone)
    assert str(path) in str(err.value)
    assert "\n" not in str(err.value)  # one line, as the CLI prints it
    return str(err.value)


@pytest.mark.parametrize(
    ("case", "text", "match"),
    [
        ("H-predict-jsonnull", "null", "not a JSON object"),  # was TypeError: 'NoneType' object is not iterable
        ("jsonlist", "[1, 2]", "not a JSON object"),
        ("jsonstring", '"heads"', "not a JSON object"),
        ("H-predict-deepjson", "[" * 200_000 + "]" * 200_000, "damaged.*recursion"),  # was RecursionError
    ],
)
def test_a_description_that_is_not_an_object_is_refused(good, backbone, tmp_path, case, text, match):
    path = craft(good, tmp_path / f"{case}.safetensors", text)
    with pytest.raises(CheckpointError, match=match):
        read_metadata(path)
    refused(path, backbone, match)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("patch_size", 1 << 20),  # H-predict-patchhuge: the default tile; it asked for 8 TiB
        ("patch_size", 0),
        ("patch_size", -64),
        ("patch_size", 33),
        ("patch_size", 8192 + 32),
        ("patch_size", "64"),
        ("patch_size", True),
        ("patch_size", [64]),
        ("patch_size", [64, 1 << 20]),
        ("in_channels", 0),
        ("in_channels", "1"),
        ("in_channels", 1.5),
        ("class_names", "ab"),
        ("normalization", [1, 2]),
        ("spacing", [0.0, 1.0]),
        ("spacing", "x"),
        ("spacing", [float("nan"), 1.0]),
        ("backbone_variant", 5),
        ("backbone_sha256", "not-a-hash"),
        ("backbone_num_heads", 0),
        ("backbone_num_heads", "4"),
        ("library_version", 1),
        ("training", []),
        ("config", "tiny"),
    ],
)
def test_a_field_of_the_wrong_type_or_range_is_refused_naming_it(good, backbone, tmp_path, field, value):
    path = edited(good, tmp_path / "edited.safetensors", **{field: value})
    with pytest.raises(CheckpointError, match=f"edited.safetensors: the heads description is invalid: {field}="):
        read_metadata(path)
    message = refused(path, backbone, f"{field}=")
    assert "edited or damaged" in message


def test_patch_size_in_range_and_as_a_pair_still_loads(good, backbone, tmp_path):
    for patch in (32, 8192, [64, 128]):
        _, metadata = load_heads(edited(good, tmp_path / "ok.safetensors", patch_size=patch), backbone)
        assert metadata.patch_size == (tuple(patch) if isinstance(patch, list) else patch)


def test_three_class_names_for_two_classes_are_refused(good, backbone, tmp_path):
    """H-predict-names3: accepted before, the third name never used."""
    path = edited(good, tmp_path / "names3.safetensors", class_names=["bg", "a", "b"])
    message = refused(path, backbone, "3 class names")
    assert "network of 2 classes" in message
    with pytest.raises(CheckpointError, match="names3.safetensors.*3 class names.*2 classes"):
        read_metadata(path)


@pytest.mark.parametrize(
    ("case", "changes", "match"),
    [
        # defect 23: these were "channels=(0, 5, 9) asks for channel 9 but the input has 1 channels" and
        # "blocks [0, 1, 2, 99] invalid: this backbone has blocks 0..3", not saying the checkpoint is at fault
        ("H-predict-channels_bad", {"config_channels": [0, 5, 9]}, r"channels=\(0, 5, 9\).*in_channels"),
        ("H-predict-taps_bad", {"config_taps": [0, 1, 2, 99]}, r"its network config is invalid: taps=\[0, 1, 2, 99\]"),
        ("taps_text", {"config_taps": "abcd"}, "network config: invalid literal"),
        ("embed_float", {"config_embed_dim": 64.0}, "its network config is invalid"),
        ("H-predict-ncstr", {"config_num_classes": "two"}, "num_classes='two'"),
        ("H-predict-nc0", {"config_num_classes": 0, "class_names": []}, "num_classes=0"),
        ("H-predict-proj_bad", {"config_projection": "zzz"}, "unknown projection 'zzz'"),
    ],
)
def test_network_config_errors_blame_the_checkpoint(good, backbone, tmp_path, case, changes, match):
    message = refused(edited(good, tmp_path / f"{case}.safetensors", **changes), backbone, match)
    assert "checkpoint" in message or "edited or damaged" in message


@pytest.mark.parametrize(
    ("case", "normalization", "match"),
    [
        ("H-predict-norm_ct_std0", {"scheme": "ct", "clip": [0, 100], "mean": 0.0, "std": 0.0}, "std=0.0"),
        ("H-predict-norm_bad", {"scheme": "banana"}, "unknown normalisation 'banana'"),
        ("H-predict-norm_ct_nostats", {"scheme": "ct"}, "needs fitted numbers"),
        ("ct_clip_number", {"scheme": "ct", "clip": 5, "mean": 0.0, "std": 1.0}, "normalization="),
        ("norm_unknown_key", {"scheme": "zscore", "percentile": 99}, r"keys this version does not know \(percentile\)"),
    ],
)
def test_a_bad_normalization_is_the_checkpoints_fault(good, backbone, tmp_path, case, normalization, match):
    """normalize.Normalization refuses these when built (InputError); from a file they must name the file."""
    path = edited(good, tmp_path / f"{case}.safetensors", normalization=normalization)
    message = refused(path, backbone, match)
    assert "the heads description is invalid: normalization=" in message


def test_non_finite_head_tensors_are_refused(good, backbone, tmp_path):
    """H-predict-nanheads: all-background labels with rc 0 before."""
    state = load_file(str(good))
    metadata = {
        "format": "napari-dinounet-heads",
        "format_version": str(FORMAT_VERSION),
        "heads": read_metadata(good).to_json(),
    }
    nan = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state.items()}
    save_file(nan, str(tmp_path / "nanheads.safetensors"), metadata=metadata)
    expected = sum(v.numel() for v in state.values() if v.is_floating_point())
    refused(
        tmp_path / "nanheads.safetensors",
        backbone,
        f"{expected} non-finite values, e.g. in .*: the training diverged or the file is damaged; retrain",
    )

    one_inf = dict(state)
    name = "decoder.classifiers.2.weight"
    one_inf[name] = state[name].clone().view(-1).index_fill(0, torch.tensor([3]), float("inf")).view_as(state[name])
    save_file(one_inf, str(tmp_path / "inf.safetensors"), metadata=metadata)
    refused(tmp_path / "inf.safetensors", backbone, f"1 non-finite values, e.g. in {name}:")


def test_non_float_head_tensors_are_refused_but_float64_loads(good, backbone, tmp_path):
    state = load_file(str(good))
    metadata = {
        "format": "napari-dinounet-heads",
        "format_version": str(FORMAT_VERSION),
        "heads": read_metadata(good).to_json(),
    }
    name = "decoder.classifiers.2.weight"
    save_file(dict(state, **{name: state[name].to(torch.int32)}), str(tmp_path / "int.safetensors"), metadata=metadata)
    refused(tmp_path / "int.safetensors", backbone, f"head tensor {name} is torch.int32, not floating point")

    wide = {k: v.double() if v.is_floating_point() else v for k, v in state.items()}  # H-predict-float64: ok
    save_file(wide, str(tmp_path / "f64.safetensors"), metadata=metadata)
    model, _ = load_heads(tmp_path / "f64.safetensors", backbone)
    assert torch.equal(model.heads_state_dict()[name], state[name])


def test_save_heads_refuses_non_finite_heads(backbone, tmp_path):
    """A diverged training can never write heads that only predict background."""
    torch.manual_seed(0)
    model = build_dinounet(num_classes=2, backbone=backbone)
    with torch.no_grad():
        model.decoder.classifiers[-1].bias[1] = float("nan")
        model.adapter.norms[0].running_var[:2] = float("inf")
    metadata = HeadsMetadata(config=model.config.to_dict(), class_names=["background", "nucleus"])
    with pytest.raises(DinoUNetError, match="3 non-finite values, e.g. in adapter.norms.0.running_var.*diverged"):
        save_heads(tmp_path / "h.safetensors", model, metadata)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def lying_hf(dinov3_tiny_dir, tmp_path_factory):
    """The HF fixture and a copy whose config.json says 2 attention heads (the tensors are for 4)."""
    folder = tmp_path_factory.mktemp("hf") / "hf_lie_heads"
    shutil.copytree(dinov3_tiny_dir / "hf_tiny", folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["num_attention_heads"] == 4
    config["num_attention_heads"] = 2  # divides the width 64 into heads of 32: loads, gives other features
    (folder / "config.json").write_text(json.dumps(config))
    return load_backbone(dinov3_tiny_dir / "hf_tiny"), load_backbone(folder)


def test_heads_record_the_head_count_and_refuse_a_config_json_that_lies(lying_hf, tmp_path):
    """Defect 6: same tensors, same sha256, another network; it loaded without a word."""
    honest, lying = lying_hf
    assert lying.sha256 == honest.sha256 and lying.variant == honest.variant
    assert (honest.architecture.num_heads, lying.architecture.num_heads) == (4, 2)
    path = two_class_heads(honest, tmp_path / "hf.safetensors")
    assert read_metadata(path).backbone_num_heads == 4
    message = refused(path, lying, "was trained with backbone")
    assert "4 attention heads" in message and "2 attention heads" in message
    assert "allow_backbone_mismatch" in message
    with pytest.warns(UserWarning, match="2 attention heads.*using it anyway"):
        model, _ = load_heads(path, lying, allow_backbone_mismatch=True)
    assert model.backbone is lying


def test_save_heads_takes_the_head_count_from_the_model(lying_hf, tmp_path):
    """Whatever the caller's metadata says, the file records the backbone the heads were trained on."""
    honest, _ = lying_hf
    path = two_class_heads(honest, tmp_path / "hf.safetensors", backbone_num_heads=7)
    assert read_metadata(path).backbone_num_heads == 4


def test_old_files_without_the_head_count_still_load_unchecked(lying_hf, tmp_path):
    honest, lying = lying_hf
    path = edited(
        two_class_heads(honest, tmp_path / "hf.safetensors"), tmp_path / "old.safetensors", backbone_num_heads=...
    )
    assert read_metadata(path).backbone_num_heads is None
    for backbone in (honest, lying):
        model, _ = load_heads(path, backbone)
        assert model.backbone is backbone


def test_unknown_fields_are_refused_naming_them_as_a_newer_versions(good, backbone, tmp_path):
    """One policy for every file read back (heads descriptions, their network config, resume states): what this
    version does not know is refused, naming it, never dropped in silence; what an older version did not write
    takes its default."""
    path = edited(good, tmp_path / "newer.safetensors", uncertainty_head={"kind": "mirror"}, zoom=2)
    message = refused(path, backbone, r"holds fields this version of .* does not know \(uncertainty_head, zoom\)")
    assert "a newer napari-dinounet probably wrote the file" in message
    path = edited(good, tmp_path / "newer_config.safetensors", config_rank=3)
    message = refused(path, backbone, r"the network config holds keys .* does not know \(rank\)")
    assert "a newer napari-dinounet probably wrote the checkpoint" in message
    older = edited(good, tmp_path / "older.safetensors", spacing=..., backbone_num_heads=..., training=...)
    assert read_metadata(older).spacing is None and read_metadata(older).training == {}
    refused(
        edited(good, tmp_path / "no_names.safetensors", class_names=...),
        backbone,
        "misses class_names: the file was edited or damaged",
    )
