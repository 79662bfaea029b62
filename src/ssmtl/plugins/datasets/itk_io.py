"""Reading NRRD and MetaImage volumes (``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd``) with SimpleITK.

Why SimpleITK rather than pynrrd: SimpleITK reads every one of these formats
(detached headers and their ``.raw``/``.zraw`` data files included) with the
direction cosines, origin and spacing applied consistently, always expressed in
LPS whatever the file's ``space`` field says; it is the reader of the ITK family
that produced most of these files, and it is actively maintained with wheels for
every platform. pynrrd reads NRRD only and leaves the space conventions to the
caller.

The readers return what :func:`ssmtl.plugins.datasets.nifti_io.load_image` and
:func:`~ssmtl.plugins.datasets.nifti_io.read_label_values` return, reoriented with the
same nibabel function (:func:`ssmtl.api.lps_to_canonical`), so the toolkit's grid
checks, label mapping and modality detection apply unchanged.
SimpleITK is imported lazily: listing plugins and ``--help`` stay fast.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ssmtl.api import (
    affine_from_geometry,
    check_claimed_size,
    check_real,
    check_regular_file,
    file_kind,
    FileKind,
    InputFileError,
    integer_labels,
    LPS_TO_RAS,
    lps_to_canonical,
    SourceGeometry,
    spatial_shape,
)

from ssmtl.plugins.datasets.itk_headers import data_files

ITK_FILES = FileKind("NRRD or MetaImage files", (".nrrd", ".nhdr", ".mha", ".mhd"))
# SimpleITK prefixes its messages with source locations and object addresses.
_MESSAGE_NOISE = re.compile(r"^(s?itk::ERROR:\s*)?(\w+\(0x[0-9a-f]+\):\s*)?", re.IGNORECASE)


def _itk_message(exc: Exception) -> str:
    """The most specific line of a SimpleITK error, without source locations."""
    lines = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()] or [str(exc).strip()]
    return _MESSAGE_NOISE.sub("", lines[-1])


_BITS = re.compile(r"(\d+)-bit")


def _bytes_per_voxel(reader) -> int:
    """Bytes per voxel of the pixel type SimpleITK read from the header (``"16-bit signed integer"``,
    ``"vector of 32-bit float"`` x components, ``"complex of 64-bit float"``)."""
    import SimpleITK as sitk

    name = sitk.GetPixelIDValueAsString(reader.GetPixelID())
    bits = _BITS.search(name)
    components = max(1, int(reader.GetNumberOfComponents()))  # a complex pixel counts its 2 parts
    if "complex" in name:
        components = max(components, 2)
    return (int(bits.group(1)) // 8 if bits else 1) * components


def _check_data_files(path: Path, reader) -> None:
    """Every file holding the voxels is a regular file, and one uncompressed file holds what the
    header claims (see :mod:`~ssmtl.plugins.datasets.itk_headers`); before SimpleITK opens any."""
    located = data_files(path, nrrd=_format(path) == "nrrd")
    size, per_voxel = reader.GetSize(), _bytes_per_voxel(reader)
    for data in located.files:
        if data != path and file_kind(data) in ("missing", "broken link"):
            check_claimed_size(path, size, per_voxel, data_file=data)  # refused by the claim, naming the file
        if data != path and file_kind(data) != "file":
            try:
                check_regular_file(data)
            except InputFileError as exc:
                raise InputFileError(path, f"its data file {data.name} {exc.reason}") from None
    if len(located.files) == 1 and located.offset is not None:
        only = located.files[0]
        check_claimed_size(path, size, per_voxel, offset=located.offset, data_file=None if only == path else only)
    else:  # compressed, text or several files: the cap alone
        check_claimed_size(path, size, per_voxel, compressed=True)


def _read(path: Path):
    import SimpleITK as sitk

    check_regular_file(path)
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()  # the header only
        _check_data_files(path, reader)
        return reader.Execute()
    except (MemoryError, InputFileError):
        raise
    except Exception as exc:  # SimpleITK raises RuntimeError for every reader failure
        raise InputFileError(path, f"cannot read image ({_itk_message(exc)})") from exc


def _as_volume(path: Path, image) -> tuple[np.ndarray, np.ndarray]:
    """(x, y, z) voxel array and its LPS affine; refuse what is not one scalar 3D volume."""
    import SimpleITK as sitk

    if image.GetPixelID() in (sitk.sitkComplexFloat32, sitk.sitkComplexFloat64):  # two components, but one value
        check_real(np.complex64 if image.GetPixelID() == sitk.sitkComplexFloat32 else np.complex128, str(path))
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputFileError(
            path, f"expected one value per voxel, got {image.GetNumberOfComponentsPerPixel()} (vector or colour image)"
        )
    spatial_shape(image.GetSize(), path)  # SimpleITK's size is (x, y, z, ...)
    dimension = image.GetDimension()
    array = sitk.GetArrayFromImage(image)  # axes reversed: (..., z, y, x)
    array = array.reshape(array.shape[-3:]).transpose(2, 1, 0)
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(dimension, dimension)[:3, :3]
    affine = affine_from_geometry(direction, image.GetSpacing()[:3], image.GetOrigin()[:3])
    return array, affine


def _format(path: Path) -> str:
    """``nrrd`` or ``mha`` (the single-file writer of each family: ``.nhdr`` is NRRD, ``.mhd`` MetaImage)."""
    return "nrrd" if (ITK_FILES.extension(path) or "").lower() in (".nrrd", ".nhdr") else "mha"


def load_image(path: Path) -> tuple[np.ndarray, tuple[float, float, float], np.ndarray, SourceGeometry]:
    """Read an image as canonical float32 (X, Y, Z); returns (array, spacing, RAS affine, the file's own grid)."""
    path = Path(path)
    array, affine_lps = _as_volume(path, _read(path))
    check_real(array.dtype, str(path))
    geometry = SourceGeometry(shape=tuple(int(n) for n in array.shape), affine=LPS_TO_RAS @ affine_lps,
                              format=_format(path), convention="LPS")
    return (*lps_to_canonical(array.astype(np.float32, copy=False), affine_lps, path), geometry)


def read_label_values(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a label map as canonical integers; returns (array, RAS affine)."""
    path = Path(path)
    array, affine_lps = _as_volume(path, _read(path))
    values, _, affine = lps_to_canonical(integer_labels(array, path), affine_lps, path)
    return values, affine
