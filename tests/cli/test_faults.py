"""The reliability report's data-loss, crash and runaway cases of the CLI (defects 1-3, 5, 7, 10, 11, 14, 18-20,
25): nothing a user did not ask to replace is replaced, output problems are one line and come before the
work, runs stop on NaN, a second run on one output is refused, SIGTERM stops like Ctrl-C."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
from _nuclei_training import write_nuclei_folders

from napari_dinounet.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # training: one thread (see conftest.py)

TINY = ["--backbone", "random:tiny", "--size", "tiny", "--patch", "64", "--batch", "2", "--device", "cpu", "--quiet"]
ONE_STEP = ["--epochs", "1", "--iters-per-epoch", "1"]
MISSING_BACKBONE = ["--backbone", "/nonexistent/backbone.pth"]

pytestmark = pytest.mark.usefixtures("quiet_random_backbone")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def copy_folder(source: Path, target: Path) -> Path:
    """A copy of a flat folder of files, for a test to change (or to check that nothing changed it)."""
    shutil.copytree(source, target)
    return target


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A one-step heads checkpoint on random:tiny and its training folders."""
    root = tmp_path_factory.mktemp("trained")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        images, labels = write_nuclei_folders(root)
        heads = root / "heads.safetensors"
        assert (
            main(["train", *TINY, *ONE_STEP, "--images", str(images), "--labels", str(labels), "--out", str(heads)])
            == 0
        )
    return heads, images, labels


def predict_cli(heads: Path, *args: str) -> int:
    return main(["predict", "--heads", str(heads), "--backbone", "random:tiny", "--device", "cpu", "--quiet", *args])


def train_cli(images: Path, labels: Path, out: Path, *args: str) -> int:
    return main(["train", *TINY, *ONE_STEP, "--images", str(images), "--labels", str(labels), "--out", str(out), *args])


@pytest.fixture
def one_run(trained, tmp_path) -> tuple[Path, Path, Path]:
    """(images, labels, heads) of a finished one-step run in tmp_path, its state beside the heads."""
    _, images, labels = trained
    out = tmp_path / "h.safetensors"
    assert train_cli(images, labels, out) == 0
    return images, labels, out


# ------------------------------------------------------------------------------------------ predict


def test_predict_never_replaces_ground_truth_without_overwrite(trained, tmp_path, capsys):
    heads, images, labels = trained
    truth = copy_folder(labels, tmp_path / "labels")
    before = {p.name: digest(p) for p in truth.iterdir()}
    assert predict_cli(heads, str(images), "--out", str(truth)) == 2
    err = capsys.readouterr().err
    assert "already exist" in err and "--overwrite" in err and "--skip-existing" in err
    assert {p.name: digest(p) for p in truth.iterdir()} == before

    assert predict_cli(heads, str(images), "--out", str(truth), "--skip-existing") == 0
    assert "nothing to do" in capsys.readouterr().out
    assert {p.name: digest(p) for p in truth.iterdir()} == before

    assert predict_cli(heads, str(images), "--out", str(truth), "--overwrite") == 0
    assert {p.name: digest(p) for p in truth.iterdir()} != before


def test_predict_nnunet_images_into_labels_is_refused(trained, tmp_path, capsys):
    heads, images, labels = trained
    root = tmp_path / "Dataset001_Nuclei"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    image = tifffile.imread(next(images.iterdir()))
    tifffile.imwrite(root / "imagesTr" / "case1_0000.tif", image)
    tifffile.imwrite(root / "labelsTr" / "case1.tif", np.ones(image.shape, np.uint8))
    before = digest(root / "labelsTr" / "case1.tif")
    assert predict_cli(heads, str(root / "imagesTr"), "--out", str(root / "labelsTr")) == 2
    assert "case1.tif" in capsys.readouterr().err
    assert digest(root / "labelsTr" / "case1.tif") == before


def test_predict_output_problems_come_before_the_backbone_loads(trained, tmp_path, capsys):
    heads, images, _ = trained
    blocker = tmp_path / "a_file.txt"
    blocker.write_text("keep")
    for out in (blocker, blocker / "sub"):
        code = main(["predict", "--heads", str(heads), *MISSING_BACKBONE, "--quiet", str(images), "--out", str(out)])
        assert code == 2
        err = capsys.readouterr().err
        assert "is a file, not a folder" in err and "backbone" not in err and "Traceback" not in err
    assert blocker.read_text() == "keep"


