"""The format registry: one :class:`Format` record per file format, found by file ending.

Everything that depends on a file's format asks its record: :func:`~.images.read_image` and
:func:`~.images.write_labels` dispatch through it, ImageFile's slice axis comes from it, and the napari
writer, reader and Export widget derive their tables from it. The built-in formats (TIFF, PNG, JPEG, NIfTI,
``.npy``) are registered by ``engine/io/__init__.py``; a new one is one more :func:`register` call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InputError

if TYPE_CHECKING:
    from .images import ImageFile


def holds_any_labels(labels: np.ndarray) -> str | None:
    """The default :attr:`Format.can_hold`: every label array fits."""
    return None


@dataclass(frozen=True)
class Format:
    """One file format: how to recognise, read and write it, and what it can hold.

    name: the key of the registry and :attr:`ImageFile.format` ("tiff").
    extensions: lower-case file endings with their dot; the first is the one written (".tif", ".tiff").
    read: path -> :class:`ImageFile` in the file's axis order; any exception it raises besides InputError
      is reported as "cannot read it as <title>".
    write: (temporary path, labels, like) -> None: writes ``labels`` (uint8/16/32, checked by ``can_hold``)
      keeping what it can of ``like`` (an ImageFile or None); None: the format holds no labels.
    can_hold: labels -> None, or why this format cannot store them exactly, as a sentence that ends naming a
      format that can (``write_labels`` raises it as InputError with the file name in front).
    title: the human name in messages, file dialogs and the Export widget ("NIfTI").
    note: what the Export widget's entry adds after the extension ("2D only").
    exported: offered by the Export widget and napari's File > Save Layers (napari.yaml lists the extensions).
    slice_dim: the spatial axis 2D slices of a 3D image are stacked along (0 for (Z, Y, X) stacks, -1 for
      NIfTI's (X, Y, Z)): ``ImageLayout.from_axes(..., slice_dim=)``.
    labels_as: the format predictions for images of this one are written in when it holds no labels
      (JPEG: "png"); None keeps the input's format.
    world_affine: files place the array in world space with a (4, 4) voxel-to-world affine
      (:attr:`ImageFile.affine`): a napari layer written to it needs that affine.
    palette_indices: path -> the palette indices of a file stored as indices into a colour table, else None
      (a PASCAL VOC mask as PNG "P" mode): what :func:`~.images.read_labels` takes instead of its colours.
    directory: an "image" is a folder (an OME-Zarr store), found as one input; its ``write`` is given the
      target itself and must replace it atomically.
    """

    name: str
    extensions: tuple[str, ...]
    read: Callable[[Path], ImageFile]
    write: Callable[[Path, np.ndarray, ImageFile | None], None] | None = None
    can_hold: Callable[[np.ndarray], str | None] = holds_any_labels
    title: str = ""
    note: str = ""
    exported: bool = False
    slice_dim: int = 0
    labels_as: str | None = None
    world_affine: bool = False
    palette_indices: Callable[[Path], np.ndarray | None] | None = None
    directory: bool = False

    @property
    def extension(self) -> str:
        """The ending files of this format are written with."""
        return self.extensions[0]

    @property
    def export_title(self) -> str:
        """The Export widget's entry: ``"PNG (.png, 2D only)"``."""
        return f"{self.title} ({', '.join(filter(None, (self.extension, self.note)))})"

    @property
    def dialog_filter(self) -> str:
        """A Qt file dialog filter: ``"TIFF (*.tif *.tiff)"``."""
        return f"{self.title} ({' '.join('*' + ending for ending in self.extensions)})"


_REGISTRY: dict[str, Format] = {}  # name -> record, in registration order (the Export widget's order)


def register(fmt: Format) -> Format:
    """Add ``fmt`` to the registry; return it. ValueError when its name or an ending is taken, or an
    ending is not a lower-case ``.suffix``."""
    if fmt.name in _REGISTRY:
        raise ValueError(f"a format named {fmt.name!r} is registered already")
    if not fmt.extensions:
        raise ValueError(f"format {fmt.name!r} has no file endings")
    for ending in fmt.extensions:
        if not ending.startswith(".") or ending != ending.lower():
            raise ValueError(f"format {fmt.name!r}: file ending {ending!r} must be lower case and start with a dot")
        owner = next((other.name for other in _REGISTRY.values() if ending in other.extensions), None)
        if owner is not None:
            raise ValueError(f"format {fmt.name!r}: the ending {ending!r} belongs to {owner!r}")
    if fmt.labels_as is not None and fmt.labels_as not in _REGISTRY:
        raise ValueError(f"format {fmt.name!r}: labels_as={fmt.labels_as!r} is not a registered format")
    _REGISTRY[fmt.name] = fmt
    return fmt


def unregister(name: str) -> Format:
    """Remove the format ``name`` from the registry; return its record."""
    return _REGISTRY.pop(name)


def registered_formats() -> tuple[Format, ...]:
    """Every registered format, in registration order."""
    return tuple(_REGISTRY.values())


def get_format(name: str) -> Format:
    """The registered format ``name`` (KeyError for a name nobody registered: a programming error)."""
    return _REGISTRY[name]


def _endings() -> list[tuple[str, Format]]:
    """(ending, format) longest ending first, so that ".nii.gz" wins over a ".gz"."""
    pairs = [(ending, fmt) for fmt in _REGISTRY.values() for ending in fmt.extensions]
    return sorted(pairs, key=lambda pair: -len(pair[0]))


def supported() -> str:
    """The readable file endings in registration order, for messages: ``".tif, .tiff, .png, ..."``."""
    return ", ".join(ending for fmt in _REGISTRY.values() for ending in fmt.extensions)


def split_extension(path: str | Path) -> tuple[str, str]:
    """``"a/b.nii.gz"`` -> ``("b", ".nii.gz")``; the extension keeps its case, matching ignores it."""
    name = Path(path).name
    lower = name.lower()
    for ending, _ in _endings():
        if lower.endswith(ending) and len(name) > len(ending):
            return name[: -len(ending)], name[-len(ending) :]
    return Path(name).stem, Path(name).suffix


def _with_ending(ext: str) -> Format | None:
    return next((fmt for ending, fmt in _endings() if ending == ext.lower()), None)


def format_for(path: str | Path) -> Format:
    """The format of a file name, or InputError naming the supported extensions."""
    ext = split_extension(path)[1]
    fmt = _with_ending(ext)
    if fmt is None:
        raise InputError(
            f"{Path(path).name}: unsupported file type {ext.lower() or '(no extension)'!r}; supported: {supported()}"
        )
    return fmt


def format_of(path: str | Path) -> str:
    """The format name of a file name (:func:`format_for`)."""
    return format_for(path).name


def is_store(path: str | Path) -> bool:
    """A folder that is one image of a ``directory`` format (``x.ome.zarr``), not a folder of images."""
    fmt = _with_ending(split_extension(path)[1])
    return fmt is not None and fmt.directory and Path(path).is_dir()


def is_supported(path: str | Path) -> bool:
    """A file name of a registered format that is not hidden."""
    return _with_ending(split_extension(path)[1]) is not None and not Path(path).name.startswith(".")


def with_extension(path: str | Path, name: str) -> Path:
    """``path`` with the extension of format ``name``: a known image extension is replaced, anything else kept."""
    path = Path(path)
    stem, ext = split_extension(path)
    known = _with_ending(ext)
    if known is None:
        return path.with_name(path.name + get_format(name).extension)
    return path if known.name == name else path.with_name(stem + get_format(name).extension)


def file_name_for(label: str, name: str) -> str:
    """A file name for something called ``label`` (a layer name) in format ``name``: the label made file-safe
    plus the format's extension."""
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in label).strip("._") or "labels"
    return stem + get_format(name).extension
