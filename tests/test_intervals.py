"""Intervals by draw: hand-computed references, and the calibration the issue asks for.

The calibration simulates the hierarchical model the benchmark has: per draw a shared
effect b ~ N(0, sigma_b^2) (labeled subject, initialisation, stopping step), per test
subject e ~ N(0, sigma_w^2), true difference 0. A 95 % interval must cover 0 in 93 to
97 % of the experiments. Run this file as a script to print the coverage table that
docs/benchmarks.md quotes (the same seeds and sizes as the tests).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest

from ssmtl.experiments.intervals import (
    cluster_bootstrap, compare_scores, detection_power, draw_differences, expected_half_width, MIN_DRAWS,
    minimal_detectable_effect, optimal_subjects, paired_differences, plan, t_interval, variance_components,
)

MEASURED = 0.117 / 0.101  # sigma_b / sigma_w of CT->CT multitask - scratch in the committed results
SUBJECTS = 18  # test subjects per draw in the protocol
EXPERIMENTS = 4000  # per configuration for the t interval: 95 % +- 0.7 % (two standard errors)
BOOT_EXPERIMENTS, BOOT_RESAMPLES = 1000, 200  # the bootstraps are 200x dearer per experiment
UNBALANCED = (18, 12, 6)  # subjects per draw, cycled: a cell that lost test volumes


def _scores(seed, draws, ratio, experiments=EXPERIMENTS, counts=None, effects=None):
    """``(experiments, draws, SUBJECTS)`` differences with sigma_w = 1, NaN past each draw's count."""
    rng = np.random.default_rng(seed)
    b = effects(rng, (experiments, draws, 1)) if effects else rng.standard_normal((experiments, draws, 1))
    x = ratio * b + rng.standard_normal((experiments, draws, SUBJECTS))
    if counts is not None:
        n = np.resize(np.asarray(counts), draws)
        x[:, np.arange(SUBJECTS)[None, :] >= n[:, None]] = np.nan
    return x


def _covered(low, high) -> float:
    return float(np.mean((np.asarray(low) <= 0) & (np.asarray(high) >= 0)))