def test_predict_into_the_input_folder_is_refused(trained, tmp_path, capsys):
    heads, images, _ = trained
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"")  # predicts to a.png, not onto itself; never read: the check comes first
    code = main(
        ["predict", "--heads", str(heads), *MISSING_BACKBONE, "--quiet", str(folder / "a.jpg"), "--out", str(folder)]
    )
    assert code == 2
    assert "folder of input images" in capsys.readouterr().err


def test_predict_tile_zero_is_refused_not_ignored(trained, tmp_path, capsys):
    heads, images, _ = trained
    assert predict_cli(heads, str(images), "--out", str(tmp_path / "p"), "--tile", "0") == 2
    assert "tile" in capsys.readouterr().err
    assert not any((tmp_path / "p").glob("*.tif"))


def test_outputs_get_the_umask_and_replaced_files_keep_their_mode(trained, tmp_path):
    heads, images, _ = trained
    old = os.umask(0o022)
    try:
        assert predict_cli(heads, str(images), "--out", str(tmp_path / "p")) == 0
    finally:
        os.umask(old)
    modes = {stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "p").iterdir()}
    assert modes == {0o644}


# ----------------------------------------------------------------------------------------- evaluate


def _evaluate_pair(root: Path, pred: np.ndarray, gt: np.ndarray) -> tuple[Path, Path]:
    (root / "pred").mkdir()
    (root / "gt").mkdir()
    tifffile.imwrite(root / "pred" / "c0.tif", pred)
    tifffile.imwrite(root / "gt" / "c0.tif", gt)
    return root / "pred", root / "gt"


def disc(value: int = 1) -> np.ndarray:
    yy, xx = np.mgrid[:64, :64]
    return (((yy - 32) ** 2 + (xx - 30) ** 2 < 200) * value).astype(np.uint8)


def test_evaluate_json_never_replaces_an_image_or_a_folder(tmp_path, capsys):
    pred, gt = _evaluate_pair(tmp_path, disc(), disc())
    before = digest(gt / "c0.tif")
    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt), "--json", str(gt / "c0.tif")]) == 2
    captured = capsys.readouterr()
    assert ".json" in captured.err and "Dice" not in captured.out  # refused before scoring
    assert digest(gt / "c0.tif") == before
    (tmp_path / "scores.json").mkdir()
    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt), "--json", str(tmp_path / "scores.json")]) == 2
    assert "it is a folder" in capsys.readouterr().err


def test_evaluate_skips_probability_files_and_hints_at_value_mismatch(tmp_path, capsys):
    pred, gt = _evaluate_pair(tmp_path, disc(255), disc(1))
    np.save(pred / "c0_probabilities.npy", np.zeros((2, 64, 64), np.float32))
    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt)]) == 0
    out = capsys.readouterr().out
    assert "[255] occur only in the predictions and [1] only in the ground truth" in out


def test_evaluate_all_background_says_nothing_was_scored(tmp_path, capsys):
    pred, gt = _evaluate_pair(tmp_path, disc(0), disc(0))
    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt)]) == 0
    assert "nothing was scored" in capsys.readouterr().out


# -------------------------------------------------------------------------------------------- train


def test_train_out_never_replaces_the_backbone_or_an_input(trained, tmp_path, dinov3_tiny_dir, capsys):
    _, images, labels = trained
    backbone = tmp_path / "bb_copy.pth"
    backbone.write_bytes((dinov3_tiny_dir / "official_tiny.pth").read_bytes())
    before = digest(backbone)
    code = main(
        [
            "train",
            *TINY[2:],
            "--backbone",
            str(backbone),
            *ONE_STEP,
            "--images",
            str(images),
            "--labels",
            str(labels),
            "--out",
            str(backbone),
            "--overwrite",
        ]
    )
    assert code == 2
    assert "not a napari-dinounet heads checkpoint" in capsys.readouterr().err
    assert digest(backbone) == before and not (tmp_path / "bb_copy.state.safetensors").exists()

    image = next(images.iterdir())
    before = digest(image)
    assert train_cli(images, labels, image, "--overwrite") == 2
    assert digest(image) == before


