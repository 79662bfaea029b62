"""Intervals for a difference between two methods, by the unit that varies: the draw.

A *draw* is one independent repetition of everything random before testing: which
subjects are labeled, the fine-tuning seed and, where a method is pre-trained per draw,
its pre-training run. Within a draw both methods are tested on the same test subjects,
so their scores form pairs ``d[g, s] = method[g, s] - reference[g, s]``. The subjects of
one draw share its labeled subject, initialisation, stopping step and pre-training, so
they are not independent replicates: the model is the one-way random-effects model

    d[g, s] = mu + b[g] + e[g, s],   b ~ N(0, sigma_b^2),   e ~ N(0, sigma_w^2),

with ``G`` draws and ``n[g]`` test subjects in draw ``g``. Resampling the ``G * n``
pairs as if independent (the flat bootstrap this module replaces) estimates the
standard error as ``sqrt((sigma_b^2 + sigma_w^2) / (G n))`` when it is
``sqrt((sigma_b^2 + sigma_w^2 / n) / G)``: with CT->CT's between-seed SD of the
difference, 0.117, and within-seed SD, 0.101 (issue 24), at 3 draws x 18 subjects its
95 % interval covers a true difference of 0 in 40 % of experiments
(tests/test_intervals.py).

The interval
------------
The reported 95 % interval is Student's t interval on the ``G`` draw means
``D[g] = mean_s d[g, s]``::

    mean(D) +- t_{0.975, G-1} * sd(D) / sqrt(G)

With equal ``n`` this is the interval for ``mu`` of the balanced one-way random-effects
model (Searle, Casella & McCulloch, *Variance Components*, 1992, §3.5): the ``D[g]`` are
i.i.d. ``N(mu, sigma_b^2 + sigma_w^2 / n)``, so it is exact at any ``G >= 2`` and any
``sigma_b / sigma_w``, 0 included; simulated, it covers 0.941 to 0.956 at 3 to 20 draws
and ratios 0 to 3. The percentile cluster bootstrap (:func:`cluster_bootstrap`: draws,
then subjects within each chosen draw; Davison & Hinkley, *Bootstrap Methods and their
Application*, 1997, §3.8) has no such guarantee: its resampled draw means spread like
``sd(D) * sqrt((G-1)/G)`` and it reads normal, not t, quantiles, so it undercovers at
the draw counts a benchmark affords (0.77 at 3 draws, 0.86 at 5, 0.92 at 10 with the
measured ratio), and its second stage counts the within-draw spread a second time, so
without a draw effect it overcovers (0.97 to 0.99). It is kept for that comparison.

Unequal subjects per draw (a test volume without a score): the estimate stays the
unweighted mean of the draw means, each draw counting once, because the draw is the
replicate and the quantity of interest is the mean over draws. Weighting by
``1 / (sigma_b^2 + sigma_w^2 / n[g])`` would gain little where ``sigma_b`` dominates
(it does here) and needs the components estimated from the same few draws, which makes
the weights noisy. ``sd(D)^2 / G`` stays unbiased for the variance of the mean (the
draw means are independent); only the t reference becomes approximate: with 18, 12
and 6 subjects per draw it covers 0.945 to 0.961.

What the interval covers: draws, and test subjects within them. Every draw is tested on
the *same* test subjects, so a test subject's own lasting preference for one method
(a subject main effect) does not vary between draws and is not covered: the interval
is for the mean difference on this test set. In the committed results (3 draws x 18
subjects, every comparison) that effect's variance, estimated two-way, is below 0.0045
and mostly 0, so it adds at most 0.00025 to the variance of an 18-subject mean, next
to ``(sigma_b^2 + sigma_w^2 / n) / G`` of 0.0001 to 0.008.

Minimum number of draws
-----------------------
No interval and no better / worse below :data:`MIN_DRAWS` = 3 draws. Two draws are a
valid but empty interval: ``t_{0.975, 1} = 12.7``, an expected half-width of 7.2 draw
standard deviations ``sd_D`` and an MDE of 11.5 ``sd_D`` (with the measured
``sd_D = 0.12``: +- 0.86 Dice, MDE 1.4 Dice, more than the scale); it excludes 0 only
when the two draw means agree to within a sixth of their mean, a coincidence rather
than evidence. A third draw cuts this to 2.2 and 3.3 ``sd_D``: the largest step any
draw gives. Non-normal draw effects do not argue for more: the t interval's coverage
at 2 / 3 / 5 / 10 draws is 0.96 throughout under heavy tails (t, 3 d.o.f.), 0.935 /
0.918 / 0.919 / 0.929 under skewed effects (gamma, shape 2) and 0.940 / 0.929 / 0.897
/ 0.853 when one draw in ten is a failed run (tests/test_intervals.py), so a larger
threshold would buy power, which the MDE next to every interval reports, not validity.
Where a draw may have failed, read the ``draw_differences``.

Planning
--------
:func:`variance_components` estimates ``sigma_b^2`` and ``sigma_w^2`` from a pilot by
the method of moments (the ANOVA estimator; Searle et al. §3.6, ``n0`` for unequal
counts, ``sigma_b^2`` truncated at 0). :func:`minimal_detectable_effect` gives the
smallest true difference the t test on ``G`` draws of ``n`` subjects detects with 80 %
power at two-sided alpha = 0.05: the root of the power of the noncentral t (exact under
the model), close to the textbook ``(t_{1-a/2,G-1} + t_{0.8,G-1}) * sqrt((sigma_b^2 +
sigma_w^2 / n) / G)``, which understates it below 5 draws. It is a property of the
design, not of the observed difference (an observed power would restate the p value;
Hoenig & Heisey, *Am. Stat.* 55:19, 2001). :func:`plan` picks the draws and subjects
per draw with the smallest MDE within a budget of CPU minutes.
"""