def _flat_bootstrap(x, resamples, seed):
    """The interval paired.py gave before: every (draw, subject) pair resampled as if independent,
    percentile interval of the resampled means (balanced designs only)."""
    rng = np.random.default_rng(seed)
    values = x.reshape(len(x), -1)
    means = []
    for chunk in np.array_split(values, max(1, len(values) // 100)):  # keeps the picks array small
        picks = rng.integers(0, chunk.shape[1], size=(len(chunk), resamples, chunk.shape[1]), dtype=np.int32)
        means.append(np.take_along_axis(chunk, picks.reshape(len(chunk), -1), axis=1).reshape(picks.shape).mean(axis=-1))
    return np.quantile(np.concatenate(means), [0.025, 0.975], axis=-1)


def _t2(p):
    """Student t quantile with 2 d.o.f. by its closed form (Student's CDF with 2 d.o.f. inverted)."""
    a = 2 * p - 1
    return a * math.sqrt(2 / (1 - a * a))


T2_975 = _t2(0.975)


def _key(draws, ratio):
    return [draws, round(ratio * 100)]  # a fixed RNG seed per configuration


@functools.lru_cache(maxsize=None)
def t_coverage(draws, ratio, unbalanced=False):
    x = _scores(_key(draws, ratio) + [int(unbalanced)], draws, ratio, counts=UNBALANCED if unbalanced else None)
    return _covered(*t_interval(np.nanmean(x, axis=-1)))


@functools.lru_cache(maxsize=None)
def flat_coverage(draws, ratio):
    x = _scores(_key(draws, ratio), draws, ratio, BOOT_EXPERIMENTS)
    return _covered(*_flat_bootstrap(x, BOOT_RESAMPLES, seed=1))


@functools.lru_cache(maxsize=None)
def cluster_coverage(draws, ratio):
    x = _scores(_key(draws, ratio), draws, ratio, BOOT_EXPERIMENTS)
    # 100 experiments at a time keep the (experiments, resamples, draws, subjects) picks small
    return float(np.mean([_covered(*cluster_bootstrap(x[i:i + 100], resamples=BOOT_RESAMPLES, seed=i))
                          for i in range(0, len(x), 100)]) )


GRID = [(g, r) for g in (3, 5, 10, 20) for r in (0.0, 0.5, MEASURED, 3.0)]
BOOT_GRID = [(3, 0.0), (3, MEASURED), (5, MEASURED), (10, MEASURED)]


# --- hand-written references -------------------------------------------------------------

def test_paired_differences_match_draws_and_subjects():
    method = {("d0", 0): {"a": 0.8, "b": 0.6}, ("d1", 1): {"a": 0.7, "b": 0.9, "c": 0.5}, 7: {"a": 0.4}}
    reference = {("d0", 0): {"a": 0.7, "b": 0.7}, ("d1", 1): {"a": 0.7, "b": 0.6, "c": math.nan},
                 ("d2", 0): {"a": 0.1}, 7: {"z": 0.4}}
    diffs = paired_differences(method, reference)
    # c's reference is NaN, draw ("d2", 0) is the reference's alone, draw 7 shares no subject
    assert list(diffs) == [("d0", 0), ("d1", 1)]
    assert diffs[("d0", 0)] == pytest.approx([0.1, -0.1]) and diffs[("d1", 1)] == pytest.approx([0.0, 0.3])
    assert draw_differences(method, reference) == pytest.approx({("d0", 0): 0.0, ("d1", 1): 0.15})


def test_t_interval_by_hand():
    # mean 0.2, sd 0.1; with 2 d.o.f. the t quantile has a closed form, a * sqrt(2 / (1 - a^2)) with
    # a = 2p - 1 (the CDF is 1/2 + t / (2 sqrt(2 + t^2))): 4.3027 for p = 0.975
    half = T2_975 * 0.1 / math.sqrt(3)
    assert t_interval([0.1, 0.2, 0.3]) == pytest.approx((0.2 - half, 0.2 + half), abs=1e-12)
    # five draws: mean 0.04, sd 0.05244, t_{0.975, 4} = 2.776 (any t table)
    low, high = t_interval([0.0, 0.1, 0.05, -0.03, 0.08])
    sd = math.sqrt(sum((v - 0.04) ** 2 for v in [0.0, 0.1, 0.05, -0.03, 0.08]) / 4)
    assert (low, high) == pytest.approx((0.04 - 2.776 * sd / math.sqrt(5), 0.04 + 2.776 * sd / math.sqrt(5)), abs=1e-4)
    lows, highs = t_interval(np.array([[0.1, 0.2, 0.3], [1.0, 1.0, 1.0]]))  # experiments on the first axis
    assert lows == pytest.approx([0.2 - half, 1.0]) and highs == pytest.approx([0.2 + half, 1.0])
    assert all(math.isnan(v) for v in t_interval([0.4]))  # one draw: no spread, no interval


def test_variance_components_by_hand():
    # balanced: means 2 and 5, grand 3.5; MSB = 3 * (1.5^2 + 1.5^2) / 1 = 13.5, MSW = 4 / 4 = 1
    assert variance_components({"a": [1, 2, 3], "b": [4, 5, 6]}) == pytest.approx((12.5 / 3, 1.0))
    # unbalanced: draws [1, 3], [4, 5, 6], [7]; N = 6, grand 26/6, SSB = 58/3 so MSB = 29/3,
    # SSW = 2 + 2 + 0 so MSW = 4/3, n0 = (6 - 14/6) / 2 = 11/6: sigma_b^2 = (29/3 - 4/3) / (11/6) = 50/11
    assert variance_components({0: [1, 3], 1: [4, 5, 6], 2: [7]}) == pytest.approx((50 / 11, 4 / 3))
    padded = np.array([[1, 3, np.nan], [4, 5, 6], [7, np.nan, np.nan]])
    assert variance_components(padded) == pytest.approx((50 / 11, 4 / 3))
    # draw means closer than the within spread predicts: MSB < MSW, sigma_b^2 truncated at 0
    assert variance_components({0: [0, 2], 1: [0.1, 2.1]}) == pytest.approx((0.0, 2.0))
    between, within = variance_components({0: [0.3], 1: [0.5]})  # one subject per draw: no sigma_w^2
    assert math.isnan(between) and math.isnan(within)
    assert math.isnan(variance_components({0: [0.3, 0.5]})[0])  # one draw: no sigma_b^2


def test_variance_components_add_up_to_the_draw_variance_and_recover_the_truth():
    diffs = {g: list(0.1 * g + np.linspace(-0.2, 0.2, 5) * (1 + g % 2)) for g in range(4)}
    between, within = variance_components(diffs)
    assert between > 0  # untruncated, balanced: sigma_b^2 + sigma_w^2 / n is the draw means' variance
    assert between + within / 5 == pytest.approx(np.var([np.mean(d) for d in diffs.values()], ddof=1))
    rng = np.random.default_rng(3)
    x = 0.117 * rng.standard_normal((4000, 1)) + 0.101 * rng.standard_normal((4000, SUBJECTS))
    between, within = variance_components(x)
    assert math.sqrt(between) == pytest.approx(0.117, rel=0.03) and math.sqrt(within) == pytest.approx(0.101, rel=0.01)


def test_power_and_minimal_detectable_effect():
    # one-sample t, n = 10, d = 1, two-sided alpha 0.05: power 0.8031 (G*Power, Cohen's tables)
    assert detection_power(1.0, 1.0, 0.0, 10, 1) == pytest.approx(0.8031, abs=5e-5)
    assert detection_power(0.0, 1.0, 0.0, 10, 1) == pytest.approx(0.05, abs=1e-9)  # the test's size
    mde = minimal_detectable_effect(1.0, 0.0, 10, 1)
    assert detection_power(mde, 1.0, 0.0, 10, 1) == pytest.approx(0.80, abs=1e-9) and 0.99 < mde < 1.0
    # the textbook formula, written out: (t_{0.975, G-1} + t_{0.8, G-1}) * sqrt(s2 / G)
    textbook = {3: (T2_975 + _t2(0.8)) / math.sqrt(3), 50: (2.0096 + 0.8490) / math.sqrt(50)}  # t table, 49 d.o.f.
    assert minimal_detectable_effect(1.0, 0.0, 50, 1) == pytest.approx(textbook[50], rel=1e-3)  # large G: same
    assert minimal_detectable_effect(1.0, 0.0, 3, 1) == pytest.approx(3.264, abs=1e-3)
    assert minimal_detectable_effect(1.0, 0.0, 3, 1) > 1.05 * textbook[3]  # 3.097: it ignores the skew of nct
    # in the components' units: sqrt(sigma_b^2 + sigma_w^2 / n) times the one-SD value
    assert minimal_detectable_effect(0.0137, 0.0102, 5, 18) == pytest.approx(
        minimal_detectable_effect(1.0, 0.0, 5, 1) * math.sqrt(0.0137 + 0.0102 / 18), rel=1e-9)
    # MIN_DRAWS: a third draw cuts the MDE from 11.5 to 3.26 draw SDs
    assert minimal_detectable_effect(1.0, 0.0, 2, 1) == pytest.approx(11.55, abs=0.01)
    assert math.isnan(minimal_detectable_effect(1.0, 0.0, 1, 1))


def test_power_is_the_simulated_rejection_rate():
    mde = minimal_detectable_effect(0.0137, 0.0102, 3, SUBJECTS)
    rng = np.random.default_rng(5)
    x = mde + 0.117 * rng.standard_normal((20_000, 3, 1)) + 0.101 * rng.standard_normal((20_000, 3, SUBJECTS))
    low, high = t_interval(x.mean(axis=-1))
    assert float(np.mean((low > 0) | (high < 0))) == pytest.approx(0.80, abs=0.01)
    half = (high - low) / 2  # and the expected half-width is their mean
    assert float(half.mean()) == pytest.approx(expected_half_width(0.0137, 0.0102, 3, SUBJECTS), rel=0.01)


def test_plan_is_the_best_design_in_the_budget():
    b2, w2 = 0.0137, 0.0102
    p = plan(b2, w2, budget_minutes=600, minutes_per_draw=60, minutes_per_subject=1, max_subjects=18)
    brute = min((minimal_detectable_effect(b2, w2, g, n), g, n) for n in range(1, 19) for g in range(MIN_DRAWS, 11)
                if g * (60 + n) <= 600)
    assert (p["mde"], p["draws"], p["subjects"]) == pytest.approx(brute) and p["minutes"] == 9 * (60 + 6)
    # Cochran's optimum per CPU minute, sqrt(60 * 0.0102 / 0.0137) = 6.68: the plan's 6 is next to it
    assert optimal_subjects(b2, w2, 60, 1) == pytest.approx(math.sqrt(60 * w2 / b2))
    assert optimal_subjects(0.01, 0.01, 30.0, 0.5) == pytest.approx(math.sqrt(60))
    cost = {n: (0.01 + 0.01 / n) * (30 + 0.5 * n) for n in range(1, 30)}
    assert min(cost, key=cost.get) == 8  # the integer next to sqrt(60) = 7.75
    assert optimal_subjects(0.0, 0.01, 30, 0.5) == math.inf
    short = plan(b2, w2, budget_minutes=100, minutes_per_draw=60, minutes_per_subject=1, max_subjects=18)
    assert short["draws"] is None and math.isnan(short["mde"])  # not even MIN_DRAWS draws fit
    fixed = plan(b2, w2, budget_minutes=600, minutes_per_draw=60, minutes_per_subject=1, fixed_minutes=200,
                 max_subjects=18)
    # 400 minutes left: 6 draws of up to 6 subjects (MDE 0.178) beat 5 of 18 (0.201)
    assert (fixed["draws"], fixed["subjects"], fixed["minutes"]) == (6, 6, 596)
    assert fixed["mde"] == pytest.approx(minimal_detectable_effect(b2, w2, 6, 6))
    assert fixed["mde"] < minimal_detectable_effect(b2, w2, 5, 18)


def test_cluster_bootstrap_resamples_draws_then_subjects():
    assert cluster_bootstrap([[0.3, 0.3], [0.3, np.nan]]) == pytest.approx((0.3, 0.3))
    # draws {0} and {1}: resampled means 0, 0.5, 1 with p 1/4, 1/2, 1/4
    assert cluster_bootstrap([[0.0], [1.0]]) == (0.0, 1.0)
    # two identical draws {0, 1}: a resampled draw mean is 0 / 0.5 / 1 with p 1/4, 1/2, 1/4, independently
    # for each chosen draw, so the mean is 0 with p 1/16 < 10 % and the 80 % interval is [0.25, 0.75];
    # a draw chosen twice sharing one subject resample would put 5/32 > 10 % at 0
    assert cluster_bootstrap([[0.0, 1.0], [0.0, 1.0]], level=0.8, resamples=20_000) == (0.25, 0.75)


def test_compare_scores_reports_the_design():
    method = {g: {s: 0.6 + 0.02 * g + 0.01 * i for i, s in enumerate("abcd")} for g in range(5)}
    reference = {g: {s: 0.6 for s in "abcd"} for g in range(5)}
    del method[4]["d"]  # draw 4 has three subjects
    r = compare_scores(method, reference)
    means = [0.015 + 0.02 * g for g in range(4)] + [0.01 + 0.08]
    assert r["draws"] == 5 and r["subjects"] == [4, 4, 4, 4, 3]
    assert r["draw_differences"] == pytest.approx(means) and r["difference"] == pytest.approx(np.mean(means))
    assert r["ci95"] == pytest.approx(list(t_interval(means)))
    assert (r["sigma_b2"], r["sigma_w2"]) == pytest.approx(variance_components(paired_differences(method, reference)))
    harmonic = 5 / (4 / 4 + 1 / 3)
    assert r["mde80"] == pytest.approx(minimal_detectable_effect(r["sigma_b2"], r["sigma_w2"], 5, harmonic))


@pytest.mark.parametrize("draws", [1, MIN_DRAWS - 1])
def test_below_min_draws_there_is_no_interval(draws):
    r = compare_scores({g: {"a": 0.9, "b": 0.8} for g in range(draws)}, {g: {"a": 0.1, "b": 0.2} for g in range(draws)})
    assert r["draws"] == draws and r["difference"] == pytest.approx(0.7)
    assert all(math.isnan(v) for v in r["ci95"]) and math.isnan(r["mde80"])
    assert r["interval"] == f"none: {draws} draw(s) < 3"


# --- calibration ----------------------------------------------------------------------------

@pytest.mark.parametrize("draws,ratio", GRID)
def test_t_interval_is_calibrated(draws, ratio):
    assert 0.93 <= t_coverage(draws, ratio) <= 0.97


@pytest.mark.parametrize("draws", [3, 5, 10])
def test_t_interval_is_calibrated_with_unequal_subjects(draws):
    assert 0.93 <= t_coverage(draws, MEASURED, unbalanced=True) <= 0.97
    assert 0.93 <= t_coverage(draws, 0.0, unbalanced=True) <= 0.97  # within-draw noise alone, 18 vs 6


def test_the_flat_bootstrap_fails_where_draws_vary():
    # 3 draws x 18 subjects at the measured ratio: the issue's ~37 %
    assert flat_coverage(3, MEASURED) < 0.45
    assert flat_coverage(5, MEASURED) < 0.5 and flat_coverage(10, MEASURED) < 0.5  # more draws do not cure it
    assert flat_coverage(3, 0.0) > 0.9  # with no draw effect the pairs are independent and it was fine


def test_the_cluster_bootstrap_undercovers_with_few_draws():
    assert cluster_coverage(3, MEASURED) < 0.8
    assert cluster_coverage(5, MEASURED) < 0.9 and cluster_coverage(10, MEASURED) < 0.93
    assert cluster_coverage(3, 0.0) > 0.96  # and overcovers without a draw effect: the within spread counted twice


# --- MIN_DRAWS: coverage under non-normal draw effects --------------------------------------

LAWS = {  # standardised draw-effect laws
    "t3": lambda rng, shape: rng.standard_t(3, shape) / math.sqrt(3),
    "gamma2": lambda rng, shape: (rng.gamma(2.0, 1.0, shape) - 2.0) / math.sqrt(2.0),  # skewness 1.41
    # one draw in ten a failed run 4 SDs down, the others N(0, 0.6^2); centred and scaled
    "outlier": lambda rng, shape: (0.6 * rng.standard_normal(shape) - 4.0 * (rng.random(shape) < 0.1) + 0.4)
    / math.sqrt(0.36 + 16 * 0.09),
}


@functools.lru_cache(maxsize=None)
def law_coverage(law, draws):
    x = _scores([draws, len(law), 7], draws, MEASURED, effects=LAWS[law])
    return _covered(*t_interval(x.mean(axis=-1)))


@pytest.mark.parametrize("law", list(LAWS))
def test_min_draws_coverage_is_no_worse_than_with_more_draws(law):
    """At MIN_DRAWS the t interval keeps >= 0.91 under skewed, heavy-tailed or outlying draw
    effects; more draws do not raise that (skewness shows most at 5 to 10 draws), so a higher
    threshold would buy power, which the MDE reports, not validity."""
    assert law_coverage(law, MIN_DRAWS) >= 0.91
    assert law_coverage(law, MIN_DRAWS) >= max(law_coverage(law, 5), law_coverage(law, 10)) - 0.015


def coverage_table(boot_grid=BOOT_GRID) -> list[str]:
    """The coverage of 0 by each interval, as docs/benchmarks.md quotes it."""
    lines = ["| draws | sigma_b/sigma_w | t on draw means | flat bootstrap | cluster bootstrap |", "|---|---|---|---|---|"]
    for draws, ratio in GRID:
        boot = [f"{f(draws, ratio):.3f}" if (draws, ratio) in boot_grid else "" for f in (flat_coverage, cluster_coverage)]
        lines.append(f"| {draws} | {ratio:.2f} | {t_coverage(draws, ratio):.3f} | {boot[0]} | {boot[1]} |")
    lines += [f"| {d} | {r:.2f}, {'/'.join(map(str, UNBALANCED))} subjects | {t_coverage(d, r, True):.3f} | | |"
              for d in (3, 5, 10) for r in (0.0, MEASURED)]
    lines += [""] + [f"{law}: " + ", ".join(f"{d} draws {law_coverage(law, d):.3f}" for d in (2, MIN_DRAWS, 5, 10))
                     for law in LAWS]
    return lines


if __name__ == "__main__":  # python tests/test_intervals.py [--all]: --all runs the bootstraps on every cell too
    import sys

    print("\n".join(coverage_table(GRID if "--all" in sys.argv else BOOT_GRID)))