def test_train_out_problems_come_before_loading_and_training(trained, tmp_path, capsys):
    _, images, labels = trained
    (tmp_path / "adir").mkdir()
    blocker = tmp_path / "a_file.txt"
    blocker.write_text("keep")
    for out, message in ((tmp_path / "adir", "is a folder"), (blocker / "h.safetensors", "not a folder")):
        code = main(
            [
                "train",
                *TINY[2:],
                *MISSING_BACKBONE,
                *ONE_STEP,
                "--images",
                str(images),
                "--labels",
                str(labels),
                "--out",
                str(out),
                "--overwrite",
            ]
        )
        assert code == 2
        err = capsys.readouterr().err
        assert message in err and "backbone" not in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file.txt", "adir"]  # no orphan state file


def test_a_second_run_on_one_out_is_refused_and_stale_temporaries_are_removed(trained, tmp_path, capsys):
    from napari_dinounet.engine.atomic import lock_path

    _, images, labels = trained
    out = tmp_path / "h.safetensors"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock_path(out).write_text(str(holder.pid))
        assert train_cli(images, labels, out) == 2
        assert f"another run (process {holder.pid}) is writing" in capsys.readouterr().err
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
    leftover = tmp_path / ".h.state.o6a392iw.tmp.state.safetensors"
    leftover.write_bytes(b"")
    assert train_cli(images, labels, out) == 0  # the dead holder's lock is taken over
    assert out.exists() and not leftover.exists() and not lock_path(out).exists()


def test_a_new_run_does_not_replace_an_old_runs_state(one_run, tmp_path, capsys):
    images, labels, out = one_run
    out.rename(tmp_path / "moved.safetensors")
    state = tmp_path / "h.state.safetensors"
    before = digest(state)
    assert train_cli(images, labels, out) == 2
    assert "--resume" in capsys.readouterr().err
    assert digest(state) == before


def test_resume_checks_the_backbone_and_a_finished_run_writes_nothing(one_run, tmp_path, dinov3_tiny_dir, capsys):
    images, labels, out = one_run
    before = digest(out)
    capsys.readouterr()
    code = main(
        [
            "train",
            *TINY[2:],
            "--backbone",
            str(dinov3_tiny_dir / "official_tiny.pth"),
            *ONE_STEP,
            "--images",
            str(images),
            "--labels",
            str(labels),
            "--out",
            str(out),
            "--resume",
        ]
    )
    assert code == 2
    assert "started on another one" in capsys.readouterr().err
    assert train_cli(images, labels, out, "--resume") == 0
    assert "nothing to do: the run in" in capsys.readouterr().out
    assert digest(out) == before


