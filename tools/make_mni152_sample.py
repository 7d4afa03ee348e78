"""Derive the bundled MNI152 sample (a stack of axial slices with grey/white-matter labels).

A one-off developer tool: it reads the MNI ICBM152 2009a template (``t1.nii.gz``, ``gm.nii.gz``,
``wm.nii.gz`` on one 1 mm grid, RAS) from the folder given as the first argument and writes
``slices.npz`` into ``src/napari_dinounet/data/mni152/`` (or ``--out``). Nothing reads the input folder at
run time; the package ships only the derived file and its NOTICE.md.

Labels: 0 background, 1 grey matter (p > 0.5), 2 white matter (p > 0.5), 3 other brain (T1 > 0.2 of its
maximum, neither GM nor WM). Each slice is an axial view with anterior at the top and the subject's left
on the left (neurological convention); the affine in the file maps (slice, row, column) indices of the
stack to MNI millimetres, so NIfTI exports land back in template space.

With ``--volume`` it writes ``volume_2mm.npz`` instead: the whole brain (cropped to its bounding box)
on a 2 mm grid, the same axes as the slices (axial slices stacked along the first axis). The image is the
mean of each 2 x 2 x 2 block of the T1, and the labels are derived from the block means of the T1 and the
GM/WM probabilities (the same rules at 2 mm), not subsampled from the 1 mm labels.

Usage: .venv/bin/python tools/make_mni152_sample.py /path/to/mni152 [--first-slice 82] [--slices 20]
       .venv/bin/python tools/make_mni152_sample.py /path/to/mni152 --volume
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np

CLASS_NAMES = ("background", "grey matter", "white matter", "other brain")
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src" / "napari_dinounet" / "data" / "mni152"
MARGIN = 4  # voxels kept around the brain's bounding box


def _load(folder: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    image = nib.load(folder / f"{name}.nii.gz")
    return np.asarray(image.dataobj), image.affine


def derive_labels(t1: np.ndarray, gm: np.ndarray, wm: np.ndarray) -> np.ndarray:
    """Hard labels from the template (any shape, probabilities stored as 0-255): uint8 of t1's shape."""
    labels = np.zeros(t1.shape, np.uint8)
    labels[t1 > 0.2 * float(t1.max())] = 3
    labels[gm > 127] = 1  # 128/255 is the first stored value above p = 0.5
    labels[wm > 127] = 2
    return labels


def to_axial_stack(volume: np.ndarray, first: int, count: int, rows: slice, cols: slice) -> np.ndarray:
    """(X, Y, Z) RAS volume -> (count, rows, cols) axial slices, anterior at the top of each slice."""
    stack = volume[:, :, first : first + count].transpose(2, 1, 0)[:, ::-1, :]  # (Z, Y flipped, X)
    return np.ascontiguousarray(stack[:, rows, cols])


def stack_affine(volume_affine: np.ndarray, ny: int, first: int, rows: slice, cols: slice) -> np.ndarray:
    """4x4 map from stack indices (slice, row, column, 1) to world millimetres (RAS)."""
    index_to_voxel = np.array(
        [
            [0.0, 0.0, 1.0, cols.start],  # x = column + crop
            [0.0, -1.0, 0.0, ny - 1 - rows.start],  # y runs against rows (anterior at the top)
            [1.0, 0.0, 0.0, first],  # z = slice + first slice
            [0.0, 0.0, 0.0, 1.0],
        ]
    )
    return volume_affine @ index_to_voxel


