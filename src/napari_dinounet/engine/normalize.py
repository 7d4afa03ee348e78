"""Intensity normalisation (spec section 6); the scheme and its fitted numbers go into every checkpoint.

Schemes:
- ``zscore`` (default; MRI, microscopy): each channel minus its mean, over its standard deviation,
  statistics taken over the whole image (not the tile) so that tiles of one image agree.
- ``rgb`` (endoscopy, fundus, photos): one mean and deviation over all channels together, so colour
  ratios survive (scaling to [0, 1] first, as the paper says, changes nothing after a z-score).
- ``ct``: clip to the 0.5-99.5 percentiles of the training set's foreground, then z-score with that
  foreground's mean and deviation; these numbers are fitted once (:func:`fit_ct`) and stored.

Images are handled as ``(C, *spatial)`` arrays; statistics are computed in row blocks so that dask,
zarr and memory-mapped arrays are never converted to float in one piece, and NaN/inf are ignored.
Statistics are float64 and stay finite for any finite float64 image (values up to 1.8e308); images
whose values float32 cannot hold are normalised in float64 (a 1e300-scaled image gave inf in float32
and was normalised to zeros).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields

import numpy as np

from .errors import InputError
from .values import is_number

SCHEMES = ("zscore", "rgb", "ct")
_BLOCK_ELEMENTS = 1 << 22  # values read per block when computing statistics (16 MB as float32)
# Values up to this size are summed as they are: 2^63 squares of 2^480 stay below float64's 2^1024.
_SAFE_MAGNITUDE = 2.0**480


@dataclass(frozen=True)
class Normalization:
    """A normalisation scheme and, for ``ct``, its fitted clip range and foreground statistics."""

    scheme: str = "zscore"
    clip: tuple[float, float] | None = None
    mean: float | None = None
    std: float | None = None

    def __post_init__(self):
        if self.scheme not in SCHEMES:
            raise InputError(f"unknown normalisation {self.scheme!r}: use one of {', '.join(SCHEMES)}")
        if self.scheme != "ct":
            return
        if self.clip is None or self.mean is None or self.std is None:
            raise InputError("the 'ct' normalisation needs fitted numbers: build it with fit_ct(images, labels)")
        # Checked here, where a crafted or damaged checkpoint's numbers arrive: std 0 divided by zero and
        # NaN/inf turned every pixel into NaN, which prediction then made background without a word.
        clip = tuple(self.clip) if isinstance(self.clip, (tuple, list)) else ()
        checks = {
            "clip": len(clip) == 2 and all(map(_is_finite, clip)) and clip[0] <= clip[1],
            "mean": _is_finite(self.mean),
            "std": _is_finite(self.std) and self.std > 0,
        }
        bad = ", ".join(f"{name}={getattr(self, name)!r}" for name, ok in checks.items() if not ok)
        if bad:
            raise InputError(
                f"the 'ct' normalisation has {bad}: clip must be two finite numbers low <= high, mean a finite "
                "number and std a finite number > 0; refit it with fit_ct(images, labels)"
            )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Normalization:
        """Inverse of :meth:`to_dict`; InputError for keys this version does not know (as heads files and
        resume states refuse theirs: a number a newer version relies on must not be dropped in silence)."""
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise InputError(
                f"the normalisation has keys this version does not know ({', '.join(unknown)}): a "
                "newer napari-dinounet probably wrote it; upgrade napari-dinounet"
            )
        clip = data.get("clip")
        return cls(
            data.get("scheme", "zscore"), tuple(clip) if clip is not None else None, data.get("mean"), data.get("std")
        )


def _is_finite(value) -> bool:
    return is_number(value) and math.isfinite(value)


def _row_blocks(image) -> Iterable[np.ndarray]:
    """Yield float64 blocks of ``image`` (C, *spatial) split along its first spatial axis."""
    per_row = max(1, int(np.prod(image.shape)) // max(1, image.shape[1]))
    rows = max(1, _BLOCK_ELEMENTS // per_row)
    for start in range(0, image.shape[1], rows):
        yield np.asarray(image[:, start : start + rows], dtype=np.float64)


def image_statistics(image, scheme: str = "zscore") -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of ``image`` (C, *spatial), each of shape (C,), finite values only.

    For ``rgb`` one value over all channels is repeated C times. A constant image gets std 1 (so the
    normalised image is all zeros rather than NaN); an image with no finite value is an error.

    Sums are kept in units of ``scale`` per channel, 1 unless a value beyond :data:`_SAFE_MAGNITUDE`
    (2^480) makes it a larger power of two, so that squares of values near the float64 limit cannot
    overflow; dividing by a power of two is exact, so ordinary images get exactly the unscaled sums.
    """
    channels = image.shape[0]
    total = np.zeros(channels)
    total_sq = np.zeros(channels)
    count = np.zeros(channels)
    scale = np.ones(channels)

    def rescale(new_scale: np.ndarray) -> None:
        ratio = scale / new_scale
        total[:] *= ratio
        total_sq[:] *= ratio * ratio
        scale[:] = new_scale

    for block in _row_blocks(image):
        block = block.reshape(channels, -1)
        finite = np.isfinite(block)
        values = np.where(finite, block, 0.0)
        peak = np.abs(values).max(axis=1)
        beyond = peak > _SAFE_MAGNITUDE * scale
        if beyond.any():
            rescale(np.where(beyond, np.exp2(np.ceil(np.log2(np.maximum(peak, scale)))), scale))
        values /= scale[:, None]
        total += values.sum(axis=1)
        total_sq += (values * values).sum(axis=1)
        count += finite.sum(axis=1)
    if scheme == "rgb":
        rescale(np.full(channels, scale.max()))
        total, total_sq, count = (np.full(channels, a.sum()) for a in (total, total_sq, count))
    if np.any(count == 0):
        raise InputError("the image has no finite value (all NaN or inf): check the layer or file")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean * mean, 0.0)) * scale
    mean *= scale
    std[std < 1e-8 * np.maximum(1.0, np.abs(mean))] = 1.0
    return mean, std


