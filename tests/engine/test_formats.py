"""The format registry: the built-in records, and a format added in one place (a register call in this test)
that reading, writing, file finding, output naming and the export choices then know without other changes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_dinounet._writer import formats_for
from napari_dinounet._writer import write_labels as write_layer
from napari_dinounet.engine import io
from napari_dinounet.engine.errors import InputError


def _read_npz(path: Path) -> io.ImageFile:
    with np.load(path, allow_pickle=False) as archive:
        return io.ImageFile(
            archive["array"],
            "npz",
            spacing=tuple(float(s) for s in archive["spacing"]) or None,
            unit=str(archive["unit"]) or None,
        )


def _write_npz(tmp: Path, labels: np.ndarray, like: io.ImageFile | None) -> None:
    spacing = like.spacing if like is not None and like.spacing is not None else ()
    with open(tmp, "wb") as file:  # np.savez on a path would add ".npz" to the temporary name
        np.savez(file, array=labels, spacing=np.asarray(spacing, float), unit=(like.unit or "") if like else "")


def _at_most_3d(labels: np.ndarray) -> str | None:
    if labels.ndim > 3:
        return f"the toy format holds 2D or 3D labels (these are {labels.ndim}D); write a .tif"
    return None


NPZ = io.Format(
    "npz",
    (".npz",),
    read=_read_npz,
    write=_write_npz,
    can_hold=_at_most_3d,
    title="NumPy archive",
    exported=True,
    slice_dim=-1,
)


@pytest.fixture
def npz_format():
    io.register(NPZ)
    yield NPZ
    io.unregister("npz")


def test_a_registered_format_reads_writes_and_is_found_everywhere(npz_format, tmp_path):
    labels = np.random.default_rng(0).integers(0, 300, (4, 6, 5))
    like = io.ImageFile(np.zeros((4, 6, 5)), "tiff", spacing=(2.0, 0.5, 0.25), unit="mm")
    out = io.write_labels(tmp_path / "seg.NPZ", labels, like=like)
    back = io.read_image(out)
    assert back.format == "npz" and back.data.dtype == np.uint16 and np.array_equal(back.data, labels)
    assert back.spacing == (2.0, 0.5, 0.25) and back.unit == "mm"
    assert np.array_equal(io.read_labels(out).data, labels)
    assert back.slice_axis == 2 and back.layout.slice_dim == 2  # the record's slice convention, as for NIfTI
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.NPZ"]  # atomic: no temporary left

    assert io.format_of("a.npz") == "npz" and io.is_supported("a.npz") and ".npz" in io.supported()
    assert [case.name for case in io.find_images([tmp_path])] == ["seg"]
    assert io.output_path_for(out, tmp_path / "pred") == tmp_path / "pred" / "seg.NPZ"
    with pytest.raises(InputError, match=r"big\.npz: the toy format holds 2D or 3D labels \(these are 4D\)"):
        io.write_labels(tmp_path / "big.npz", np.zeros((2, 2, 2, 2), int))

    # the napari side derives its tables from the registry too
    assert formats_for(3, {}) == ["tiff", "npz"] and formats_for(4, {}) == ["tiff"]
    assert io.with_extension("/data/seg.tif", "npz") == Path("/data/seg.npz")
    assert io.file_name_for("cells 1", "npz") == "cells_1.npz"
    assert NPZ.export_title == "NumPy archive (.npz)" and NPZ.dialog_filter == "NumPy archive (*.npz)"
    layer_file = str(tmp_path / "layer.npz")
    assert write_layer(layer_file, labels, {"scale": (2.0, 0.5, 0.25)}) == [layer_file]
    assert io.read_image(tmp_path / "layer.npz").spacing == (2.0, 0.5, 0.25)


def test_unregistered_the_format_is_unknown_again(tmp_path):
    assert "npz" not in [fmt.name for fmt in io.registered_formats()]
    with pytest.raises(InputError, match=r"unsupported file type '\.npz'"):
        io.read_image(tmp_path / "a.npz")
    assert not io.is_supported("a.npz") and formats_for(3, {}) == ["tiff"]


def test_register_refuses_a_taken_name_or_ending_and_odd_endings():
    with pytest.raises(ValueError, match="'.tif' belongs to 'tiff'"):
        io.register(io.Format("other", (".tif",), read=_read_npz))
    with pytest.raises(ValueError, match="registered already"):
        io.register(io.Format("png", (".png2",), read=_read_npz))
    with pytest.raises(ValueError, match="lower case and start with a dot"):
        io.register(io.Format("upper", (".NPZ",), read=_read_npz))
    with pytest.raises(ValueError, match="labels_as='gif' is not a registered format"):
        io.register(io.Format("webp", (".webp",), read=_read_npz, labels_as="gif"))
    assert [fmt.name for fmt in io.registered_formats()] == ["tiff", "png", "jpeg", "nifti", "npy", "ome-zarr"]


def test_builtin_records():
    by_name = {fmt.name: fmt for fmt in io.registered_formats()}
    assert {name for name, fmt in by_name.items() if fmt.exported} == {"tiff", "png", "nifti"}
    assert by_name["nifti"].slice_dim == -1 and all(by_name[n].slice_dim == 0 for n in ("tiff", "npy"))
    assert by_name["jpeg"].write is None and by_name["jpeg"].labels_as == "png"
    assert [fmt.extension for fmt in by_name.values()] == [".tif", ".png", ".jpg", ".nii.gz", ".npy", ".ome.zarr"]
    assert [name for name, fmt in by_name.items() if fmt.directory] == ["ome-zarr"]
    assert io.split_extension("a/b.NII.GZ") == ("b", ".NII.GZ") and io.format_of("b.NII.GZ") == "nifti"
    labels = np.zeros((5, 5), np.uint8)
    assert by_name["png"].can_hold(labels) is None and "JPEG" in by_name["jpeg"].can_hold(labels)
    assert "values <= 255 (these go up to 300)" in by_name["png"].can_hold(np.full((5, 5), 300, np.uint16))


def test_image_file_layout_follows_the_format(tmp_path):
    stack = io.ImageFile(np.zeros((3, 8, 9, 2)), "tiff", channel_axis=3)
    nifti = io.ImageFile(np.zeros((8, 9, 3, 2)), "nifti", channel_axis=3)
    assert (stack.layout.slice, stack.layout.rows, stack.layout.cols, stack.layout.num_channels) == (0, 1, 2, 2)
    assert (nifti.layout.slice, nifti.layout.rows, nifti.layout.cols) == (2, 0, 1)
    assert stack.slice_axis == 0 and nifti.slice_axis == 2 and nifti.spatial_shape == (8, 9, 3)
    assert io.ImageFile(np.zeros((8, 9)), "nifti").slice_axis is None
    four_d = io.ImageFile(np.zeros((2, 3, 8, 9)), "tiff")  # a (T, Z, Y, X) label map: spatial, but no image layout
    assert four_d.spatial_shape == (2, 3, 8, 9)
    with pytest.raises(InputError, match="4 spatial axes"):
        four_d.layout  # noqa: B018
