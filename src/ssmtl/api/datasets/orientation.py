"""World conventions: voxel geometry to an affine, LPS to RAS, and canonical reorientation.

DICOM and ITK place voxels in LPS world coordinates (+x towards the patient's
Left, +y Posterior, +z Superior); NIfTI and nibabel use RAS (+x Right, +y
Anterior, +z Superior). The two differ by the sign of x and y, so an LPS affine
becomes a RAS affine by negating its first two rows.

Readers then reorient with ``nibabel.as_closest_canonical``, the function the
``nifti`` dataset uses, on a ``Nifti1Image`` built from the array and its RAS
affine (:func:`to_canonical`). A DICOM series, an NRRD file and a NIfTI export of
the same scan therefore give the same canonical (x, y, z) array. nibabel is
imported only when :func:`to_canonical` runs.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ssmtl.api.errors import InputFileError

#: Multiplies an LPS (DICOM, ITK) affine into a RAS (NIfTI) one: x and y change sign.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def affine_from_geometry(direction: np.ndarray, spacing, origin) -> np.ndarray:
    """The 4x4 voxel-to-world matrix ``[direction @ diag(spacing) | origin]``.

    ``direction`` (3x3) has the unit vectors of the voxel axes as its columns,
    ``spacing`` is the voxel size along them and ``origin`` the world position of voxel 0.
    """
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(direction, dtype=np.float64) @ np.diag(np.asarray(spacing, dtype=np.float64))
    affine[:3, 3] = np.asarray(origin, dtype=np.float64)
    return affine


def check_affine(affine: np.ndarray, path: Path | str) -> None:
    """Refuse an affine that cannot place voxels in space (non-finite or singular)."""
    if not np.all(np.isfinite(affine)):
        raise InputFileError(path, "the voxel-to-world geometry has non-finite values")
    if abs(float(np.linalg.det(affine[:3, :3]))) < 1e-12:
        raise InputFileError(path, "the voxel-to-world geometry is singular (zero spacing or degenerate directions)")


def to_canonical(
    data: np.ndarray, affine_ras: np.ndarray, path: Path | str
) -> tuple[np.ndarray, tuple[float, float, float], np.ndarray]:
    """Reorient a 3D (i, j, k) array with a RAS affine to the closest canonical RAS orientation.

    Returns (array, spacing in mm along the canonical axes, canonical affine). The
    explicit ``dtype`` lets nibabel accept int64 label maps, which it otherwise
    refuses because few tools read them back.

    Raises:
        InputFileError: the affine is non-finite or singular, or the spacing is not positive.
    """
    import nibabel as nib

    check_affine(affine_ras, path)
    image = nib.Nifti1Image(data, affine_ras, dtype=data.dtype)
    reoriented = nib.as_closest_canonical(image)
    spacing = tuple(float(z) for z in reoriented.header.get_zooms()[:3])
    if not all(math.isfinite(s) and s > 0 for s in spacing):
        raise InputFileError(path, f"invalid voxel spacing {spacing}")
    return np.asanyarray(reoriented.dataobj), spacing, reoriented.affine


def lps_to_canonical(
    data: np.ndarray, affine_lps: np.ndarray, path: Path | str
) -> tuple[np.ndarray, tuple[float, float, float], np.ndarray]:
    """:func:`to_canonical` for an array whose affine is in DICOM/ITK LPS world coordinates."""
    return to_canonical(data, LPS_TO_RAS @ np.asarray(affine_lps, dtype=np.float64), path)
