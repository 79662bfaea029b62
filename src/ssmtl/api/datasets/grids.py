"""Voxel grids: a volume is 3D, and a label map lies on its image's grid.

Both checks run on what the readers return, i.e. after reorientation to canonical
RAS, so a label stored with flipped rows next to its image (as ``dcm2niix`` writes
them) is still on the image's grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ssmtl.api.errors import InputFileError

#: Label and image affines must agree to this precision (mm); it absorbs the float32
#: round-off of headers written by different tools.
AFFINE_TOLERANCE_MM = 1e-3


def spatial_shape(shape: Sequence[int], path: Path | str) -> tuple[int, int, int]:
    """The 3D shape of a volume whose array (or header) has ``shape``.

    Trailing singleton axes are allowed (X, Y, Z, 1 is a 3D volume, as many tools
    write them); a 2D image, a real 4D series or a zero-length axis raise
    InputFileError naming ``path``.
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) < 3:
        raise InputFileError(path, f"expected a 3D volume, got shape {shape}")
    if any(n != 1 for n in shape[3:]):
        raise InputFileError(path, f"expected a 3D volume, got a {len(shape)}D image of shape {shape}")
    if any(n == 0 for n in shape[:3]):
        raise InputFileError(path, f"volume has a zero-length axis, shape {shape}")
    return shape[:3]


def check_same_grid(
    image_path: Path | str,
    image_shape: Sequence[int],
    image_affine: np.ndarray,
    label_path: Path | str,
    label_shape: Sequence[int],
    label_affine: np.ndarray,
) -> None:
    """Raise InputFileError naming the label unless it has the image's shape and affine.

    The affines may differ by at most :data:`AFFINE_TOLERANCE_MM` in every entry;
    a label off the image's grid would put its classes on the wrong voxels.
    """
    if tuple(label_shape) != tuple(image_shape):
        raise InputFileError(
            label_path,
            f"label shape {tuple(label_shape)} does not match image shape {tuple(image_shape)} of {image_path}",
        )
    difference = float(np.max(np.abs(np.asarray(image_affine) - np.asarray(label_affine))))
    if difference > AFFINE_TOLERANCE_MM:
        raise InputFileError(
            label_path,
            f"label affine differs from the affine of {image_path} by up to {difference:.4g} mm "
            f"(tolerance {AFFINE_TOLERANCE_MM} mm): the label is not on the image's voxel grid",
        )
