"""Training: the settings, learning on real data, stopping, resuming, caching, the loss and targets as
parameters, and the events it reports (the loss itself: test_loss.py; the resume file: test_run_state.py)."""

from __future__ import annotations

import pytest
import torch

from napari_dinounet.engine.errors import CheckpointError, InputError
from napari_dinounet.engine.progress import Validation, drain
from napari_dinounet.engine.run_state import load_state, state_path
from napari_dinounet.engine.train import TrainSettings, build_model, poly_lr, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # training: one thread (see conftest.py)

# -------------------------------------------------------------------------------------------- settings


def test_poly_lr_follows_the_paper_schedule():
    settings = TrainSettings(epochs=2, iters_per_epoch=5, lr=1e-3)
    assert poly_lr(0, settings) == 1e-3
    assert poly_lr(5, settings) == pytest.approx(1e-3 * 0.5**0.9)
    assert poly_lr(10, settings) == 0.0


def test_default_settings_are_the_papers_recipe():
    s = TrainSettings()
    assert (s.lr, s.poly_exponent, s.grad_clip, s.dice_smooth, s.iters_per_epoch, s.foreground_fraction) == (
        1e-3,
        0.9,
        12.0,
        1e-5,
        250,
        0.33,
    )
    assert TrainSettings.from_dict(s.to_dict()) == s


@pytest.mark.parametrize("bad", [{"patch_size": 100}, {"patch_size": 32}, {"batch_size": 0}, {"lr": 0.0}])
def test_bad_settings_are_refused_with_a_clear_message(bad):
    with pytest.raises(InputError, match="patch size|batch size|learning rate"):
        TrainSettings(**bad)


# -------------------------------------------------------------------------------------------- training

TINY = {"size": "tiny", "patch_size": 64, "batch_size": 2, "val_crops": 2}


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
    settings = TrainSettings(
        size="tiny", patch_size=64, batch_size=4, epochs=3, iters_per_epoch=10, val_crops=8, lr=2e-3
    )
    events = _events(
        train(
            train_samples,
            validation=validation,
            out=tmp_path / "h.safetensors",
            backbone=backbone,
            settings=settings,
            device="cpu",
        )
    )
    validations = [e for e in events if isinstance(e, Validation)]
    assert [e.done for e in validations] == [0, 10, 20, 30]  # before training and after each epoch
    validated = [e.dice for e in validations]
    # measured (seeds 0, 1, 2): 0.30 -> 0.87, 0.30 -> 0.88, 0.33 -> 0.85; the start is all-foreground level
    assert validated[0] < 0.4 and validated[-1] > 0.75, validated
    assert validations[0].loss is None
    losses = [e.loss for e in validations[1:]]
    assert losses[-1] < losses[0]
    # step events are plain progress, one per step, and carry the last validation's Dice along
    steps = [e for e in events if not isinstance(e, Validation)]
    assert [e.done for e in steps] == list(range(1, 31))
    assert steps[10].metrics["val_dice"] == validated[1]


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


def test_a_stop_request_saves_the_step_it_stopped_at_and_resumes_from_it(tmp_path, backbone, nuclei):
    """Stop never throws work away: asked after step 3 of an epoch of 10, the run validates and writes the
    heads and the resume state of step 3 (not nothing, not the last epoch's), and its last event says so."""
    import threading

    from napari_dinounet.engine.checkpoint import load_heads

    out = tmp_path / "heads.safetensors"
    settings = TrainSettings(epochs=2, iters_per_epoch=10, **TINY)
    stop = threading.Event()
    events = []
    run = train(
        nuclei[:1], validation=nuclei[1:], out=out, backbone=backbone, settings=settings, device="cpu", stop=stop
    )

    def watch(event):
        events.append(event)
        if event.task == "train" and event.done == 3:
            stop.set()

    assert drain(run, watch) == out  # it returns normally
    last = events[-1]
    assert isinstance(last, Validation) and last.done == 3 and last.message.startswith("stopped at step 3")
    assert last.dice is not None and 0 <= last.dice <= 1
    assert max(e.done for e in events if e.task == "train") == 3  # no step after the request
    model, meta = load_heads(out, backbone)  # the file loads
    assert [h["step"] for h in meta.training["history"]] == [3]
    info, _, _ = load_state(state_path(out))
    assert info["step"] == 3

    # a callable works too, and resuming goes on from step 3 to the end of the epoch and the run
    second = train(
        nuclei[:1],
        validation=nuclei[1:],
        out=out,
        backbone=backbone,
        settings=settings,
        resume=True,
        device="cpu",
        model=model,
        stop=lambda: False,
    )
    steps = [e.done for e in _events(second) if e.task == "train" and not isinstance(e, Validation)]
    assert steps[0] == 3 and steps[1:] == list(range(4, 21))  # "resumed at step 3", then 4..20
    assert [h["step"] for h in read_history(out)] == [3, 10, 20]


