"""Image and label files: TIFF, PNG/JPEG, NIfTI, NumPy ``.npy`` and nnU-Net raw datasets.

Arrays are kept in the axis order the file stores them, never transposed:

- TIFF, ``.npy``, PNG/JPEG: ``(Y, X)``, ``(Z, Y, X)``, colour samples last ``(Y, X, 3)``;
  TIFF channel axes (``C``/``S`` in tifffile's series axes) are reported in ``channel_axis``. A ``.npy``
  array, or a TIFF whose leading axes have no stated meaning (tifffile's ``Q``/``I``), has its channel axis
  guessed from its shape by :func:`channels_last_axis`, the rule :func:`~.predict.predict` applies to
  arrays: ``(Y, X, 2)`` is two channels, not Y slices of X x 2 pixels; four are RGBA (alpha dropped).
- NIfTI: nibabel's voxel order ``(X, Y, Z)`` (a 4th axis is channels); ``spacing`` comes from the header
  zooms in that same order and ``affine`` maps voxel indices to world millimetres. Predictions written
  with ``like=`` keep the header, affine and zooms exactly.

``spacing`` has one entry per spatial axis (channel axis left out), in array order, in ``unit``
(``"mm"``, ``"um"``, ``"cm"``, ``"inch"``, ... or ``None`` when the file does not say); ``None`` when the
file records no physical size at all (PNG/JPEG, ``.npy``, a TIFF without resolution tags). TIFF X/Y
spacing comes from the resolution tags, Z spacing and the unit from the ImageJ or tifffile description
(Z spacing 1.0, ImageJ's default, when only X/Y are calibrated).

nnU-Net raw datasets (v2 ``dataset.json`` with ``channel_names``/``labels``/``file_ending``, or v1 with
``modality``/``labels``): images ``imagesTr/<case>_<0000..>`` one file per channel, labels
``labelsTr/<case>``, test images ``imagesTs/<case>_<0000..>``. A :class:`Case` groups a case's channel
files; :func:`read_case` stacks them channels-last.
"""

from __future__ import annotations

import json
import numbers
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_path
from .errors import InputError
from .values import is_number

# Lower-case file endings -> format name. Longest endings first so ".nii.gz" wins over ".gz".
FORMATS: dict[str, str] = {
    ".nii.gz": "nifti",
    ".nii": "nifti",
    ".tiff": "tiff",
    ".tif": "tiff",
    ".png": "png",
    ".jpeg": "jpeg",
    ".jpg": "jpeg",
    ".npy": "npy",
}
SUPPORTED = ", ".join(FORMATS)
NNUNET_IMAGE_FOLDERS = ("imagesTr", "imagesTs")  # where file names end in a _0000 channel suffix
IGNORE_LABEL = "ignore"  # nnU-Net's label for unlabelled pixels (left out of the loss); it takes the highest value
_CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
_TIFF_UNITS = {2: "inch", 3: "cm", 4: "mm", 5: "um"}  # TIFF ResolutionUnit codes (1 = none)
# NIfTI xyzt_units -> unit names; "unknown" is read as millimetres, as ITK and nnU-Net do.
_NIFTI_UNITS = {"unknown": "mm", "meter": "m", "mm": "mm", "micron": "um"}
# Spellings of units found in ImageJ/OME metadata -> the names ImageFile.unit uses; "pixel" means uncalibrated.
_UNIT_ALIASES = {"micron": "um", "microns": "um", "\u00b5m": "um", "\u03bcm": "um", "\\u00b5m": "um",
                 "millimeter": "mm", "centimeter": "cm", "meter": "m", "nanometer": "nm", "pixel": None, "pixels": None}