from __future__ import annotations

import math
from typing import Any, Hashable, Mapping, Sequence

import numpy as np
from scipy import optimize, special, stats

LEVEL = 0.95
POWER = 0.80
MIN_DRAWS = 3
RESAMPLES = 10_000
BOOTSTRAP_SEED = 0

Scores = Mapping[Hashable, Mapping[Hashable, float]]  # draw id -> test subject -> score


def paired_differences(method: Scores, reference: Scores) -> dict[Hashable, list[float]]:
    """Draw -> ``method - reference`` on every test subject both scored in that draw.

    Draws are taken in ``method``'s order; a draw or a subject only one of them has, or a
    NaN score, is left out, and so is a draw left with no subject.

    >>> paired_differences({0: {"a": 0.75, "b": 0.5}, 1: {"a": 0.5}}, {0: {"a": 0.5, "b": 0.5}, 2: {"a": 0.0}})
    {0: [0.25, 0.0]}
    """
    out: dict[Hashable, list[float]] = {}
    for draw, mine in method.items():
        theirs = reference.get(draw)
        if theirs is None:
            continue
        diffs = [float(mine[s]) - float(theirs[s]) for s in mine if s in theirs]
        diffs = [d for d in diffs if not math.isnan(d)]
        if diffs:
            out[draw] = diffs
    return out


def draw_differences(method: Scores, reference: Scores) -> dict[Hashable, float]:
    """Draw -> mean difference over the test subjects both methods scored in it.

    >>> draw_differences({"x": {"a": 0.75, "b": 0.5}}, {"x": {"a": 0.5, "b": 0.5}})
    {'x': 0.125}
    """
    return {draw: sum(d) / len(d) for draw, d in paired_differences(method, reference).items()}


def padded(diffs: Mapping[Hashable, Sequence[float]]) -> np.ndarray:
    """The per-draw differences as a ``(G, max n)`` array, NaN after each draw's last subject."""
    width = max((len(d) for d in diffs.values()), default=0)
    out = np.full((len(diffs), width), np.nan)
    for row, d in zip(out, diffs.values()):
        row[:len(d)] = d
    return out


def t_interval(draw_means: Any, level: float = LEVEL) -> tuple[Any, Any]:
    """Student t interval of the mean of the draw means; shape ``(..., G)`` -> two ``(...)``.

    NaN with fewer than 2 draws (no spread to estimate). Three draws 0.1, 0.2, 0.3: mean
    0.2, sd 0.1, ``t_{0.975, 2} = 4.3027``, half-width 0.2484:

    >>> [round(float(v), 4) for v in t_interval([0.1, 0.2, 0.3])]
    [-0.0484, 0.4484]
    """
    d = np.asarray(draw_means, dtype=float)
    draws = d.shape[-1]
    if draws < 2:
        nan = np.full(d.shape[:-1], np.nan)
        return (float(nan), float(nan)) if nan.ndim == 0 else (nan, nan)
    mean = d.mean(axis=-1)
    half = stats.t.ppf(0.5 + level / 2, draws - 1) * d.std(axis=-1, ddof=1) / math.sqrt(draws)
    low, high = mean - half, mean + half
    return (float(low), float(high)) if np.ndim(low) == 0 else (low, high)


