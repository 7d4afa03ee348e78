"""The resume state beside a heads checkpoint: where it lives, what it holds, and what it refuses."""

from __future__ import annotations

import json

import pytest
import torch

from napari_dinounet.engine.errors import CheckpointError
from napari_dinounet.engine.run_state import load_state, save_state, state_path
from napari_dinounet.engine.train import TrainSettings, build_model, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # training: one thread (see conftest.py)

TINY = {"size": "tiny", "patch_size": 64, "batch_size": 2, "val_crops": 2}


def test_state_path_sits_beside_the_checkpoint(tmp_path):
    assert state_path(tmp_path / "nuclei.safetensors") == tmp_path / "nuclei.state.safetensors"


@pytest.fixture
def saved_state(tmp_path, tiny_backbone):
    """A resume state of tiny heads after one Adam step: (path, model, settings)."""
    settings = TrainSettings(epochs=1, iters_per_epoch=1, **TINY)
    model = build_model(tiny_backbone, settings, num_classes=2, in_channels=1)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model(torch.randn(1, 1, 64, 64)).sum().backward()
    optimizer.step()
    path = state_path(tmp_path / "h.safetensors")
    save_state(path, model, optimizer, step=1, settings=settings, history=[{"step": 1}], num_classes=2)
    return path, model, settings


def test_a_saved_state_reads_back_whole(saved_state):
    path, model, settings = saved_state
    info, heads, optim = load_state(path)
    assert (info["step"], info["num_classes"], info["history"]) == (1, 2, [{"step": 1}])
    assert TrainSettings.from_dict(info["settings"]) == settings
    assert info["backbone"] == {"variant": "tiny", "sha256": None, "num_heads": 4}
    assert heads.keys() == model.heads_state_dict().keys()
    assert all(torch.equal(heads[k], v) for k, v in model.heads_state_dict().items())
    assert {float(s["step"]) for s in optim["state"].values()} == {1.0}  # Adam's moments after one step


def test_a_state_written_before_the_classifiers_were_renamed_reads_back_under_todays_names(saved_state):
    """Heads format 1 called decoder.classifiers.N decoder.heads.N; a resume state of that time must resume."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    path, model, _ = saved_state
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
        tensors = {k.replace("heads/decoder.classifiers.", "heads/decoder.heads."): f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (a safetensors file, not a dict)
    assert any(k.startswith("heads/decoder.heads.") for k in tensors)
    save_file(tensors, str(path), metadata=metadata)
    _, heads, _ = load_state(path)
    assert heads.keys() == model.heads_state_dict().keys()
    assert all(torch.equal(heads[k], v) for k, v in model.heads_state_dict().items())


def _edit_settings(path, **changes) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        info = json.loads(f.metadata()["train_state"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (a safetensors file, not a dict)
    info["settings"].update(changes)
    save_file(tensors, str(path), metadata={"train_state": json.dumps(info)})


def test_a_state_with_settings_this_version_does_not_know_is_refused(saved_state, tmp_path):
    """Report defect (d).8: unknown settings used to be dropped in silence, while heads files refuse theirs."""
    from _nuclei_training import nuclei_samples

    path, _, settings = saved_state
    _edit_settings(path, ema_decay=0.999, label_smoothing=0.1)
    with pytest.raises(CheckpointError, match=r"ema_decay, label_smoothing\).*newer napari-dinounet") as caught:
        next(
            train(
                nuclei_samples([(slice(0, 128), slice(0, 128))]),
                out=tmp_path / "h.safetensors",
                backbone="random:tiny",
                settings=settings,
                validation=[],
                resume=True,
                device="cpu",
            )
        )
    assert str(path) in str(caught.value)


def test_settings_from_a_file_keep_defaults_for_missing_keys_and_refuse_bad_values():
    data = TrainSettings(**TINY).to_dict()
    del data["max_steps"]  # a file written before the setting existed
    assert TrainSettings.from_dict(data) == TrainSettings(**TINY)
    with pytest.raises(CheckpointError, match="unknown_setting.*newer napari-dinounet"):
        TrainSettings.from_dict({**data, "unknown_setting": 1})
    with pytest.raises(CheckpointError, match="invalid settings.*patch size 100"):
        TrainSettings.from_dict({**data, "patch_size": 100}, source="the training state x")
    with pytest.raises(CheckpointError, match="invalid settings"):
        TrainSettings.from_dict({**data, "epochs": "many"})