def fit_ct(images: Iterable[np.ndarray], labels: Iterable[np.ndarray]) -> Normalization:
    """Fit the ``ct`` scheme on training images and their labels (foreground = label > 0)."""
    foreground = [np.asarray(img, dtype=np.float64)[np.asarray(lab) > 0] for img, lab in zip(images, labels)]
    values = np.concatenate([v[np.isfinite(v)] for v in foreground]) if foreground else np.empty(0)
    if values.size == 0:
        raise InputError("cannot fit the 'ct' normalisation: the labels mark no foreground pixel")
    low, high = np.percentile(values, [0.5, 99.5])
    clipped = np.clip(values, low, high)
    return Normalization("ct", (float(low), float(high)), float(clipped.mean()), float(max(clipped.std(), 1e-8)))


def statistics_for(image, norm: Normalization) -> tuple[np.ndarray, np.ndarray]:
    """The (mean, std) per channel that :func:`apply` needs for ``image`` (C, *spatial) under ``norm``."""
    if norm.scheme == "ct":
        channels = image.shape[0]
        return np.full(channels, norm.mean), np.full(channels, norm.std)
    return image_statistics(image, norm.scheme)


def apply(block, norm: Normalization, stats: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Normalise ``block`` (C, *spatial) with image statistics ``stats``; NaN/inf become 0 (the mean).

    Computed in float32 for pixels that float32 holds (8/16-bit integers, float16/32) and in float64 for
    float64 and 32/64-bit integers, whose values may exceed float32's range or precision.
    Returns float32 of the block's shape.
    """
    block = np.asarray(block)
    work = np.result_type(block.dtype, np.float32)
    block = block.astype(work, copy=False)
    if norm.scheme == "ct":
        block = np.clip(block, *norm.clip)
    mean, std = stats
    shape = (-1,) + (1,) * (block.ndim - 1)
    out = ((block - mean.astype(work).reshape(shape)) / std.astype(work).reshape(shape)).astype(np.float32, copy=False)
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0, copy=False)
