"""ssmtl's slice preparation and its way back, as one invertible MONAI transform.

This file is copied into every MONAI bundle ``ssmtl export --format monai-bundle`` writes
(``scripts/ssmtl_slices.py``), so it imports only numpy, torch and MONAI: a bundle runs
where ssmtl is not installed. It computes what ``ssmtl predict`` computes (the numbers of
``ssmtl.data.preprocess``, ``ssmtl.data.transform`` and ``ssmtl.data.native``); the
export's tests check that a bundle writes the label maps ``ssmtl predict`` writes.

:class:`SsmtlSlicesd` takes an image in canonical RAS orientation (``Orientationd(axcodes="RAS")``
before it), shape (1, X, Y, Z), and gives the stack of axial slices the network was trained
on, shape (1, D, H, W):

1. slice layout: ``stack[d, r, c] = canonical[X-1-c, Y-1-r, d]`` (rows anterior to
   posterior, columns patient right to left);
2. in-plane resampling to the cache's spacing (``spacing``, or the spacing that fits the
   field of view into ``size`` pixels), bilinear, antialiased when downsampling; torch's
   ``interpolate`` with ``scale_factor`` and ``align_corners=False``;
3. centre crop/pad to ``size`` x ``size`` (``field_of_view="crop"``, as the cache), padding
   with the volume's minimum; or no crop (``"whole"``, what ``ssmtl predict`` does: every
   resampled pixel, an axis shorter than ``size`` padded to it as the cache pads it, for a
   sliding window over the whole field of view);
4. intensities: CT clipped to ``ct_window`` and mapped to [0, 1]; MR clipped to the
   ``mr_percentiles`` of the foreground, then z-scored over the slice stack. Over the whole
   field of view the percentiles, mean and standard deviation are those of the cache's
   ``size`` x ``size`` centre crop (padding included, as the cache z-scores it), so that inside
   that crop the pixels are exactly the ones the cache held.

:func:`predict_all` is the bundle's run loop; :func:`infer_slices` predicts the slices in batches
and sliding windows as ``ssmtl predict`` does. The inverse of :class:`SsmtlSlicesd` (through MONAI's ``Invertd``) takes class probabilities (C, D, H, W) back to the
canonical grid (C, X, Y, Z) at the scan's own resolution: each voxel takes the pixel covering
its centre (``nearest``) or the bilinear interpolation of the four around it (``linear``);
``auto`` uses nearest where the slices are at least as fine as the scan along both in-plane
axes. Voxels outside the field of view the crop kept are background.
"""

from __future__ import annotations

import math
from typing import Any, Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.transforms import InvertibleTransform, MapTransform
from monai.utils import TraceKeys

_CHUNK_VOXELS = 1 << 24  # voxels per resampling chunk
_MR_FOREGROUND_FRACTION = 0.01
_MR_MIN_FOREGROUND = 100
_CONSTANT_RELATIVE_STD = 1e-5
_CT_PERCENTILE, _CT_THRESHOLD, _DETECTION_SAMPLE = 0.5, -500.0, 2_000_000


