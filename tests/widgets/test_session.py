"""_widgets/_session.Session.backbone: cached by the weights' identity on disk; loads do not block other runs."""

from __future__ import annotations

import shutil
import threading
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

from napari_dinounet._widgets._session import Session, source_identity
from napari_dinounet.engine import backbone as backbone_module


def test_the_same_file_is_cached_and_a_file_replaced_in_place_is_loaded_again(dinov3_tiny_dir, tmp_path):
    weights = tmp_path / "dinov3.pth"
    shutil.copy(dinov3_tiny_dir / "official_tiny.pth", weights)
    session = Session()
    first = session.backbone(weights, "cpu")
    assert session.backbone(str(weights), "cpu") is first  # same file, same device: the same object

    state = torch.load(weights, weights_only=True)
    key = next(k for k in state if k.endswith("patch_embed.proj.weight"))
    state[key] = state[key] + 1
    torch.save(state, weights)  # written over the same path, as a re-download does
    second = session.backbone(weights, "cpu")
    assert second is not first and second.sha256 != first.sha256
    assert torch.equal(second.vit.patch_embed.proj.weight, first.vit.patch_embed.proj.weight + 1)
    assert session.backbone(weights, "cpu") is second


def test_a_folder_is_loaded_again_when_a_file_in_it_changes(dinov3_tiny_dir, tmp_path):
    folder = shutil.copytree(dinov3_tiny_dir / "hf_tiny", tmp_path / "hf")
    session = Session()
    first = session.backbone(folder, "cpu")
    assert session.backbone(folder, "cpu") is first
    tensors = load_file(folder / "model.safetensors")
    assert "embeddings.patch_embeddings.weight" in tensors
    save_file(
        {k: v + 1 if k == "embeddings.patch_embeddings.weight" else v for k, v in tensors.items()},
        folder / "model.safetensors",
    )  # other weights of the same shape, over the same file
    second = session.backbone(folder, "cpu")
    assert second is not first and second.sha256 != first.sha256


def test_source_identity_follows_size_and_time_and_ignores_random_sources(tmp_path):
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"12345678")
    before = source_identity(str(weights))
    assert before == source_identity(str(weights))
    weights.write_bytes(b"abcdefgh")  # same size: the modification time tells
    assert source_identity(str(weights)) != before
    assert source_identity("random:tiny") == () == source_identity(str(tmp_path / "missing.pth"))


@pytest.fixture
def slow_loads(monkeypatch):
    """load_backbone made controllable: "random:s" waits until ``release`` is set; counts every load."""
    release, started, calls = threading.Event(), threading.Event(), []
    real = backbone_module.load_backbone

    def load(source, device="cpu"):
        calls.append(source)
        if source == "random:s":
            started.set()
            assert release.wait(60)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # random weights
            return real("random:tiny", device=device)

    monkeypatch.setattr(backbone_module, "load_backbone", load)
    return release, started, calls


def test_a_load_in_progress_blocks_only_runs_that_need_that_backbone(slow_loads):
    release, started, calls = slow_loads
    session = Session()
    results, events = {}, []

    def first_run():
        results["first"] = session.backbone("random:s", "cpu")

    def second_run():  # the same backbone: waits for the first run's load, and says so
        gen = session.backbone_steps("random:s", "cpu")
        events.append(next(gen))
        try:
            next(gen)
        except StopIteration as stop:
            results["second"] = stop.value

    loading = threading.Thread(target=first_run)
    loading.start()
    assert started.wait(60)
    other = session.backbone("random:tiny", "cpu")  # another backbone: not held up by the load in progress
    waiting = threading.Thread(target=second_run)
    waiting.start()
    while not events:
        waiting.join(0.01)
    assert events[0].task == "waiting for the backbone" and "another run is loading it" in events[0].message
    assert waiting.is_alive() and "second" not in results
    release.set()
    loading.join(60)
    waiting.join(60)
    assert results["second"] is results["first"] is not other
    assert calls == ["random:s", "random:tiny"]  # the second run did not load it again
    assert session.backbone("random:s", "cpu") is results["first"]  # the last loaded stays cached


def test_a_failed_load_leaves_nothing_behind():
    from napari_dinounet.engine.errors import WeightsError

    session = Session()
    with pytest.raises(WeightsError, match="no such file"):
        session.backbone("/no/such/weights.pth", "cpu")
    assert session._loading == {}  # a later run tries again instead of waiting for it forever
    gen = session.backbone_steps("random:tiny", "cpu")
    assert next(gen).task == "loading the backbone"
    gen.close()  # cancelled at its first event
    assert session._loading == {}


def test_widgets_docked_by_script_share_the_menu_widgets_session(make_napari_viewer):
    """``add_plugin_dock_widget`` hands each widget a new proxy of the viewer; the session is the viewer's."""
    from napari_dinounet._widgets._session import get_session
    from napari_dinounet._widgets.segment import SegmentWidget

    viewer = make_napari_viewer()
    _, segment = viewer.window.add_plugin_dock_widget("napari-dinounet", "Segment")
    _, export = viewer.window.add_plugin_dock_widget("napari-dinounet", "Export")
    _, finetune = viewer.window.add_plugin_dock_widget("napari-dinounet", "Fine-tune")
    assert type(segment.viewer) is not type(viewer)  # a proxy, as napari gives it
    menu_opened = SegmentWidget(viewer)  # as the menu opens it, with the viewer itself
    assert segment.session is menu_opened.session is get_session(viewer)
    assert export._session is segment.session and finetune.session is segment.session
    segment.model_form.set_heads("/tmp/some-heads.safetensors")
    assert str(export._session.heads_path) == "/tmp/some-heads.safetensors"
    assert finetune.model_form.heads_edit.text() == "/tmp/some-heads.safetensors"