def test_a_stop_request_before_the_first_step_trains_and_writes_nothing(tmp_path, backbone, nuclei):
    out = tmp_path / "heads.safetensors"
    settings = TrainSettings(epochs=1, iters_per_epoch=5, **TINY)
    events = _events(
        train(nuclei[:1], validation=nuclei[1:], out=out, backbone=backbone, settings=settings, stop=lambda: True)
    )
    assert events[-1].message == "stopped at step 0: nothing was trained yet, nothing written"
    assert not out.exists() and not state_path(out).exists()


def read_history(out) -> list[dict]:
    from napari_dinounet.engine.checkpoint import read_metadata

    return read_metadata(out).training["history"]


def test_resume_continues_step_count_lr_schedule_and_optimizer(tmp_path, backbone, nuclei):
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
    second = train(
        nuclei[:1],
        validation=nuclei[1:],
        out=out,
        backbone=backbone,
        settings=settings,
        model=model,
        resume=True,
        device="cpu",
    )
    resumed = next(second)
    assert (resumed.done, resumed.message) == (3, "resumed at step 3")
    for name, tensor in model.heads_state_dict().items():  # the saved heads, not the fresh ones
        assert torch.equal(tensor, saved_heads[name]), name
    events = _events(second)
    steps = [e for e in events if not isinstance(e, Validation)]
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


def test_cached_training_never_runs_the_backbone_after_caching(tmp_path, backbone, nuclei, monkeypatch):
    calls = []
    original = type(backbone).features

    def counting(self, x, *args, **kwargs):
        calls.append(x.shape[0])
        return original(self, x, *args, **kwargs)

    monkeypatch.setattr(type(backbone), "features", counting)
    settings = TrainSettings(epochs=2, iters_per_epoch=3, cache_features=True, cache_crops=3, **TINY)
    events = _events(
        train(
            nuclei[:1],
            validation=[],
            out=tmp_path / "h.safetensors",
            backbone=backbone,
            settings=settings,
            device="cpu",
        )
    )
    caching = [e for e in events if e.task == "cache features"]
    assert caching[-1].done == caching[-1].total == 12  # 3 crops x 4 mirror variants
    assert sum(calls) == 12  # every backbone call was for the cache; the 6 steps used cached features
    assert [e.done for e in events if isinstance(e, Validation)] == [0, 3, 6]  # before training, then per epoch


def test_label_beyond_a_loaded_models_classes_is_an_input_error_before_any_step(tmp_path, backbone, nuclei):
    """What Fine-tune meets when label 2 is painted on 2-class heads (report defect 13): an InputError naming the
    sample, raised before the backbone runs or anything is written, not IndexError from the loss."""
    import numpy as np

    from napari_dinounet.engine.data import samples_from_arrays

    settings = TrainSettings(**TINY, epochs=1, iters_per_epoch=1)
    model = build_model(backbone, settings, num_classes=2, in_channels=1)
    image = nuclei[0].image[0]
    labels = nuclei[0].labels.astype(np.uint8)
    labels[:8, :8] = 2  # the newly painted class
    painted = samples_from_arrays([image], [labels], names=["painted"])
    run = train(
        painted, out=tmp_path / "h.safetensors", backbone=backbone, settings=settings, validation=[], model=model
    )
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
    from napari_dinounet.engine.train import validation_dice

    model = build_model(backbone, TrainSettings(**TINY), num_classes=2, in_channels=1)
    crops = fixed_crops(nuclei[1:], 64, 2, seed=0)
    assert (
        0
        <= validation_dice(
            model, crops, device=torch.device("cpu"), batch_size=2, autocast=torch.autocast("cpu", enabled=False)
        )
        <= 1
    )
    with torch.no_grad():
        for parameter in model.decoder.parameters():
            parameter.mul_(1e30)
    with pytest.raises(TrainingError, match="validation crops became NaN or infinite"):
        validation_dice(
            model, crops, device=torch.device("cpu"), batch_size=2, autocast=torch.autocast("cpu", enabled=False)
        )


# ------------------------------------------------------------------------------ length, network, loss


def test_max_steps_cuts_the_run_and_its_schedule_with_a_shorter_last_epoch():
    settings = TrainSettings(epochs=4, iters_per_epoch=30, max_steps=100)
    assert (settings.total_steps, settings.epoch_count) == (100, 4)
    assert poly_lr(100, settings) == 0.0 and poly_lr(50, settings) == pytest.approx(1e-3 * 0.5**0.9)
    assert TrainSettings(epochs=2, iters_per_epoch=30, max_steps=100).total_steps == 60  # whichever ends first
    with pytest.raises(InputError, match="max steps"):
        TrainSettings(max_steps=0)


