"""engine/data.py: samples from arrays, splits, patch sampling with foreground oversampling and masks."""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch

from napari_dinounet.engine.augment import PROBABILITIES, Augmenter
from napari_dinounet.engine.bundled_data import load_nuclei
from napari_dinounet.engine.data import (
    PatchSampler,
    Sample,
    fixed_crops,
    samples_from_arrays,
    samples_from_folders,
    samples_from_nnunet,
    split_samples,
)
from napari_dinounet.engine.errors import InputError
from napari_dinounet.engine.normalize import Normalization


@pytest.fixture(scope="module")
def nuclei() -> tuple[np.ndarray, np.ndarray]:
    image, instances = load_nuclei()
    return image, (instances > 0).astype(np.uint8)


@pytest.fixture(scope="module")
def nuclei_samples(nuclei) -> list[Sample]:
    return samples_from_arrays([nuclei[0]], [nuclei[1]], names=["nuclei"])


def constant_samples(count: int, size=(20, 24)) -> list[Sample]:
    """Samples whose pixels all hold their own index, so a patch tells which sample it came from."""
    return [
        Sample(np.full((1, *size), i, np.float32), np.ones(size, np.int64), None, f"s{i}", f"s{i}")
        for i in range(count)
    ]


# ------------------------------------------------------------------------------------------- samples


def test_samples_from_arrays_of_different_sizes_rgb_and_channels(nuclei):
    image, labels = nuclei
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (60, 70, 3), dtype=np.uint8)
    two_channel = rng.normal(size=(2, 40, 30))
    samples = samples_from_arrays([image, rgb], [labels, np.zeros((60, 70), np.int32)], names=["nuclei", "photo"])
    assert [s.image.shape for s in samples] == [(1, 512, 512), (3, 60, 70)]
    assert all(s.image.dtype == np.float32 and s.labels.dtype == np.int64 and s.mask is None for s in samples)
    assert [(s.name, s.group) for s in samples] == [("nuclei", "nuclei"), ("photo", "photo")]
    assert abs(samples[0].image.mean()) < 1e-4 and abs(samples[0].image.std() - 1) < 1e-3  # z-scored
    assert np.array_equal(samples[0].labels, labels)
    multi = samples_from_arrays([two_channel], [np.zeros((40, 30), np.uint8)], channel_axis=0)
    assert multi[0].image.shape == (2, 40, 30)
    rgb_scheme = samples_from_arrays([rgb], [np.zeros((60, 70))], normalization=Normalization("rgb"))[0].image
    assert abs(rgb_scheme.mean()) < 1e-4  # one mean over all colour channels
    assert not np.allclose(rgb_scheme.mean(axis=(1, 2)), 0, atol=1e-3)


def test_stack_becomes_slices_of_one_group_normalized_as_a_whole():
    stack = np.arange(4 * 10 * 12, dtype=np.float32).reshape(4, 10, 12)
    labels = np.zeros((4, 10, 12), np.uint8)
    labels[2, 3:5, 3:5] = 1
    samples = samples_from_arrays([stack], [labels], names=["vol"])
    assert [s.name for s in samples] == ["vol[z=0]", "vol[z=1]", "vol[z=2]", "vol[z=3]"]
    assert {s.group for s in samples} == {"vol"}
    assert all(s.image.shape == (1, 10, 12) for s in samples)
    whole = (stack - stack.mean()) / stack.std()
    assert np.allclose(samples[2].image[0], whole[2], atol=1e-5)
    assert samples[2].labels.sum() == 4
    across = samples_from_arrays([stack], [labels], slice_axis=2)
    assert len(across) == 12 and across[0].image.shape == (1, 4, 10)