def block_mean(volume: np.ndarray, factor: int) -> np.ndarray:
    """(Z, Y, X) -> its mean over factor^3 blocks (float64); trailing voxels that fill no block are dropped."""
    z, y, x = (n // factor for n in volume.shape)
    blocks = volume[: z * factor, : y * factor, : x * factor].astype(np.float64)
    return blocks.reshape(z, factor, y, factor, x, factor).mean(axis=(1, 3, 5))


def write_volume(t1, gm, wm, affine: np.ndarray, out: Path, factor: int = 2) -> Path:
    """The whole brain, cropped with a margin, averaged over factor^3 blocks, as ``volume_2mm.npz``."""
    everything = (slice(None), slice(None))
    full = [to_axial_stack(v, 0, t1.shape[2], *everything) for v in (t1, gm, wm)]
    brain = full[0] > 0
    box = []
    for axis, length in enumerate(brain.shape):
        hits = np.flatnonzero(brain.any(axis=tuple(a for a in range(3) if a != axis)))
        start = max(hits[0] - MARGIN, 0)
        size = min(-(-(hits[-1] + 1 + MARGIN - start) // factor) * factor, length // factor * factor)
        start = min(start, length - size)  # whole blocks inside the volume
        box.append(slice(start, start + size))
    t1_2, gm_2, wm_2 = (block_mean(v[tuple(box)], factor) for v in full)
    image = np.round(t1_2).astype(np.uint8)
    labels = derive_labels(t1_2, gm_2, wm_2)
    # stack index (z, row, col) -> 1 mm stack voxel: the centre of block j is voxel factor*j + (factor-1)/2
    to_fine = np.diag([factor, factor, factor, 1.0]).astype(np.float64)
    to_fine[:3, 3] = [s.start + (factor - 1) / 2 for s in box]
    fine_affine = stack_affine(affine, t1.shape[1], 0, slice(0, None), slice(0, None))
    target = out / "volume_2mm.npz"
    np.savez_compressed(
        target,
        image=image,
        labels=labels,
        spacing=np.full(3, float(factor)),
        affine=fine_affine @ to_fine,
        class_names=np.array(CLASS_NAMES),
    )
    counts = np.bincount(labels.ravel(), minlength=len(CLASS_NAMES))
    print(
        f"wrote {target} ({target.stat().st_size / 1024:.0f} KiB): image {image.shape} {image.dtype}, "
        f"voxels per class {dict(zip(CLASS_NAMES, counts.tolist()))}"
    )
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", type=Path, help="folder with t1.nii.gz, gm.nii.gz, wm.nii.gz")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--first-slice", type=int, default=82, help="first axial voxel index (z)")
    parser.add_argument("--slices", type=int, default=20)
    parser.add_argument("--volume", action="store_true", help="write the whole brain at 2 mm (volume_2mm.npz)")
    args = parser.parse_args(argv)

    t1, affine = _load(args.input, "t1")
    gm, gm_affine = _load(args.input, "gm")
    wm, wm_affine = _load(args.input, "wm")
    if not (t1.shape == gm.shape == wm.shape and np.allclose(affine, gm_affine) and np.allclose(affine, wm_affine)):
        raise SystemExit("t1, gm and wm must share one grid")
    if not np.allclose(np.abs(np.diag(affine)[:3]), 1.0) or nib.aff2axcodes(affine) != ("R", "A", "S"):
        raise SystemExit(f"expected a 1 mm RAS grid, got axes {nib.aff2axcodes(affine)} and affine\n{affine}")
    if args.volume:
        args.out.mkdir(parents=True, exist_ok=True)
        write_volume(t1, gm, wm, affine, args.out)
        return 0
    labels = derive_labels(t1, gm, wm)

    everything = (slice(None), slice(None))
    slab = to_axial_stack(t1, args.first_slice, args.slices, *everything)
    rows_any = np.flatnonzero(slab.any(axis=(0, 2)))
    cols_any = np.flatnonzero(slab.any(axis=(0, 1)))
    rows = slice(max(rows_any[0] - MARGIN, 0), min(rows_any[-1] + 1 + MARGIN, slab.shape[1]))
    cols = slice(max(cols_any[0] - MARGIN, 0), min(cols_any[-1] + 1 + MARGIN, slab.shape[2]))

    image_stack = to_axial_stack(t1, args.first_slice, args.slices, rows, cols).astype(np.uint8)
    label_stack = to_axial_stack(labels, args.first_slice, args.slices, rows, cols)
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / "slices.npz"
    np.savez_compressed(
        target,
        image=image_stack,
        labels=label_stack,
        spacing=np.ones(3),
        affine=stack_affine(affine, t1.shape[1], args.first_slice, rows, cols),
        class_names=np.array(CLASS_NAMES),
    )
    counts = np.bincount(label_stack.ravel(), minlength=len(CLASS_NAMES))
    print(
        f"wrote {target} ({target.stat().st_size / 1024:.0f} KiB): image {image_stack.shape} {image_stack.dtype}, "
        f"pixels per class {dict(zip(CLASS_NAMES, counts.tolist()))}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