def cluster_bootstrap(values: Any, *, resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED,
                      level: float = LEVEL) -> tuple[Any, Any]:
    """Two-stage percentile bootstrap of the mean of draw means (not the reported interval).

    ``values``: ``(..., G, m)`` per-subject differences, NaN where a draw has fewer than
    ``m`` subjects. Each resample draws ``G`` draws with replacement, then, independently
    for each chosen draw, its ``n[g]`` subjects with replacement; the statistic is the
    mean of the resampled draw means. Leading axes are independent experiments.

    >>> cluster_bootstrap([[0.5, 0.5], [0.5, np.nan]])
    (0.5, 0.5)
    """
    # a draw's subjects are exchangeable: sorting moves its NaN padding to the end, so the
    # first n[g] entries are its scores and a pick below n[g] is always a score
    x = np.sort(np.asarray(values, dtype=float), axis=-1)
    *batch, draws, width = x.shape
    counts = (~np.isnan(x)).sum(axis=-1)
    rng = np.random.default_rng(seed)
    chosen = rng.integers(0, draws, size=(*batch, resamples, draws))
    n = np.take_along_axis(counts[..., None, :], chosen, axis=-1)  # (..., B, G) subjects of each pick
    picks = (rng.random((*batch, resamples, draws, width)) * n[..., None]).astype(np.int64)
    flat = (chosen[..., None] * width + picks).reshape(*batch, -1)
    got = np.take_along_axis(x.reshape(*batch, draws * width), flat, axis=-1).reshape(picks.shape)
    used = np.arange(width) < n[..., None]
    means = (np.where(used, got, 0.0).sum(axis=-1) / n).mean(axis=-1)  # (..., B)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail], axis=-1)
    return (float(low), float(high)) if np.ndim(low) == 0 else (low, high)


def variance_components(values: Any) -> tuple[float, float]:
    """``(sigma_b^2, sigma_w^2)`` by the one-way ANOVA method of moments.

    ``values``: per-draw differences, a mapping draw -> list or a ``(G, m)`` array padded
    with NaN. ``sigma_w^2 = MSW``, ``sigma_b^2 = max(0, (MSB - MSW) / n0)`` with
    ``n0 = (N - sum n_g^2 / N) / (G - 1)`` (``n`` when every draw has ``n``). NaN where a
    component cannot be estimated: ``sigma_b^2`` needs 2 draws, ``sigma_w^2`` a draw with
    2 subjects. Draws 1, 2, 3 and 4, 5, 6: MSB = 13.5, MSW = 1, so (13.5 - 1) / 3:

    >>> variance_components({"a": [1, 2, 3], "b": [4, 5, 6]})
    (4.166666666666667, 1.0)
    """
    x = padded(values) if isinstance(values, Mapping) else np.asarray(values, dtype=float)
    ok = ~np.isnan(x)
    n = ok.sum(axis=1)
    x, n = x[n > 0], n[n > 0]
    ok = ~np.isnan(x)
    draws, total = len(n), int(n.sum())
    if total <= draws:
        within = math.nan
    else:
        means = np.where(ok, x, 0.0).sum(axis=1) / n
        within = float((np.where(ok, x - means[:, None], 0.0) ** 2).sum() / (total - draws))
    if draws < 2:
        return math.nan, within
    means = np.where(ok, x, 0.0).sum(axis=1) / n
    grand = float((n * means).sum() / total)
    msb = float((n * (means - grand) ** 2).sum() / (draws - 1))
    n0 = (total - float((n ** 2).sum()) / total) / (draws - 1)
    between = max(0.0, (msb - within) / n0) if not math.isnan(within) else math.nan
    return between, within


def _draw_variance(sigma_b2: float, sigma_w2: float, subjects: float) -> float:
    return sigma_b2 + sigma_w2 / subjects


