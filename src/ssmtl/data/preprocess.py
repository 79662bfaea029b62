"""Turn a canonical :class:`~ssmtl.api.volumes.RawVolume` into network-ready slices.

Steps, in order:

1. **Slice layout.** The canonical RAS array (x, y, z) becomes a stack of axial
   slices (D, H, W) in the radiological display convention, see :func:`to_slices`.
2. **In-plane resampling** to the target spacing (never through-plane: the pretext
   tasks reason about slice order, so slices are kept as acquired). The numbers of
   every step are recorded (:class:`~ssmtl.data.transform.VolumeTransform`) so a
   prediction can be mapped back to the scan (:mod:`ssmtl.data.native`). Images are
   resampled bilinearly (antialiased when downsampling), labels by nearest
   neighbour on the same sampling grid so they stay aligned with the image.
3. **Centre crop / pad** to ``size x size``. Images are padded with the volume
   minimum (air) before normalisation, labels with 0 (background).
4. **Intensity normalisation** by modality: CT is clipped to a HU window and scaled
   to [0, 1]; MR is clipped to intensity percentiles and z-scored.

``field_of_view="whole"`` (what ``ssmtl predict`` and native evaluation use, for sliding
windows over the whole scan) skips the crop: every resampled pixel is kept, and an axis
shorter than ``size`` is padded to it as in the cache. The intensities are normalised with
the statistics of the cache's own ``size x size`` crop, so the pixels inside that crop are
the cached ones exactly, for MR as for CT.

Memory: the volume is processed in chunks of slices written straight into the
preallocated output, so peak memory is about the input plus the output plus one
chunk, whatever the number of slices.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field, field_validator

from ssmtl.api.rules import CONFIG_RULES
from ssmtl.api.errors import InputFileError
from ssmtl.api.datasets.arrays import check_finite, from_slices, to_slices  # noqa: F401  (from_slices: the inverse, for callers)
from ssmtl.api.volumes import Modality, RawVolume
from ssmtl.data.transform import AxisResampling, checked_source, plan_axis, VolumeTransform

# An axial slice needs this many voxels along x and along y: one voxel is a point or a line,
# not an image, and nothing can be interpolated between samples that do not exist. The number
# of slices may be 1 (a single 2D scan is a valid volume of one slice).
MIN_IN_PLANE = 2
# Voxels per resampling chunk: bounds the float32 temporaries (~64 MiB each).
_CHUNK_VOXELS = 1 << 24
# MR foreground: voxels brighter than the minimum by this fraction of the range.
_MR_FOREGROUND_FRACTION = 0.01
# Below this many foreground voxels the percentiles are taken over all voxels.
_MR_MIN_FOREGROUND = 100
# A volume whose std is below this fraction of its intensity scale is constant up to
# float32 resampling round-off; z-scoring it would blow that noise up to unit variance.
_CONSTANT_RELATIVE_STD = 1e-5


class PreprocessConfig(BaseModel):
    """How volumes are resampled and normalised before they are cached."""

    model_config = CONFIG_RULES

    size: int = Field(128, ge=16, le=2048, description="Output in-plane size in pixels (square, size x size).")
    spacing: float | None = Field(
        None,
        gt=0,
        description=(
            "Target in-plane pixel spacing in mm. None: choose the isotropic spacing that fits the "
            "whole field of view into size x size, keeping the aspect ratio."
        ),
    )
    ct_window: tuple[float, float] = Field(
        (-250.0, 750.0), description="CT intensity window (low, high) in HU, mapped linearly to [0, 1]."
    )
    mr_percentiles: tuple[float, float] = Field(
        (1.0, 99.0),
        description="MR clipping percentiles (low, high) of the foreground intensities, applied before z-scoring.",
    )

    @field_validator("ct_window")
    @classmethod
    def _window_ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ValueError(f"ct_window must be finite with low < high, got {value}")
        return value

    @field_validator("mr_percentiles")
    @classmethod
    def _percentiles_ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0.0 <= low < high <= 100.0:
            raise ValueError(f"mr_percentiles must satisfy 0 <= low < high <= 100, got {value}")
        return value


@dataclass
class ProcessedVolume:
    """A resampled, normalised volume as a stack of axial slices.

    Slice layout (radiological convention, as a CT viewer shows an axial slice
    seen from the patient's feet): ``image[d]`` is the canonical (x, y) plane at
    z index ``d``, transposed and flipped on both axes, so that

    * rows run anterior -> posterior (row 0 is the most anterior row),
    * columns run patient right -> left (the patient's right is on the image's
      left, column 0 is the most rightward column),
    * slices run inferior -> superior (index ``d`` is canonical z index ``d``).

    Attributes:
        image: float32 (D, H, W), D = number of slices, H = W = ``size``.
        label: uint8 class ids (D, H, W), or None for an unlabeled volume.
        spacing: (sz, sy, sx) in mm after resampling: slice spacing (unchanged),
            row spacing (along y) and column spacing (along x).
        original_spacing: (sx, sy, sz) in mm of the canonical input.
        original_shape: (X, Y, Z) of the canonical input.
        modality: "ct" or "mr".
        transform: the way from the source file to these arrays, and back
            (:class:`~ssmtl.data.transform.VolumeTransform`).
    """

    image: np.ndarray
    label: np.ndarray | None
    spacing: tuple[float, float, float]
    original_spacing: tuple[float, float, float]
    original_shape: tuple[int, int, int]
    modality: Modality
    transform: VolumeTransform


def _validate(raw: RawVolume, source: str) -> None:
    image = raw.image
    if image.ndim != 3:
        raise InputFileError(source, f"expected a 3D volume, got shape {tuple(image.shape)}")
    if image.size == 0:
        raise InputFileError(source, f"volume is empty, shape {tuple(image.shape)}")
    if min(image.shape[:2]) < MIN_IN_PLANE:
        voxels = "x".join(str(int(n)) for n in image.shape)
        raise InputFileError(source, f"{voxels} voxels: too small to resample to the cache grid (an axial slice needs "
                             f"at least {MIN_IN_PLANE}x{MIN_IN_PLANE} voxels in x and y; a single sagittal or coronal "
                             "image cannot be cut into axial slices)")
    check_finite(image, source)
    spacing = tuple(float(s) for s in raw.spacing)
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise InputFileError(source, f"invalid voxel spacing {raw.spacing}: expected three positive sizes in mm")
    if raw.label is not None and raw.label.shape != image.shape:
        raise InputFileError(
            source, f"label shape {tuple(raw.label.shape)} does not match image shape {tuple(image.shape)}"
        )
    if raw.modality not in ("ct", "mr"):
        raise InputFileError(source, f"unknown modality {raw.modality!r}; expected 'ct' or 'mr'")


# -- geometry -----------------------------------------------------------------------


def _target_spacing(shape_hw: tuple[int, int], spacing_hw: tuple[float, float], config: PreprocessConfig) -> float:
    """The configured spacing, or the isotropic spacing fitting the field of view into ``size``."""
    if config.spacing is not None:
        return config.spacing
    field_of_view = max(n * s for n, s in zip(shape_hw, spacing_hw))
    return field_of_view / config.size


# -- resampling ---------------------------------------------------------------------


def _positive_strides(view: np.ndarray, dtype) -> np.ndarray:
    """A C-ordered copy torch accepts. ``np.ascontiguousarray`` alone returns a view unchanged when
    numpy flags it contiguous, and an axis of length 1 is flagged so whatever its stride: the
    flipped view of a one-voxel axis kept its negative stride and ``torch.from_numpy`` refused it."""
    array = np.ascontiguousarray(view, dtype=dtype)
    return array.copy() if any(stride < 0 for stride in array.strides) else array


def _resample_stack(stack: np.ndarray, rows: AxisResampling, cols: AxisResampling, out: np.ndarray, *,
                    is_label: bool) -> None:
    """Resample a (D, H, W) stack (any strides) chunk by chunk into the crop window of ``out``."""
    depth, height, width = stack.shape
    chunk = max(1, _CHUNK_VOXELS // (height * width))
    downsampling = rows.scale < 1.0 or cols.scale < 1.0
    for start in range(0, depth, chunk):
        stop = min(depth, start + chunk)
        dtype = np.uint8 if is_label else np.float32
        block = torch.from_numpy(_positive_strides(stack[start:stop], dtype)).unsqueeze(1)
        if is_label:
            # nearest-exact samples at pixel centres, i.e. the same grid as bilinear
            # with align_corners=False; plain "nearest" would shift labels by up to a pixel.
            resampled = F.interpolate(
                block, scale_factor=(rows.scale, cols.scale), mode="nearest-exact", recompute_scale_factor=False
            )
        else:
            resampled = F.interpolate(
                block,
                scale_factor=(rows.scale, cols.scale),
                mode="bilinear",
                align_corners=False,
                antialias=downsampling,
                recompute_scale_factor=False,
            )
        resampled = resampled[:, 0].numpy()
        if resampled.shape[1:] != (rows.resampled_length, cols.resampled_length):  # a bug, not bad input
            raise RuntimeError(f"resampled to {resampled.shape[1:]}, planned {(rows.resampled_length, cols.resampled_length)}")
        out[start:stop, rows.cache_window, cols.cache_window] = resampled[:, rows.source_window, cols.source_window]


# -- normalisation ------------------------------------------------------------------


def _normalise_ct(image: np.ndarray, window: tuple[float, float]) -> None:
    """In place: clip to the HU window and scale it linearly to [0, 1]."""
    low, high = window
    np.clip(image, low, high, out=image)
    image -= low
    image /= high - low


def _mr_clip_range(values: np.ndarray, percentiles: tuple[float, float]) -> tuple[float, float]:
    """Intensity percentiles of the foreground (background air would dominate otherwise)."""
    vmin, vmax = float(values.min()), float(values.max())
    foreground = values[values > vmin + _MR_FOREGROUND_FRACTION * (vmax - vmin)]
    if foreground.size < _MR_MIN_FOREGROUND:
        foreground = values.ravel()
    low, high = np.percentile(foreground, percentiles)
    return float(low), float(high)


def _normalise_mr(image: np.ndarray, clip_range: tuple[float, float], statistics: np.ndarray | None = None) -> None:
    """In place: clip to ``clip_range`` then z-score (constant -> zeros), with the mean and
    standard deviation of ``statistics`` clipped alike (default: the image itself)."""
    low, high = clip_range
    np.clip(image, low, high, out=image)
    reference = image if statistics is None else np.clip(statistics, low, high)
    mean = float(reference.mean(dtype=np.float64))
    std = float(reference.std(dtype=np.float64))
    if std <= _CONSTANT_RELATIVE_STD * max(abs(low), abs(high), 1.0):
        image.fill(0.0)
        return
    image -= mean
    image /= std


# -- entry point --------------------------------------------------------------------

FIELDS_OF_VIEW = ("crop", "whole")


def whole_axis(axis: AxisResampling) -> AxisResampling:
    """The axis resampled alike (the same scale) but not cropped: every resampled pixel, padded to
    ``axis.size`` when shorter, as the cache pads it."""
    size = max(axis.resampled_length, axis.size)
    return dataclasses.replace(axis, crop_start=0, pad_start=(size - axis.resampled_length) // 2,
                               kept=axis.resampled_length, size=size)


def _cache_crop(image: np.ndarray, whole: tuple[AxisResampling, AxisResampling],
                crop: tuple[AxisResampling, AxisResampling], fill: float) -> np.ndarray:
    """The ``size x size`` cache image cut out of a whole-field-of-view image (padding: ``fill``)."""
    out = np.full((image.shape[0], crop[0].size, crop[1].size), fill, dtype=image.dtype)
    windows = [slice(w.pad_start + c.crop_start, w.pad_start + c.crop_start + c.kept) for w, c in zip(whole, crop)]
    out[:, crop[0].cache_window, crop[1].cache_window] = image[:, windows[0], windows[1]]
    return out


def preprocess_volume(raw: RawVolume, config: PreprocessConfig, source: str = "<volume>", *,
                      field_of_view: str = "crop") -> ProcessedVolume:
    """Resample, crop/pad and normalise one canonical volume.

    Args:
        raw: the volume in canonical RAS orientation, axes (x, y, z).
        config: output size, spacing and intensity settings.
        source: the file the volume came from, used in error messages.
        field_of_view: ``crop`` (the cache's ``size x size``) or ``whole`` (every resampled
            pixel, at least ``size`` per axis; the transform records that grid).

    Raises:
        InputFileError: complex or non-finite voxels, an empty or non-3D image, fewer than
            :data:`MIN_IN_PLANE` voxels along x or y, a bad spacing, or a label whose
            shape differs from the image's.
    """
    _validate(raw, source)
    sx, sy, sz = (float(s) for s in raw.spacing)
    stack = to_slices(raw.image)
    depth, height, width = stack.shape
    target = _target_spacing((height, width), (sy, sx), config)
    if field_of_view not in FIELDS_OF_VIEW:
        raise ValueError(f"field_of_view {field_of_view!r}: use {' or '.join(FIELDS_OF_VIEW)}")
    crop = plan_axis(height, sy, target, config.size), plan_axis(width, sx, target, config.size)
    rows, cols = crop if field_of_view == "crop" else (whole_axis(crop[0]), whole_axis(crop[1]))
    transform = VolumeTransform(
        canonical_shape=tuple(int(n) for n in raw.image.shape), canonical_affine=np.asarray(raw.affine, dtype=np.float64),
        rows=rows, cols=cols, source=checked_source(raw.source_geometry, raw.image.shape, raw.affine, source),
    )

    # Pad value = the volume minimum (air), so padding looks like outside-body background.
    air = float(raw.image.min())
    image = np.full((depth, rows.size, cols.size), air, dtype=np.float32)
    _resample_stack(stack, rows, cols, image, is_label=False)

    label = None
    if raw.label is not None:
        label = np.zeros((depth, rows.size, cols.size), dtype=np.uint8)
        _resample_stack(to_slices(raw.label), rows, cols, label, is_label=True)

    if raw.modality == "ct":
        _normalise_ct(image, config.ct_window)
    elif field_of_view == "crop":
        # Percentiles over the resampled data only, not the padding.
        _normalise_mr(image, _mr_clip_range(image[:, rows.cache_window, cols.cache_window], config.mr_percentiles))
    else:  # the cache crop's statistics: inside it, the pixels are the cached ones
        cached = _cache_crop(image, (rows, cols), crop, air)
        clip_range = _mr_clip_range(cached[:, crop[0].cache_window, crop[1].cache_window], config.mr_percentiles)
        _normalise_mr(image, clip_range, statistics=cached)

    return ProcessedVolume(
        image=image,
        label=label,
        spacing=(sz, rows.spacing, cols.spacing),
        original_spacing=(sx, sy, sz),
        original_shape=tuple(int(n) for n in raw.image.shape),
        modality=raw.modality,
        transform=transform,
    )