def test_partial_labels_keep_the_mask_and_drop_unmarked_slices():
    stack = np.random.default_rng(1).normal(size=(3, 16, 16))
    labels = np.ones((3, 16, 16), np.int64)
    mask = np.zeros((3, 16, 16), np.uint8)
    mask[1, :8] = 255
    samples = samples_from_arrays([stack], [labels], masks=[mask], names=["s"])
    assert [s.name for s in samples] == ["s[z=1]"]
    assert samples[0].mask.dtype == bool and samples[0].mask.sum() == 8 * 16 and samples[0].mask[:8].all()
    with pytest.raises(InputError, match="every mask is empty"):
        samples_from_arrays([stack], [labels], masks=[np.zeros_like(mask)])
    with pytest.raises(InputError, match="mask shape"):
        samples_from_arrays([stack], [labels], masks=[mask[:, :8]])


def test_unknown_label_values_name_the_values_and_the_fix():
    image = np.zeros((8, 8))
    labels = np.zeros((8, 8), np.int32)
    labels[0, :3] = [1, 5, 7]
    with pytest.raises(
        InputError,
        match=r"labels of b contain values 5, 7 outside 0\.\.2: use only labels 0\.\.2, "
        r"or train 8 or more classes",
    ):
        samples_from_arrays([image, image], [np.zeros((8, 8)), labels], names=["a", "b"], num_classes=3)
    labels[0, 0] = -1
    with pytest.raises(InputError, match=r"negative values -1: use 0 for background"):
        samples_from_arrays([image], [labels])
    with pytest.raises(InputError, match="whole class numbers"):
        samples_from_arrays([image], [np.full((8, 8), 0.5)])
    # with num_classes, classes absent from the images are fine (without it 2, 3, 4, 6 would be gaps)
    assert samples_from_arrays([image], [np.abs(labels)], num_classes=8)[0].labels.max() == 7


def test_bad_inputs_are_clear_errors_and_nan_warns():
    with pytest.raises(InputError, match="does not match labels shape"):
        samples_from_arrays([np.zeros((10, 12))], [np.zeros((12, 10))])
    with pytest.raises(InputError, match="2 images but 1 label"):
        samples_from_arrays([np.zeros((4, 4))] * 2, [np.zeros((4, 4))])
    with pytest.raises(InputError, match="no images given"):
        samples_from_arrays([], [])
    image = np.random.default_rng(0).normal(size=(6, 6))
    image[2, 3] = np.nan
    with pytest.warns(UserWarning, match="1 NaN/inf pixels"):
        sample = samples_from_arrays([image], [np.zeros((6, 6))], names=["n"])[0]
    assert sample.image[0, 2, 3] == 0 and np.isfinite(sample.image).all()


# --------------------------------------------------------------------------------------------- splits


def test_split_keeps_groups_together_and_is_reproducible():
    samples = []
    for g in range(10):
        samples += [
            Sample(np.zeros((1, 4, 4), np.float32), np.zeros((4, 4), np.int64), None, f"g{g}[z={k}]", f"g{g}")
            for k in range(3)
        ]
    train, val = split_samples(samples, 0.2, seed=0)
    assert len(train) == 24 and len(val) == 6
    train_groups, val_groups = {s.group for s in train}, {s.group for s in val}
    assert not train_groups & val_groups and len(val_groups) == 2
    assert [s.name for s in split_samples(samples, 0.2, seed=0)[1]] == [s.name for s in val]
    others = [{s.group for s in split_samples(samples, 0.2, seed=seed)[1]} for seed in range(1, 6)]
    assert any(groups != val_groups for groups in others)
    assert split_samples(samples, 0.0) == (samples, [])
    with pytest.raises(InputError, match="val_fraction"):
        split_samples(samples, 1.0)


def test_single_image_is_split_spatially_and_single_stack_by_slice_block(nuclei_samples):
    train, val = split_samples(nuclei_samples, 0.2)
    assert train[0].shape == (512, 410) and val[0].shape == (512, 102)
    original = nuclei_samples[0]
    assert np.array_equal(np.concatenate([train[0].labels, val[0].labels], axis=1), original.labels)
    assert np.array_equal(val[0].image, original.image[:, :, 410:])
    # partial labels: 80 % of the *counted* pixels train, so both sides get some
    mask = np.zeros((512, 512), bool)
    mask[100:140, 50:450] = True
    masked = replace(original, mask=mask)
    train, val = split_samples([masked], 0.2)
    assert train[0].mask.sum() == 40 * 320 and val[0].mask.sum() == 40 * 80 and val[0].shape == (512, 142)
    stack = samples_from_arrays([np.random.default_rng(0).normal(size=(10, 8, 8))], [np.zeros((10, 8, 8))], names=["v"])
    train, val = split_samples(stack, 0.2)
    assert [s.name for s in val] == ["v[z=8]", "v[z=9]"] and len(train) == 8


