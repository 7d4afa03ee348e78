"""Instance mode (engine/instances.py): the boundary-aware target, the watershed on whole-image maps (no
tile border splits an object), re-decoding without the network, and heads that record their task."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_dinounet.engine import normalize
from napari_dinounet.engine.checkpoint import HeadsMetadata, read_metadata, save_heads
from napari_dinounet.engine.errors import CheckpointError, DinoUNetError, InputError
from napari_dinounet.engine.instance_metrics import evaluate_instances
from napari_dinounet.engine.instances import (
    BACKGROUND,
    BOUNDARY,
    INSTANCE_CLASS_NAMES,
    INTERIOR,
    InstanceMaps,
    InstanceMapsOutput,
    InstanceParams,
    Instances,
    boundary_classes,
    generate,
    instance_samples,
)
from napari_dinounet.engine.layout import infer_layout
from napari_dinounet.engine.predict import sliding_window
from napari_dinounet.engine.predictor import Predictor
from napari_dinounet.engine.progress import drain

CORE, RIM = 100.0, 50.0  # intensities of the synthetic image: object cores, object rims and seams; 0 outside


def test_boundary_classes_by_hand():
    ids = np.zeros((6, 10), np.uint16)
    ids[1:5, 0:5] = 3  # touches the image's left border
    ids[1:5, 5:9] = 8  # touches object 3
    target = boundary_classes(ids, width=1)
    expected = np.array(
        [
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            [2, 2, 2, 2, 2, 2, 2, 2, 2, 0],
            [1, 1, 1, 1, 2, 2, 1, 1, 2, 0],  # the left border is no boundary; the seam is one pixel each side
            [1, 1, 1, 1, 2, 2, 1, 1, 2, 0],
            [2, 2, 2, 2, 2, 2, 2, 2, 2, 0],
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        ],
        np.uint8,
    )
    np.testing.assert_array_equal(target, expected)
    assert target.dtype == np.uint8
    # width 2: two pixels each side, so object 8 (4 wide) has no interior left
    assert not (boundary_classes(ids, width=2)[:, 5:] == INTERIOR).any()
    # a stack is converted slice by slice along slice_axis
    stack = np.stack([ids, np.zeros_like(ids)], axis=2)
    np.testing.assert_array_equal(boundary_classes(stack, width=1, slice_axis=2)[..., 0], expected)
    with pytest.raises(InputError, match="negative"):
        boundary_classes(-ids.astype(np.int32))
    with pytest.raises(InputError, match="integer"):
        boundary_classes(ids.astype(float))


def test_instance_samples_train_three_classes_with_masks():
    image = np.random.default_rng(0).normal(size=(40, 40)).astype(np.float32)
    ids = np.zeros((40, 40), np.uint16)
    ids[5:15, 5:15], ids[5:15, 15:25] = 40, 41
    mask = np.zeros((40, 40), bool)
    mask[:20, :30] = True  # sparse: only this part was labelled
    (sample,) = instance_samples([image], [ids], masks=[mask])
    assert set(np.unique(sample.labels)) == {BACKGROUND, INTERIOR, BOUNDARY}
    assert sample.labels[10, 14] == BOUNDARY and sample.labels[10, 10] == INTERIOR
    np.testing.assert_array_equal(sample.mask, mask)


def test_sparse_instance_labels_train_the_painted_pixels_only():
    from napari_dinounet.engine.instances import SCRIBBLE_BACKGROUND, instance_scribbles

    image = np.random.default_rng(0).normal(size=(40, 40)).astype(np.float32)
    scribbles = np.zeros((40, 40), np.uint16)
    scribbles[5:15, 5:15], scribbles[5:15, 15:25] = 40, 41  # two touching objects, painted whole
    scribbles[30:33, 2:38] = 1  # a background stroke painted with label 1 (also the interior class value)
    classes = instance_scribbles(scribbles, 1, width=1)
    assert classes[31, 10] == SCRIBBLE_BACKGROUND and classes[10, 10] == INTERIOR and classes[20, 20] == 0
    (sample,) = instance_samples([image], [scribbles], sparse_background=1, width=1)
    assert sample.sparse
    np.testing.assert_array_equal(sample.mask, scribbles > 0)  # the loss sees the painted pixels only
    assert sample.labels[31, 10] == BACKGROUND and sample.labels[10, 14] == BOUNDARY
    assert sample.labels[10, 10] == INTERIOR and sample.labels[10, 20] == INTERIOR
    # the error names the user's background value, not the class value it becomes inside
    with pytest.raises(InputError, match="background label 7 is painted nowhere in nuclei: paint"):
        instance_samples([image], [scribbles], sparse_background=7, names=["nuclei"])


def touching_objects(shape=(96, 160)) -> tuple[np.ndarray, np.ndarray]:
    """An image of a long bar across the whole width (one object, 12 rows) and two touching squares
    (two objects: a seam of RIM between them), rims of RIM and cores of CORE; and its instance truth."""
    image = np.zeros(shape, np.float32)
    truth = np.zeros(shape, np.uint16)
    truth[10:22, 4 : shape[1] - 4] = 1
    truth[40:80, 20:60] = 2
    truth[40:80, 60:100] = 3
    target = boundary_classes(truth, width=2)
    image[target == BOUNDARY] = RIM
    image[target == INTERIOR] = CORE
    return image, truth


class PixelClassifier(torch.nn.Module):
    """A stand-in for instance heads: per pixel, background below the rim, boundary at the rim, interior
    above it, from the z-scored intensity alone (so its output is the same whatever the tile); counts calls."""

    def __init__(self, image: np.ndarray):
        super().__init__()
        norm = normalize.Normalization("zscore")
        stats = normalize.statistics_for(image[None], norm)
        z = {v: float(normalize.apply(np.array([[[v]]], np.float32), norm, stats).ravel()[0]) for v in (0, RIM, CORE)}
        self.low, self.high = (z[0] + z[RIM]) / 2, (z[RIM] + z[CORE]) / 2
        self.scale = torch.nn.Parameter(torch.tensor(40.0))
        self.calls = 0

    def forward(self, tiles):  # (B, 1, h, w) -> (B, 3, h, w)
        self.calls += 1
        z = tiles[:, :1]
        return self.scale * torch.cat([self.low - z, z - self.high, torch.zeros_like(z)], dim=1)


def test_objects_across_tile_borders_stay_one_object():
    image, truth = touching_objects()
    model = PixelClassifier(image)
    layout = infer_layout(image.shape)
    # tiles of 32 at step 0.5: the bar crosses nine tile columns, the squares several tile borders
    (labels,) = drain(sliding_window(model, image, layout, [Instances(min_size=0)], patch_size=32))
    assert labels.dtype == np.uint16 and model.calls > 4
    assert labels.max() == 3  # the bar is one object; the two touching squares are two
    scores = evaluate_instances(labels, truth)
    assert scores["matched"] == 3 and scores["f1"] == 1.0
    bar = np.unique(labels[truth == 1])
    assert bar.size == 1 and bar[0] > 0  # every pixel of the bar carries one id


def test_generate_reruns_on_the_maps_without_the_network():
    image, truth = touching_objects()
    model = PixelClassifier(image)
    (maps,) = drain(sliding_window(model, image, infer_layout(image.shape), [InstanceMapsOutput()], patch_size=32))
    calls = model.calls
    assert isinstance(maps, InstanceMaps) and maps.probabilities.shape == (3, *image.shape)
    default = generate(maps)
    assert default.max() == 3
    # the bar (12 x 152 = 1824 px) stays, the squares (40 x 40 = 1600 px each) go when objects need 1700 px
    large_only = generate(maps, min_size=1700)
    assert large_only.max() == 1 and np.array_equal(large_only > 0, truth == 1)
    # seeds must be larger than any interior: no objects
    assert generate(maps, InstanceParams(min_seed_size=10_000)).max() == 0
    assert model.calls == calls  # none of this ran the network
    with pytest.raises(InputError, match="seed_threshold"):
        generate(maps, seed_threshold=1.5)
    with pytest.raises(InputError, match="InstanceMaps"):
        generate(maps.probabilities)


def test_a_stack_is_decoded_slice_by_slice_with_ids_unique_across_it():
    image, truth = touching_objects((64, 120))
    stack = np.stack([image, image[::-1]])
    model = PixelClassifier(stack)
    (labels,) = drain(
        sliding_window(model, stack, infer_layout(stack.shape, slice_axis=0), [Instances(min_size=0)], patch_size=32)
    )
    assert labels.shape == stack.shape and labels.max() == 6
    assert set(np.unique(labels[0])) == {0, 1, 2, 3} and set(np.unique(labels[1])) == {0, 4, 5, 6}


def save_instance_heads(path, backbone):
    """Random tiny instance heads on ``backbone`` (tests/_random_heads.py), saved with task "instances"."""
    import dataclasses

    from _random_heads import random_heads

    model, metadata = random_heads(backbone, num_classes=3)
    metadata = dataclasses.replace(metadata, class_names=list(INSTANCE_CLASS_NAMES), task="instances")
    return save_heads(path, model, metadata)


@pytest.fixture(scope="module")
def instance_heads(tmp_path_factory, tiny_backbone):
    return save_instance_heads(tmp_path_factory.mktemp("heads") / "instances.safetensors", tiny_backbone)


def test_instance_heads_give_instance_labels_by_default(instance_heads, tiny_backbone):
    predictor = Predictor.from_checkpoint(instance_heads, tiny_backbone)
    assert predictor.metadata.task == "instances" and read_metadata(instance_heads).task == "instances"
    calls = []
    predictor.model.register_forward_hook(lambda *_: calls.append(1))
    image = np.random.default_rng(0).integers(0, 4000, (64, 96)).astype(np.uint16)
    (labels,) = drain(predictor.predict(image))
    (maps,) = drain(predictor.predict(image, outputs=[InstanceMapsOutput()]))
    forward_calls = len(calls)
    assert labels.dtype == np.uint16 and labels.shape == image.shape
    np.testing.assert_array_equal(labels, generate(maps))  # the one-step output is the maps' decoding
    generate(maps, seed_threshold=0.9, min_size=0)
    assert len(calls) == forward_calls


def test_the_task_is_recorded_and_older_files_are_semantic(instance_heads, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(instance_heads), framework="pt") as handle:
        header = handle.metadata()
    description = json.loads(header["heads"])
    del description["task"]  # as files written before the task was recorded
    old = tmp_path / "old.safetensors"
    save_file(load_file(str(instance_heads)), str(old), metadata={**header, "heads": json.dumps(description)})
    assert read_metadata(old).task == "semantic"
    description["task"] = "panoptic"
    save_file(load_file(str(instance_heads)), str(old), metadata={**header, "heads": json.dumps(description)})
    with pytest.raises(CheckpointError, match="task"):
        read_metadata(old)
    config = read_metadata(instance_heads).config
    with pytest.raises(DinoUNetError, match="3 classes"):
        HeadsMetadata(config={**config, "num_classes": 2}, class_names=["a", "b"], task="instances")


def test_object_features_by_hand():
    from napari_dinounet.engine.instances import object_features

    labels = np.zeros((4, 4), np.uint16)
    labels[0, :2] = 5  # 2 px of intensity 1 and 3
    labels[3, 3] = 9  # 1 px of intensity 15
    image = np.arange(16, dtype=np.uint16).reshape(4, 4)
    image[0, 0] = 1
    assert object_features(labels, image) == {"index": [5, 9], "area": [2, 1], "mean_intensity": [1.0, 15.0]}
    rgb = np.stack([image, image * 3], axis=-1)  # channels averaged: twice the grey values
    assert object_features(labels, rgb, channel_axis=2)["mean_intensity"] == [2.0, 30.0]
    with pytest.raises(InputError, match="spatial shape"):
        object_features(labels, image[:2])


def test_the_nuclei_ground_truth_survives_target_and_decoding():
    """The representation's ceiling on real data: the nuclei sample's own 3-class target, as certain
    probabilities, decodes back to its 125 nuclei (measured: 122 matched at IoU 0.5, F1 0.976, AP 0.94;
    the misses are nuclei too thin for an interior)."""
    from napari_dinounet.engine.bundled_data import load_nuclei

    _, truth = load_nuclei()
    certain = np.eye(3, dtype=np.float32)[boundary_classes(truth)].transpose(2, 0, 1)
    scores = evaluate_instances(generate(InstanceMaps(certain)), truth)
    assert scores["gt_count"] == 125 and scores["pred_count"] == 125
    assert scores["f1"] > 0.97 and scores["ap"] > 0.9
