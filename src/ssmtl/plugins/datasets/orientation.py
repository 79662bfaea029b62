"""World conventions: DICOM/ITK LPS geometry to a RAS affine, then canonical reorientation.

DICOM and ITK place voxels in LPS world coordinates (+x towards the patient's
Left, +y Posterior, +z Superior); NIfTI and nibabel use RAS (+x Right, +y
Anterior, +z Superior). The two differ by the sign of x and y, so an LPS affine
becomes a RAS affine by negating its first two rows.

Every reader then reorients with ``nibabel.as_closest_canonical``, the function
the ``nifti`` dataset uses, on a ``Nifti1Image`` built from the array and its RAS
affine. A DICOM series, an NRRD file and a NIfTI export of the same scan
therefore give the same canonical (x, y, z) array.
"""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np

from ssmtl.api import InputFileError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def affine_from_geometry(direction: np.ndarray, spacing, origin) -> np.ndarray:
    """4x4 voxel-to-world matrix; ``direction`` columns are the unit vectors of the voxel axes."""
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


def canonical(
    data: np.ndarray, affine_ras: np.ndarray, path: Path | str
) -> tuple[np.ndarray, tuple[float, float, float], np.ndarray]:
    """Reorient a 3D (i, j, k) array with a RAS affine to the closest canonical RAS orientation.

    Returns (array, spacing in mm along the canonical axes, canonical affine). The
    explicit ``dtype`` lets nibabel accept int64 label maps, which it otherwise
    refuses because few tools read them back.
    """
    check_affine(affine_ras, path)
    image = nib.Nifti1Image(data, affine_ras, dtype=data.dtype)
    reoriented = nib.as_closest_canonical(image)
    spacing = tuple(float(z) for z in reoriented.header.get_zooms()[:3])
    if not all(math.isfinite(s) and s > 0 for s in spacing):
        raise InputFileError(path, f"invalid voxel spacing {spacing}")
    return np.asanyarray(reoriented.dataobj), spacing, reoriented.affine


def canonical_from_lps(
    data: np.ndarray, affine_lps: np.ndarray, path: Path | str
) -> tuple[np.ndarray, tuple[float, float, float], np.ndarray]:
    """:func:`canonical` for an array whose affine is in DICOM/ITK LPS world coordinates."""
    return canonical(data, LPS_TO_RAS @ np.asarray(affine_lps, dtype=np.float64), path)
