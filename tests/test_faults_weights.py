"""Faulty backbone weights (the 2026-12 reliability report): misnamed, random or pickled files each give a
one-line WeightsError naming the file and the fix."""

from __future__ import annotations

import json
import pickle
import random
import shutil

import pytest
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
    with pytest.raises(WeightsError, match=r"official.safetensors: this is a PyTorch file with a \.safetensors name; "
                       r"rename it to \.pth$"):
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
    with pytest.raises(WeightsError, match="download.pth: cannot be read as a PyTorch file, it is truncated or "
                       "corrupt .*; download it again") as err:
        load_backbone(path)
    assert "Python objects" not in str(err.value)


def test_a_pickle_cut_short_is_corrupt_not_code(tmp_path):
    data = pickle.dumps(_evil(tmp_path), protocol=2)
    (tmp_path / "cut.pth").write_bytes(data[: len(data) - 10])  # the global is there, the STOP is not
    with pytest.raises(WeightsError, match="cut.pth: cannot be read as a PyTorch file, it is truncated or corrupt"):
        load_backbone(tmp_path / "cut.pth")
    assert not (tmp_path / "payload_ran").exists()