# -------------------------------------------------------------------------------------------- patches


def test_batch_shapes_and_dtypes(nuclei_samples):
    batch = PatchSampler(nuclei_samples, 256, 2).next_batch()
    assert batch["image"].shape == (2, 1, 256, 256) and batch["image"].dtype == torch.float32
    assert batch["labels"].shape == (2, 256, 256) and batch["labels"].dtype == torch.int64
    assert batch["mask"].shape == (2, 256, 256) and batch["mask"].dtype == torch.bool and batch["mask"].all()
    assert batch["foreground_forced"].shape == (2,) and batch["foreground_forced"].dtype == torch.bool
    # a patch is a crop of the sample: find it back in the image
    image, labels = nuclei_samples[0].image[0], nuclei_samples[0].labels
    patch = batch["image"][0, 0].numpy()
    hits = np.argwhere(image == patch[0, 0])
    assert any(
        np.array_equal(image[y : y + 256, x : x + 256], patch)
        and np.array_equal(labels[y : y + 256, x : x + 256], batch["labels"][0].numpy())
        for y, x in hits
    )


def test_foreground_oversampling_fraction(nuclei_samples):
    # small patches, so that a random one often misses every nucleus
    always = PatchSampler(nuclei_samples, 16, 200, foreground_fraction=1.0, seed=1).next_batch()
    assert always["foreground_forced"].all()
    assert always["labels"].flatten(1).any(1).all()
    assert (always["labels"][:, 8, 8] == 1).float().mean() > 0.95  # centred on it (unless pushed in at a border)
    never = PatchSampler(nuclei_samples, 16, 2000, foreground_fraction=0.0, seed=1).next_batch()
    share_random = never["labels"].flatten(1).any(1).float().mean().item()
    assert share_random < 0.8 and not never["foreground_forced"].any()
    sampler = PatchSampler(nuclei_samples, 16, 500, foreground_fraction=0.33, seed=2)
    batches = [sampler.next_batch() for _ in range(6)]
    forced = torch.cat([b["foreground_forced"] for b in batches])
    assert abs(forced.float().mean().item() - 0.33) < 0.03  # binomial sd 0.008 over 3000 draws
    with_foreground = torch.cat([b["labels"].flatten(1).any(1) for b in batches]).float().mean().item()
    expected = 0.33 + 0.67 * share_random
    assert abs(with_foreground - expected) < 0.04


def test_foreground_patches_centre_inside_the_mask_and_mask_travels(nuclei):
    image, labels = nuclei
    mask = np.zeros_like(labels, dtype=bool)
    mask[100:400, 100:300] = True  # the user corrected this part only (away from the border: no shifting in)
    samples = samples_from_arrays([image], [labels], masks=[mask])
    batch = PatchSampler(samples, 64, 300, foreground_fraction=1.0, seed=3).next_batch()
    assert (batch["mask"][:, 32, 32] & (batch["labels"][:, 32, 32] == 1)).all()
    # the mask is the sample's mask, cropped alike: a rectangle in every patch, cut where the patch leaves it
    assert batch["mask"].any() and not batch["mask"].all()
    rows, cols = batch["mask"].any(dim=2), batch["mask"].any(dim=1)
    assert torch.equal(batch["mask"], rows[:, :, None] & cols[:, None, :])
    random_patches = PatchSampler(samples, 64, 300, foreground_fraction=0.0, seed=3).next_batch()
    # "random" patches in a masked sample are centred on a pixel that counts: none is wasted
    assert random_patches["mask"][:, 32, 32].all() and not random_patches["foreground_forced"].any()
    assert (random_patches["labels"][:, 32, 32] == 0).any()  # background centres too


