"""Reading NRRD and MetaImage volumes (``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd``) with SimpleITK.

Why SimpleITK rather than pynrrd: SimpleITK reads every one of these formats
(detached headers and their ``.raw``/``.zraw`` data files included) with the
direction cosines, origin and spacing applied consistently, always expressed in
LPS whatever the file's ``space`` field says; it is the reader of the ITK family
that produced most of these files, and it is actively maintained with wheels for
every platform. pynrrd reads NRRD only and leaves the space conventions to the
caller.

The readers return what :func:`ssmtl.plugins.datasets.nifti.load_image` and
:func:`~ssmtl.plugins.datasets.nifti.read_label_values` return, reoriented with the
same nibabel function (see :mod:`~ssmtl.plugins.datasets.orientation`), so the
NIfTI helpers (grid checks, label mapping, modality detection) apply unchanged.
SimpleITK is imported lazily: listing plugins and ``--help`` stay fast.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ssmtl.api import InputFileError
from ssmtl.plugins.datasets.orientation import affine_from_geometry, canonical_from_lps

ITK_EXTENSIONS = (".nrrd", ".nhdr", ".mha", ".mhd")
# SimpleITK prefixes its messages with source locations and object addresses.
_MESSAGE_NOISE = re.compile(r"^(s?itk::ERROR:\s*)?(\w+\(0x[0-9a-f]+\):\s*)?", re.IGNORECASE)


def itk_stem(path: Path) -> str:
    """File name without its ITK extension."""
    name = path.name
    for ext in ITK_EXTENSIONS:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def is_itk_file(path: Path) -> bool:
    return not path.name.startswith(".") and path.name.lower().endswith(ITK_EXTENSIONS) and path.is_file()


def _itk_message(exc: Exception) -> str:
    """The most specific line of a SimpleITK error, without source locations."""
    lines = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()] or [str(exc).strip()]
    return _MESSAGE_NOISE.sub("", lines[-1])


def _read(path: Path):
    import SimpleITK as sitk

    if not path.exists():
        raise InputFileError(path, "file not found")
    if not path.is_file():
        raise InputFileError(path, "not a file")
    try:
        return sitk.ReadImage(str(path))
    except MemoryError:
        raise
    except Exception as exc:  # SimpleITK raises RuntimeError for every reader failure
        raise InputFileError(path, f"cannot read image ({_itk_message(exc)})") from exc


def _as_volume(path: Path, image) -> tuple[np.ndarray, np.ndarray]:
    """(x, y, z) voxel array and its LPS affine; refuse what is not one scalar 3D volume."""
    import SimpleITK as sitk

    size = tuple(int(n) for n in image.GetSize())
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputFileError(
            path, f"expected one value per voxel, got {image.GetNumberOfComponentsPerPixel()} (vector or colour image)"
        )
    dimension = image.GetDimension()
    if dimension < 3:
        raise InputFileError(path, f"expected a 3D volume, got a {dimension}D image of size {size}")
    if dimension > 3 and any(n != 1 for n in size[3:]):
        raise InputFileError(path, f"expected a 3D volume, got a {dimension}D image of size {size}")
    if any(n == 0 for n in size[:3]):
        raise InputFileError(path, f"volume has a zero-length axis, size {size}")
    array = sitk.GetArrayFromImage(image)  # axes reversed: (..., z, y, x)
    array = array.reshape(array.shape[-3:]).transpose(2, 1, 0)
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(dimension, dimension)[:3, :3]
    affine = affine_from_geometry(direction, image.GetSpacing()[:3], image.GetOrigin()[:3])
    return array, affine


def load_image(path: Path) -> tuple[np.ndarray, tuple[float, float, float], np.ndarray]:
    """Read an image as canonical float32 (X, Y, Z); returns (array, spacing, RAS affine)."""
    path = Path(path)
    array, affine_lps = _as_volume(path, _read(path))
    if np.iscomplexobj(array):
        raise InputFileError(path, "complex-valued voxels are not supported")
    return canonical_from_lps(array.astype(np.float32, copy=False), affine_lps, path)


def read_label_values(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a label map as canonical integers; returns (array, RAS affine)."""
    path = Path(path)
    array, affine_lps = _as_volume(path, _read(path))
    if not np.issubdtype(array.dtype, np.integer):
        if np.iscomplexobj(array) or not (np.isfinite(array.min()) and np.isfinite(array.max())):
            raise InputFileError(path, "label map contains NaN, infinite or complex values")
        array = np.rint(array).astype(np.int64)  # labels saved as floats by some tools
    values, _, affine = canonical_from_lps(array, affine_lps, path)
    return values, affine