@dataclass
class ImageFile:
    """An image or label array as read from a file, with what is needed to write a result like it.

    data: the array in the file's axis order (see the module docstring).
    spacing: physical size of a pixel per spatial axis, in array order (channel axis left out), or None.
    unit: unit of ``spacing`` ("mm", "um", "cm", "inch", "m") or None when unknown.
    affine: NIfTI voxel-to-world (4, 4) matrix, else None.
    format: "tiff", "png", "jpeg", "nifti" or "npy".
    channel_axis: the axis holding channels/colour samples, or None for a single-channel image.
    metadata: format details the writer reuses (TIFF "imagej", "resolutionunit", "axes"; NIfTI
      "header") and "alpha_dropped" when an RGBA image was read as RGB.
    """

    data: np.ndarray
    format: str
    path: Path | None = None
    spacing: tuple[float, ...] | None = None
    unit: str | None = None
    affine: np.ndarray | None = None
    channel_axis: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def spatial_axes(self) -> tuple[int, ...]:
        """The axes of ``data`` other than the channel axis."""
        channel = None if self.channel_axis is None else self.channel_axis % self.data.ndim
        return tuple(a for a in range(self.data.ndim) if a != channel)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """The shape without the channel axis: what a label map for this image has."""
        return tuple(self.data.shape[a] for a in self.spatial_axes)

    @property
    def slice_axis(self) -> int | None:
        """The axis of ``data`` that 2D slices of a 3D image are stacked along (None for 2D images).

        NIfTI stores (X, Y, Z): slices lie along the last spatial axis; TIFF and .npy stacks store
        (Z, Y, X): along the first.
        """
        spatial = self.spatial_axes
        if len(spatial) < 3:
            return None
        return spatial[-1] if self.format == "nifti" else spatial[0]


@dataclass(frozen=True)
class Case:
    """One image to process: a single file, or an nnU-Net case with one file per channel.

    name: the case name, used for output files and for matching predictions to ground truth
      (the file name without its extension, and for nnU-Net without the ``_0000`` channel suffix).
    paths: the channel files in channel order (one path for an ordinary image).
    """

    name: str
    paths: tuple[Path, ...]

    @property
    def extension(self) -> str:
        return split_extension(self.paths[0])[1]

    @property
    def format(self) -> str:
        return format_of(self.paths[0])

    @classmethod
    def from_path(cls, path: str | Path) -> Case:
        """A one-file case; in an nnU-Net images folder its name drops the ``_0000`` channel suffix."""
        path = Path(path)
        name = split_extension(path)[0]
        match = _CHANNEL_SUFFIX.match(name)
        if match is not None and path.parent.name in NNUNET_IMAGE_FOLDERS:
            name = match["case"]
        return cls(name, (path,))


@dataclass
class NnUNetDataset:
    """An nnU-Net raw dataset folder as described by its ``dataset.json``.

    channel_names: channel index -> name (v2 ``channel_names``, v1 ``modality``).
    labels: class name -> label value (background included).
    training: (image case, label file) pairs from imagesTr/labelsTr; test: cases in imagesTs.
    """

    root: Path
    info: dict[str, Any]
    channel_names: dict[int, str]
    labels: dict[str, int]
    file_ending: str
    training: list[tuple[Case, Path]]
    test: list[Case]


def split_extension(path: str | Path) -> tuple[str, str]:
    """``"a/b.nii.gz"`` -> ``("b", ".nii.gz")``; the extension keeps its case, matching ignores it."""
    name = Path(path).name
    lower = name.lower()
    for ending in FORMATS:
        if lower.endswith(ending) and len(name) > len(ending):
            return name[: -len(ending)], name[-len(ending) :]
    return Path(name).stem, Path(name).suffix


def format_of(path: str | Path) -> str:
    """The format name for a file name, or InputError naming the supported extensions."""
    ext = split_extension(path)[1].lower()
    if ext not in FORMATS:
        raise InputError(f"{Path(path).name}: unsupported file type {ext or '(no extension)'!r}; "
                         f"supported: {SUPPORTED}")
    return FORMATS[ext]


def is_supported(path: str | Path) -> bool:
    return split_extension(path)[1].lower() in FORMATS and not Path(path).name.startswith(".")


# ----------------------------------------------------------------------------------------------- reading

_GENERIC_TIFF_AXES = set("QI")  # tifffile's letters for axes of unknown meaning (pages, sequences)


def channels_last_axis(shape: Sequence[int]) -> int | None:
    """The channel axis of an array of ``shape`` that says nothing about its axes, or None: the last axis
    of a 3D ``(Y, X, C)`` or 4D ``(Z, Y, X, C)`` shape when it holds RGB(A) colours (3 or 4 entries), or
    one or two channels of an image plane larger than 4 x 4 (a stack of slices 1 or 2 pixels wide is
    not an image anyone segments)."""
    if len(shape) not in (3, 4):
        return None
    last = shape[-1]
    if last in (3, 4) or (last <= 2 and min(shape[-3:-1]) > 4):
        return len(shape) - 1
    return None


