"""``dinounet train``: folders and nnU-Net datasets, resuming an interrupted run, clear errors."""

from __future__ import annotations

import json

import pytest
from _nuclei_training import write_nuclei_folders

from napari_dinounet.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # training: one thread (see conftest.py)

TINY = ["--backbone", "random:tiny", "--size", "tiny", "--patch", "64", "--batch", "2", "--device", "cpu", "--quiet"]

pytestmark = pytest.mark.usefixtures("quiet_random_backbone")


def test_train_on_folders_writes_a_checkpoint_with_history(tmp_path, capsys):
    from napari_dinounet.engine.checkpoint import read_metadata

    images, labels = write_nuclei_folders(tmp_path)
    out = tmp_path / "heads.safetensors"
    code = main(
        [
            "train",
            *TINY,
            "--images",
            str(images),
            "--labels",
            str(labels),
            "--out",
            str(out),
            "--epochs",
            "2",
            "--iters-per-epoch",
            "2",
        ]
    )
    assert code == 0
    meta = read_metadata(out)
    assert [h["step"] for h in meta.training["history"]] == [2, 4]
    assert meta.patch_size == 64 and meta.class_names == ["background", "class 1"]
    assert f"wrote {out}" in capsys.readouterr().out
    # a second run must not silently replace it
    assert main(["train", *TINY, "--images", str(images), "--labels", str(labels), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_resume_finishes_an_interrupted_run(tmp_path, capsys):
    from napari_dinounet.engine.checkpoint import read_metadata
    from napari_dinounet.engine.data import samples_from_folders
    from napari_dinounet.engine.train import TrainSettings, train

    images, labels = write_nuclei_folders(tmp_path)
    out = tmp_path / "heads.safetensors"
    settings = TrainSettings(size="tiny", patch_size=64, batch_size=2, epochs=3, iters_per_epoch=2)
    run = train(samples_from_folders(images, labels), out=out, backbone="random:tiny", settings=settings, device="cpu")
    for event in run:  # stop during the second epoch, as Ctrl-C would
        if event.done == 3:
            break
    run.close()
    assert [h["step"] for h in read_metadata(out).training["history"]] == [2]

    args = [
        "train",
        *TINY,
        "--images",
        str(images),
        "--labels",
        str(labels),
        "--out",
        str(out),
        "--epochs",
        "3",
        "--iters-per-epoch",
        "2",
    ]
    assert main([*args, "--resume"]) == 0
    assert [h["step"] for h in read_metadata(out).training["history"]] == [2, 4, 6]
    # resuming with other settings is refused, naming what changed
    capsys.readouterr()
    assert main([*args[:-4], "--epochs", "5", "--iters-per-epoch", "2", "--resume"]) == 2
    assert "epochs (3 -> 5)" in capsys.readouterr().err


def test_train_on_an_nnunet_dataset_keeps_its_class_names(tmp_path):
    import tifffile
    from _nuclei_training import nuclei_foreground

    from napari_dinounet.engine.checkpoint import read_metadata

    image, foreground = nuclei_foreground()
    root = tmp_path / "Dataset001_Nuclei"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for i in range(2):
        tifffile.imwrite(root / "imagesTr" / f"nuc_{i:03d}_0000.tif", image[:96, i * 96 : (i + 1) * 96])
        tifffile.imwrite(root / "labelsTr" / f"nuc_{i:03d}.tif", foreground[:96, i * 96 : (i + 1) * 96])
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "fluorescence"},
                "labels": {"background": 0, "nucleus": 1},
                "numTraining": 2,
                "file_ending": ".tif",
            }
        )
    )
    out = tmp_path / "nnunet.safetensors"
    assert (
        main(["train", *TINY, "--dataset", str(root), "--out", str(out), "--epochs", "1", "--iters-per-epoch", "1"])
        == 0
    )
    assert read_metadata(out).class_names == ["background", "nucleus"]


