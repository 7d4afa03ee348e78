"""engine/augment.py: each nnU-Net augmentation does what it must, on image, labels and mask together."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import center_of_mass, gaussian_filter

from napari_dinounet.engine.augment import (
    PROBABILITIES,
    Augmenter,
    elastic_displacement,
    gaussian_blur,
    low_resolution,
    sampling_grid,
    warp,
)
from napari_dinounet.engine.errors import InputError

INTENSITY = ("noise", "blur", "brightness", "contrast", "low_resolution", "gamma_inverted", "gamma")
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def only(name: str, **flags) -> Augmenter:
    """An augmenter that always applies ``name`` and nothing else."""
    return Augmenter(probabilities={key: float(key == name) for key in PROBABILITIES}, **flags)


def make_batch(count=4, channels=2, size=48, classes=4, seed=0, device="cpu") -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (count, size // 8, size // 8), generator=g)
    labels = labels.repeat_interleave(8, 1).repeat_interleave(8, 2)  # blocks, so nearest resampling keeps them
    mask = torch.zeros(count, size, size, dtype=torch.bool)
    mask[:, 4:-10, 6:] = True
    image = torch.randn(count, channels, size, size, generator=g) + labels[:, None].float()
    return {k: v.to(device) for k, v in {"image": image, "labels": labels, "mask": mask}.items()}


def disc(size: int, centre: tuple[float, float], radius: float) -> np.ndarray:
    y, x = np.mgrid[:size, :size]
    return (y - centre[0]) ** 2 + (x - centre[1]) ** 2 <= radius**2


def test_quarter_turn_is_rot90_for_image_labels_and_mask():
    batch = make_batch(count=2)
    grid = sampling_grid((48, 48), torch.full((2,), math.pi / 2), torch.ones(2))
    image, labels, mask = warp(batch["image"], batch["labels"], batch["mask"], grid)
    torch.testing.assert_close(image, torch.rot90(batch["image"], 1, (-2, -1)), atol=1e-4, rtol=0)
    assert torch.equal(labels, torch.rot90(batch["labels"], 1, (-2, -1)))
    assert torch.equal(mask, torch.rot90(batch["mask"], 1, (-2, -1)))


def test_rotation_by_30_degrees_moves_a_known_pixel():
    # a disc 20 px right of the centre of a 65 px patch; +30 degrees turns it counter-clockwise on screen:
    # it lands at centre + 20 * (-sin 30, cos 30) = (32 - 10, 32 + 17.32)
    size, centre = 65, 32.0
    labels = torch.from_numpy(disc(size, (centre, centre + 20), 4).astype(np.int64))[None]
    image = labels[:, None].float()
    mask = torch.ones_like(labels, dtype=torch.bool)
    grid = sampling_grid((size, size), torch.tensor([math.radians(30)]), torch.ones(1))
    moved_image, moved_labels, _ = warp(image, labels, mask, grid)
    expected = (centre - 10.0, centre + 20 * math.cos(math.radians(30)))
    assert np.allclose(center_of_mass(moved_labels[0].numpy()), expected, atol=0.3)
    assert np.allclose(center_of_mass(moved_image[0, 0].numpy()), expected, atol=0.1)
    assert moved_labels[0, 22, 49] == 1 and moved_labels[0, 32, 52] == 0


def test_scaling_zooms_about_the_centre_and_marks_pulled_in_border_as_not_counting():
    # scale 2 reads twice as far from the centre: a 16 px square in a 64 px patch now spans 8 px, and
    # only the central 32 px come from inside the input
    image = torch.zeros(1, 1, 64, 64)
    image[:, :, 24:40, 24:40] = 1
    labels = image[:, 0].long()
    mask = torch.ones(1, 64, 64, dtype=torch.bool)
    grid = sampling_grid((64, 64), torch.zeros(1), torch.full((1,), 2.0))
    _, moved_labels, moved_mask = warp(image, labels, mask, grid)
    assert moved_labels.sum() == 8 * 8
    assert moved_labels[0, 28:36, 28:36].all()
    assert moved_mask.sum() == 32 * 32 and moved_mask[0, 16:48, 16:48].all()


@pytest.mark.parametrize("device", DEVICES)
def test_geometric_transforms_keep_labels_integer_classes_and_move_mask_with_them(device):
    batch = make_batch(count=16, device=device)
    out = Augmenter(
        probabilities={"rotation": 1.0, "scaling": 1.0, "elastic": 1.0, "mirror": 0.5, **dict.fromkeys(INTENSITY, 0.0)},
        seed=3,
    )(batch)
    assert out["image"].shape == batch["image"].shape and out["image"].device.type == device
    assert out["labels"].dtype == torch.int64 and out["mask"].dtype == torch.bool
    assert set(out["labels"].unique().tolist()) <= {0, 1, 2, 3}
    # pixels are moved, not invented: each class keeps roughly its share where pixels came from the input
    assert not torch.equal(out["labels"], batch["labels"])
    before = torch.bincount(batch["labels"].flatten(), minlength=4).float() / batch["labels"].numel()
    inside = out["labels"][out["mask"]]
    after = torch.bincount(inside, minlength=4).float() / inside.numel()
    assert torch.allclose(before, after.to(before.device), atol=0.08)
    # the mask moved: some pixels that counted now come from the uncounted band or from outside
    assert 0.3 < out["mask"].float().mean().item() < batch["mask"].float().mean().item()


def test_warp_image_and_labels_stay_aligned():
    # the image is the label map plus noise: after any warp, bright pixels must carry high labels
    batch = make_batch(count=8)
    batch["image"] = batch["labels"][:, None].float().repeat(1, 2, 1, 1)
    out = only("rotation")(batch)
    inside = out["mask"] & (out["image"][:, 0] == out["image"][:, 0].round())  # pixels not blended across blocks
    assert inside.sum() > 0.2 * inside.numel()
    assert torch.equal(out["image"][:, 0][inside].long(), out["labels"][inside])


def test_mirror_flips_image_labels_and_mask_identically():
    batch = make_batch(count=64, size=16)
    out = Augmenter(probabilities={key: 0.5 if key == "mirror" else 0.0 for key in PROBABILITIES}, seed=1)(batch)
    flips = [(), (-1,), (-2,), (-2, -1)]
    seen = set()
    for b in range(64):
        matches = [
            dims
            for dims in flips
            if torch.equal(out["image"][b], batch["image"][b].flip(dims) if dims else batch["image"][b])
        ]
        assert len(matches) == 1
        dims = matches[0]
        seen.add(dims)
        assert torch.equal(out["labels"][b], batch["labels"][b].flip(dims) if dims else batch["labels"][b])
        assert torch.equal(out["mask"][b], batch["mask"][b].flip(dims) if dims else batch["mask"][b])
    assert seen == set(flips)  # with p = 0.5 per axis all four appear in 64 samples


@pytest.mark.parametrize("name", INTENSITY)
def test_intensity_transforms_change_the_image_only(name):
    batch = make_batch()
    before = {k: v.clone() for k, v in batch.items()}
    out = only(name, seed=2)(batch)
    assert all(torch.equal(batch[k], before[k]) for k in batch)  # the input is not modified
    assert torch.equal(out["labels"], batch["labels"]) and torch.equal(out["mask"], batch["mask"])
    assert out["image"].shape == batch["image"].shape and out["image"].dtype == torch.float32
    assert not torch.equal(out["image"], batch["image"])


def test_brightness_multiplies_each_sample_by_a_factor_in_range():
    batch = make_batch(count=8)
    out = only("brightness")(batch)
    ratio = out["image"] / batch["image"]
    per_sample = ratio.flatten(1)
    assert torch.allclose(per_sample, per_sample[:, :1].expand_as(per_sample), atol=1e-5)
    assert ((per_sample[:, 0] >= 0.75) & (per_sample[:, 0] <= 1.25)).all()


def test_contrast_keeps_each_channel_within_its_range_and_gamma_keeps_mean_and_std():
    batch = make_batch(count=8)
    image = batch["image"]
    out = only("contrast")(batch)["image"]
    assert (out.amin((2, 3)) >= image.amin((2, 3)) - 1e-6).all()
    assert (out.amax((2, 3)) <= image.amax((2, 3)) + 1e-6).all()
    for name in ("gamma", "gamma_inverted"):
        out = only(name)(batch)["image"]
        torch.testing.assert_close(out.mean((2, 3)), image.mean((2, 3)), atol=1e-4, rtol=0)
        torch.testing.assert_close(out.std((2, 3)), image.std((2, 3)), atol=1e-3, rtol=1e-3)


def test_noise_is_small_and_centred():
    batch = make_batch(count=8, size=64)
    diff = only("noise")(batch)["image"] - batch["image"]
    std = diff.flatten(1).std(dim=1)
    assert (std <= 0.1 * 1.05).all() and abs(diff.mean().item()) < 0.01


def test_gaussian_blur_matches_scipy():
    image = torch.randn(2, 3, 40, 33, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.5, 0.8, 1.0, 0.0, 0.7, 0.9])
    ours = gaussian_blur(image, sigma).numpy()
    for plane, s in enumerate(sigma.tolist()):
        ref = image.reshape(6, 40, 33)[plane].numpy()
        if s > 0:
            ref = gaussian_filter(ref.astype(np.float64), s, mode="mirror", truncate=math.ceil(3 * 1.0) / s)
        assert np.allclose(ours.reshape(6, 40, 33)[plane], ref, atol=1e-5)


def test_low_resolution_keeps_shape_and_removes_fine_detail():
    checker = (torch.arange(32)[:, None] + torch.arange(32)[None]) % 2 * 2.0 - 1  # +-1 every pixel
    plane = checker[None]
    assert torch.allclose(low_resolution(plane, 1.0), plane, atol=1e-6)
    coarse = low_resolution(plane, 0.5)
    assert coarse.shape == (1, 32, 32)
    # nearest-downsampling by 2 hits one colour only: the checkerboard is gone
    assert coarse.std() < 0.01 and abs(abs(coarse.mean().item()) - 1) < 0.01


def test_elastic_displacement_matches_batchgenerators_statistics():
    # batchgenerators: gaussian_filter(uniform(-1, 1) noise, sigma) * alpha
    generator = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    for sigma in (9.0, 13.0):
        ours = elastic_displacement(8, (192, 192), torch.full((8,), 200.0), torch.full((8,), sigma), generator, "cpu")
        ref = np.stack([gaussian_filter(rng.random((192, 192)) * 2 - 1, sigma) * 200 for _ in range(16)])
        assert ours.shape == (8, 2, 192, 192)
        inner = (slice(40, -40), slice(40, -40))
        ratio = ours[(..., *inner)].std().item() / ref[(..., *inner)].std()
        assert 0.85 < ratio < 1.15


def test_everything_off_is_identity_and_seed_reproduces():
    batch = make_batch()
    off = Augmenter(
        rotation=False,
        scaling=None,
        elastic=False,
        mirror=False,
        noise=False,
        blur=False,
        brightness=False,
        contrast=False,
        gamma=False,
        low_resolution=False,
    )
    out = off(batch)
    assert all(torch.equal(out[k], batch[k]) for k in batch)
    always = dict.fromkeys(PROBABILITIES, 1.0)
    a, b = Augmenter(seed=5, probabilities=always)(batch), Augmenter(seed=5, probabilities=always)(batch)
    assert all(torch.equal(a[k], b[k]) for k in batch)
    c = Augmenter(seed=6, probabilities=always)(batch)
    assert not torch.equal(a["image"], c["image"])


def test_default_probabilities_are_nnunets():
    # over 4000 samples the share that gets brightness (p 0.15, the only transform that scales uniformly) is 0.15
    batch = make_batch(count=4000, channels=1, size=8)
    batch["image"] = torch.ones_like(batch["image"])
    out = Augmenter(
        rotation=False,
        scaling=None,
        elastic=False,
        mirror=False,
        noise=False,
        blur=False,
        contrast=False,
        gamma=False,
        low_resolution=False,
        seed=0,
    )(batch)
    changed = (out["image"] != 1).flatten(1).any(1).float().mean().item()
    assert abs(changed - PROBABILITIES["brightness"]) < 0.02


def test_bad_options_are_input_errors():
    with pytest.raises(InputError, match="rotaton"):
        Augmenter(probabilities={"rotaton": 1.0})
    with pytest.raises(InputError, match="scaling"):
        Augmenter(scaling=(1.4, 0.7))