def plan_axis(length: int, spacing: float, target: float, size: int, crop: bool = True) -> dict[str, Any]:
    """One in-plane axis: the resampling to ``target`` mm, then the centre crop/pad to ``size``."""
    scale = spacing / target
    resampled = max(1, math.floor(length * scale + 1e-6))
    scale = max(scale, resampled / length)  # only differs from spacing/target by rounding
    while math.floor(length * scale) < resampled:  # floor must reach the intended length
        scale = math.nextafter(scale, math.inf)
    kept = min(resampled, size) if crop else resampled
    out = size if crop else max(resampled, size)
    return {"length": int(length), "scale": float(scale), "resampled": int(resampled), "crop_start": (resampled - kept) // 2,
            "pad_start": (out - kept) // 2, "kept": int(kept), "size": int(out)}


def detect_modality(image: np.ndarray) -> str:
    """``ct`` when the 0.5th intensity percentile is below -500 (air in HU), else ``mr``."""
    step = max(1, round((image.size / _DETECTION_SAMPLE) ** (1 / 3)))
    return "ct" if float(np.percentile(image[::step, ::step, ::step], _CT_PERCENTILE)) < _CT_THRESHOLD else "mr"


def _window(plan: dict[str, Any], side: str) -> slice:
    start = plan["crop_start"] if side == "source" else plan["pad_start"]
    return slice(start, start + plan["kept"])


def _resample(stack: np.ndarray, rows: dict[str, Any], cols: dict[str, Any], out: np.ndarray) -> None:
    depth, height, width = stack.shape
    chunk = max(1, _CHUNK_VOXELS // (height * width))
    antialias = rows["scale"] < 1.0 or cols["scale"] < 1.0
    for start in range(0, depth, chunk):
        block = torch.from_numpy(np.ascontiguousarray(stack[start:start + chunk], dtype=np.float32)).unsqueeze(1)
        resampled = F.interpolate(block, scale_factor=(rows["scale"], cols["scale"]), mode="bilinear", align_corners=False,
                                  antialias=antialias, recompute_scale_factor=False)[:, 0].numpy()
        out[start:start + chunk, _window(rows, "cache"), _window(cols, "cache")] = \
            resampled[:, _window(rows, "source"), _window(cols, "source")]


def _normalise_ct(image: np.ndarray, ct_window: Sequence[float]) -> None:
    low, high = (float(v) for v in ct_window)
    np.clip(image, low, high, out=image)
    image -= low
    image /= high - low


def _mr_clip_range(values: np.ndarray, mr_percentiles: Sequence[float]) -> tuple[float, float]:
    """The ``mr_percentiles`` of the foreground of ``values`` (background air would dominate otherwise)."""
    vmin, vmax = float(values.min()), float(values.max())
    foreground = values[values > vmin + _MR_FOREGROUND_FRACTION * (vmax - vmin)]
    if foreground.size < _MR_MIN_FOREGROUND:
        foreground = values.ravel()
    low, high = (float(v) for v in np.percentile(foreground, [float(p) for p in mr_percentiles]))
    return low, high


def _normalise_mr(image: np.ndarray, clip_range: tuple[float, float], statistics: np.ndarray | None = None) -> None:
    """Clip to ``clip_range``, then z-score with the mean and std of ``statistics`` clipped alike (default: the image)."""
    low, high = clip_range
    np.clip(image, low, high, out=image)
    reference = image if statistics is None else np.clip(statistics, low, high)
    mean, std = float(reference.mean(dtype=np.float64)), float(reference.std(dtype=np.float64))
    if std <= _CONSTANT_RELATIVE_STD * max(abs(low), abs(high), 1.0):
        image.fill(0.0)
        return
    image -= mean
    image /= std


def _cache_crop(image: np.ndarray, whole: Sequence[dict[str, Any]], crop: Sequence[dict[str, Any]], fill: float) -> np.ndarray:
    """The ``size x size`` slices the training cache held, cut out of the whole field of view (padding: ``fill``)."""
    out = np.full((image.shape[0], crop[0]["size"], crop[1]["size"]), fill, dtype=image.dtype)
    inside = [slice(w["pad_start"] + c["crop_start"], w["pad_start"] + c["crop_start"] + c["kept"]) for w, c in zip(whole, crop)]
    out[:, _window(crop[0], "cache"), _window(crop[1], "cache")] = image[:, inside[0], inside[1]]
    return out


def _covering(plan: dict[str, Any]) -> np.ndarray:
    """(length,) the slice pixel whose footprint holds each voxel's centre; -1 where the crop cut it."""
    resampled = np.minimum(np.floor((np.arange(plan["length"]) + 0.5) * plan["scale"]).astype(np.int64), plan["resampled"] - 1)
    inside = (resampled >= plan["crop_start"]) & (resampled < plan["crop_start"] + plan["kept"])
    return np.where(inside, resampled - plan["crop_start"] + plan["pad_start"], -1)


def _taps(plan: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each voxel: the two slice pixels around its centre and the second's weight (inside the data, not the padding)."""
    position = (np.arange(plan["length"], dtype=np.float64) + 0.5) * plan["scale"] - 0.5 - plan["crop_start"] + plan["pad_start"]
    low, high = plan["pad_start"], plan["pad_start"] + plan["kept"] - 1
    position = np.clip(position, low, high)
    first = np.floor(position).astype(np.int64)
    second = np.minimum(first + 1, high)
    return torch.from_numpy(first), torch.from_numpy(second), torch.from_numpy((position - first).astype(np.float32))


def to_native(probabilities: torch.Tensor, rows: dict[str, Any], cols: dict[str, Any], resample: str) -> torch.Tensor:
    """(C, D, H, W) class probabilities on the slices -> (C, D, Y, X) on the scan's own in-plane grid."""
    row_index, col_index = _covering(rows), _covering(cols)
    inside = torch.from_numpy((row_index >= 0)[:, None] & (col_index >= 0)[None, :])
    if resample == "nearest":
        native = probabilities[..., np.maximum(row_index, 0), :][..., np.maximum(col_index, 0)]
    else:
        (r0, r1, rw), (c0, c1, cw) = _taps(rows), _taps(cols)
        rw, cw = rw.to(probabilities.dtype)[:, None], cw.to(probabilities.dtype)
        by_rows = probabilities[..., r0, :] * (1 - rw) + probabilities[..., r1, :] * rw
        native = by_rows[..., c0] * (1 - cw) + by_rows[..., c1] * cw
    if not bool(inside.all()):  # outside the kept field of view: background, which the network never saw
        background = torch.zeros(native.shape[0], dtype=native.dtype)
        background[0] = 1
        native = torch.where(inside, native, background[:, None, None, None])
    return native


class SsmtlSlicesd(MapTransform, InvertibleTransform):
    """A canonical RAS image (1, X, Y, Z) -> its stack of prepared slices (1, D, H, W), and back."""

    def __init__(self, keys, size: int, spacing: float | None, ct_window: Sequence[float], mr_percentiles: Sequence[float],
                 modality: str = "auto", field_of_view: str = "crop", resample: str = "auto",
                 allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        if modality not in ("auto", "ct", "mr") or field_of_view not in ("crop", "whole") or resample not in ("auto", "linear", "nearest"):
            raise ValueError(f"modality {modality!r} (auto, ct, mr), field_of_view {field_of_view!r} (crop, whole) "
                             f"or resample {resample!r} (auto, linear, nearest) is not one of its choices")
        self.size, self.spacing = int(size), None if spacing is None else float(spacing)
        self.ct_window, self.mr_percentiles = list(ct_window), list(mr_percentiles)
        self.modality, self.field_of_view, self.resample = modality, field_of_view, resample

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self._prepare(d[key])
        return d

    def _prepare(self, image: MetaTensor) -> MetaTensor:
        if image.ndim != 4 or image.shape[0] != 1:
            raise ValueError(f"expected one channel of a 3D image (1, X, Y, Z), got shape {tuple(image.shape)}")
        canonical = np.asarray(image[0].detach().cpu().numpy(), dtype=np.float32)
        affine = np.asarray(image.affine.detach().cpu().numpy() if isinstance(image, MetaTensor) else np.eye(4), dtype=np.float64)
        sx, sy, _ = (float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))
        stack = np.flip(canonical.transpose(2, 1, 0), axis=(1, 2))  # (D, Y, X): rows anterior first, columns right first
        depth, height, width = stack.shape
        target = self.spacing if self.spacing is not None else max(height * sy, width * sx) / self.size
        crop = plan_axis(height, sy, target, self.size), plan_axis(width, sx, target, self.size)
        whole = self.field_of_view == "whole"
        rows, cols = (plan_axis(height, sy, target, self.size, False), plan_axis(width, sx, target, self.size, False)) \
            if whole else crop
        modality = detect_modality(canonical) if self.modality == "auto" else self.modality
        air = float(canonical.min())
        prepared = np.full((depth, rows["size"], cols["size"]), air, dtype=np.float32)
        _resample(stack, rows, cols, prepared)
        if modality == "ct":
            _normalise_ct(prepared, self.ct_window)
        elif not whole:  # percentiles over the resampled data, not the padding; z-scored over the slices
            _normalise_mr(prepared, _mr_clip_range(prepared[:, _window(rows, "cache"), _window(cols, "cache")], self.mr_percentiles))
        else:  # the statistics of the cache's crop, so that inside it the pixels are the ones the network was trained on
            cached = _cache_crop(prepared, (rows, cols), crop, air)
            clip_range = _mr_clip_range(cached[:, _window(crop[0], "cache"), _window(crop[1], "cache")], self.mr_percentiles)
            _normalise_mr(prepared, clip_range, statistics=cached)
        resample = self.resample
        if resample == "auto":
            resample = "nearest" if min(rows["scale"], cols["scale"]) >= 1.0 else "linear"
        out = MetaTensor(torch.from_numpy(prepared)[None], meta=dict(image.meta) if isinstance(image, MetaTensor) else {},
                         applied_operations=list(getattr(image, "applied_operations", [])))
        out.affine = torch.as_tensor(affine)  # kept as the scan's: the slice grid is not a resampling MONAI inverts
        self.push_transform(out, orig_size=list(canonical.shape), extra_info={
            "rows": rows, "cols": cols, "modality": modality, "resample": resample, "affine": affine.tolist()})
        return out

    def inverse(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            record = self.pop_transform(d[key])
            extra = record[TraceKeys.EXTRA_INFO]
            pred = d[key]
            probabilities = (pred.as_tensor() if isinstance(pred, MetaTensor) else torch.as_tensor(pred)).float()
            native = to_native(probabilities, extra["rows"], extra["cols"], extra["resample"])  # (C, D, Y, X)
            canonical = torch.flip(native.permute(0, 3, 2, 1), dims=(1, 2))  # (C, X, Y, Z)
            out = MetaTensor(canonical.contiguous(), meta=dict(pred.meta) if isinstance(pred, MetaTensor) else {},
                             applied_operations=list(getattr(pred, "applied_operations", [])))
            out.affine = torch.as_tensor(extra["affine"], dtype=torch.float64)
            d[key] = out
        return d


def infer_slices(image: torch.Tensor, inferer, network, device) -> torch.Tensor:
    """(1, D, H, W) prepared slices -> (C, D, H, W) class logits, computed as ``ssmtl predict`` computes them.

    ``inferer`` is a 2D sliding window (MONAI's ``SlidingWindowInferer``, a window of the cache's slice
    size). The slices go ``inferer.sw_batch_size`` at a time, as a batch of ``ssmtl predict``: a slice of
    the window's size is one plain pass of the network, a wider one is windowed by ``inferer``, whose
    windows of all slices of the batch share the network calls. Same batches, same windows, same
    blending: the same numbers.
    """
    slices = image.as_tensor() if isinstance(image, MetaTensor) else torch.as_tensor(image)
    slices = slices[0].to(device=device, dtype=torch.float32)
    window, per_call = tuple(int(n) for n in inferer.roi_size), int(inferer.sw_batch_size)
    logits = []
    for lo in range(0, slices.shape[0], per_call):
        x = slices[lo:lo + per_call, None]
        logits.append((network(x) if tuple(x.shape[-2:]) == window else inferer(x, network)).detach().cpu())
    return torch.cat(logits).transpose(0, 1).contiguous()  # (D, C, H, W) -> (C, D, H, W)


def predict_all(dataset, inferer, network, postprocessing, device) -> int:
    """The bundle's run loop: every scan of ``dataset`` prepared, inferred slice by slice (:func:`infer_slices`),
    mapped back and saved by ``postprocessing``; returns how many. (MONAI's evaluators would need pytorch-ignite.)"""
    count = 0
    with torch.no_grad():
        for item in dataset:
            postprocessing({**item, "pred": infer_slices(item["image"], inferer, network, device)})
            count += 1
    return count
