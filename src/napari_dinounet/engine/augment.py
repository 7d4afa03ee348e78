"""nnU-Net's data augmentation, on whole batches, on the batch's device (CPU or GPU).

Written with plain torch (``grid_sample``, small convolutions) rather than MONAI's or batchgenerators'
per-sample transforms: one batched resampling moves image, labels and mask together, the same code runs
on CPU and GPU without another dependency, and it is faster (rotation + scaling + elastic on every
sample of an 8 x 3 x 512 x 512 batch, one CPU thread: 161 ms here against 424 ms for MONAI's
``Rand2DElasticd`` looped over the batch).

Per sample, in nnU-Net v2's order and with its probabilities and ranges (batchgenerators defaults):

=================  =====  ===========================================================================
transform          p      what
=================  =====  ===========================================================================
rotation           0.2    angle uniform in [-180, 180) degrees (square patches)
scaling            0.2    factor uniform in ``scaling`` (0.7-1.4); > 1 zooms out
elastic            0.2    displacement = Gaussian-smoothed uniform(-1, 1) noise, sigma 9-13 px, times
                          alpha 0-200 px (nnU-Net v1's 2D values; v2 switched elastic off by default)
noise              0.1    additive Gaussian, standard deviation uniform in [0, 0.1]
blur               0.2    Gaussian, sigma uniform in [0.5, 1], each channel with p 0.5
brightness         0.15   multiply by uniform [0.75, 1.25]
contrast           0.15   scale about the channel mean by [0.75, 1) or [1, 1.25], clipped to the old range
low_resolution     0.25   each channel with p 0.5: nearest-downsample by zoom [0.5, 1], cubic upsample
gamma (inverted)   0.1    gamma in [0.7, 1) or [1, 1.5] on the inverted image, mean and std kept
gamma              0.3    the same on the image
mirror             0.5    per axis
=================  =====  ===========================================================================

Rotation, scaling and elastic deformation are one resampling: bilinear for the image, nearest for labels
and mask; pixels that come from outside the patch get image 0, labels 0 and mask False (so the loss
ignores them). Intensity transforms touch the image only. Parameters are drawn from a seeded CPU
generator (the same choices on any device); noise fields are drawn on the batch's device.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F

from .errors import InputError

PROBABILITIES = {
    "rotation": 0.2,
    "scaling": 0.2,
    "elastic": 0.2,
    "noise": 0.1,
    "blur": 0.2,
    "brightness": 0.15,
    "contrast": 0.15,
    "low_resolution": 0.25,
    "gamma_inverted": 0.1,
    "gamma": 0.3,
    "mirror": 0.5,
}
ELASTIC_ALPHA = (0.0, 200.0)
ELASTIC_SIGMA = (9.0, 13.0)
_ELASTIC_COARSENING = 4  # smooth noise is drawn on a 4x coarser grid: same field statistics, 64x less work


# ---------------------------------------------------------------------------------------------------
# The transforms, with explicit parameters


def sampling_grid(
    size: tuple[int, int], angles: torch.Tensor, scales: torch.Tensor, displacement: torch.Tensor | None = None
) -> torch.Tensor:
    """``grid_sample`` grid (N, H, W, 2) that rotates by ``angles`` (N,) radians and scales by ``scales`` (N,)
    about the patch centre, then adds ``displacement`` (N, 2, H, W) in pixels (y, x).

    Output pixel p reads the input at ``R(angle) * scale * (p - centre) + centre + displacement(p)``: a
    positive angle turns the content counter-clockwise on screen (y down), as ``torch.rot90``; a scale
    above 1 shrinks the content.
    """
    height, width = size
    cos, sin = torch.cos(angles) * scales, torch.sin(angles) * scales
    zero = torch.zeros_like(cos)
    # the rotation in pixels, written for grid_sample's [-1, 1] coordinates (x first), where the axes'
    # pixel sizes 2/W and 2/H differ on non-square patches
    theta = torch.stack(
        (torch.stack((cos, -sin * height / width, zero), -1), torch.stack((sin * width / height, cos, zero), -1)), 1
    )
    grid = F.affine_grid(theta, [len(angles), 1, height, width], align_corners=False)
    if displacement is not None:
        scale = torch.tensor([2 / width, 2 / height], dtype=grid.dtype, device=grid.device)
        grid = grid + displacement.flip(1).permute(0, 2, 3, 1) * scale
    return grid


def warp(image: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, grid: torch.Tensor):
    """Resample image (N, C, H, W) bilinearly and labels (N, H, W) int64, mask (N, H, W) bool by nearest
    neighbour on ``grid`` (N, H, W, 2); outside the input: image 0, labels 0, mask False."""
    image = F.grid_sample(image, grid.to(image.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)
    # labels ride along as float: exact for class numbers below 2**24
    discrete = torch.stack((labels.to(grid.dtype), mask.to(grid.dtype)), dim=1)
    discrete = F.grid_sample(discrete, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return image, discrete[:, 0].round().to(labels.dtype), discrete[:, 1] > 0.5


def elastic_displacement(
    count: int, size: tuple[int, int], alpha: torch.Tensor, sigma: torch.Tensor, generator: torch.Generator, device
) -> torch.Tensor:
    """Displacement fields (count, 2, H, W) in pixels: uniform(-1, 1) noise smoothed by a Gaussian of
    ``sigma`` (count,) pixels, times ``alpha`` (count,), as batchgenerators draws them.

    The noise is drawn on a grid 4x coarser and smoothed there with sigma / 4 (its variance scaled to
    match), then upsampled: the same smooth field for sigma >= 9 px at a fraction of the cost.
    """
    step = _ELASTIC_COARSENING
    coarse = (math.ceil(size[0] / step) + 1, math.ceil(size[1] / step) + 1)
    noise = torch.rand((count, 2, *coarse), generator=generator, device=device) * 2 - 1
    smooth = gaussian_blur(noise, (sigma / step).to(device).repeat_interleave(2))
    smooth = smooth * (alpha.to(device) / step)[:, None, None, None]
    # corners of the coarse grid sit on pixel centres 0 and step*(n-1)
    field = F.interpolate(
        smooth, size=(step * (coarse[0] - 1) + 1, step * (coarse[1] - 1) + 1), mode="bilinear", align_corners=True
    )
    return field[:, :, : size[0], : size[1]]


def gaussian_blur(image: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each channel of image (N, C, H, W) with its own ``sigma`` (N*C,) pixels (0 = unchanged);
    reflected borders (scipy's ``gaussian_filter`` with mode "mirror")."""
    count, channels, height, width = image.shape
    radius = max(1, math.ceil(3 * float(sigma.max())))
    offsets = torch.arange(-radius, radius + 1, device=image.device, dtype=image.dtype)
    sigma = sigma.to(image.device, image.dtype)[:, None]
    kernel = torch.exp(-0.5 * (offsets / sigma.clamp_min(1e-6)) ** 2)
    kernel = torch.where(sigma > 0, kernel, (offsets == 0).to(image.dtype))
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    planes = image.reshape(1, count * channels, height, width)
    pad_y, pad_x = min(radius, height - 1), min(radius, width - 1)  # reflect needs pad < size
    planes = F.pad(planes, (pad_x, pad_x, pad_y, pad_y), mode="reflect")
    planes = F.pad(planes, (radius - pad_x, radius - pad_x, radius - pad_y, radius - pad_y), mode="replicate")
    planes = F.conv2d(planes, kernel[:, None, None, :], groups=count * channels)
    planes = F.conv2d(planes, kernel[:, None, :, None], groups=count * channels)
    return planes.reshape(count, channels, height, width)