def test_images_smaller_than_the_patch_are_padded_with_mask_false():
    rng = np.random.default_rng(0)
    image, labels = rng.normal(size=(20, 30)).astype(np.float32), (rng.random((20, 30)) > 0.5).astype(np.int64)
    sample = Sample(image[None], labels, None, "small", "small")
    batch = PatchSampler([sample], 32, 8, seed=0).next_batch()
    assert batch["image"].shape == (8, 1, 32, 32)
    for b in range(8):
        inside = batch["mask"][b]
        assert inside.sum() == 20 * 30
        ys, xs = torch.nonzero(inside, as_tuple=True)
        top, left = ys.min().item(), xs.min().item()
        assert np.array_equal(batch["image"][b, 0, top : top + 20, left : left + 30].numpy(), image)
        assert np.array_equal(batch["labels"][b, top : top + 20, left : left + 30].numpy(), labels)
        assert batch["image"][b, 0][~inside].abs().sum() == 0 and batch["labels"][b][~inside].sum() == 0


def test_ddp_ranks_draw_from_disjoint_shards():
    samples = constant_samples(5)
    seen = []
    for rank in range(2):
        sampler = PatchSampler(samples, 8, 64, rank=rank, world_size=2, seed=0)
        assert [s.name for s in sampler.shard] == [f"s{i}" for i in range(rank, 5, 2)]
        seen.append(set(sampler.next_batch()["image"][:, 0, 0, 0].long().tolist()))
    assert seen == [{0, 2, 4}, {1, 3}]
    few = PatchSampler(constant_samples(1), 8, 4, rank=2, world_size=3)
    assert len(few.shard) == 1  # fewer samples than ranks: every rank trains on all of them
    with pytest.raises(InputError, match="rank 2"):
        PatchSampler(samples, 8, 4, rank=2, world_size=2)


def test_sampler_is_reproducible_and_applies_the_augmenter(nuclei_samples):
    a = PatchSampler(nuclei_samples, 64, 4, seed=7).next_batch()
    b = PatchSampler(nuclei_samples, 64, 4, seed=7).next_batch()
    assert all(torch.equal(a[k], b[k]) for k in a)
    mirror_only = Augmenter(probabilities={key: float(key == "mirror") for key in PROBABILITIES})
    augmented = PatchSampler(nuclei_samples, 64, 4, seed=7, augment=mirror_only).next_batch()
    assert torch.equal(augmented["image"], a["image"].flip((-2, -1)))
    assert torch.equal(augmented["labels"], a["labels"].flip((-2, -1)))


def test_fixed_crops_are_deterministic_and_cover_every_sample():
    samples = constant_samples(3, size=(40, 40))
    crops = fixed_crops(samples, 16, 7, seed=4)
    assert crops["image"].shape == (7, 1, 16, 16) and crops["labels"].shape == (7, 16, 16)
    assert crops["image"][:, 0, 0, 0].long().tolist() == [0, 1, 2, 0, 1, 2, 0]
    again = fixed_crops(samples, 16, 7, seed=4)
    assert all(torch.equal(crops[k], again[k]) for k in crops)
    few = fixed_crops(constant_samples(10, size=(40, 40)), 16, 4)
    assert few["image"][:, 0, 0, 0].long().tolist() == [0, 2, 5, 7]  # spread over the samples


def test_mixed_channel_counts_are_refused():
    one = Sample(np.zeros((1, 8, 8), np.float32), np.zeros((8, 8), np.int64), None, "a", "a")
    three = Sample(np.zeros((3, 8, 8), np.float32), np.zeros((8, 8), np.int64), None, "b", "b")
    with pytest.raises(InputError, match=r"b has 3 channels but a has 1"):
        PatchSampler([one, three], 8, 2)


def test_nan_warning_is_not_raised_for_clean_input(nuclei):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        samples_from_arrays([nuclei[0]], [nuclei[1]])


