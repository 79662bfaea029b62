"""Reading NIfTI volumes (``.nii``, ``.nii.gz``) with nibabel, as canonical RAS arrays.

Used by every dataset that reads NIfTI files (``nifti``, ``mmwhs``, ``acdc``, ``msd``, and
the multi-format readers of :mod:`~ssmtl.plugins.datasets.volume_files`).
Reorientation keeps the file's own header class (``as_closest_canonical`` on the
image as loaded), so the spacing comes from the header's zooms, as nibabel gives it.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from ssmtl.api import (FileKind, InputFileError, check_claimed_size, check_real, check_regular_file, integer_labels,
                       SourceGeometry, spatial_shape)

NIFTI_FILES = FileKind("NIfTI files", (".nii", ".nii.gz"))


def _load_header(path: Path) -> nib.spatialimages.SpatialImage:
    """``nib.load`` (reads the header only; voxel data stay on disk until asked for), its claimed
    size checked against the file before anything is allocated. Only a regular file is opened
    (a FIFO would block the reader)."""
    check_regular_file(path)
    try:
        img = nib.load(str(path))
        header = img.header
        dtype = header.get_data_dtype()
        offset = int(header.get_data_offset()) if hasattr(header, "get_data_offset") else 0
    except MemoryError:
        raise
    except Exception as exc:
        raise InputFileError(path, f"cannot read NIfTI header ({type(exc).__name__}: {exc})") from exc
    data_file = img.file_map["image"].filename if "image" in img.file_map else None
    data_path = check_regular_file(data_file) if data_file else Path(path)
    check_claimed_size(data_path, img.shape, dtype.itemsize, offset=offset,
                       compressed=data_path.suffix.lower() in (".gz", ".bz2", ".zst"))
    return img


def _read_data(path: Path, read):
    """Run ``read()`` (which decodes voxel data), rephrasing decoding failures as InputFileError."""
    try:
        return read()
    except MemoryError:
        raise
    except (EOFError, zlib.error, OSError) as exc:
        raise InputFileError(path, f"cannot read NIfTI (truncated or corrupt file: {exc})") from exc
    except Exception as exc:  # nibabel raises assorted errors on malformed data blocks
        raise InputFileError(path, f"cannot read NIfTI ({type(exc).__name__}: {exc})") from exc


def _canonical(img, data: np.ndarray):
    """Reorient ``data`` (3D, laid out like ``img``) to the closest canonical RAS orientation."""
    return nib.as_closest_canonical(img.__class__(data, img.affine, img.header))


def load_image(path: Path) -> tuple[np.ndarray, tuple[float, float, float], np.ndarray, SourceGeometry]:
    """Read an image as canonical float32 (X, Y, Z); returns (array, spacing, affine, the file's own grid)."""
    img = _load_header(path)
    shape = spatial_shape(img.shape, path)
    check_real(img.header.get_data_dtype(), str(path))
    # Decode straight to float32: scaled integer data would otherwise become float64.
    data = _read_data(path, lambda: img.get_fdata(dtype=np.float32)).reshape(shape)
    canonical = _canonical(img, data)
    array = np.asanyarray(canonical.dataobj)
    spacing = tuple(float(z) for z in canonical.header.get_zooms()[:3])
    geometry = SourceGeometry(shape=shape, affine=np.asarray(img.affine, dtype=np.float64), format="nifti")
    return array, spacing, canonical.affine, geometry


def load_channel(path: Path, channel: int, channels: int) -> tuple[np.ndarray, tuple[float, float, float], np.ndarray,
                                                                  SourceGeometry]:
    """One channel of a 4D image of ``channels`` channels (X, Y, Z, C; the Decathlon's multi-modal tasks),
    read as :func:`load_image` reads a 3D one; only that channel is converted to float32.

    Raises:
        InputFileError: the file is not a 4D image of ``channels`` channels, or cannot be read.
    """
    img = _load_header(path)
    shape = tuple(int(n) for n in img.shape)
    if len(shape) != 4 or shape[3] != channels:
        raise InputFileError(path, f"expected a 4D image of {channels} channels (X, Y, Z, {channels}), "
                                   f"got shape {shape}")
    spatial = spatial_shape(shape[:3], path)
    check_real(img.header.get_data_dtype(), str(path))
    data = _read_data(path, lambda: np.asarray(img.dataobj[..., channel], dtype=np.float32))
    canonical = _canonical(img, data)
    spacing = tuple(float(z) for z in canonical.header.get_zooms()[:3])
    geometry = SourceGeometry(shape=spatial, affine=np.asarray(img.affine, dtype=np.float64), format="nifti")
    return np.asanyarray(canonical.dataobj), spacing, canonical.affine, geometry


def read_label_values(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a label map as canonical integers; returns (array, affine)."""
    img = _load_header(path)
    shape = spatial_shape(img.shape, path)
    data = integer_labels(_read_data(path, lambda: np.asanyarray(img.dataobj)).reshape(shape), path)
    canonical = _canonical(img, data)
    return np.asanyarray(canonical.dataobj), canonical.affine
