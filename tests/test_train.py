"""Training: the loss, the settings, learning on real data, stopping, resuming and feature caching."""

from __future__ import annotations

import pytest
import torch
from _nuclei_training import one_torch_thread  # noqa: F401 (autouse fixture)

from napari_dinounet.engine.errors import CheckpointError, InputError
from napari_dinounet.engine.loss import dice_ce_loss
from napari_dinounet.engine.progress import drain
from napari_dinounet.engine.train import TrainSettings, poly_lr, state_path, train


# ------------------------------------------------------------------------------------------------ loss


def _logits_and_labels(seed=0, batch=2, classes=3, size=16):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, classes, size, size, generator=g)
    labels = torch.randint(0, classes, (batch, size, size), generator=g)
    return logits, labels


def test_loss_equals_monai_dice_ce_with_batch_dice_without_background():
    from monai.losses import DiceCELoss

    logits, labels = _logits_and_labels()
    reference = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True, batch=True,
                           smooth_nr=1e-5, smooth_dr=1e-5)(logits, labels[:, None])
    assert dice_ce_loss(logits, labels).item() == pytest.approx(reference.item(), rel=1e-5)


def test_masked_loss_equals_loss_on_the_masked_region_alone():
    logits, labels = _logits_and_labels(seed=1)
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[..., :6] = True  # the left 6 columns count
    masked = dice_ce_loss(logits, labels, mask)
    cropped = dice_ce_loss(logits[..., :6], labels[..., :6])
    assert masked.item() == pytest.approx(cropped.item(), rel=1e-6)
    assert masked.item() != pytest.approx(dice_ce_loss(logits, labels).item(), rel=1e-3)


def test_labels_outside_the_mask_change_neither_loss_nor_gradient():
    logits, labels = _logits_and_labels(seed=2)
    g = torch.Generator().manual_seed(3)
    mask = torch.rand(labels.shape, generator=g) < 0.4
    other = labels.clone()
    other[~mask] = torch.randint(0, 3, (int((~mask).sum()),), generator=g)
    other[0, 0, 0] = 7 if not mask[0, 0, 0] else other[0, 0, 0]  # even out-of-range values are never read
    assert not torch.equal(other, labels)

    results = []
    for lab in (labels, other):
        x = logits.clone().requires_grad_(True)
        loss = dice_ce_loss(x, lab, mask)
        loss.backward()
        results.append((loss.detach(), x.grad))
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])
    # and the gradient is zero exactly where the mask is False... for CE; Dice couples pixels through the
    # sums, but a masked pixel's own logits get no gradient from either term
    assert torch.all(results[0][1].permute(1, 0, 2, 3)[:, ~mask] == 0)


def test_perfect_prediction_gives_near_zero_loss():
    _, labels = _logits_and_labels(seed=4)
    logits = torch.nn.functional.one_hot(labels, 3).permute(0, 3, 1, 2).float() * 50
    assert dice_ce_loss(logits, labels).item() < 1e-6


# -------------------------------------------------------------------------------------------- settings


def test_poly_lr_follows_the_paper_schedule():
    settings = TrainSettings(epochs=2, iters_per_epoch=5, lr=1e-3)
    assert poly_lr(0, settings) == 1e-3
    assert poly_lr(5, settings) == pytest.approx(1e-3 * 0.5**0.9)
    assert poly_lr(10, settings) == 0.0


def test_default_settings_are_the_papers_recipe():
    s = TrainSettings()
    assert (s.lr, s.poly_exponent, s.grad_clip, s.dice_smooth, s.iters_per_epoch, s.foreground_fraction) == (
        1e-3, 0.9, 12.0, 1e-5, 250, 0.33)
    assert TrainSettings.from_dict(s.to_dict()) == s


@pytest.mark.parametrize("bad", [{"patch_size": 100}, {"patch_size": 32}, {"batch_size": 0}, {"lr": 0.0}])
def test_bad_settings_are_refused_with_a_clear_message(bad):
    with pytest.raises(InputError, match="patch size|batch size|learning rate"):
        TrainSettings(**bad)


def test_state_path_sits_beside_the_checkpoint(tmp_path):
    assert state_path(tmp_path / "nuclei.safetensors") == tmp_path / "nuclei.state.safetensors"


# -------------------------------------------------------------------------------------------- training

TINY = dict(size="tiny", patch_size=64, batch_size=2, val_crops=2)


@pytest.fixture(scope="module")
def backbone():
    import warnings

    from napari_dinounet.engine.backbone import load_backbone

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random backbone's warning is tested in test_backbone
        return load_backbone("random:tiny")


