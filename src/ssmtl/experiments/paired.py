"""Paired comparison of two methods' benchmark cells, by the unit that replicates.

Two cells with the same protocol, label budget and draw were fine-tuned on the same
labeled subjects and tested on the same test subjects, so their scores on one test
subject pair up. Cells are keyed by any hashable draw id.

**The unit.** A draw is an independent replicate when everything random in it is its own:
the labeled subjects, the fine-tuning seed and, for a pre-trained method, the pre-training
run. When draws share a pre-training run (a benchmark with fewer pre-training runs than
draws: draw ``d`` fine-tunes from run ``d mod K``), those draws are not independent: a run
that happened to be good lifts all of them. Then the unit is the pre-training run: the
differences of the draws that share one (the same run of each pre-trained method) are
averaged per test subject, and the t interval is over the ``K`` run means. With one run per
draw each unit is one draw, and with neither method pre-trained the unit is the draw.
A cell names its run as ``pretrain_run`` (None or absent: not pre-trained).

The statistics of the units (mean of the unit means, the t interval on them, variance
components, the minimal detectable effect) are :mod:`ssmtl.experiments.intervals`', which
says why no interval is given below :data:`~ssmtl.experiments.intervals.MIN_DRAWS` units.
"""

from __future__ import annotations

import math
from typing import Any, Hashable, Mapping, Sequence

from ssmtl.experiments.intervals import compare_scores, MIN_DRAWS

__all__ = ["compare", "volume_scores", "verdict", "MIN_DRAWS", "DRAW", "PRETRAIN_RUN"]

DRAW = "draw"
PRETRAIN_RUN = "pre-training run"


def volume_scores(cell: dict[str, Any]) -> dict[str, float]:
    """Test subject -> that subject's mean Dice over structures (its volumes averaged)."""
    by: dict[str, list[float]] = {}
    for item in cell.get("per_volume") or []:
        value = item.get("mean_dice")
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            by.setdefault(item["subject"], []).append(float(value))
    return {s: sum(v) / len(v) for s, v in by.items()}


def replication_units(method: Mapping[Hashable, dict[str, Any]], reference: Mapping[Hashable, dict[str, Any]]
                      ) -> dict[Hashable, list[Hashable]]:
    """Unit -> the draws (both methods have) in it, in ``method``'s draw order.

    A draw is its own unit unless a method is pre-trained; then draws that fine-tune from the
    same pre-training runs (of both methods) form one unit.
    """
    units: dict[Hashable, list[Hashable]] = {}
    for draw, cell in method.items():
        other = reference.get(draw)
        if other is None:
            continue
        runs = (cell.get("pretrain_run"), other.get("pretrain_run"))
        unit = (DRAW, draw) if runs == (None, None) else (PRETRAIN_RUN, *runs)
        units.setdefault(unit, []).append(draw)
    return units


def compare(method: Mapping[Hashable, dict[str, Any]], reference: Mapping[Hashable, dict[str, Any]]) -> dict[str, Any]:
    """``method - reference`` over the draws both have (draw id -> cell), by replication unit.

    The keys of :func:`ssmtl.experiments.intervals.compare_scores` computed on the units (its
    ``draws`` is renamed ``units``, its ``difference`` ``pair_mean``), plus ``unit`` (``"draw"``
    or ``"pre-training run"``), ``draws`` (the paired draws), ``subject_pairs`` (the paired
    (draw, test subject) scores: not independent replicates) and ``verdict``.
    """
    units = replication_units(method, reference)
    differences: dict[Hashable, dict[str, float]] = {}
    pairs = 0
    for unit, draws in units.items():
        per_subject: dict[str, list[float]] = {}
        for draw in draws:
            mine, theirs = volume_scores(method[draw]), volume_scores(reference[draw])
            for subject in (s for s in mine if s in theirs):
                per_subject.setdefault(subject, []).append(mine[subject] - theirs[subject])
                pairs += 1
        differences[unit] = {s: sum(v) / len(v) for s, v in per_subject.items()}
    result = compare_scores(differences, {u: {s: 0.0 for s in d} for u, d in differences.items()})
    shared = any(len(draws) > 1 for draws in units.values())
    unit = PRETRAIN_RUN if shared else DRAW
    count = result.pop("draws")
    return {"pair_mean": result.pop("difference"), **result, "unit": unit, "units": count,
            "draws": sum(len(d) for d in units.values()), "subject_pairs": pairs,
            "interval": (f"Student t on the {unit} means, {count - 1} d.o.f." if count >= MIN_DRAWS
                         else f"none: {count} {unit}(s) < {MIN_DRAWS}"),
            "verdict": verdict(result["ci95"], unit)}


def verdict(ci95: Sequence[float], unit: str = DRAW) -> str:
    """``better`` / ``worse`` when the interval excludes 0, else ``no clear difference``.

    Without an interval (fewer than :data:`MIN_DRAWS` units): ``too few draws to tell``.

    >>> verdict([0.01, 0.2]), verdict([float("nan")] * 2)
    ('better', 'too few draws to tell (an interval needs 3)')
    """
    low, high = ci95
    if math.isnan(low) or math.isnan(high):
        return f"too few {unit}s to tell (an interval needs {MIN_DRAWS})"
    if low > 0:
        return "better"
    if high < 0:
        return "worse"
    return "no clear difference"
