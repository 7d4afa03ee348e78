"""Image and label files: TIFF, PNG/JPEG, NIfTI, NumPy ``.npy`` and nnU-Net raw datasets.

Arrays are kept in the axis order the file stores them, never transposed:

- TIFF, ``.npy``, PNG/JPEG: ``(Y, X)``, ``(Z, Y, X)``, colour samples last ``(Y, X, 3)``;
  TIFF channel axes (``C``/``S`` in tifffile's series axes) are reported in ``channel_axis``. A ``.npy``
  array, or a TIFF whose leading axes have no stated meaning (tifffile's ``Q``/``I``), has its channel axis
  guessed from its shape by :func:`channels_last_axis`, the rule prediction applies to arrays:
  ``(Y, X, 2)`` is two channels, not Y slices of X x 2 pixels; four are RGBA (alpha dropped).
- NIfTI: nibabel's voxel order ``(X, Y, Z)`` (a 4th axis is channels); ``spacing`` comes from the header
  zooms in that same order and ``affine`` maps voxel indices to world millimetres. Predictions written
  with ``like=`` keep the header, affine and zooms exactly.

``spacing`` has one entry per spatial axis (channel axis left out), in array order, in ``unit``
(``"mm"``, ``"um"``, ``"cm"``, ``"inch"``, ... or ``None`` when the file does not say); ``None`` when the
file records no physical size at all (PNG/JPEG, ``.npy``, a TIFF without resolution tags).

Modules: :mod:`.formats` the :class:`Format` record and the registry (found by file ending);
:mod:`.images` :class:`ImageFile`, :func:`read_image`, :func:`read_labels`, :func:`write_labels`;
:mod:`.tiff`, :mod:`.png` (PNG, JPEG), :mod:`.nifti`, :mod:`.npy` the built-in formats, registered here,
and :mod:`.omezarr` (OME-Zarr stores, folders; read and written with the optional ``ome-zarr`` extra);
:mod:`.nnunet` nnU-Net datasets and cases; :mod:`.cases` inputs to cases, output and evaluation names.
"""

from ..layout import channels_last_axis
from .cases import PROBABILITIES_SUFFIX, evaluation_name, find_images, match_cases, output_path_for, probabilities_path
from .formats import (
    Format,
    file_name_for,
    format_for,
    format_of,
    get_format,
    is_supported,
    register,
    registered_formats,
    split_extension,
    supported,
    unregister,
    with_extension,
)
from .images import ImageFile, as_label_array, read_image, read_labels, write_labels
from .nifti import NIFTI
from .nnunet import (
    IGNORE_LABEL,
    NNUNET_IMAGE_FOLDERS,
    Case,
    NnUNetDataset,
    class_names,
    group_channels,
    label_values,
    read_case,
    read_dataset_json,
    read_nnunet_dataset,
)
from .npy import NPY
from .omezarr import OME_ZARR
from .png import JPEG, PNG
from .tiff import TIFF

# The Export widget lists exported formats in this order.
for _builtin in (TIFF, PNG, JPEG, NIFTI, NPY, OME_ZARR):  # OME-Zarr reads and writes with the ome-zarr extra
    register(_builtin)

__all__ = [
    "IGNORE_LABEL",
    "NNUNET_IMAGE_FOLDERS",
    "PROBABILITIES_SUFFIX",
    "Case",
    "Format",
    "ImageFile",
    "NnUNetDataset",
    "as_label_array",
    "channels_last_axis",
    "class_names",
    "evaluation_name",
    "file_name_for",
    "find_images",
    "format_for",
    "format_of",
    "get_format",
    "group_channels",
    "is_supported",
    "label_values",
    "match_cases",
    "output_path_for",
    "probabilities_path",
    "read_case",
    "read_dataset_json",
    "read_image",
    "read_labels",
    "read_nnunet_dataset",
    "register",
    "registered_formats",
    "split_extension",
    "supported",
    "unregister",
    "with_extension",
    "write_labels",
]
