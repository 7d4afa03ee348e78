"""Live preview while training (engine.preview): previews of the heads being trained, within a time budget,
leaving the training itself unchanged."""

from __future__ import annotations

import numpy as np
import pytest
from _nuclei_training import nuclei_samples

from napari_dinounet.engine.checkpoint import load_heads
from napari_dinounet.engine.preview import (
    Preview,
    PreviewSchedule,
    PreviewTarget,
    PreviewView,
    predict_view,
    with_previews,
)
from napari_dinounet.engine.progress import drain
from napari_dinounet.engine.train import TrainSettings, build_model, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REGIONS = [(slice(0, 128), slice(0, 128)), (slice(128, 256), slice(0, 128))]


def _train_with_previews(tmp_path, backbone):
    """Six steps on two nuclei crops, a preview of one view after every step (the budget never holds one back)."""
    from _nuclei_training import nuclei_foreground

    samples = nuclei_samples(REGIONS)
    settings = TrainSettings(patch_size=64, batch_size=2, epochs=2, iters_per_epoch=3, cache_features=False)
    model = build_model(backbone, settings, 2, in_channels=1)
    run = train(samples, out=tmp_path / "heads.safetensors", backbone=backbone, settings=settings, model=model)
    target = PreviewTarget()
    image, _ = nuclei_foreground()
    view = PreviewView(image[:160, :160], ((40, 120), (30, 100)))
    target.set(view)
    run = with_previews(
        run, model, target, normalization="zscore", patch_size=64, schedule=PreviewSchedule(share=1e9, interval_s=0)
    )
    events = []
    out = drain(run, events.append)
    return out, events, model, view


def test_previews_come_between_steps_and_leave_the_model_as_training_had_it(tmp_path):
    from napari_dinounet.engine.backbone import load_backbone

    backbone = load_backbone("random:tiny")
    out, events, model, view = _train_with_previews(tmp_path, backbone)
    assert out.is_file()
    previews = [e for e in events if isinstance(e, Preview)]
    steps = [e.done for e in events if type(e).__name__ == "Progress" and e.task == "train" and "loss" in e.metrics]
    assert [p.done for p in previews] == steps[:-1] == [1, 2, 3, 4, 5]  # after each step but the last
    for preview in previews:
        assert preview.labels.shape == (80, 70) and preview.labels.dtype == np.uint8 and preview.seconds > 0
        assert preview.view is view and set(np.unique(preview.labels)) <= {0, 1}
        assert preview.message.startswith("epoch") and "loss" not in preview.metrics  # reads as its step, is not one
    assert len({p.labels.tobytes() for p in previews}) > 1  # the heads change as they train

    # a preview predicts in eval mode without gradients: the parameters, buffers (batch-norm statistics)
    # and gradients the training holds are exactly as they were, and the model is back in training mode
    heads, _ = load_heads(out, backbone)
    heads.train()
    before = {name: tensor.clone() for name, tensor in heads.state_dict().items()}
    labels = predict_view(heads, view, normalization="zscore", patch_size=64)
    assert heads.training and labels.shape == (80, 70)
    assert all((heads.state_dict()[name] == tensor).all() for name, tensor in before.items())
    assert all(p.grad is None for p in heads.parameters())


def test_the_schedule_keeps_previews_within_their_share_of_the_training_time():
    now = [0.0]
    schedule = PreviewSchedule(share=0.2, interval_s=1.0, clock=lambda: now[0])
    spent = 0.0
    for _ in range(200):  # a training step of 0.1 s; a preview costs 0.5 s
        now[0] += 0.1
        if schedule.due():
            now[0] += 0.5
            spent += 0.5
            schedule.record(0.5)
    training = now[0] - spent
    assert spent > 0 and spent <= 0.2 * training + 0.5  # within the share, give or take the first preview
    assert spent >= 0.2 * training - 1.0  # and it uses its share
    now[0] += 0.05
    assert not PreviewSchedule(share=0.2, interval_s=1.0, clock=lambda: now[0]).due()  # not before interval_s