def test_a_run_of_max_steps_validates_and_saves_its_short_last_epoch(tmp_path, backbone, nuclei):
    from napari_dinounet.engine.checkpoint import read_metadata

    settings = TrainSettings(epochs=2, iters_per_epoch=3, max_steps=5, **TINY)
    out = tmp_path / "h.safetensors"
    events = _events(
        train(nuclei[:1], validation=nuclei[1:], out=out, backbone=backbone, settings=settings, device="cpu")
    )
    steps = [e for e in events if not isinstance(e, Validation)]
    assert [e.done for e in steps] == [1, 2, 3, 4, 5] and {e.total for e in events} == {5}
    assert [e.message for e in steps] == ["epoch 1/2"] * 3 + ["epoch 2/2"] * 2
    assert [e.metrics["lr"] for e in steps] == [pytest.approx(1e-3 * (1 - k / 5) ** 0.9) for k in range(5)]
    assert [e.done for e in events if isinstance(e, Validation)] == [0, 3, 5]
    history = read_metadata(out).training["history"]
    assert [(h["epoch"], h["step"]) for h in history] == [(1, 3), (2, 5)]


def test_a_given_model_decides_the_network_settings_its_checkpoint_records(tmp_path, backbone, nuclei):
    """Report defect (d).4: fine-tuned compact heads used to record the default projection, fapm."""
    from napari_dinounet.engine.checkpoint import read_metadata
    from napari_dinounet.engine.network import build_dinounet

    model = build_dinounet(projection="compact", num_classes=2, backbone=backbone)
    settings = TrainSettings(epochs=1, iters_per_epoch=1, **{**TINY, "size": None})
    assert settings.projection == "fapm"
    out = tmp_path / "h.safetensors"
    _events(train(nuclei[:1], validation=[], out=out, backbone=backbone, settings=settings, model=model, device="cpu"))
    recorded = read_metadata(out).training["settings"]
    assert (recorded["size"], recorded["projection"], recorded["channels"], recorded["grad_checkpointing"]) == (
        "tiny",
        "compact",
        None,
        False,
    )
    assert read_metadata(out).config["projection"] == "compact"


def test_the_loss_and_the_targets_are_parameters(tmp_path, backbone, nuclei):
    """Another kind of training brings its own targets and loss: train() calls them on each step's batch."""
    labels_seen, calls = [], []

    def inverted_classes(batch):
        labels_seen.append(batch["labels"].clone())
        return 1 - batch["labels"]

    def constant_loss(logits, targets, mask):
        calls.append((tuple(logits.shape), targets, mask))
        return logits.float().sum() * 0 + 0.25 + len(calls)  # a gradient (zero) and a value we know

    settings = TrainSettings(epochs=1, iters_per_epoch=2, **TINY)
    events = _events(
        train(
            nuclei[:1],
            validation=[],
            out=tmp_path / "h.safetensors",
            backbone=backbone,
            settings=settings,
            device="cpu",
            loss=constant_loss,
            targets=inverted_classes,
        )
    )
    assert [e.metrics["loss"] for e in events if not isinstance(e, Validation)] == [1.25, 2.25]
    assert len(calls) == 2
    for (shape, targets, mask), labels in zip(calls, labels_seen):
        assert shape == (2, 2, 64, 64) and mask.shape == (2, 64, 64) and mask.dtype == torch.bool
        assert torch.equal(targets, 1 - labels)


def _stop_rank_main(rank: int, world: int, port: int, out_dir: str) -> None:
    """One gloo process of a DDP run where only rank 1 is asked to stop, after its step 3."""
    import json
    import os
    import warnings

    import torch.distributed as dist
    from _nuclei_training import nuclei_samples

    from napari_dinounet.engine.backbone import load_backbone

    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        steps: list[int] = []
        last = ""
        samples = nuclei_samples([(slice(0, 256), slice(0, 256)), (slice(0, 256), slice(256, 512))])
        run = train(
            samples,
            validation=[],
            out=os.path.join(out_dir, "heads.safetensors"),
            backbone=load_backbone("random:tiny"),
            settings=TrainSettings(epochs=1, iters_per_epoch=10, **TINY),
            device="cpu",
            stop=lambda: rank == 1 and bool(steps) and steps[-1] >= 3,
        )
        for event in run:
            last = event.message
            if event.task == "train" and not isinstance(event, Validation):
                steps.append(event.done)
        with open(os.path.join(out_dir, f"steps{rank}.json"), "w") as file:
            json.dump([steps, last], file)
    finally:
        dist.destroy_process_group()


def test_a_stop_asked_of_one_process_stops_every_process_at_the_same_step(tmp_path):
    import json
    import socket

    from napari_dinounet.engine.checkpoint import read_metadata

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_stop_rank_main, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    steps = [json.loads((tmp_path / f"steps{rank}.json").read_text()) for rank in range(2)]
    for rank_steps, last in steps:  # rank 0 was never asked, yet stops with rank 1 after step 3
        assert rank_steps == [1, 2, 3] and last.startswith("stopped at step 3"), (rank_steps, last)
    assert [h["step"] for h in read_metadata(tmp_path / "heads.safetensors").training["history"]] == [3]