def _guessed_channels(data: np.ndarray, metadata: dict[str, Any]) -> tuple[np.ndarray, int | None]:
    """``data`` and its :func:`channels_last_axis`; 4 guessed channels are RGBA, whose alpha is dropped
    (``metadata["alpha_dropped"]``) as :func:`~.predict.predict` drops it."""
    channel_axis = channels_last_axis(data.shape)
    if channel_axis is not None and data.shape[-1] == 4:
        data = data[..., :3]
        metadata["alpha_dropped"] = True
    return data, channel_axis


def read_image(path: str | Path) -> ImageFile:
    """Read one image or label file (TIFF, PNG, JPEG, NIfTI, .npy) with its spacing and metadata.

    Raises InputError for a missing file, an unsupported extension or a file that cannot be decoded.
    Alpha channels of PNG/JPEG and RGBA TIFF images are dropped (``metadata["alpha_dropped"]``): they
    carry no image content.
    """
    path = Path(path)
    fmt = format_of(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file; check the path")
    readers = {"tiff": _read_tiff, "png": _read_skimage, "jpeg": _read_skimage, "nifti": _read_nifti, "npy": _read_npy}
    try:
        image = readers[fmt](path)
    except (InputError, MemoryError):
        raise
    except Exception as err:  # every decoder has its own exception types; all mean "not a valid file"
        raise InputError(f"{path}: cannot read it as {fmt.upper()} ({type(err).__name__}: {err}); "
                         "the file is damaged or not what its extension says") from err
    image.path = path
    return image


def _read_tiff(path: Path) -> ImageFile:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        data = series.asarray()
        axes = series.axes
        page = tif.pages.first
        xres, yres = (float(r) for r in page.resolution)
        resolution_unit = int(page.resolutionunit)
        extra = dict(tif.imagej_metadata or {})
        if tif.is_shaped and tif.shaped_metadata:
            extra.update(tif.shaped_metadata[0])
        imagej = bool(tif.is_imagej)
        rgba = page.photometric == tifffile.PHOTOMETRIC.RGB and "S" in axes and data.shape[axes.index("S")] == 4
    channel_axis = next((axes.index(a) for a in "SC" if a in axes), None)
    metadata = {"imagej": imagej, "resolutionunit": resolution_unit, "axes": axes}
    if rgba:  # as for PNG: the alpha channel carries no image content
        data = np.take(data, [0, 1, 2], axis=channel_axis)
        metadata["alpha_dropped"] = True
    elif channel_axis is None and set(axes[:-2]) <= _GENERIC_TIFF_AXES:
        # tifffile stores an unnamed (Y, X, 2) array as Y pages of X x 2 pixels: guess as for .npy
        data, channel_axis = _guessed_channels(data, metadata)
    unit = _unit_name(extra.get("unit")) or _TIFF_UNITS.get(resolution_unit)
    z_spacing = extra.get("spacing")
    spacing = None
    if (unit is not None or z_spacing is not None or (xres, yres) != (1.0, 1.0)) and xres > 0 and yres > 0:
        per_axis = {"X": 1.0 / xres, "Y": 1.0 / yres, "Z": float(z_spacing or 1.0)}
        spacing = tuple(per_axis.get(a, 1.0) for i, a in enumerate(axes) if i != channel_axis)
    return ImageFile(data, "tiff", spacing=spacing, unit=unit, channel_axis=channel_axis, metadata=metadata)


def _unit_name(unit: Any) -> str | None:
    if not unit:
        return None
    name = str(unit).strip()
    return _UNIT_ALIASES.get(name.lower(), name)


def _read_skimage(path: Path) -> ImageFile:
    import skimage.io

    data = np.asarray(skimage.io.imread(path))
    metadata: dict[str, Any] = {}
    if data.ndim == 3 and data.shape[-1] in (2, 4):  # grey + alpha, RGB + alpha
        data = data[..., :-1] if data.shape[-1] == 4 else data[..., 0]
        metadata["alpha_dropped"] = True
    channel_axis = 2 if data.ndim == 3 else None
    return ImageFile(data, format_of(path), channel_axis=channel_axis, metadata=metadata)


def _read_nifti(path: Path) -> ImageFile:
    import nibabel as nib

    img = nib.load(path)
    data = np.asanyarray(img.dataobj)
    if data.ndim > 4:
        raise InputError(f"{path}: NIfTI with {data.ndim} dimensions; supported are 2D, 3D (X, Y, Z) "
                         "and 4D (X, Y, Z, channel)")
    spatial_ndim = min(data.ndim, 3)
    spacing = tuple(float(z) for z in img.header.get_zooms()[:spatial_ndim])
    unit = _NIFTI_UNITS.get(img.header.get_xyzt_units()[0])
    channel_axis = 3 if data.ndim == 4 else None
    return ImageFile(data, "nifti", spacing=spacing, unit=unit, affine=np.array(img.affine),
                     channel_axis=channel_axis, metadata={"header": img.header})


def _read_npy(path: Path) -> ImageFile:
    data = np.load(path, allow_pickle=False)
    if not isinstance(data, np.ndarray) or data.dtype.kind not in "biuf":
        raise InputError(f"{path}: holds {data.dtype} data; an image must be a numeric array")
    metadata: dict[str, Any] = {}
    data, channel_axis = _guessed_channels(data, metadata)
    return ImageFile(data, "npy", channel_axis=channel_axis, metadata=metadata)


def read_labels(path: str | Path) -> ImageFile:
    """Read a label map (ground truth, a prediction): one whole number >= 0 per pixel.

    Palette PNGs (PASCAL VOC style masks) give their palette indices, not colours; a file whose colour
    channels are all equal gives one of them; ``data`` is uint8/uint16/uint32 (:func:`as_label_array`).
    Raises InputError for files with distinct channels or with negative or fractional values.
    """
    image = read_image(path)
    if image.format == "png":
        from PIL import Image

        with Image.open(image.path) as png:
            if png.mode == "P":
                image.data, image.channel_axis = np.asarray(png), None
    if image.channel_axis is not None:
        channels = np.moveaxis(image.data, image.channel_axis, 0)
        if not all(np.array_equal(channels[0], other) for other in channels[1:]):
            raise InputError(f"{image.path}: has {len(channels)} different channels; a label map holds one "
                             "class value per pixel (save it as a single-channel or palette image)")
        image.data, image.channel_axis = channels[0], None
    try:
        image.data = as_label_array(image.data)
    except InputError as err:
        raise InputError(f"{image.path}: {err}") from err
    return image


def read_case(case: Case | Sequence[str | Path]) -> ImageFile:
    """Read a case; several channel files (nnU-Net ``_0000``, ``_0001``...) are stacked channels-last.

    The result's spacing, affine and metadata are the first channel's, ``channel_axis`` is the last axis
    for a stacked case; all channel files must have the same shape.
    """
    paths = case.paths if isinstance(case, Case) else tuple(Path(p) for p in case)
    first = read_image(paths[0])
    if len(paths) == 1:
        return first
    channels = [first] + [read_image(p) for p in paths[1:]]
    for image in channels:
        if image.channel_axis is not None or image.data.shape != first.data.shape:
            raise InputError(f"{image.path.name}: shape {image.data.shape} does not match {first.path.name} "
                             f"{first.data.shape}; every channel file of a case must hold one channel of the same size")
    data = np.stack([image.data for image in channels], axis=-1)
    return ImageFile(data, first.format, path=first.path, spacing=first.spacing, unit=first.unit,
                     affine=first.affine, channel_axis=data.ndim - 1, metadata=first.metadata)


# ------------------------------------------------------------------------------------- finding images


def find_images(inputs: Iterable[str | Path]) -> list[Case]:
    """The cases to process from files and folders.

    A file is one case. A folder gives every supported file in it (not recursive, hidden files skipped),
    except nnU-Net folders: an nnU-Net dataset root (holding ``dataset.json``) means its ``imagesTs``,
    and a folder named ``imagesTr``/``imagesTs`` is grouped by case with channels from the ``_0000``,
    ``_0001``... suffixes (as many as its ``dataset.json`` names, if there is one). Case names must be
    unique, since they name the outputs. Raises InputError for missing paths, unsupported files and
    empty folders.
    """
    cases: list[Case] = []
    for item in inputs:
        path = Path(item)
        if path.is_file():
            format_of(path)
            cases.append(Case.from_path(path))
        elif path.is_dir():
            cases.extend(_cases_in_folder(path))
        else:
            raise InputError(f"{path}: no such file or folder; check the path")
    seen: dict[str, Case] = {}
    for case in cases:
        if case.name in seen:
            raise InputError(f"two inputs share the case name {case.name!r} ({seen[case.name].paths[0]} and "
                             f"{case.paths[0]}); their outputs would overwrite each other: rename one")
        seen[case.name] = case
    return cases


def _cases_in_folder(folder: Path) -> list[Case]:
    if (folder / "dataset.json").is_file():
        if not (folder / "imagesTs").is_dir():
            raise InputError(f"{folder} is an nnU-Net dataset without imagesTs; pass {folder / 'imagesTr'} "
                             "to process its training images")
        return _cases_in_folder(folder / "imagesTs")
    files = sorted(p for p in folder.iterdir() if p.is_file() and is_supported(p))
    if not files:
        raise InputError(f"{folder}: no images found (supported: {SUPPORTED})")
    if folder.name in NNUNET_IMAGE_FOLDERS:
        dataset_json = folder.parent / "dataset.json"
        channels = _channel_names(read_dataset_json(dataset_json)) if dataset_json.is_file() else None
        return group_channels(files, len(channels) if channels else None)
    return [Case.from_path(p) for p in files]


def group_channels(files: Iterable[Path], n_channels: int | None = None) -> list[Case]:
    """Group nnU-Net image files ``<case>_<0000..>.<ext>`` into cases, channels in order.

    Every case must have channels 0..n-1 (n from ``dataset.json`` when given, else the same for all).
    """
    grouped: dict[str, dict[int, Path]] = {}
    for path in files:
        stem, extension = split_extension(path)
        match = _CHANNEL_SUFFIX.match(stem)
        if match is None:  # a prediction written into imagesTs lacks the suffix too: renaming it would be wrong
            raise InputError(f"{path}: nnU-Net image names end with a channel suffix (_0000, _0001, ...); "
                             f"rename it, e.g. to {stem}_0000{extension}, unless it is a prediction written into "
                             f"{path.parent.name} by mistake: then move it out")
        grouped.setdefault(match["case"], {})[int(match["channel"])] = path
    expected = n_channels if n_channels is not None else max(len(ch) for ch in grouped.values())
    cases = []
    for name, channels in sorted(grouped.items()):
        if sorted(channels) != list(range(expected)):
            have = ", ".join(f"_{c:04d}" for c in sorted(channels))
            raise InputError(f"nnU-Net case {name!r} has channels {have}; expected _0000 to _{expected - 1:04d}")
        cases.append(Case(name, tuple(channels[c] for c in range(expected))))
    return cases


def read_dataset_json(path: str | Path) -> dict[str, Any]:
    """An nnU-Net ``dataset.json`` as a dict, checked to have channel names and labels that follow nnU-Net's
    rules (:func:`label_values`); errors name the file."""
    path = Path(path)
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: cannot read it as JSON ({err}); fix or regenerate dataset.json") from err
    if not isinstance(info, dict) or "labels" not in info or not ("channel_names" in info or "modality" in info):
        raise InputError(f"{path}: not an nnU-Net dataset.json (needs 'channel_names' or 'modality', and 'labels')")
    try:
        _channel_names(info), label_values(info)
    except (AttributeError, TypeError, ValueError) as err:
        raise InputError(f"{path}: 'channel_names'/'modality' must map channel numbers to names and 'labels' "
                         f"class names to values ({err})") from err
    except InputError as err:
        raise InputError(f"{path}: {err}") from err
    return info


def _channel_names(info: dict[str, Any]) -> dict[int, str]:
    return {int(k): str(v) for k, v in (info.get("channel_names") or info["modality"]).items()}


def label_values(info: dict[str, Any]) -> dict[str, int]:
    """Class name -> label value from a ``dataset.json`` (v2 ``{"name": value}`` or v1 ``{"value": "name"}``),
    ordered by value.

    The values must follow nnU-Net's rules: whole numbers, "background" at 0, one value per name, values
    0, 1, 2, ... without gaps, an "ignore" label (:data:`IGNORE_LABEL`) only at the highest value. Anything
    else is an InputError saying which rule (the caller names the file: :func:`read_dataset_json`).
    """
    labels = info["labels"]
    if all(str(k).isdigit() for k in labels):  # v1: {"0": "background", "1": "tumour"}
        pairs = [(str(name), int(value)) for value, name in labels.items()]
    else:
        pairs = [(str(name), _label_value(name, value)) for name, value in labels.items()]
    pairs.sort(key=lambda pair: pair[1])
    values = [value for _, value in pairs]
    negative = next((pair for pair in pairs if pair[1] < 0), None)
    if negative is not None:
        raise InputError(f"label {negative[0]!r} has the value {negative[1]}: label values are 0 (background), "
                         f"1, 2, ... ('{IGNORE_LABEL}' takes the highest value, not a negative one)")
    shared = next((i for i in range(1, len(pairs)) if values[i] == values[i - 1]), None)
    if shared is not None:
        raise InputError(f"labels {pairs[shared - 1][0]!r} and {pairs[shared][0]!r} share the value {values[shared]}: "
                         "give each class its own value")
    if not values or values[0] != 0:
        raise InputError("'labels' lacks \"background\": 0 (nnU-Net's value for pixels of no class): add it")
    if values != list(range(len(values))):
        missing = sorted(set(range(values[-1])) - set(values))
        raise InputError(f"label values {', '.join(map(str, values))} skip {', '.join(map(str, missing))}: nnU-Net "
                         "needs values 0, 1, 2, ... without gaps; renumber the classes (and the label files to match)")
    ignore = dict(pairs).get(IGNORE_LABEL)
    if ignore is not None and ignore != values[-1]:
        raise InputError(f"'{IGNORE_LABEL}' has the value {ignore}, but nnU-Net gives it the highest value: "
                         f"swap it with {pairs[-1][0]!r} ({values[-1]}), here and in the label files")
    if len(values) - (ignore is not None) < 2:
        raise InputError("'labels' names no class besides background: add the classes to segment, "
                         'e.g. "nuclei": 1')
    return dict(pairs)


def _label_value(name: str, value: Any) -> int:
    """One v2 label value, or an InputError saying what is wrong with it."""
    if is_number(value, numbers.Integral):
        return value
    if isinstance(value, (list, tuple)):
        raise InputError(f"label {name!r} is a list of values {value}: region-based labels are not supported; "
                         "use one value per class")
    if isinstance(value, str):
        kind = "text in quotes"
    elif isinstance(value, float):
        kind = "written with a decimal point" if value.is_integer() else "not a whole number"
    else:
        kind = "not a number"
    raise InputError(f"label {name!r} has the value {json.dumps(value)}, {kind}: label values are whole numbers "
                     "(0 for background, 1, 2, ...) written without quotes")


def class_names(info: dict[str, Any]) -> list[str]:
    """The classes a network learns from a ``dataset.json``: its label names ordered by value, "ignore" left out."""
    return [name for name in label_values(info) if name != IGNORE_LABEL]


def read_nnunet_dataset(root: str | Path) -> NnUNetDataset:
    """Read an nnU-Net raw dataset folder: ``dataset.json``, ``imagesTr``/``labelsTr`` and ``imagesTs``.

    Every training case needs a label ``labelsTr/<case><file_ending>`` and every label an image.
    """
    root = Path(root)
    dataset_json = root / "dataset.json"
    if not dataset_json.is_file():
        raise InputError(f"{root}: no dataset.json; an nnU-Net raw dataset folder holds dataset.json, "
                         "imagesTr and labelsTr")
    info = read_dataset_json(dataset_json)
    channel_names = _channel_names(info)
    file_ending = str(info.get("file_ending", ".nii.gz"))
    if not file_ending.startswith("."):
        raise InputError(f'{dataset_json}: "file_ending": {json.dumps(file_ending)} lacks the dot of an '
                         f'extension; write "file_ending": ".{file_ending}"')
    format_of(f"case{file_ending}")  # a file ending we cannot read fails here, naming the supported ones
    images_tr, labels_tr = root / "imagesTr", root / "labelsTr"
    for folder in (images_tr, labels_tr):
        if not folder.is_dir():
            raise InputError(f"{root}: no {folder.name} folder; an nnU-Net raw dataset needs imagesTr and labelsTr")

    def files_in(folder: Path) -> list[Path]:
        return [p for p in sorted(folder.iterdir())
                if p.is_file() and p.name.endswith(file_ending) and not p.name.startswith(".")]

    def cases_in(folder: Path) -> list[Case]:
        files = files_in(folder)
        return group_channels(files, len(channel_names)) if files else []

    training_cases = cases_in(images_tr)
    if not training_cases:
        raise InputError(f"{images_tr}: no images ending in {file_ending}")
    label_files = {p.name[: -len(file_ending)]: p for p in files_in(labels_tr)}
    missing = [c.name for c in training_cases if c.name not in label_files]
    orphans = sorted(set(label_files) - {c.name for c in training_cases})
    if missing:
        raise InputError(f"{root}: no label in labelsTr for {_some(missing)}; "
                         f"add {missing[0]}{file_ending} to labelsTr")
    if orphans:
        raise InputError(f"{root}: labels without images in imagesTr: {_some(orphans)}; "
                         "add the images or remove the labels")
    test = cases_in(root / "imagesTs") if (root / "imagesTs").is_dir() else []
    return NnUNetDataset(root, info, channel_names, label_values(info), file_ending,
                         [(case, label_files[case.name]) for case in training_cases], test)


def _some(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


# ------------------------------------------------------------------------------------- matching files


def evaluation_name(path: str | Path) -> str:
    """The case name used to pair predictions with ground truth: no extension, no ``_0000`` suffix."""
    stem = split_extension(path)[0]
    return stem[:-5] if stem.endswith("_0000") and len(stem) > 5 else stem


def match_cases(pred_dir: str | Path, gt_dir: str | Path) -> list[tuple[str, Path, Path]]:
    """Pair the supported files of two folders by case name: ``[(name, prediction, ground truth)]``.

    Names ignore extensions and an nnU-Net ``_0000`` suffix; the class probabilities that prediction
    writes beside its labels (:func:`probabilities_path`) are not label files and are left out.
    Raises InputError when a folder is missing or empty, two files in one folder share a name, or a file
    has no partner (listing them).
    """
    found = []
    for folder in (Path(pred_dir), Path(gt_dir)):
        if not folder.is_dir():
            raise InputError(f"{folder}: no such folder; check the path")
        by_name: dict[str, Path] = {}
        for path in sorted(p for p in folder.iterdir() if p.is_file() and is_supported(p)):
            if path.name.endswith(PROBABILITIES_SUFFIX):
                continue
            name = evaluation_name(path)
            if name in by_name:
                raise InputError(f"{folder}: {by_name[name].name} and {path.name} are the same case {name!r}; keep one")
            by_name[name] = path
        if not by_name:
            raise InputError(f"{folder}: no image files (supported: {SUPPORTED})")
        found.append(by_name)
    preds, gts = found
    only_pred, only_gt = sorted(set(preds) - set(gts)), sorted(set(gts) - set(preds))
    if only_pred or only_gt:
        problems = []
        if only_pred:
            problems.append(f"predictions without ground truth: {_some(only_pred)}")
        if only_gt:
            problems.append(f"ground truth without prediction: {_some(only_gt)}")
        raise InputError("; ".join(problems) + " (files are paired by name, ignoring extensions and _0000); "
                         "add the missing files or move the extra ones out")
    return [(name, preds[name], gts[name]) for name in sorted(preds)]


# ----------------------------------------------------------------------------------------------- writing


PROBABILITIES_SUFFIX = "_probabilities.npy"


def probabilities_path(labels_path: str | Path, case_name: str) -> Path:
    """Where a case's class probabilities go beside its labels: ``<case>_probabilities.npy``."""
    return Path(labels_path).with_name(case_name + PROBABILITIES_SUFFIX)


def output_path_for(source: Case | str | Path, out_dir: str | Path) -> Path:
    """Where the prediction for ``source`` goes: ``out_dir/<case name><input extension>``.

    nnU-Net cases (a :class:`Case`, or a path in imagesTr/imagesTs) are named without ``_0000``;
    other files keep their name. JPEG inputs get ``.png`` (JPEG compression would change label values).
    """
    case = source if isinstance(source, Case) else Case.from_path(source)
    extension = ".png" if case.format == "jpeg" else case.extension
    return Path(out_dir) / f"{case.name}{extension}"


def as_label_array(labels) -> np.ndarray:
    """Labels as the smallest unsigned type that holds them (uint8, else uint16, else uint32).

    Raises InputError for non-integer or negative values.
    """
    labels = np.asarray(labels)
    if labels.dtype.kind == "b":
        return labels.astype(np.uint8)
    if labels.dtype.kind == "f":
        if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
            raise InputError("labels must be whole numbers; these are fractional (probabilities?): "
                             "take the argmax first")
    elif labels.dtype.kind not in "iu":
        raise InputError(f"labels must be integers, not {labels.dtype}")
    low, high = (labels.min(), labels.max()) if labels.size else (0, 0)
    if low < 0:
        raise InputError(f"labels must be >= 0, found {low}")
    for dtype in (np.uint8, np.uint16, np.uint32):
        if high <= np.iinfo(dtype).max:
            return labels.astype(dtype, copy=False)
    raise InputError(f"label value {high} is too large (at most {np.iinfo(np.uint32).max})")


def write_labels(path: str | Path, labels, like: ImageFile | None = None) -> Path:
    """Write a label map atomically in the format of ``path``'s extension; return the path.

    labels: integer array with ``like``'s spatial shape; stored as uint8 when the values fit, else
    uint16 (uint32 beyond). ``like``: the image the labels belong to; its spacing, unit and format
    metadata are kept: TIFF resolution, unit, z spacing and ImageJ layout; NIfTI header, affine and
    zooms (exactly). PNG takes 2D labels <= 255 only; JPEG is refused (lossy).
    """
    path = Path(path)
    fmt = format_of(path)
    labels = as_label_array(labels)
    if labels.ndim < 2:
        raise InputError(f"labels must be 2D or more, not of shape {labels.shape}")
    if like is not None and labels.shape != like.spatial_shape:
        raise InputError(f"labels of shape {labels.shape} do not fit the image {like.path or ''} of spatial shape "
                         f"{like.spatial_shape}")
    if fmt == "jpeg":
        raise InputError(f"{path.name}: JPEG compression changes label values; write labels as .png or .tif")
    if fmt == "png" and (labels.ndim != 2 or labels.dtype != np.uint8):
        raise InputError(f"{path.name}: PNG labels must be 2D with values <= 255 (these are {labels.ndim}D, "
                         f"max {labels.max() if labels.size else 0}); write a .tif instead")
    writer = {"tiff": _write_tiff, "png": _write_png, "nifti": _write_nifti, "npy": _write_npy}[fmt]
    with atomic_path(path) as tmp:
        writer(tmp, labels, like)
    return path


def _write_tiff(tmp: Path, labels: np.ndarray, like: ImageFile | None) -> None:
    """TIFF labels: resolution tags from ``like.spacing``, z spacing and unit in the description.

    A ``like`` read from a TIFF keeps its layout (ImageJ or not) and resolution unit code. Otherwise
    microscopy units (um, mm, nm) get an ImageJ file, the layout Fiji, napari and QuPath read
    calibrations from, and inch/cm the standard TIFF unit codes. ImageJ cannot hold uint32 or more than 3 axes: those are
    written as plain TIFF with tifffile's JSON description.
    """
    import tifffile

    axes = "ZYX"[-labels.ndim:] if labels.ndim <= 3 else None
    spacing = like.spacing if like is not None else None
    unit = like.unit if like is not None else None
    unit_codes = {name: code for code, name in _TIFF_UNITS.items()}
    if like is not None and "resolutionunit" in like.metadata:  # read from a TIFF: keep its layout
        imagej, unit_code = bool(like.metadata.get("imagej")), like.metadata["resolutionunit"]
    else:
        imagej = unit not in (None, "inch", "cm")
        unit_code = 1 if imagej else unit_codes.get(unit, 1)
    imagej = imagej and labels.dtype != np.uint32 and axes is not None
    if not imagej and unit_code == 1:
        unit_code = unit_codes.get(unit, 1)  # mm, um: tifffile's extension codes hold the unit without ImageJ
    description: dict[str, Any] = {"axes": axes} if axes else {}
    options: dict[str, Any] = {"imagej": True} if imagej else {"photometric": "minisblack"}
    if spacing is not None:
        options["resolution"] = (1.0 / spacing[-1], 1.0 / spacing[-2])
        options["resolutionunit"] = unit_code
        if labels.ndim == 3:
            description["spacing"] = spacing[0]
        if unit is not None:
            description["unit"] = unit
    tifffile.imwrite(tmp, labels, metadata=description, **options)


def _write_png(tmp: Path, labels: np.ndarray, like: ImageFile | None) -> None:
    import skimage.io

    skimage.io.imsave(tmp, labels, check_contrast=False)


def _write_nifti(tmp: Path, labels: np.ndarray, like: ImageFile | None) -> None:
    import nibabel as nib

    header = like.metadata.get("header") if like is not None else None
    if like is not None and like.affine is not None:
        affine = like.affine
    else:
        affine = np.eye(4)
        if like is not None and like.spacing is not None:
            affine[: min(3, len(like.spacing)), : min(3, len(like.spacing))] = np.diag(like.spacing[:3])
    image_class = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    image = image_class(labels, affine, header=header.copy() if header is not None else None)
    image.header.set_data_dtype(labels.dtype)
    image.header.set_slope_inter(1.0, 0.0)  # labels are stored as is, never rescaled
    image.header["cal_min"], image.header["cal_max"] = 0, 0
    nib.save(image, tmp)


def _write_npy(tmp: Path, labels: np.ndarray, like: ImageFile | None) -> None:
    np.save(tmp, labels)
