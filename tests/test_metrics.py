"""3D Dice and HD95 against hand-counted examples; MONAI and the scipy fallback agree."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ssmtl.downstream import metrics
from ssmtl.downstream.metrics import dice_per_class, hd95_per_class, summarise


def _volumes() -> tuple[np.ndarray, np.ndarray]:
    """Two (2, 3, 4) label volumes; voxel counts are written out in the test."""
    pred = np.zeros((2, 3, 4), np.uint8)
    target = np.zeros((2, 3, 4), np.uint8)
    # class 1: target 4 voxels, prediction 5 voxels, 3 shared
    target[0, 0, 0:4] = 1                       # (0,0,0) (0,0,1) (0,0,2) (0,0,3)
    pred[0, 0, 1:4] = 1                         # shares (0,0,1) (0,0,2) (0,0,3)
    pred[1, 2, 2:4] = 1                         # 2 false positives
    # class 2: target 2 voxels, prediction 1 voxel, 1 shared
    target[1, 1, 0:2] = 2
    pred[1, 1, 0] = 2
    # class 3: predicted (2 voxels) but absent from the target
    pred[1, 0, 0:2] = 3
    # class 4: absent from both
    return pred, target


def test_dice_hand_counted():
    pred, target = _volumes()
    dice = dice_per_class(pred, target, num_classes=5)
    assert set(dice) == {1, 2, 3, 4}  # foreground only
    assert dice[1] == pytest.approx(2 * 3 / (5 + 4))
    assert dice[2] == pytest.approx(2 * 1 / (1 + 2))
    assert dice[3] == 0.0  # predicted but not there
    assert math.isnan(dice[4])  # absent in both: undefined


def test_dice_perfect_and_disjoint():
    a = np.zeros((3, 4, 4), np.uint8)
    a[1, 1:3, 1:3] = 1
    b = np.zeros_like(a)
    b[0, 0, 0] = 1
    assert dice_per_class(a, a, 2)[1] == 1.0
    assert dice_per_class(a, b, 2)[1] == 0.0


def _shifted_cubes(axis: int, shift: int = 1) -> tuple[np.ndarray, np.ndarray]:
    a = np.zeros((12, 14, 16), np.uint8)
    a[3:8, 4:9, 5:10] = 1
    return a, np.roll(a, shift, axis=axis)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_hd95_shifted_cube_is_the_shift_in_mm(axis):
    spacing = (2.5, 0.8, 1.2)  # anisotropic (z, y, x) mm
    pred, target = _shifted_cubes(axis)
    hd = hd95_per_class(pred, target, num_classes=2, spacing=spacing)
    assert hd[1] == pytest.approx(spacing[axis], abs=1e-4)


@pytest.mark.parametrize("axis", [0, 2])
def test_scipy_fallback_matches(axis, monkeypatch):
    spacing = (2.5, 0.8, 1.2)
    pred, target = _shifted_cubes(axis, shift=2)
    with_monai = hd95_per_class(pred, target, 2, spacing)[1]
    monkeypatch.setattr(metrics, "_MONAI", False)
    fallback = hd95_per_class(pred, target, 2, spacing)[1]
    assert fallback == pytest.approx(2 * spacing[axis], abs=1e-4)
    assert fallback == pytest.approx(with_monai, abs=1e-4)


def test_scipy_fallback_matches_monai_on_irregular_shapes():
    rng = np.random.default_rng(0)
    a = (rng.random((10, 16, 16)) > 0.7).astype(np.uint8)
    b = (rng.random((10, 16, 16)) > 0.7).astype(np.uint8)
    spacing = (2.0, 1.0, 0.5)
    assert metrics._scipy_hd95(a == 1, b == 1, spacing) == pytest.approx(metrics._monai_hd95(a == 1, b == 1, spacing), abs=1e-4)


def test_hd95_of_a_false_positive_is_the_diagonal_and_absent_is_nan():
    pred, target = _volumes()
    spacing = (2.0, 1.5, 0.5)
    hd = hd95_per_class(pred, target, num_classes=5, spacing=spacing)
    diagonal = math.sqrt((2 * 2.0) ** 2 + (3 * 1.5) ** 2 + (4 * 0.5) ** 2)  # (2, 3, 4) voxels
    assert hd[3] == pytest.approx(diagonal)  # predicted, absent from the target
    assert math.isnan(hd[4])  # absent from both: undefined, left out of means
    assert 0 <= hd[1] < diagonal and 0 <= hd[2] < diagonal


def test_presence_cases_hand_labelled():
    pred, target = _volumes()
    assert metrics.presence_per_class(pred, target, 5) == {1: "found", 2: "found", 3: "false_positive", 4: "absent"}
    assert metrics.presence_per_class(np.zeros_like(target), target, 3) == {1: "missed", 2: "missed"}


def test_an_all_background_prediction_is_scored_not_skipped():
    """Predicting nothing: Dice 0, HD95 = the diagonal (finite), every present structure missed."""
    target = np.zeros((4, 10, 12), np.uint8)
    target[1:3, 2:6, 3:7] = 1
    target[2, 7:9, 8:11] = 2
    pred = np.zeros_like(target)
    spacing = (3.0, 1.0, 1.0)
    diagonal = math.sqrt(12.0 ** 2 + 10.0 ** 2 + 12.0 ** 2)
    dice = dice_per_class(pred, target, num_classes=4)
    hd = hd95_per_class(pred, target, num_classes=4, spacing=spacing)
    assert dice[1] == 0.0 and dice[2] == 0.0 and math.isnan(dice[3])
    assert hd[1] == pytest.approx(diagonal) and hd[2] == pytest.approx(diagonal) and math.isnan(hd[3])
    presence = metrics.presence_per_class(pred, target, 4)
    volume = {"dice": dice, "hd95": hd, "missed": [c for c, v in presence.items() if v == "missed"],
              "false_positive": [c for c, v in presence.items() if v == "false_positive"]}
    counts = metrics.count_failures([volume, volume], classes=[1, 2, 3])
    assert counts == {1: {"missed": 2, "false_positive": 0}, 2: {"missed": 2, "false_positive": 0},
                      3: {"missed": 0, "false_positive": 0}}
    summary = summarise([volume])
    assert summary["mean_hd95"] == pytest.approx(diagonal)  # a miss is the worst score, not a skipped one
    assert summary["mean_dice"] == 0.0


def test_shapes_must_match():
    with pytest.raises(ValueError):
        dice_per_class(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)), 2)


def test_summarise_ignores_nan():
    per_volume = [
        {"subject": "a", "dice": {"lv": 0.5, "rv": math.nan}, "hd95": {"lv": 2.0, "rv": math.nan}},
        {"subject": "b", "dice": {"lv": 1.0, "rv": 0.2}, "hd95": {"lv": 4.0, "rv": math.nan}},
    ]
    summary = summarise(per_volume)
    assert summary["per_class"]["lv"] == {"dice": 0.75, "hd95": 3.0}
    assert summary["per_class"]["rv"]["dice"] == pytest.approx(0.2)
    assert math.isnan(summary["per_class"]["rv"]["hd95"])
    assert summary["mean_dice"] == pytest.approx((0.75 + 0.2) / 2)
    assert summary["mean_hd95"] == pytest.approx(3.0)