def detection_power(effect: float, sigma_b2: float, sigma_w2: float, draws: int, subjects: float, *,
          level: float = LEVEL) -> float:
    """Probability that the two-sided t test on ``draws`` draw means rejects 0 when the true
    difference is ``effect``. With ``D[g] ~ N(effect, s2)``, ``s2 = sigma_b^2 + sigma_w^2 / n``,
    the t statistic is noncentral t with ``G - 1`` d.o.f. and noncentrality
    ``effect * sqrt(G / s2)``. Ten draws, effect one draw SD (Cohen's d = 1): 0.803.

    >>> round(detection_power(1.0, 1.0, 0.0, 10, 18), 4)
    0.8031
    """
    if draws < 2:
        return math.nan
    df, s2 = draws - 1, _draw_variance(sigma_b2, sigma_w2, subjects)
    crit = stats.t.ppf(0.5 + level / 2, df)
    nc = effect * math.sqrt(draws / s2) if s2 > 0 else math.copysign(math.inf, effect)
    # the far tail underflows to NaN in scipy's nct once nc is large; it is 0 there
    far = float(np.nan_to_num(stats.nct.cdf(-crit, df, abs(nc))))
    return float(stats.nct.sf(crit, df, abs(nc))) + far


def minimal_detectable_effect(sigma_b2: float, sigma_w2: float, draws: int, subjects: float, *,
                              level: float = LEVEL, power: float = POWER) -> float:
    """Smallest true difference the two-sided t test on the draw means detects with ``power``.

    ``draws`` draws of ``subjects`` test subjects each (for unequal counts, their harmonic
    mean: the variance of the mean of draw means is ``(sigma_b^2 + sigma_w^2 * mean(1/n)) / G``).
    The root of :func:`detection_power`, so exact under the model. Ten draws with ``s2 = 1``: 0.996;
    the textbook ``(t_{0.975,9} + t_{0.8,9}) / sqrt(10)`` gives 0.995, and 3.10 against 3.26
    at 3 draws, 9.96 against 11.55 at 2 (it ignores the noncentral t's skew). NaN below 2
    draws.

    >>> round(minimal_detectable_effect(1.0, 0.0, 10, 18), 4), round(minimal_detectable_effect(1.0, 0.0, 3, 18), 3)
    (0.996, 3.264)
    """
    if draws < 2:
        return math.nan
    sd = math.sqrt(_draw_variance(sigma_b2, sigma_w2, subjects))
    if sd == 0.0:
        return 0.0
    # solved in units of one draw's SD; the textbook value is below the root, 4x it above
    guess = (stats.t.ppf(0.5 + level / 2, draws - 1) + stats.t.ppf(power, draws - 1)) / math.sqrt(draws)
    root = optimize.brentq(lambda e: detection_power(e, 1.0, 0.0, draws, 1, level=level) - power,
                           0.0, 4.0 * guess, xtol=1e-12)
    return float(root) * sd


def expected_half_width(sigma_b2: float, sigma_w2: float, draws: int, subjects: float,
                        level: float = LEVEL) -> float:
    """Expected half-width of the t interval: ``t * c4(G) * sqrt(s2 / G)``, ``E[sd] = c4 * sigma``.

    >>> round(expected_half_width(1.0, 0.0, 3, 1), 4)
    2.2015
    """
    if draws < 2:
        return math.nan
    c4 = math.sqrt(2.0 / (draws - 1)) * math.exp(special.gammaln(draws / 2) - special.gammaln((draws - 1) / 2))
    scale = math.sqrt(_draw_variance(sigma_b2, sigma_w2, subjects) / draws)
    return float(stats.t.ppf(0.5 + level / 2, draws - 1)) * c4 * scale


def optimal_subjects(sigma_b2: float, sigma_w2: float, minutes_per_draw: float, minutes_per_subject: float) -> float:
    """Test subjects per draw that give the most precision per CPU minute (Cochran, *Sampling
    Techniques*, 3rd ed., 1977, §10.6): ``n* = sqrt(c_draw * sigma_w^2 / (c_subject * sigma_b^2))``
    minimises ``(sigma_b^2 + sigma_w^2 / n) * (c_draw + n * c_subject)``, the variance of the
    mean times its cost, whatever ``G``. Infinite when ``sigma_b^2`` is 0.

    >>> optimal_subjects(0.01, 0.01, 30.0, 0.5)
    7.745966692414834
    """
    if sigma_b2 <= 0.0:
        return math.inf
    return math.sqrt(minutes_per_draw * sigma_w2 / (minutes_per_subject * sigma_b2))


