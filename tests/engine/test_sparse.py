"""Sparse labels (scribbles, engine/sparse.py and the data hooks): 0 = not painted, a chosen background
value becomes class 0, validation on them says it scores the painted pixels only, and training from
strokes of at most 3 % of the pixels comes close to training on full labels."""

from __future__ import annotations

import numpy as np
import pytest

from napari_dinounet.engine.bundled_data import load_nuclei
from napari_dinounet.engine.data import samples_from_arrays, samples_from_folders, split_samples
from napari_dinounet.engine.errors import InputError
from napari_dinounet.engine.sparse import scribble_targets, simulated_scribbles

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_scribble_targets_map_background_to_class_zero_and_mask_the_unpainted():
    strokes = np.array([[0, 1, 1, 0], [3, 3, 0, 5], [0, 0, 0, 5]], np.uint8)
    classes, painted = scribble_targets(strokes, background=3)
    np.testing.assert_array_equal(classes, [[0, 1, 1, 0], [0, 0, 0, 5], [0, 0, 0, 5]])
    np.testing.assert_array_equal(painted, strokes != 0)
    assert classes.dtype == np.int64 and painted.dtype == bool


@pytest.mark.parametrize(
    "strokes, background, message",
    [
        (np.zeros((4, 4), np.uint8), 2, "nothing is painted"),
        (np.array([[0, 1], [1, 0]]), 2, "background label 2 is painted nowhere .*painted: 1"),
        (np.array([[0, 2], [2, 0]]), 2, "only background"),
        (np.array([[0, 2], [1, 0]]), 0, "0 means 'not painted'"),
        (np.array([[0, 2], [-1, 0]]), 2, "negative"),
        (np.array([[0, 2], [300, 0]]), 2, "classes go up to 255"),
        (np.array([[0.5, 2], [1, 0]]), 2, "whole numbers"),
    ],
)
def test_bad_scribbles_are_refused_with_the_fix(strokes, background, message):
    with pytest.raises(InputError, match=message):
        scribble_targets(strokes, background)


def test_sparse_samples_keep_painted_values_as_classes_with_gaps_and_count_only_painted_pixels():
    image = np.random.default_rng(0).random((2, 40, 50)).astype(np.float32)
    strokes = np.zeros((2, 40, 50), np.uint16)
    strokes[0, 5, 5:20] = 1
    strokes[0, 30, 5:40] = 9  # background painted as 9
    strokes[1, 10:12, 10:30] = 4  # class 4 with 2, 3 never painted: allowed in sparse labels
    user_mask = np.ones((2, 40, 50), bool)
    user_mask[0, 30, 5:10] = False  # a given mask further restricts the painted pixels
    samples = samples_from_arrays([image], [strokes], masks=[user_mask], sparse_background=9, names=["stack"])
    assert [s.sparse for s in samples] == [True, True]
    first, second = samples
    assert first.mask.sum() == 15 + 30 and second.mask.sum() == 40
    assert set(np.unique(first.labels[first.mask])) == {0, 1} and set(np.unique(second.labels[second.mask])) == {4}
    np.testing.assert_array_equal(first.labels[30, 10:40], 0)  # 9 became background
    # the same labels without sparse_background: 9 is a class, 0 background, and the gap is refused
    with pytest.raises(InputError, match="without gaps"):
        samples_from_arrays([image], [strokes])
    # num_classes bounds sparse classes too
    with pytest.raises(InputError, match="outside 0..2"):
        samples_from_arrays([image], [strokes], sparse_background=9, num_classes=3)
    # B painted in no image at all is refused, whichever image is looked at
    with pytest.raises(InputError, match="painted nowhere"):
        samples_from_arrays([image], [strokes], sparse_background=7)


def test_sparse_folders_read_scribble_files(tmp_path):
    import tifffile

    (tmp_path / "im").mkdir()
    (tmp_path / "lab").mkdir()
    image = load_nuclei()[0][:64, :64]
    strokes = np.zeros((64, 64), np.uint8)
    strokes[10, 10:30], strokes[50, 5:60] = 1, 2
    tifffile.imwrite(tmp_path / "im" / "a.tif", image)
    tifffile.imwrite(tmp_path / "lab" / "a.tif", strokes)
    (sample,) = samples_from_folders(tmp_path / "im", tmp_path / "lab", sparse_background=2)
    assert sample.sparse and sample.mask.sum() == 20 + 55 and sample.labels.max() == 1
    with pytest.raises(InputError, match="painted nowhere"):
        samples_from_folders(tmp_path / "im", tmp_path / "lab", sparse_background=3)


def test_simulated_strokes_stay_within_their_coverage_and_on_their_class():
    foreground = (load_nuclei()[1] > 0).astype(np.int64)
    strokes = simulated_scribbles(foreground, 2, coverage=0.03)
    painted = strokes != 0
    assert 0.005 < painted.mean() <= 0.03
    assert np.all(foreground[strokes == 1] == 1) and np.all(foreground[strokes == 2] == 0)
    tight = simulated_scribbles(foreground, 2, coverage=0.005)
    assert (tight != 0).mean() <= 0.005 and set(np.unique(tight)) == {0, 1, 2}


# -------------------------------------------------------------------------------------------- training


def test_strokes_of_3_percent_train_fresh_heads_to_90_percent_of_full_label_dice(
    tmp_path, tiny_backbone, nuclei_left_heads
):
    """Left half for training, right half for scoring, the same steps. The validation on strokes says it
    scores the painted pixels only (scope "painted"); the full-label validation set of the full-label run
    is scored, and reported, as labels."""
    from _nuclei_training import train_nuclei_heads

    from napari_dinounet.engine.checkpoint import load_heads, read_metadata
    from napari_dinounet.engine.metrics import binary_dice
    from napari_dinounet.engine.predictor import Predictor
    from napari_dinounet.engine.progress import drain

    image, instances = load_nuclei()
    truth = instances[:, 256:] > 0
    strokes = simulated_scribbles((instances[:, :256] > 0).astype(np.int64), 2, coverage=0.03)
    assert (strokes != 0).mean() <= 0.03
    sparse_train, sparse_val = split_samples(samples_from_arrays([image[:, :256]], [strokes], sparse_background=2))
    out = tmp_path / "strokes.safetensors"
    validations = train_nuclei_heads(sparse_train, out, tiny_backbone, validation=sparse_val)
    full_predictor, full_validations = nuclei_left_heads
    (full_labels,) = drain(full_predictor.predict(image[:, 256:], tile=128))
    (stroke_labels,) = drain(Predictor(*load_heads(out, tiny_backbone)).predict(image[:, 256:], tile=128))
    full_dice, stroke_dice = binary_dice(full_labels == 1, truth), binary_dice(stroke_labels == 1, truth)
    print(
        f"Dice on the right half: full labels {full_dice:.3f}, strokes ({(strokes != 0).mean():.1%}) {stroke_dice:.3f}"
    )
    assert full_dice > 0.75 and stroke_dice >= 0.9 * full_dice
    assert {v.scope for v in validations} == {"painted"} and "painted pixels only" in validations[-1].message
    assert {v.scope for v in full_validations} == {"labels"} and "painted" not in full_validations[-1].message
    assert read_metadata(out).training["history"][-1]["val_scope"] == "painted"