# ---------------------------------------------------------------------------------------------- files


def write_nnunet(root, cases: dict[str, tuple[np.ndarray, np.ndarray]], labels: dict[str, int]) -> None:
    """An nnU-Net v2 raw dataset of 3D NIfTI cases (X, Y, Z) with one channel."""
    import json

    import nibabel as nib

    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for name, (image, lab) in cases.items():
        nib.save(nib.Nifti1Image(image, np.eye(4)), root / "imagesTr" / f"{name}_0000.nii.gz")
        nib.save(nib.Nifti1Image(lab, np.eye(4)), root / "labelsTr" / f"{name}.nii.gz")
    info = {"channel_names": {"0": "MRI"}, "labels": labels, "numTraining": len(cases), "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(info))


def test_samples_from_nnunet_dataset_slice_cases_and_keep_them_grouped(tmp_path):
    rng = np.random.default_rng(0)
    cases = {}
    for i, depth in enumerate((3, 2)):
        lab = np.zeros((16, 12, depth), np.uint8)
        lab[4:8, 2:6, :] = 1
        lab[10:12, 8:10, -1] = 2
        cases[f"case_{i:03d}"] = (rng.normal(100, 10, (16, 12, depth)).astype(np.float32), lab)
    write_nnunet(tmp_path / "Dataset001", cases, {"background": 0, "tumour": 1, "oedema": 2})
    samples, info = samples_from_nnunet(tmp_path / "Dataset001")
    assert info["labels"] == {"background": 0, "tumour": 1, "oedema": 2}
    assert [s.name for s in samples] == [
        "case_000[z=0]",
        "case_000[z=1]",
        "case_000[z=2]",
        "case_001[z=0]",
        "case_001[z=1]",
    ]
    assert [s.group for s in samples] == ["case_000"] * 3 + ["case_001"] * 2
    assert all(s.image.shape == (1, 16, 12) and s.labels.shape == (16, 12) for s in samples)
    assert np.array_equal(samples[2].labels, cases["case_000"][1][:, :, 2])
    whole = cases["case_000"][0]
    assert np.allclose(samples[1].image[0], (whole[:, :, 1] - whole.mean()) / whole.std(), atol=1e-4)
    train, val = split_samples(samples, 0.5, seed=0)
    assert {s.group for s in train} ^ {s.group for s in val} == {"case_000", "case_001"}


def test_nnunet_label_outside_dataset_json_names_the_value(tmp_path):
    lab = np.zeros((8, 8, 2), np.uint8)
    lab[0, 0, 0] = 3
    write_nnunet(tmp_path / "D", {"c": (np.ones((8, 8, 2), np.float32), lab)}, {"background": 0, "a": 1})
    with pytest.raises(
        InputError,
        match=r"labels of \S+labelsTr/c\.nii\.gz contain values 3 outside 0\.\.1: add the "
        "missing classes to",
    ):
        samples_from_nnunet(tmp_path / "D")


def test_samples_from_folders_pair_by_name(tmp_path, nuclei):
    import tifffile
    from skimage.io import imsave

    image, labels = nuclei
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    tifffile.imwrite(tmp_path / "images" / "left.tif", image[:, :256])
    tifffile.imwrite(tmp_path / "images" / "right_0000.tif", image[:300, 256:])
    imsave(tmp_path / "masks" / "left.png", labels[:, :256], check_contrast=False)
    tifffile.imwrite(tmp_path / "masks" / "right.tif", labels[:300, 256:])
    samples = samples_from_folders(tmp_path / "images", tmp_path / "masks")
    assert [(s.name, s.image.shape) for s in samples] == [("left", (1, 512, 256)), ("right_0000", (1, 300, 256))]
    assert np.array_equal(samples[1].labels, labels[:300, 256:])
    tifffile.imwrite(tmp_path / "images" / "extra.tif", image[:10, :10])
    with pytest.raises(InputError, match=r"images without labels in .*masks: extra\.tif"):
        samples_from_folders(tmp_path / "images", tmp_path / "masks")
