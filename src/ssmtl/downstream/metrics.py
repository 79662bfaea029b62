"""3D segmentation metrics: per-class Dice and 95th-percentile Hausdorff distance.

Both work on whole label volumes (D, H, W) of integer class ids and score the
foreground classes ``1 .. num_classes - 1`` (background Dice is dominated by the
huge background and says nothing about the structures).

NaN marks "undefined", and every mean here skips NaN:

* Dice is NaN when a class is absent from both prediction and target (nothing to
  find, nothing found). A class absent from the target but predicted scores 0.0.
* HD95 is NaN when either mask is empty: a distance to nothing is undefined. Such a
  miss still shows up as a Dice of 0.0.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Iterable, Sequence

import numpy as np
from scipy import ndimage


def _foreground_classes(num_classes: int) -> range:
    return range(1, num_classes)


def dice_per_class(pred: np.ndarray, target: np.ndarray, num_classes: int) -> dict[int, float]:
    """Dice ``2|P∩T| / (|P| + |T|)`` per foreground class of two label volumes of equal shape."""
    _check_shapes(pred, target)
    scores: dict[int, float] = {}
    for c in _foreground_classes(num_classes):
        p, t = pred == c, target == c
        total = int(p.sum()) + int(t.sum())
        scores[c] = math.nan if total == 0 else 2.0 * int(np.logical_and(p, t).sum()) / total
    return scores


def hd95_per_class(
    pred: np.ndarray, target: np.ndarray, num_classes: int, spacing: Sequence[float]
) -> dict[int, float]:
    """Symmetric 95th-percentile Hausdorff distance per foreground class, in mm.

    ``spacing`` is the voxel size along the array axes (for cache volumes: (z, y, x)
    mm, as in :attr:`~ssmtl.data.cache.VolumeMeta.spacing`). Uses MONAI's
    ``compute_hausdorff_distance`` when MONAI imports, else an equivalent scipy
    implementation (surface voxels, Euclidean distance transform).
    """
    _check_shapes(pred, target)
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != pred.ndim:
        raise ValueError(f"spacing has {len(spacing)} values for a {pred.ndim}-D volume")
    distance = _monai_hd95 if _monai_available() else _scipy_hd95
    scores: dict[int, float] = {}
    for c in _foreground_classes(num_classes):
        p, t = pred == c, target == c
        scores[c] = math.nan if not (p.any() and t.any()) else distance(p, t, spacing)
    return scores


def _check_shapes(pred: np.ndarray, target: np.ndarray) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from target shape {target.shape}")


_MONAI: bool | None = None


def _monai_available() -> bool:
    global _MONAI
    if _MONAI is None:
        try:
            from monai.metrics import compute_hausdorff_distance  # noqa: F401

            _MONAI = True
        except Exception:  # not installed, or a broken install: the scipy path is equivalent
            _MONAI = False
    return _MONAI


def _monai_hd95(pred: np.ndarray, target: np.ndarray, spacing: tuple[float, ...]) -> float:
    from monai.metrics import compute_hausdorff_distance

    with warnings.catch_warnings():
        # MONAI 1.5+ warns about a deprecated argument it passes to itself; not actionable here
        warnings.simplefilter("ignore", FutureWarning)
        # one-hot (batch, channel, *spatial) with a single channel and include_background=True
        # scores exactly this binary mask
        value = compute_hausdorff_distance(
            pred[None, None].astype(np.float32),
            target[None, None].astype(np.float32),
            include_background=True,
            percentile=95,
            spacing=[float(s) for s in spacing],
        )
    return float(value.reshape(-1)[0])


def _surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a face-neighbour outside it (voxels on the array border count)."""
    return mask ^ ndimage.binary_erosion(mask)


def _scipy_hd95(pred: np.ndarray, target: np.ndarray, spacing: tuple[float, ...]) -> float:
    """The same definition as MONAI: the larger of the two directed 95th percentiles."""
    surface_p, surface_t = _surface(pred), _surface(target)
    to_t = ndimage.distance_transform_edt(~surface_t, sampling=spacing)[surface_p]
    to_p = ndimage.distance_transform_edt(~surface_p, sampling=spacing)[surface_t]
    return float(max(np.percentile(to_t, 95), np.percentile(to_p, 95)))


def nanmean(values: Iterable[float]) -> float:
    """Mean of the non-NaN values; NaN when there are none."""
    kept = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return sum(kept) / len(kept) if kept else math.nan


def summarise(per_volume: list[dict[str, Any]]) -> dict[str, Any]:
    """Average per-volume scores per class, then over classes, ignoring NaN.

    Each item maps a metric name (e.g. ``"dice"``, ``"hd95"``) to ``{class: value}``;
    other keys are ignored. Returns ``{"per_class": {class: {metric: mean}},
    "mean_<metric>": mean over classes}``. The overall mean is the mean of the
    per-class means (every structure counts equally, however often it is present).
    """
    metrics: list[str] = []
    classes: list[Any] = []
    for item in per_volume:
        for metric, values in item.items():
            if not isinstance(values, dict):
                continue
            if metric not in metrics:
                metrics.append(metric)
            classes.extend(c for c in values if c not in classes)
    per_class = {
        c: {m: nanmean(item.get(m, {}).get(c, math.nan) for item in per_volume) for m in metrics}
        for c in classes
    }
    summary: dict[str, Any] = {"per_class": per_class}
    for m in metrics:
        summary[f"mean_{m}"] = nanmean(per_class[c][m] for c in classes)
    return summary
