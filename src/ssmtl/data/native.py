"""From the cache grid back to the scan: label maps and class probabilities in native space.

The inverse of :mod:`ssmtl.data.preprocess`, step by step, from the numbers the cache
records (:class:`~ssmtl.data.transform.VolumeTransform`):

* **In-plane** (:class:`InPlaneMap`): every native voxel takes the cache pixel whose
  footprint holds its centre (``nearest``, for label maps), or the bilinear
  interpolation of the four cache pixels around its centre (``linear``, for
  probabilities; the arg-max of interpolated probabilities gives smoother boundaries
  than copying labels when the cache is coarser than the scan). Voxels outside the
  field of view the centre crop kept are background: the network never saw them.
* **Slice layout**: the stack (D, Y, X) back to canonical (X, Y, Z) with
  :func:`~ssmtl.api.from_slices`; slices were never resampled.
* **Reorientation** (:func:`canonical_to_source`): canonical RAS back to the file's
  own axis order and directions, a pure permutation/flip.

Where the cache is at least as fine as the source along both in-plane axes and nothing
was cropped (:meth:`~ssmtl.data.transform.VolumeTransform.is_exact`), a label map
taken to the cache and back is unchanged voxel for voxel; the loss on coarser caches
is measured in ``docs/native.md``.
"""

from __future__ import annotations

import numpy as np
import torch

from ssmtl.api.datasets.arrays import from_slices, to_slices
from ssmtl.data.transform import AxisResampling, VolumeTransform


def _linear_taps(axis: AxisResampling) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every source voxel along ``axis``: the two cache pixels around its centre and the weight of the second.

    Interpolation stays inside the cache pixels that hold resampled data (not the padding),
    clamping at the edges of that window as ``align_corners=False`` sampling does.
    """
    position = axis.cache_position(np.arange(axis.source_length))
    low_edge, high_edge = axis.pad_start, axis.pad_start + axis.kept - 1
    position = np.clip(position, low_edge, high_edge)
    first = np.floor(position).astype(np.int64)
    second = np.minimum(first + 1, high_edge)
    return first, second, (position - first).astype(np.float32)


class InPlaneMap:
    """Maps cache slices (..., H, W) to native slice-stack planes (..., Y, X) of one volume.

    The native plane is the canonical (x, y) plane in slice layout: row ``r`` is canonical
    ``y = Y - 1 - r``, column ``c`` is ``x = X - 1 - c`` (see :func:`~ssmtl.api.to_slices`).
    """

    def __init__(self, transform: VolumeTransform):
        self.transform = transform
        self.rows = transform.rows.covering_cache_index()  # (Y,)
        self.cols = transform.cols.covering_cache_index()  # (X,)
        self.inside = (self.rows >= 0)[:, None] & (self.cols >= 0)[None, :]  # (Y, X) the field of view kept
        self.row_taps = _linear_taps(transform.rows)
        self.col_taps = _linear_taps(transform.cols)

    @property
    def native_shape(self) -> tuple[int, int]:
        return len(self.rows), len(self.cols)

    def nearest(self, cache: np.ndarray, fill: int = 0) -> np.ndarray:
        """(..., Y, X): each native voxel takes the cache pixel covering its centre; ``fill`` outside the kept field of view."""
        rows, cols = np.maximum(self.rows, 0), np.maximum(self.cols, 0)
        native = cache[..., rows, :][..., cols]
        return np.where(self.inside, native, np.asarray(fill, dtype=native.dtype))

    def linear(self, probabilities: torch.Tensor) -> torch.Tensor:
        """(..., C, Y, X) class probabilities interpolated bilinearly from (..., C, H, W).

        Outside the kept field of view the probabilities are all background (class 0).
        Runs on the tensor's device.
        """
        device = probabilities.device
        (r0, r1, rw), (c0, c1, cw) = (
            tuple(torch.from_numpy(a).to(device) for a in taps) for taps in (self.row_taps, self.col_taps)
        )
        rw = rw.to(probabilities.dtype)[:, None]
        cw = cw.to(probabilities.dtype)
        rows = probabilities[..., r0, :] * (1 - rw) + probabilities[..., r1, :] * rw
        native = rows[..., c0] * (1 - cw) + rows[..., c1] * cw
        outside = torch.from_numpy(~self.inside).to(device)
        if outside.any():
            background = torch.zeros(native.shape[-3], dtype=native.dtype, device=device)
            background[0] = 1
            native = torch.where(outside, background[:, None, None], native)
        return native


def labels_to_canonical(labels: np.ndarray, transform: VolumeTransform) -> np.ndarray:
    """A (D, H, W) cache label map as a (X, Y, Z) canonical array at native resolution (nearest neighbour)."""
    stack = InPlaneMap(transform).nearest(labels)
    return np.ascontiguousarray(from_slices(stack))


def canonical_to_source(array: np.ndarray, transform: VolumeTransform) -> np.ndarray:
    """A canonical (X, Y, Z, ...) array in the file's own axis order and directions (i, j, k, ...).

    Raises:
        ValueError: the transform has no source geometry.
    """
    axes = transform.source_axes()
    flipped = array[tuple(slice(None, None, -1) if flip else slice(None) for _, flip in axes)]
    order = [canonical for source in range(3) for canonical, (axis, _) in enumerate(axes) if axis == source]
    return np.ascontiguousarray(np.transpose(flipped, (*order, *range(3, array.ndim))))


def source_to_canonical(array: np.ndarray, transform: VolumeTransform) -> np.ndarray:
    """The inverse of :func:`canonical_to_source`: the file's (i, j, k, ...) array in canonical RAS (x, y, z, ...)."""
    axes = transform.source_axes()
    moved = np.transpose(array, (*(axis for axis, _ in axes), *range(3, array.ndim)))
    return np.ascontiguousarray(moved[tuple(slice(None, None, -1) if flip else slice(None) for _, flip in axes)])


def labels_to_cache(canonical: np.ndarray, transform: VolumeTransform) -> np.ndarray:
    """A canonical (X, Y, Z) label map on the cache grid (D, H, W), as the cache builder samples labels.

    The nearest-neighbour rule of :meth:`~ssmtl.data.transform.AxisResampling.sampled_source_index`
    (torch's ``nearest-exact``); padding is background. Used to check the round trip.
    """
    stack = to_slices(canonical)
    rows, cols = transform.rows.sampled_source_index(), transform.cols.sampled_source_index()
    out = stack[:, np.maximum(rows, 0)][:, :, np.maximum(cols, 0)]
    inside = (rows >= 0)[:, None] & (cols >= 0)[None, :]
    return np.where(inside, out, 0).astype(canonical.dtype)
