"""Array conventions of the cache, for dataset plugins.

A dataset's :meth:`~ssmtl.api.VolumeItem.load` returns arrays in canonical RAS
orientation with axes (x, y, z); the cache stores slice stacks (z, y, x) in
radiological display order. :func:`to_slices` / :func:`from_slices` convert
between the two, :func:`check_finite` rejects NaN/inf (and complex) voxels with a clear
error, and :func:`check_real` rejects a complex voxel type from the header, before the
voxels are read (numpy would otherwise drop the imaginary part with only a warning).
"""

from __future__ import annotations

import numpy as np

from ssmtl.api.errors import InputFileError


def to_slices(array_xyz: np.ndarray) -> np.ndarray:
    """Canonical RAS (X, Y, Z) -> radiological slice stack (Z, Y, X); a view, no copy.

    In RAS, x grows towards the patient's right and y towards anterior. Flipping
    both puts the patient's right and anterior at index 0; transposing makes z the
    leading (slice) axis, y the rows and x the columns.
    """
    return np.transpose(array_xyz[::-1, ::-1, :], (2, 1, 0))


def from_slices(array_dhw: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_slices`: slice stack (D, H, W) -> canonical (X, Y, Z); a view."""
    return np.transpose(array_dhw, (2, 1, 0))[::-1, ::-1, :]


def check_real(dtype: np.dtype | type, source: str) -> None:
    """Raise :class:`InputFileError` naming ``source`` if voxels of ``dtype`` are complex.

    Call it with the type a header declares, before converting: a cast to float32 keeps the
    real part and drops the imaginary part, with only a numpy ``ComplexWarning``.
    """
    if np.issubdtype(np.dtype(dtype), np.complexfloating):
        raise InputFileError(source, f"complex-valued voxels ({np.dtype(dtype)}) are not supported; "
                             "save the magnitude (or the real part) as a real-valued image")


def check_finite(image: np.ndarray, source: str) -> None:
    """Raise :class:`InputFileError` if ``image`` has complex, NaN or infinite voxels.

    ``min`` propagates NaN and exposes -inf, ``max`` exposes +inf, so two
    reductions replace a full boolean mask the size of the volume.
    """
    check_real(image.dtype, source)
    if image.size and not (np.isfinite(image.min()) and np.isfinite(image.max())):
        raise InputFileError(source, "image contains NaN or infinite voxel values")
