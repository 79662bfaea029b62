"""3D segmentation metrics: per-class Dice and 95th-percentile Hausdorff distance.

Both work on whole label volumes (D, H, W) of integer class ids and score the
foreground classes ``1 .. num_classes - 1`` (background Dice is dominated by the
huge background and says nothing about the structures).

A structure can be missing from either side, and every such case is scored, never
skipped (:func:`presence_per_class` names the case):

* **missed** (in the reference, not predicted) and **false positive** (predicted, not
  in the reference): Dice 0.0, and HD95 = the volume's diagonal in mm
  (:func:`volume_diagonal_mm`), the largest distance the volume allows. An empty mask
  has no surface to measure from; scoring it as NaN, as is common, would let a method
  that misses a structure get a *better* mean HD95 than one that finds it roughly.
  Both cases are also counted per structure (``missed`` / ``false_positive``).
* **absent** from both: nothing to find, nothing found. Dice and HD95 are NaN
  ("undefined"), shown as ``null`` in JSON, and left out of every mean here (a
  perfect score would reward nothing; a zero would punish a correct empty answer).
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


FOUND, MISSED, FALSE_POSITIVE, ABSENT = "found", "missed", "false_positive", "absent"


def presence_per_class(pred: np.ndarray, target: np.ndarray, num_classes: int) -> dict[int, str]:
    """Per foreground class: ``"found"`` (in both), ``"missed"`` (in the target only),
    ``"false_positive"`` (in the prediction only) or ``"absent"`` (in neither)."""
    _check_shapes(pred, target)
    cases = {(True, True): FOUND, (False, True): MISSED, (True, False): FALSE_POSITIVE, (False, False): ABSENT}
    return {c: cases[(bool((pred == c).any()), bool((target == c).any()))] for c in _foreground_classes(num_classes)}


def volume_diagonal_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """The length of the volume's diagonal in mm: ``sqrt(sum_i (n_i * s_i)^2)``."""
    return float(math.sqrt(sum((int(n) * float(s)) ** 2 for n, s in zip(shape, spacing))))


def hd95_per_class(
    pred: np.ndarray, target: np.ndarray, num_classes: int, spacing: Sequence[float]
) -> dict[int, float]:
    """Symmetric 95th-percentile Hausdorff distance per foreground class, in mm.

    ``spacing`` is the voxel size along the array axes (for cache volumes: (z, y, x)
    mm, as in :attr:`~ssmtl.data.cache.VolumeMeta.spacing`). Uses MONAI's
    ``compute_hausdorff_distance`` when MONAI imports, else an equivalent scipy
    implementation (surface voxels, Euclidean distance transform). A class missed or
    predicted where it is absent scores the volume's diagonal; absent from both, NaN.
    """
    _check_shapes(pred, target)
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != pred.ndim:
        raise ValueError(f"spacing has {len(spacing)} values for a {pred.ndim}-D volume")
    distance = _monai_hd95 if _monai_available() else _scipy_hd95
    diagonal = volume_diagonal_mm(pred.shape, spacing)
    scores: dict[int, float] = {}
    for c, case in presence_per_class(pred, target, num_classes).items():
        if case == FOUND:
            scores[c] = distance(pred == c, target == c, spacing)
        else:
            scores[c] = math.nan if case == ABSENT else diagonal
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


def count_failures(per_volume: list[dict[str, Any]], classes: Iterable[Any]) -> dict[Any, dict[str, int]]:
    """Per class, in how many volumes it was ``missed`` and predicted as a ``false_positive``.

    Each item lists the classes of that volume under ``"missed"`` and ``"false_positive"``
    (e.g. from :func:`presence_per_class`); an item without them counts as none.
    """
    counts = {c: {MISSED: 0, FALSE_POSITIVE: 0} for c in classes}
    for item in per_volume:
        for case in (MISSED, FALSE_POSITIVE):
            for c in item.get(case) or []:
                counts.setdefault(c, {MISSED: 0, FALSE_POSITIVE: 0})[case] += 1
    return counts


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