@pytest.fixture(scope="module")
def nuclei():
    """Training (left 256 columns) and validation (next 128 columns) samples of the nuclei image."""
    from _nuclei_training import nuclei_samples

    return nuclei_samples([(slice(None), slice(0, 256)), (slice(None), slice(256, 384))])


def _events(run) -> list:
    events = []
    drain(run, events.append)
    return events


def test_validation_dice_rises_on_real_data(tmp_path, backbone, nuclei):
    train_samples, validation = nuclei[:1], nuclei[1:]
    settings = TrainSettings(size="tiny", patch_size=64, batch_size=4, epochs=3, iters_per_epoch=10, val_crops=8,
                             lr=2e-3)
    events = _events(train(train_samples, validation=validation, out=tmp_path / "h.safetensors", backbone=backbone,
                           settings=settings, device="cpu"))
    validated = [e.metrics["val_dice"] for e in events if e.message.startswith("validation") or
                 e.message.endswith("validated")]
    assert len(validated) == 4  # before training and after each epoch
    # measured (seeds 0, 1, 2): 0.30 -> 0.87, 0.30 -> 0.88, 0.33 -> 0.85; the start is all-foreground level
    assert validated[0] < 0.4 and validated[-1] > 0.75, validated
    losses = [e.metrics["loss"] for e in events if e.message.endswith("validated")]
    assert losses[-1] < losses[0]


def test_closing_mid_run_keeps_the_last_checkpoint_byte_identical(tmp_path, backbone, nuclei):
    from napari_dinounet.engine.checkpoint import load_heads

    out = tmp_path / "heads.safetensors"
    settings = TrainSettings(epochs=3, iters_per_epoch=2, **TINY)
    run = train(nuclei[:1], validation=nuclei[1:], out=out, backbone=backbone, settings=settings, device="cpu")
    for event in run:
        if event.done == 3:  # one step into the second epoch: the first epoch's files are on disk
            break
    saved = out.read_bytes(), state_path(out).read_bytes()
    run.close()
    assert (out.read_bytes(), state_path(out).read_bytes()) == saved
    model, meta = load_heads(out, backbone)
    assert [h["step"] for h in meta.training["history"]] == [2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["heads.safetensors", "heads.state.safetensors"]
    # a new run must not replace it unasked
    with pytest.raises(InputError, match="already exists"):
        next(train(nuclei[:1], out=out, backbone=backbone, settings=settings))


def test_resume_continues_step_count_lr_schedule_and_optimizer(tmp_path, backbone, nuclei):
    from napari_dinounet.engine.train import build_model, load_state

    out = tmp_path / "heads.safetensors"
    settings = TrainSettings(epochs=2, iters_per_epoch=3, **TINY)
    first = train(nuclei[:1], validation=nuclei[1:], out=out, backbone=backbone, settings=settings, device="cpu")
    for event in first:
        if event.done == 4:
            break
    first.close()
    info, saved_heads, _ = load_state(state_path(out))
    assert info["step"] == 3

    model = build_model(backbone, settings, num_classes=2, in_channels=1)
    second = train(nuclei[:1], validation=nuclei[1:], out=out, backbone=backbone, settings=settings, model=model,
                   resume=True, device="cpu")
    resumed = next(second)
    assert (resumed.done, resumed.message) == (3, "resumed at step 3")
    for name, tensor in model.heads_state_dict().items():  # the saved heads, not the fresh ones
        assert torch.equal(tensor, saved_heads[name]), name
    events = _events(second)
    steps = [e for e in events if "loss" in e.metrics and not e.message.endswith("validated")]
    assert [e.done for e in steps] == [4, 5, 6]
    assert [e.metrics["lr"] for e in steps] == [pytest.approx(poly_lr(k, settings)) for k in (3, 4, 5)]
    info, _, optim = load_state(state_path(out))
    assert info["step"] == 6 and [h["step"] for h in info["history"]] == [3, 6]
    # Adam's own step counter went on from the saved 3: its moments were restored, not restarted
    assert {float(v["step"]) for v in optim["state"].values()} == {6.0}


def test_resume_refuses_missing_state_and_changed_settings(tmp_path, backbone, nuclei):
    out = tmp_path / "heads.safetensors"
    settings = TrainSettings(epochs=1, iters_per_epoch=1, **TINY)
    with pytest.raises(CheckpointError, match="nothing to resume"):
        next(train(nuclei[:1], out=out, backbone=backbone, settings=settings, resume=True))
    _events(train(nuclei[:1], validation=[], out=out, backbone=backbone, settings=settings, device="cpu"))
    changed = TrainSettings(epochs=1, iters_per_epoch=1, **{**TINY, "patch_size": 96})
    with pytest.raises(CheckpointError, match=r"patch_size \(64 -> 96\)"):
        next(train(nuclei[:1], out=out, backbone=backbone, settings=changed, resume=True))
    state_path(out).write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="cannot read the training state"):
        next(train(nuclei[:1], out=out, backbone=backbone, settings=settings, resume=True))


