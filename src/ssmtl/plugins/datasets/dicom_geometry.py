"""The geometry of a DICOM series: one consistent slice grid, evenly stacked along its normal.

From the headers of a series' slices, :func:`series_geometry` derives the slice
order, the LPS affine and the volume shape, or raises :class:`SeriesRefused` with
the reason the slices do not form one volume (mixed sizes, inconsistent
orientation or pixel spacing, repeated positions, gaps, gantry tilt). See
:mod:`~ssmtl.plugins.datasets.dicom_series` for the rules as a whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ssmtl.api import affine_from_geometry

# Slice steps may differ from the regular step by this fraction (scanner round-off) ...
STEP_RELATIVE_TOLERANCE = 0.01
# ... or by this many mm, whichever is larger.
STEP_ABSOLUTE_TOLERANCE_MM = 0.01
# Orientation cosines of one series may differ by this much (values are stored as text).
ORIENTATION_TOLERANCE = 1e-3
PIXEL_SPACING_RELATIVE_TOLERANCE = 1e-4


@dataclass(frozen=True)
class SliceHeader:
    """What scanning keeps of one image file's header."""

    path: Path
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, float] | None
    rows: int
    columns: int
    frames: int
    samples: int


class SeriesRefused(Exception):
    """A series cannot be read as one volume; the message says why."""


def _consistent(headers: list[SliceHeader]) -> tuple[np.ndarray, np.ndarray, tuple[float, float], tuple[int, int]]:
    """(row direction, column direction, pixel spacing, (rows, columns)) shared by all slices."""
    sizes = {(h.rows, h.columns) for h in headers}
    if len(sizes) > 1:
        counts = ", ".join(f"{r}x{c} ({sum((h.rows, h.columns) == (r, c) for h in headers)} files)" for r, c in sorted(sizes))
        raise SeriesRefused(f"slices have mixed sizes: {counts}")
    if any(h.frames > 1 for h in headers):
        raise SeriesRefused("multi-frame (enhanced) DICOM is not supported; export the series as single-frame files or NIfTI")
    if any(h.samples != 1 for h in headers):
        raise SeriesRefused("colour images (SamplesPerPixel > 1) are not volumes")
    for attr, tag in (("position", "ImagePositionPatient"), ("orientation", "ImageOrientationPatient"),
                      ("pixel_spacing", "PixelSpacing")):
        missing = [h.path.name for h in headers if getattr(h, attr) is None]
        if missing:
            raise SeriesRefused(f"{len(missing)} slice file(s) lack a valid {tag}, e.g. {missing[0]}")
    first = np.asarray(headers[0].orientation)
    deviation = max(float(np.max(np.abs(np.asarray(h.orientation) - first))) for h in headers)
    if deviation > ORIENTATION_TOLERANCE:
        raise SeriesRefused(f"inconsistent ImageOrientationPatient across slices (cosines differ by up to {deviation:.3g})")
    row, col = first[:3], first[3:]
    if abs(np.linalg.norm(row) - 1) > ORIENTATION_TOLERANCE or abs(np.linalg.norm(col) - 1) > ORIENTATION_TOLERANCE \
            or abs(float(row @ col)) > ORIENTATION_TOLERANCE:
        raise SeriesRefused(f"ImageOrientationPatient {tuple(first)} is not two orthogonal unit vectors")
    spacing = np.asarray(headers[0].pixel_spacing)
    if not np.all(spacing > 0):
        raise SeriesRefused(f"invalid PixelSpacing {tuple(spacing)}")
    spacings = {tuple(h.pixel_spacing) for h in headers}
    if any(np.max(np.abs(np.asarray(s) - spacing) / spacing) > PIXEL_SPACING_RELATIVE_TOLERANCE for s in spacings):
        raise SeriesRefused(f"inconsistent PixelSpacing across slices: {sorted(spacings)}")
    return row / np.linalg.norm(row), col / np.linalg.norm(col), (float(spacing[0]), float(spacing[1])), sizes.pop()


def _slice_order(headers: list[SliceHeader], normal: np.ndarray, max_shear: float) -> tuple[list[SliceHeader], float]:
    """Headers sorted along the normal, and the regular step between them; refuse gaps, repeats and tilt.

    ``max_shear`` (mm) bounds how far a slice may sit off the line through the first
    slice along the normal: beyond half a pixel, reading the series as a straight
    stack would misplace voxels.
    """
    positions = np.array([h.position for h in headers], dtype=np.float64)
    distance = positions @ normal
    order = np.argsort(distance, kind="stable")
    distance, positions = distance[order], positions[order]
    steps = np.diff(distance)
    repeated = int(np.sum(steps < STEP_ABSOLUTE_TOLERANCE_MM))
    if repeated:
        at = float(distance[1:][steps < STEP_ABSOLUTE_TOLERANCE_MM][0])
        raise SeriesRefused(
            f"{repeated + 1} slices share a position ({at:.2f} mm along the slice normal): several "
            "acquisitions (echoes, phases or time points) in one series are not supported"
        )
    step = float(np.median(steps))
    tolerance = max(STEP_ABSOLUTE_TOLERANCE_MM, STEP_RELATIVE_TOLERANCE * step)
    off = np.nonzero(np.abs(steps - step) > tolerance)[0]
    if off.size:
        k = int(off[0])
        if steps[k] > 1.5 * step:
            missing = int(round(steps[k] / step)) - 1
            raise SeriesRefused(
                f"missing slice(s): a gap of {steps[k]:.3g} mm (about {missing} slice(s)) between slice "
                f"positions {distance[k]:.2f} and {distance[k + 1]:.2f} mm along the normal, where the "
                f"series steps by {step:.3g} mm (files {headers[order[k]].path.name}, {headers[order[k + 1]].path.name})"
            )
        raise SeriesRefused(f"irregular slice spacing: steps range from {steps.min():.3g} to {steps.max():.3g} mm")
    shear = positions - positions[0] - np.outer(distance - distance[0], normal)
    worst = float(np.max(np.linalg.norm(shear, axis=1)))
    if worst > max_shear:
        raise SeriesRefused(
            f"slices are not stacked along their normal (gantry tilt or sheared acquisition): "
            f"up to {worst:.3g} mm of in-plane offset"
        )
    return [headers[i] for i in order], step


def series_geometry(headers: list[SliceHeader]) -> tuple[list[SliceHeader], np.ndarray, tuple[int, int, int]]:
    """Sorted headers, the LPS affine and the (columns, rows, slices) shape, or SeriesRefused.

    Voxel (i, j, k) = (column, row, slice) sits at
    ``IPP_0 + i * dc * row_dir + j * dr * col_dir + k * step * n`` in LPS, where
    ``PixelSpacing = (dr, dc)`` (row spacing first) and ``step`` is the regular
    distance between slice positions along the normal ``n = row_dir x col_dir``.
    """
    row, col, (row_spacing, col_spacing), (rows, columns) = _consistent(headers)
    normal = np.cross(row, col)
    ordered, step = _slice_order(headers, normal, max_shear=0.5 * min(row_spacing, col_spacing))
    direction = np.column_stack([row, col, normal])
    affine = affine_from_geometry(direction, (col_spacing, row_spacing, step), ordered[0].position)
    return ordered, affine, (columns, rows, len(ordered))