def test_labels_with_an_absent_class_need_classes(tmp_path, capsys):
    import tifffile

    from napari_dinounet.engine.checkpoint import read_metadata

    images, labels = write_nuclei_folders(tmp_path)
    for path in labels.iterdir():  # nuclei are class 2, class 1 occurs nowhere
        tifffile.imwrite(path, tifffile.imread(path) * 2)
    out = tmp_path / "heads.safetensors"
    args = [
        "train",
        *TINY,
        "--images",
        str(images),
        "--labels",
        str(labels),
        "--out",
        str(out),
        "--epochs",
        "1",
        "--iters-per-epoch",
        "1",
    ]
    assert main(args) == 2
    assert "crop0.tif" in (err := capsys.readouterr().err) and "contain 2 but no 1" in err and "--classes N" in err
    assert main([*args, "--classes", "3"]) == 0
    meta = read_metadata(out)
    assert meta.num_classes == 3 and meta.class_names == ["background", "class 1", "class 2"]


def test_nnunet_v1_class_names_are_ordered_by_value(tmp_path):
    import argparse

    import numpy as np
    import tifffile

    from napari_dinounet.cli.train import load_training_data
    from napari_dinounet.engine.normalize import Normalization

    root = tmp_path / "Task01"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    tifffile.imwrite(root / "imagesTr" / "a_0000.tif", np.arange(64, dtype=np.float32).reshape(8, 8))
    tifffile.imwrite(root / "labelsTr" / "a.tif", (np.arange(64).reshape(8, 8) % 3).astype(np.uint8))
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "modality": {"0": "MRI"},
                "labels": {"0": "background", "1": "tumour", "2": "oedema"},
                "numTraining": 1,
                "file_ending": ".tif",
            }
        )
    )
    args = argparse.Namespace(dataset=str(root), images=None, labels=None, classes=None)
    _, names = load_training_data(args, Normalization())
    assert names == ["background", "tumour", "oedema"]  # sorting the raw dict gave ['0', '2', '1']


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--images", "x", "--labels", "y", "--dataset", "z"], "not both"),
        ([], "no training data"),
        (["--images", "x", "--labels", "y", "--patch", "100"], "multiple of 32"),
        (["--dataset", "z", "--classes", "3"], "--classes is for --images/--labels"),
    ],
)
def test_bad_arguments_end_with_a_message_not_a_traceback(tmp_path, capsys, extra, message):
    args = ["train", "--backbone", "random:tiny", "--out", str(tmp_path / "o.safetensors"), *extra]
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_missing_backbone_says_how_to_give_one(tmp_path, capsys):
    images, labels = write_nuclei_folders(tmp_path)
    assert main(["train", "--images", str(images), "--labels", str(labels), "--out", str(tmp_path / "o")]) == 2
    assert "--backbone" in capsys.readouterr().err


def test_the_first_ctrl_c_stops_after_the_step_and_saves_it(tmp_path, capsys, monkeypatch):
    """Ctrl-C once: the heads of the step reached are written (the run used to fall back to the last epoch)."""
    import os
    import signal

    from napari_dinounet.engine import train as train_module
    from napari_dinounet.engine.checkpoint import read_metadata

    real_train = train_module.train

    def ctrl_c_after_step_2(*args, **kwargs):
        run, sent = real_train(*args, **kwargs), False
        try:
            while True:
                event = next(run)
                yield event
                if not sent and event.task == "train" and event.done == 2 and "loss" in event.metrics:
                    os.kill(os.getpid(), signal.SIGINT)  # once, as the terminal sends it
                    sent = True
        except StopIteration as finished:
            return finished.value

    monkeypatch.setattr(train_module, "train", ctrl_c_after_step_2)
    images, labels = write_nuclei_folders(tmp_path)
    out = tmp_path / "heads.safetensors"
    args = ["train", *TINY, "--images", str(images), "--labels", str(labels), "--out", str(out)]
    # what was there before: Python's default in a terminal, SIG_IGN in a job started in the background (`&`)
    handler_before = signal.getsignal(signal.SIGINT)
    code = main([*args, "--epochs", "1", "--iters-per-epoch", "10"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert [h["step"] for h in read_metadata(out).training["history"]] == [2]
    assert "stopping after this step" in captured.err and f"stopped at step 2: wrote {out}" in captured.out
    assert signal.getsignal(signal.SIGINT) is handler_before  # the handler is put back
