"""Paired comparison of two methods' benchmark cells, with the draw as the unit.

Two cells with the same protocol, label budget and draw were fine-tuned on the same
labeled subjects and tested on the same test subjects, so their scores on one test
subject pair up. Today a draw is a seed (which labeled subjects, which initialisation);
cells are keyed by any hashable draw id, so a draw can also name its pre-training run,
e.g. ``(seed, pretrain_seed)``. The statistics (mean of the per-draw mean differences,
the t interval on them, variance components, the minimal detectable effect) are
:mod:`ssmtl.experiments.intervals`', which says why the draw and not the (draw, test
subject) pair is the unit, and why no interval is given below
:data:`~ssmtl.experiments.intervals.MIN_DRAWS` draws.
"""

from __future__ import annotations

import math
from typing import Any, Hashable, Mapping, Sequence

from ssmtl.experiments.intervals import compare_scores, MIN_DRAWS

__all__ = ["compare", "volume_scores", "verdict", "MIN_DRAWS"]


def volume_scores(cell: dict[str, Any]) -> dict[str, float]:
    """Test subject -> that subject's mean Dice over structures (its volumes averaged)."""
    by: dict[str, list[float]] = {}
    for item in cell.get("per_volume") or []:
        value = item.get("mean_dice")
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            by.setdefault(item["subject"], []).append(float(value))
    return {s: sum(v) / len(v) for s, v in by.items()}


def compare(method: Mapping[Hashable, dict[str, Any]], reference: Mapping[Hashable, dict[str, Any]]) -> dict[str, Any]:
    """``method - reference`` over the draws both have (draw id -> cell).

    The keys of :func:`ssmtl.experiments.intervals.compare_scores`, its ``difference``
    named ``pair_mean`` as in results.json before the draw was the unit (its readers keep
    working), plus ``verdict`` and ``subject_pairs``: how many (draw, test subject)
    scores were paired in all. Those are not independent replicates; ``draws`` counts them.
    """
    result = compare_scores({d: volume_scores(c) for d, c in method.items()},
                            {d: volume_scores(c) for d, c in reference.items()})
    return {"pair_mean": result.pop("difference"), **result, "subject_pairs": sum(result["subjects"]),
            "verdict": verdict(result["ci95"])}


def verdict(ci95: Sequence[float]) -> str:
    """``better`` / ``worse`` when the interval excludes 0, else ``no clear difference``.

    Without an interval (fewer than :data:`MIN_DRAWS` draws): ``too few draws to tell``.

    >>> verdict([0.01, 0.2]), verdict([float("nan")] * 2)
    ('better', 'too few draws to tell (an interval needs 3)')
    """
    low, high = ci95
    if math.isnan(low) or math.isnan(high):
        return f"too few draws to tell (an interval needs {MIN_DRAWS})"
    if low > 0:
        return "better"
    if high < 0:
        return "worse"
    return "no clear difference"
