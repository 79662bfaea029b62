"""Paired comparisons of two methods: per (seed, test subject) differences and their bootstrap CI.

Two cells of a benchmark with the same protocol, label budget and seed were fine-tuned
on the same labeled subjects and tested on the same test subjects, so their scores on
one test subject form a *pair*. The difference of a method against a reference is
summarised by the mean over all (seed, test subject) pairs and a 95 % percentile
bootstrap confidence interval: the pairs are resampled with replacement
(:data:`RESAMPLES` times, from a fixed RNG seed, so a re-run prints the same interval)
and the 2.5th and 97.5th percentiles of the resampled means are the interval.

What the interval covers: the variation between test subjects and between seeds (which
labeled subjects, which initialisation) of *this* benchmark; not a different pre-training
run (each method is pre-trained once). An interval that excludes 0 says the difference is
larger than that variation explains.

Below :data:`MIN_PAIRS` pairs no interval is given: the percentile bootstrap of n pairs
whose differences all have one sign always excludes 0, and that happens by chance with
probability 2^(1-n) when the methods are equal (one pair: always; four: 12.5 %); from
six pairs on it is under 5 %. A single seed tested on a single subject is one pair and
says nothing about which method is better.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

RESAMPLES = 10_000
MIN_PAIRS = 6
BOOTSTRAP_SEED = 0
LEVEL = 0.95


def bootstrap_ci(values: Sequence[float], *, resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED,
                 level: float = LEVEL) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (NaN, NaN when there are none).

    >>> bootstrap_ci([0.25, 0.25, 0.25])
    (0.25, 0.25)
    """
    data = np.asarray([float(v) for v in values], dtype=float)
    if data.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(resamples, data.size))].mean(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def _volume_scores(cell: dict[str, Any]) -> dict[str, float]:
    """Test subject -> that volume's mean Dice over structures (a subject's volumes averaged)."""
    by: dict[str, list[float]] = {}
    for item in cell.get("per_volume") or []:
        value = item.get("mean_dice")
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            by.setdefault(item["subject"], []).append(float(value))
    return {s: sum(v) / len(v) for s, v in by.items()}


def paired_differences(method: dict[int, dict[str, Any]], reference: dict[int, dict[str, Any]]) -> list[float]:
    """Differences method - reference of per-subject mean Dice, over every (seed, test subject) both scored."""
    diffs = []
    for seed in sorted(set(method) & set(reference)):
        mine, theirs = _volume_scores(method[seed]), _volume_scores(reference[seed])
        diffs += [mine[s] - theirs[s] for s in sorted(set(mine) & set(theirs))]
    return diffs


def compare(method: dict[int, dict[str, Any]], reference: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Mean paired difference over (seed, test subject) pairs with its 95 % bootstrap interval."""
    diffs = paired_differences(method, reference)
    low, high = bootstrap_ci(diffs) if len(diffs) >= MIN_PAIRS else (math.nan, math.nan)
    return {"pair_mean": float(np.mean(diffs)) if diffs else math.nan, "ci95": [low, high],
            "subject_pairs": len(diffs), "resamples": RESAMPLES, "bootstrap_seed": BOOTSTRAP_SEED}


def verdict(ci95: Sequence[float]) -> str:
    """``better`` / ``worse`` when the interval excludes 0, else ``no clear difference``.

    Without an interval (fewer than :data:`MIN_PAIRS` pairs): ``too few pairs to tell``.
    """
    low, high = ci95
    if math.isnan(low) or math.isnan(high):
        return f"too few pairs to tell (an interval needs {MIN_PAIRS})"
    if low > 0:
        return "better"
    if high < 0:
        return "worse"
    return "no clear difference"