def plan(sigma_b2: float, sigma_w2: float, *, budget_minutes: float, minutes_per_draw: float,
         minutes_per_subject: float, fixed_minutes: float = 0.0, max_subjects: int,
         level: float = LEVEL, power: float = POWER) -> dict[str, Any]:
    """The design with the smallest MDE whose cost fits the budget.

    Cost of ``G`` draws of ``n`` test subjects: ``fixed + G * (per_draw + n * per_subject)``
    CPU minutes (per draw: fine-tuning every compared method; per subject: testing them).
    Every ``G >= MIN_DRAWS`` and ``1 <= n <= max_subjects`` that fits is tried; ties go to
    the cheaper design. ``None`` values when not even ``MIN_DRAWS`` draws of one subject fit.

    >>> p = plan(0.0137, 0.0102, budget_minutes=600, minutes_per_draw=60, minutes_per_subject=1, max_subjects=18)
    >>> p["draws"], p["subjects"], p["minutes"], round(p["mde"], 3)
    (9, 6, 594.0, 0.132)
    """
    best: dict[str, Any] = {"draws": None, "subjects": None, "minutes": None, "mde": math.nan, "half_width": math.nan}
    for n in range(1, max_subjects + 1):
        per_draw = minutes_per_draw + n * minutes_per_subject
        draws = int((budget_minutes - fixed_minutes) // per_draw) if per_draw > 0 else 0
        if draws < MIN_DRAWS:
            continue
        # for a given n the MDE falls with G, so the most draws that fit is that n's best
        mde = minimal_detectable_effect(sigma_b2, sigma_w2, draws, n, level=level, power=power)
        minutes = fixed_minutes + draws * per_draw
        if best["draws"] is None or (mde, minutes) < (best["mde"], best["minutes"]):
            best = {"draws": draws, "subjects": n, "minutes": minutes, "mde": mde,
                    "half_width": expected_half_width(sigma_b2, sigma_w2, draws, n, level)}
    return best


def compare_scores(method: Scores, reference: Scores, *, level: float = LEVEL, power: float = POWER) -> dict[str, Any]:
    """Everything a report says about ``method - reference``: estimate, interval, design.

    ``difference``: mean of the draw means. ``ci95``: the t interval on them, NaN below
    :data:`MIN_DRAWS` draws. ``draws``: independent draws both methods have; ``subjects``:
    test subjects per draw (draw order); ``draw_differences``: the draw means;
    ``sigma_b2`` / ``sigma_w2``: :func:`variance_components`; ``mde80``: the MDE at ``power``
    (0.8) for this design (harmonic mean of the subject counts), NaN below
    :data:`MIN_DRAWS`. It is computed from the components, whose ``sigma_b^2`` is truncated
    at 0, so it never falls below what the within-draw noise alone allows, even where the
    draw means happen to agree closer than that (and the interval is narrow).

    >>> r = compare_scores({g: {"a": 0.5 + g / 10} for g in range(3)}, {g: {"a": 0.5} for g in range(3)})
    >>> r["draws"], round(r["difference"], 3), [round(v, 3) for v in r["ci95"]]
    (3, 0.1, [-0.148, 0.348])
    """
    diffs = paired_differences(method, reference)
    means = [sum(d) / len(d) for d in diffs.values()]
    counts = [len(d) for d in diffs.values()]
    draws = len(means)
    between, within = variance_components(diffs) if diffs else (math.nan, math.nan)
    if draws >= MIN_DRAWS:
        low, high = t_interval(means, level)
        harmonic = len(counts) / sum(1.0 / c for c in counts)
        # one subject per draw: sigma_w^2 is not estimable apart from sigma_b^2, but their
        # sum is the draw variance, which is all the MDE needs
        b2, w2 = (between, within) if not math.isnan(within) else (float(np.var(means, ddof=1)), 0.0)
        mde = minimal_detectable_effect(b2, w2, draws, harmonic, level=level, power=power)
    else:
        low = high = mde = math.nan
    return {"difference": float(np.mean(means)) if means else math.nan, "ci95": [low, high], "draws": draws,
            "subjects": counts, "draw_differences": means, "sigma_b2": between, "sigma_w2": within,
            "mde80": mde, "min_draws": MIN_DRAWS,
            "interval": (f"Student t on the draw means, {draws - 1} d.o.f." if draws >= MIN_DRAWS
                         else f"none: {draws} draw(s) < {MIN_DRAWS}")}