def test_feature_cache_holds_mirrored_crops_with_their_exact_features(backbone, nuclei):
    from napari_dinounet.engine.data import fixed_crops
    from napari_dinounet.engine.train import FeatureCache, build_model

    model = build_model(backbone, TrainSettings(**TINY), num_classes=2, in_channels=1)
    crops = fixed_crops(nuclei[:1], 64, 3, seed=1)
    cache = drain(FeatureCache.build(model, crops, mirror=True, augment=None, seed=0, device=torch.device("cpu"),
                                     batch_size=2))
    assert len(cache) == 12
    flipped = crops["image"].flip(-1)  # the second group of 3: left-right mirrors
    assert torch.equal(cache.crops["image"][3:6], flipped)
    assert torch.equal(cache.crops["labels"][3:6], crops["labels"].flip(-1))
    for cached, fresh in zip(cache.taps, model.backbone_taps(flipped)):
        torch.testing.assert_close(cached[3:6], fresh)
    batch, taps = cache.next_batch(5)
    assert batch["image"].shape == (5, 1, 64, 64) and taps[0].shape == (5, 64, 4, 4)


def test_cached_training_never_runs_the_backbone_after_caching(tmp_path, backbone, nuclei, monkeypatch):
    calls = []
    original = type(backbone).features

    def counting(self, x, *args, **kwargs):
        calls.append(x.shape[0])
        return original(self, x, *args, **kwargs)

    monkeypatch.setattr(type(backbone), "features", counting)
    settings = TrainSettings(epochs=2, iters_per_epoch=3, cache_features=True, cache_crops=3, **TINY)
    events = _events(train(nuclei[:1], validation=[], out=tmp_path / "h.safetensors", backbone=backbone,
                           settings=settings, device="cpu"))
    caching = [e for e in events if e.task == "cache features"]
    assert caching[-1].done == caching[-1].total == 12  # 3 crops x 4 mirror variants
    assert sum(calls) == 12  # every backbone call was for the cache; the 6 steps used cached features
    assert [e.done for e in events if e.message.endswith("validated")] == [3, 6]


def test_label_beyond_a_loaded_models_classes_is_an_input_error_before_any_step(tmp_path, backbone, nuclei):
    """What Fine-tune meets when label 2 is painted on 2-class heads (report defect 13): an InputError naming the
    sample, raised before the backbone runs or anything is written, not IndexError from the loss."""
    import numpy as np

    from napari_dinounet.engine.data import samples_from_arrays
    from napari_dinounet.engine.train import build_model

    settings = TrainSettings(**TINY, epochs=1, iters_per_epoch=1)
    model = build_model(backbone, settings, num_classes=2, in_channels=1)
    image = nuclei[0].image[0]
    labels = nuclei[0].labels.astype(np.uint8)
    labels[:8, :8] = 2  # the newly painted class
    painted = samples_from_arrays([image], [labels], names=["painted"])
    run = train(painted, out=tmp_path / "h.safetensors", backbone=backbone, settings=settings, validation=[],
                model=model)
    with pytest.raises(InputError, match=r"painted.*0\.\.1"):
        next(run)
    assert list(tmp_path.iterdir()) == []


def test_non_finite_learning_rate_and_negative_seed_are_refused():
    for bad in ({"lr": float("inf")}, {"lr": float("nan")}, {"seed": -1}, {"patch_size": 16384}):
        with pytest.raises(InputError):
            TrainSettings(**bad)


def test_validation_outputs_beyond_float_range_stop_training(backbone, nuclei):
    """Heads blown up by one huge step stay finite but give infinite logits: validation stops the run."""
    from napari_dinounet.engine.data import fixed_crops
    from napari_dinounet.engine.errors import TrainingError
    from napari_dinounet.engine.train import build_model, validation_dice

    model = build_model(backbone, TrainSettings(**TINY), num_classes=2, in_channels=1)
    crops = fixed_crops(nuclei[1:], 64, 2, seed=0)
    assert 0 <= validation_dice(model, crops, device=torch.device("cpu"), batch_size=2,
                                autocast=torch.autocast("cpu", enabled=False)) <= 1
    with torch.no_grad():
        for parameter in model.decoder.parameters():
            parameter.mul_(1e30)
    with pytest.raises(TrainingError, match="validation crops became NaN or infinite"):
        validation_dice(model, crops, device=torch.device("cpu"), batch_size=2,
                        autocast=torch.autocast("cpu", enabled=False))
