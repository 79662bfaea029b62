"""The way from a scan to the cache grid, as the cache records it for every volume.

Preprocessing (:mod:`ssmtl.data.preprocess`) takes a volume through four steps, and
:class:`VolumeTransform` records each one with the numbers it used, so the steps can
be undone exactly (:mod:`ssmtl.data.native`):

1. **Reorientation** of the file's array (``source``: shape and affine as stored, see
   :class:`~ssmtl.api.SourceGeometry`) to canonical RAS (x, y, z). This only permutes
   and flips axes; the permutation is derived from the two affines
   (:meth:`VolumeTransform.source_axes`).
2. **Slice layout** (:func:`~ssmtl.api.to_slices`): canonical (X, Y, Z) -> stack
   (Z, Y, X) with x and y flipped, so stack row ``r`` is canonical ``y = Y - 1 - r``
   and stack column ``c`` is canonical ``x = X - 1 - c``; slice ``d`` is canonical ``z = d``.
3. **In-plane resampling** of rows and columns (:class:`AxisResampling`): torch's
   ``interpolate`` with ``scale_factor=scale``, ``align_corners=False``, so output
   pixel ``o`` is centred on input coordinate ``(o + 0.5) / scale - 0.5``. Slices are
   never resampled.
4. **Centre crop / pad** of each resampled axis to ``size``: resampled pixels
   ``crop_start .. crop_start + kept`` land on cache pixels ``pad_start .. pad_start + kept``.

Coordinates along an axis are continuous voxel indices (voxel ``i`` covers ``[i - 0.5, i + 0.5)``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ssmtl.api.errors import InputFileError
from ssmtl.api.volumes import SourceGeometry

#: A reorientation matrix (canonical voxel -> source voxel) must be a signed permutation
#: with integer offsets to this precision; anything else is a reader bug, not a scan.
_PERMUTATION_TOLERANCE = 1e-3


@dataclass(frozen=True)
class AxisResampling:
    """One in-plane axis of the slice stack (rows or columns), from source voxels to cache pixels.

    Attributes:
        source_length: voxels along the axis before resampling.
        source_spacing: their size in mm.
        scale: resampled pixels per source voxel (torch's ``scale_factor``; > 1 upsamples).
        resampled_length: ``floor(source_length * scale)``.
        crop_start: first resampled pixel copied into the cache (> 0: the centre crop cut pixels).
        pad_start: first cache pixel filled (> 0: the centre pad added pixels).
        kept: resampled pixels copied (``min(resampled_length, size)``).
        size: cache pixels along the axis.
    """

    source_length: int
    source_spacing: float
    scale: float
    resampled_length: int
    crop_start: int
    pad_start: int
    kept: int
    size: int

    @property
    def spacing(self) -> float:
        """The cache pixel size in mm."""
        return self.source_spacing / self.scale

    @property
    def source_window(self) -> slice:
        """The resampled pixels the cache keeps."""
        return slice(self.crop_start, self.crop_start + self.kept)

    @property
    def cache_window(self) -> slice:
        """The cache pixels that hold resampled data (the rest is padding)."""
        return slice(self.pad_start, self.pad_start + self.kept)

    def cache_position(self, source: np.ndarray) -> np.ndarray:
        """Continuous cache coordinate of continuous source coordinates (float array)."""
        return (np.asarray(source, dtype=np.float64) + 0.5) * self.scale - 0.5 - self.crop_start + self.pad_start

    def sampled_source_index(self) -> np.ndarray:
        """(size,) the source voxel each cache pixel copies under nearest-neighbour resampling; -1 in padding.

        The rule of torch's ``nearest-exact`` mode: ``floor((o + 0.5) / scale)``, clamped.
        """
        cache = np.arange(self.size)
        resampled = cache - self.pad_start + self.crop_start
        index = np.minimum(np.floor((resampled + 0.5) / self.scale).astype(np.int64), self.source_length - 1)
        inside = (cache >= self.pad_start) & (cache < self.pad_start + self.kept)
        return np.where(inside, index, -1)

    def covering_cache_index(self) -> np.ndarray:
        """(source_length,) the cache pixel whose footprint holds each source voxel's centre; -1 if cropped away.

        Resampled pixel ``o`` covers source coordinates ``[o / scale - 0.5, (o + 1) / scale - 0.5)``,
        so voxel ``i`` lies in ``o = floor((i + 0.5) * scale)``. Where the cache is at least as
        fine as the source (``scale >= 1``) this inverts :meth:`sampled_source_index` exactly.
        """
        resampled = np.minimum(np.floor((np.arange(self.source_length) + 0.5) * self.scale).astype(np.int64),
                               self.resampled_length - 1)
        inside = (resampled >= self.crop_start) & (resampled < self.crop_start + self.kept)
        return np.where(inside, resampled - self.crop_start + self.pad_start, -1)

    def round_trips(self) -> bool:
        """True when every source voxel is copied into the cache by nearest neighbour and found again there.

        That needs a cache at least as fine as the source (``scale >= 1``), no crop, and the
        last voxel's centre inside the resampled grid: torch keeps ``floor(n * scale)`` pixels,
        which can end up to half a voxel short of the last centre when ``n * scale`` is not
        an integer (then that edge row or column takes its neighbour's label).
        """
        covering = self.covering_cache_index()
        if (covering < 0).any():
            return False
        return bool(np.array_equal(self.sampled_source_index()[covering], np.arange(self.source_length)))

    def share_kept(self, size: int | None = None) -> float:
        """The share of the axis's extent a centre crop keeps: this plan's own, or one to ``size`` pixels."""
        kept = self.kept if size is None else min(self.resampled_length, size)
        return kept / self.resampled_length

    def describe(self) -> str:
        """One line for ``ssmtl cache info``."""
        parts = [f"{self.source_length} x {self.source_spacing:.4g} mm -> x{self.scale:.4g} -> "
                 f"{self.resampled_length} x {self.spacing:.4g} mm"]
        if self.crop_start or self.kept < self.resampled_length:
            parts.append(f"crop {self.crop_start}..{self.crop_start + self.kept}")
        if self.pad_start or self.kept < self.size:
            parts.append(f"pad to {self.size} at {self.pad_start}")
        return ", ".join(parts)


def plan_axis(length: int, spacing: float, target: float, size: int) -> AxisResampling:
    """The resampling of one axis to ``target`` mm, then the centre crop/pad to ``size`` pixels.

    torch sizes the output as ``floor(n * scale)``; when ``n * spacing / target`` is an
    integer up to rounding noise, floor could drop a pixel, so the scale is nudged up by
    a few ulps until floor reaches the intended length.
    """
    scale = spacing / target
    resampled = max(1, math.floor(length * scale + 1e-6))
    scale = max(scale, resampled / length)  # only differs from spacing/target by rounding, or if < 1 pixel
    while math.floor(length * scale) < resampled:
        scale = math.nextafter(scale, math.inf)
    kept = min(resampled, size)
    return AxisResampling(
        source_length=int(length), source_spacing=float(spacing), scale=float(scale), resampled_length=int(resampled),
        crop_start=(resampled - kept) // 2, pad_start=(size - kept) // 2, kept=int(kept), size=int(size),
    )


@dataclass(frozen=True)
class VolumeTransform:
    """Everything between a volume's file and its (D, H, W) cache arrays.

    Attributes:
        canonical_shape: (X, Y, Z) of the canonical RAS array.
        canonical_affine: its 4x4 voxel -> world (RAS mm) matrix.
        rows: resampling of the stack rows (canonical y, anterior first).
        cols: resampling of the stack columns (canonical x, patient right first).
        source: the file's own grid, or None when the reader does not report it.
    """

    canonical_shape: tuple[int, int, int]
    canonical_affine: np.ndarray
    rows: AxisResampling
    cols: AxisResampling
    source: SourceGeometry | None = None

    # -- derived geometry ---------------------------------------------------------------
    @property
    def canonical_spacing(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in np.linalg.norm(self.canonical_affine[:3, :3], axis=0))

    def is_identity(self) -> bool:
        """True when the cache grid is the canonical grid voxel for voxel (no resampling, crop or pad)."""
        return all(np.array_equal(axis.sampled_source_index(), np.arange(axis.source_length))
                   for axis in (self.rows, self.cols))

    def is_exact(self) -> bool:
        """True when a label map survives the way to the cache and back unchanged (:meth:`AxisResampling.round_trips`)."""
        return self.rows.round_trips() and self.cols.round_trips()

    def cache_affine(self) -> np.ndarray:
        """4x4 matrix from cache voxel (d, r, c) to world RAS mm, through the canonical grid."""
        X, Y, _ = self.canonical_shape
        to_canonical = np.zeros((4, 4))
        # canonical x = (X - 1) - stack column, stack column = (c - pad + crop + 0.5) / scale - 0.5
        for axis, (plan, length, cache_dim) in enumerate(((self.cols, X, 2), (self.rows, Y, 1))):
            to_canonical[axis, cache_dim] = -1.0 / plan.scale
            to_canonical[axis, 3] = (length - 1) - ((plan.crop_start - plan.pad_start + 0.5) / plan.scale - 0.5)
        to_canonical[2, 0] = 1.0
        to_canonical[3, 3] = 1.0
        return self.canonical_affine @ to_canonical

    def source_axes(self) -> tuple[tuple[int, bool], ...]:
        """For each canonical axis (x, y, z): (the source axis it comes from, whether it is reversed).

        Raises:
            ValueError: no source geometry, or one that is not a pure axis permutation/flip of the
                canonical grid (a reader bug).
        """
        if self.source is None:
            raise ValueError("the volume has no source geometry")
        return reorientation(self.source, self.canonical_shape, self.canonical_affine)

    # -- storage --------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "canonical_shape": list(self.canonical_shape),
            "canonical_affine": np.asarray(self.canonical_affine, dtype=np.float64).tolist(),
            "slice_layout": "to_slices: stack[d, r, c] = canonical[X-1-c, Y-1-r, d]",
            "rows": asdict(self.rows),
            "cols": asdict(self.cols),
            "cache_affine": self.cache_affine().tolist(),
            "source": None,
        }
        if self.source is not None:
            record["source"] = {
                "shape": list(self.source.shape), "affine": np.asarray(self.source.affine, dtype=np.float64).tolist(),
                "format": self.source.format, "convention": self.source.convention,
                "axes": [[axis, flipped] for axis, flipped in self.source_axes()],
            }
        return record

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> "VolumeTransform":
        source = record.get("source")
        return cls(
            canonical_shape=tuple(int(n) for n in record["canonical_shape"]),
            canonical_affine=np.asarray(record["canonical_affine"], dtype=np.float64),
            rows=AxisResampling(**record["rows"]),
            cols=AxisResampling(**record["cols"]),
            source=None if source is None else SourceGeometry(
                shape=tuple(int(n) for n in source["shape"]), affine=np.asarray(source["affine"], dtype=np.float64),
                format=str(source.get("format", "")), convention=source.get("convention", "RAS"),
            ),
        )


def reorientation(source: SourceGeometry, canonical_shape, canonical_affine: np.ndarray) -> tuple[tuple[int, bool], ...]:
    """(source axis, reversed) for each canonical axis, from ``inv(source affine) @ canonical affine``.

    That matrix takes canonical voxels to source voxels; for a reorientation it is a
    signed permutation whose offset is ``n - 1`` along the reversed axes.

    Raises:
        ValueError: the two grids are not a reorientation of each other.
    """
    matrix = np.linalg.inv(np.asarray(source.affine, dtype=np.float64)) @ np.asarray(canonical_affine, dtype=np.float64)
    rounded = np.rint(matrix)
    linear = rounded[:3, :3]
    is_permutation = (np.abs(linear).sum(axis=0) == 1).all() and (np.abs(linear).sum(axis=1) == 1).all()
    if not is_permutation or np.abs(matrix - rounded).max() > _PERMUTATION_TOLERANCE:
        raise ValueError("the source grid is not an axis permutation/flip of the canonical grid")
    axes = []
    for canonical_axis in range(3):
        source_axis = int(np.abs(linear[:, canonical_axis]).argmax())
        flipped = bool(linear[source_axis, canonical_axis] < 0)
        expected_offset = source.shape[source_axis] - 1 if flipped else 0
        if source.shape[source_axis] != canonical_shape[canonical_axis] or rounded[source_axis, 3] != expected_offset:
            raise ValueError("the source grid does not hold the same voxels as the canonical grid")
        axes.append((source_axis, flipped))
    return tuple(axes)


def checked_source(source: SourceGeometry | None, canonical_shape, canonical_affine: np.ndarray, path: str) -> SourceGeometry | None:
    """``source`` if it is a reorientation of the canonical grid; InputFileError naming ``path`` if not."""
    if source is None:
        return None
    try:
        reorientation(source, canonical_shape, canonical_affine)
    except ValueError as exc:
        raise InputFileError(path, f"the reader reports a source geometry that does not match the volume ({exc})") from None
    return source


# -- what `ssmtl cache info` shows ------------------------------------------------------------


def summarise_transforms(records: list[dict[str, Any] | None]) -> dict[str, Any]:
    """Counts over a cache's volumes: recorded transforms, source geometries, exact round trips, crops, scales."""
    transforms = [VolumeTransform.from_json(r) for r in records if r is not None]
    scales = [axis.scale for t in transforms for axis in (t.rows, t.cols)]
    return {
        "volumes": len(records),
        "recorded": len(transforms),
        "source_geometry": sum(t.source is not None for t in transforms),
        "exact_round_trip": sum(t.is_exact() for t in transforms),
        "cropped": sum(any(a.kept < a.resampled_length for a in (t.rows, t.cols)) for t in transforms),
        "padded": sum(any(a.kept < a.size for a in (t.rows, t.cols)) for t in transforms),
        "scale": {"min": min(scales), "max": max(scales)} if scales else None,
    }


#: ``ssmtl cache build`` warns when its crop keeps less than this share of a scan's extent along an axis.
CROP_WARNING_SHARE = 0.9
_EXTENT = {"rows": "anterior-posterior", "cols": "left-right"}


def crop_warning(volumes: list[tuple[str, dict[str, Any] | None]]) -> str | None:
    """One line when the cache's centre crop cuts more than a small share of scans' in-plane extent.

    ``volumes``: (name, transform record) of the cache's volumes. None when every scan keeps at
    least :data:`CROP_WARNING_SHARE` of its extent along both in-plane axes.
    """
    cut = []  # (share kept, name, axis name, extent mm, field of view mm)
    for name, record in volumes:
        if record is None:
            continue
        t = VolumeTransform.from_json(record)
        share, axis = min((t.rows.share_kept(), "rows"), (t.cols.share_kept(), "cols"))
        if share < CROP_WARNING_SHARE:
            plan = getattr(t, axis)
            cut.append((share, name, _EXTENT[axis], plan.source_length * plan.source_spacing, plan.size * plan.spacing))
    if not cut:
        return None
    share, name, extent, length, field = min(cut)
    whole = "predict and evaluate cover whole scans with sliding windows, but training sees only the crop"
    if len(cut) == 1:
        return (f"scan {name}: the cache field of view ({field:.0f} mm) keeps {share:.0%} of its {length:.0f} mm "
                f"{extent} extent; {whole} (raise --size or --spacing to keep more)")
    return (f"the cache field of view ({field:.0f} mm) keeps less than {CROP_WARNING_SHARE:.0%} of the in-plane extent "
            f"of {len(cut)} of {len(volumes)} scans (least: {name}, {share:.0%} of its {length:.0f} mm {extent} extent); "
            f"{whole} (raise --size or --spacing to keep more)")


def _matrix(affine: np.ndarray) -> str:
    return "; ".join(" ".join(f"{v:.4g}" for v in row) for row in np.asarray(affine)[:3])


def describe_transform(record: dict[str, Any]) -> list[tuple[str, str]]:
    """(what, value) rows describing one volume's way from its file to the cache and back."""
    t = VolumeTransform.from_json(record)
    rows: list[tuple[str, str]] = []
    if t.source is not None:
        s = t.source
        affine = np.asarray(s.affine) if s.convention == "RAS" else np.diag([-1.0, -1.0, 1.0, 1.0]) @ s.affine
        spacing = np.linalg.norm(affine[:3, :3], axis=0)
        rows += [
            ("source", f"{s.format or 'unknown format'}, array {' x '.join(map(str, s.shape))}"),
            (f"source spacing / origin ({s.convention})", f"{' x '.join(f'{v:.4g}' for v in spacing)} mm / "
                                                         f"({', '.join(f'{v:.5g}' for v in affine[:3, 3])}) mm"),
            (f"source direction ({s.convention})", _matrix(affine[:3, :3] / spacing)),
            ("reorientation", ", ".join(f"{'xyz'[a]} = {'-' if flip else '+'}{'ijk'[axis]}"
                                       for a, (axis, flip) in enumerate(t.source_axes()))),
        ]
    else:
        rows.append(("source", "no source geometry reported by the dataset (generated data or an older reader)"))
    rows += [
        ("canonical (RAS)", f"{' x '.join(map(str, t.canonical_shape))} voxels of "
                            f"{' x '.join(f'{v:.4g}' for v in t.canonical_spacing)} mm"),
        ("canonical affine", _matrix(t.canonical_affine)),
        ("slice layout", record.get("slice_layout", "")),
        ("rows (canonical y)", t.rows.describe()),
        ("columns (canonical x)", t.cols.describe()),
        ("cache affine (d, r, c)", _matrix(t.cache_affine())),
        ("label round trip", "exact" if t.is_exact() else "lossy (the cache is coarser, cropped, or misses an edge voxel)"),
    ]
    return rows