def test_non_finite_training_stops_and_keeps_the_last_good_checkpoint(one_run, tmp_path, capsys, monkeypatch):
    images, labels, out = one_run
    before = digest(out)
    assert train_cli(images, labels, out, "--lr", "inf", "--overwrite") == 2
    assert "learning rate must be a positive number up to 1" in capsys.readouterr().err
    assert train_cli(images, labels, out, "--lr", "1e6", "--overwrite") == 2
    assert "up to 1" in capsys.readouterr().err
    from napari_dinounet.engine import train as train_module

    real_loss, calls = train_module.dice_ce_loss, []

    def diverging_loss(*args, **kwargs):  # what a diverging run (or a NaN in the data) gives at step 2
        calls.append(1)
        loss = real_loss(*args, **kwargs)
        return loss * float("nan") if len(calls) == 2 else loss

    monkeypatch.setattr(train_module, "dice_ce_loss", diverging_loss)
    assert (
        main(
            [
                "train",
                *TINY,
                "--epochs",
                "1",
                "--iters-per-epoch",
                "3",
                "--images",
                str(images),
                "--labels",
                str(labels),
                "--out",
                str(out),
                "--overwrite",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "training stopped: the loss became nan at step 2" in err
    assert digest(out) == before


def test_negative_seed_is_a_message(trained, tmp_path, capsys):
    _, images, labels = trained
    assert train_cli(images, labels, tmp_path / "h.safetensors", "--seed", "-1") == 2
    assert "seed must be" in capsys.readouterr().err


@pytest.mark.parametrize("edit", ["step", "param_groups", "num_classes"])
def test_crafted_state_files_are_checkpoint_errors(trained, tmp_path, capsys, edit):
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    _, images, labels = trained
    out = tmp_path / "h.safetensors"
    assert train_cli(images, labels, out, "--epochs", "2") == 0
    state = tmp_path / "h.state.safetensors"
    with safe_open(str(state), framework="pt") as f:
        info = json.loads(f.metadata()["train_state"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (a safetensors file, not a dict)
    info[edit] = {"step": -1, "param_groups": [], "num_classes": "2"}[edit]
    save_file(tensors, str(state), metadata={"train_state": json.dumps(info)})
    assert train_cli(images, labels, out, "--epochs", "2", "--resume") == 2
    err = capsys.readouterr().err
    assert "damaged or was edited" in err and edit in err


def test_interrupt_of_an_overwrite_run_does_not_point_at_the_old_run(one_run, tmp_path, capsys, monkeypatch):
    from napari_dinounet.engine import progress

    images, labels, out = one_run

    def interrupted(gen, desc="", disable=False):
        next(gen)  # the run starts, then Ctrl-C before its first epoch ends
        gen.close()
        raise KeyboardInterrupt

    monkeypatch.setattr(progress, "run_with_bar", interrupted)
    assert train_cli(images, labels, out, "--overwrite") == 130
    assert "nothing was saved" in capsys.readouterr().out


def test_sigterm_stops_training_like_ctrl_c_and_the_run_resumes(trained, tmp_path):
    _, images, labels = trained
    out = tmp_path / "h.safetensors"
    command = [
        str(Path(sys.executable).parent / "dinounet"),
        "train",
        *TINY,
        "--epochs",
        "200",
        "--iters-per-epoch",
        "1",
        "--images",
        str(images),
        "--labels",
        str(labels),
        "--out",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while not (tmp_path / "h.state.safetensors").exists() and time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.2)
    run.send_signal(signal.SIGTERM)
    stdout, stderr = run.communicate(timeout=60)
    assert run.returncode == 128 + signal.SIGTERM, stderr
    assert "stopped: the last finished epoch is saved" in stdout and "terminated" in stderr
    # the state is saved (the heads may not be, when the signal came between the two writes); no temporary
    # file and no lock is left
    names = {p.name for p in tmp_path.iterdir()}
    assert "h.state.safetensors" in names and names <= {"h.safetensors", "h.state.safetensors"}


def test_warnings_are_one_line_naming_the_command():
    result = subprocess.run(
        [str(Path(sys.executable).parent / "dinounet"), "info", "random:tiny"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "default"},
    )
    assert result.returncode == 0, result.stderr
    assert "dinounet info: warning: backbone 'random:tiny' has RANDOM weights" in result.stderr
    assert ".py:" not in result.stderr  # no source file and line number


def test_predict_channel_axis_option_for_files_that_do_not_say(trained, tmp_path, capsys):
    heads, images, _ = trained
    plane = tifffile.imread(next(images.iterdir()))[:64, :64]
    np.save(tmp_path / "czyx.npy", np.stack([plane, plane, plane])[None])  # (C=1, Z=3, Y, X)
    assert predict_cli(heads, str(tmp_path / "czyx.npy"), "--out", str(tmp_path / "p")) == 2
    assert "--channel-axis" in capsys.readouterr().err
    assert predict_cli(heads, str(tmp_path / "czyx.npy"), "--out", str(tmp_path / "p"), "--channel-axis", "0") == 0
    labels = np.load(tmp_path / "p" / "czyx.npy")
    assert labels.shape == (3, 64, 64)
    np.testing.assert_array_equal(labels[0], labels[2])  # three equal slices, predicted alike


def test_predict_step_that_multiplies_tiles_needs_force(trained, tmp_path, capsys):
    heads, images, _ = trained
    one = next(images.iterdir())
    assert predict_cli(heads, str(one), "--out", str(tmp_path / "p"), "--step", "0.05") == 2
    assert "--force" in capsys.readouterr().err
    assert not (tmp_path / "p" / one.name).exists()
    assert predict_cli(heads, str(one), "--out", str(tmp_path / "p"), "--step", "0.1", "--force") == 0
    assert (tmp_path / "p" / one.name).exists()


def test_a_broken_file_midway_says_how_to_continue(trained, tmp_path, capsys):
    heads, images, _ = trained
    folder = copy_folder(images, tmp_path / "mix")
    (folder / "zz_broken.tif").write_bytes(b"not a tiff at all")
    assert predict_cli(heads, str(folder), "--out", str(tmp_path / "p")) == 2
    err = capsys.readouterr().err
    assert "zz_broken.tif" in err and "2 predictions before it are written" in err and "--skip-existing" in err
    (folder / "zz_broken.tif").unlink()
    assert predict_cli(heads, str(folder), "--out", str(tmp_path / "p"), "--skip-existing") == 0
    assert "nothing to do" in capsys.readouterr().out