def contrast(image: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Scale each channel of image (N, C, H, W) about its mean by ``factors`` (N, C); clip to its old range."""
    mean = image.mean(dim=(2, 3), keepdim=True)
    low, high = image.amin(dim=(2, 3), keepdim=True), image.amax(dim=(2, 3), keepdim=True)
    return torch.minimum(torch.maximum((image - mean) * factors[:, :, None, None] + mean, low), high)


def gamma(image: torch.Tensor, gammas: torch.Tensor, invert: bool = False) -> torch.Tensor:
    """batchgenerators' gamma: per channel of image (N, C, H, W), map [min, max] to [0, 1], raise to
    ``gammas`` (N, C), map back, then restore the channel's mean and standard deviation.
    ``invert`` applies it to the negated image (darkens bright structures instead)."""
    sign = -1.0 if invert else 1.0
    image = image * sign
    mean, std = image.mean(dim=(2, 3), keepdim=True), image.std(dim=(2, 3), keepdim=True)
    low = image.amin(dim=(2, 3), keepdim=True)
    span = image.amax(dim=(2, 3), keepdim=True) - low
    out = ((image - low) / (span + 1e-7)) ** gammas[:, :, None, None] * span + low
    out = (out - out.mean(dim=(2, 3), keepdim=True)) / (out.std(dim=(2, 3), keepdim=True) + 1e-8) * std + mean
    return out * sign


def low_resolution(plane: torch.Tensor, zoom: float) -> torch.Tensor:
    """Simulate a coarser acquisition of plane (N, H, W): nearest-downsample by ``zoom``, bicubic back."""
    height, width = plane.shape[-2:]
    small = (max(1, round(height * zoom)), max(1, round(width * zoom)))
    coarse = F.interpolate(plane[:, None], size=small, mode="nearest")
    return F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)[:, 0]


# ---------------------------------------------------------------------------------------------------
# The random pipeline


class Augmenter:
    """nnU-Net's augmentation set on batches ``{"image": (B, C, P, P) float, "labels": (B, P, P) int64,
    "mask": (B, P, P) bool, ...}``; returns a new dict of the same layout (other keys passed through).

    Every transform can be switched off (``scaling=None`` turns scaling off); ``probabilities`` overrides
    entries of :data:`PROBABILITIES`. Geometric transforms move image, labels and mask together;
    intensity transforms change the image only.
    """

    def __init__(
        self,
        *,
        rotation=True,
        scaling=(0.7, 1.4),
        elastic=True,
        mirror=True,
        noise=True,
        blur=True,
        brightness=True,
        contrast=True,
        gamma=True,
        low_resolution=True,
        seed=0,
        probabilities: Mapping[str, float] | None = None,
    ):
        unknown = set(probabilities or {}) - set(PROBABILITIES)
        if unknown:
            raise InputError(f"unknown augmentation(s) {sorted(unknown)}: use {', '.join(PROBABILITIES)}")
        if scaling and not 0 < scaling[0] <= scaling[1]:
            raise InputError(f"scaling={scaling} must be a (low, high) range of positive factors, e.g. (0.7, 1.4)")
        self.scaling = tuple(scaling) if scaling else None
        enabled = {
            "rotation": rotation,
            "scaling": bool(scaling),
            "elastic": elastic,
            "mirror": mirror,
            "noise": noise,
            "blur": blur,
            "brightness": brightness,
            "contrast": contrast,
            "low_resolution": low_resolution,
            "gamma": gamma,
            "gamma_inverted": gamma,
        }
        probabilities = {**PROBABILITIES, **(probabilities or {})}
        self.probabilities = {name: probabilities[name] if on else 0.0 for name, on in enabled.items()}
        self.generator = torch.Generator().manual_seed(seed)
        self._device_generators: dict[torch.device, torch.Generator] = {}

    def _chosen(self, name: str, count: int) -> torch.Tensor:
        """Indices (n,) of the samples that get transform ``name`` this time."""
        return torch.nonzero(torch.rand(count, generator=self.generator) < self.probabilities[name]).flatten()

    def _uniform(self, low: float, high: float, *shape: int) -> torch.Tensor:
        return low + (high - low) * torch.rand(shape, generator=self.generator)

    def _two_sided(self, low: float, high: float, *shape: int) -> torch.Tensor:
        """batchgenerators' factor draw: half the time from [low, 1), else from [1, high]."""
        below = torch.rand(shape, generator=self.generator) < 0.5
        return torch.where(below, self._uniform(low, 1.0, *shape), self._uniform(1.0, high, *shape))

    def _device_generator(self, device: torch.device) -> torch.Generator:
        if device.type == "cpu":
            return self.generator
        if device not in self._device_generators:
            self._device_generators[device] = torch.Generator(device)
        generator = self._device_generators[device]
        generator.manual_seed(int(torch.randint(2**62, (1,), generator=self.generator)))
        return generator

    def __call__(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        image, labels = batch["image"], batch["labels"]
        mask = batch.get("mask")
        if mask is None:
            mask = torch.ones_like(labels, dtype=torch.bool)
        image, labels, mask = image.clone(), labels.clone(), mask.clone()
        count, channels, height, width = image.shape
        device, dtype = image.device, image.dtype
        device_generator = self._device_generator(device)

        rotated, scaled, deformed = (self._chosen(name, count) for name in ("rotation", "scaling", "elastic"))
        moved = torch.unique(torch.cat((rotated, scaled, deformed)))
        if moved.numel():
            angles, scales, alpha = torch.zeros(count), torch.ones(count), torch.zeros(count)
            angles[rotated] = self._uniform(-math.pi, math.pi, rotated.numel())
            if self.scaling:
                scales[scaled] = self._uniform(*self.scaling, scaled.numel())
            alpha[deformed] = self._uniform(*ELASTIC_ALPHA, deformed.numel())
            sigma = self._uniform(*ELASTIC_SIGMA, count)
            displacement = None
            if deformed.numel():
                displacement = elastic_displacement(
                    moved.numel(), (height, width), alpha[moved], sigma[moved], device_generator, device
                )
            grid = sampling_grid((height, width), angles[moved].to(device), scales[moved].to(device), displacement)
            index = moved.to(device)
            image[index], labels[index], mask[index] = warp(image[index], labels[index], mask[index], grid)

        # intensity transforms: one sample (or channel plane) at a time, in place on views of the batch
        for i in self._chosen("noise", count).tolist():
            std = float(self._uniform(0.0, 0.1, 1))
            noise = torch.randn(image[i].shape, generator=device_generator, device=device, dtype=dtype)
            image[i].add_(noise, alpha=std)

        for i in self._chosen("blur", count).tolist():
            for c in range(channels):
                sigma = self._uniform(0.5, 1.0, 1)
                if torch.rand(1, generator=self.generator) < 0.5:
                    image[i, c] = gaussian_blur(image[i, c][None, None], sigma)[0, 0]

        for i in self._chosen("brightness", count).tolist():
            image[i].mul_(float(self._uniform(0.75, 1.25, 1)))

        for i in self._chosen("contrast", count).tolist():
            image[i] = contrast(image[i][None], self._two_sided(0.75, 1.25, 1, channels).to(device, dtype))[0]

        for i in self._chosen("low_resolution", count).tolist():
            for c in range(channels):
                if torch.rand(1, generator=self.generator) < 0.5:
                    image[i, c] = low_resolution(image[i, c][None], float(self._uniform(0.5, 1.0, 1)))[0]

        for name, invert in (("gamma_inverted", True), ("gamma", False)):
            for i in self._chosen(name, count).tolist():
                gammas = self._two_sided(0.7, 1.5, 1, channels).to(device, dtype)
                image[i] = gamma(image[i][None], gammas, invert=invert)[0]

        for axis in (-2, -1):
            for i in self._chosen("mirror", count).tolist():
                image[i], labels[i], mask[i] = image[i].flip(axis), labels[i].flip(axis), mask[i].flip(axis)

        return {**batch, "image": image, "labels": labels, "mask": mask}
