"""Paired differences over (seed, test subject) and their bootstrap interval, by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ssmtl.experiments.paired import bootstrap_ci, compare, MIN_PAIRS, paired_differences, verdict
from ssmtl.experiments.results import render_markdown, summarise_cells, verdict_lines


def test_bootstrap_of_a_constant_is_that_constant():
    assert bootstrap_ci([0.3] * 7) == pytest.approx((0.3, 0.3))
    assert all(math.isnan(v) for v in bootstrap_ci([]))


def test_bootstrap_hand_computed_distributions():
    # two pairs 0 and 1: resampled means 0 (p 1/4), 0.5 (1/2), 1 (1/4): the 2.5 % and 97.5 % points are 0 and 1
    assert bootstrap_ci([0.0, 1.0]) == (0.0, 1.0)
    # -1, 1, 1: means -1 (p 1/27 = 3.7 % > 2.5 %), ..., 1 (p 8/27 = 30 %): the interval is [-1, 1]
    assert bootstrap_ci([-1.0, 1.0, 1.0]) == (-1.0, 1.0)
    # 0 x 99 and 1 x 1: a resample holds no 1 with p 0.99^100 = 36.6 %, so the lower end is 0
    low, high = bootstrap_ci([0.0] * 99 + [1.0])
    assert low == 0.0 and 0.02 <= high <= 0.04  # 97.5 % point of Binomial(100, 0.01) / 100 = 0.03


def test_bootstrap_matches_a_loop_reference():
    values = [0.12, -0.05, 0.3, 0.07, 0.0, -0.2, 0.15]
    rng = np.random.default_rng(0)  # the documented fixed seed, 10 000 resamples
    picks = rng.integers(0, len(values), size=(10_000, len(values)))
    means = sorted(sum(values[i] for i in row) / len(values) for row in picks)

    def percentile(q):  # linear interpolation between order statistics, written out
        pos = q * (len(means) - 1)
        lo = math.floor(pos)
        return means[lo] + (pos - lo) * (means[min(lo + 1, len(means) - 1)] - means[lo])

    low, high = bootstrap_ci(values)
    assert low == pytest.approx(percentile(0.025), abs=1e-12) and high == pytest.approx(percentile(0.975), abs=1e-12)
    assert bootstrap_ci(values) == (low, high)  # same seed, same interval


def _cell(method, seed, scores, budget=1, failures=None):
    per_volume = [{"subject": s, "mean_dice": d} for s, d in scores.items()]
    mean = sum(scores.values()) / len(scores)
    per_class = {"lv": {"dice": mean, "missed": (failures or {}).get("missed", 0),
                        "false_positive": (failures or {}).get("false_positive", 0)}}
    return {"method": method, "protocol": "finetune", "labeled_volumes": budget, "seed": seed, "mean_dice": mean,
            "mean_hd95": 1.0, "per_class": per_class, "per_volume": per_volume}


def test_pairs_are_matched_by_seed_and_subject():
    method = {0: _cell("m", 0, {"a": 0.8, "b": 0.6}), 1: _cell("m", 1, {"a": 0.7, "b": 0.9, "c": 0.5})}
    reference = {0: _cell("r", 0, {"a": 0.7, "b": 0.7}), 1: _cell("r", 1, {"a": 0.7, "b": 0.6}), 2: _cell("r", 2, {"a": 0.1})}
    diffs = paired_differences(method, reference)
    assert diffs == pytest.approx([0.1, -0.1, 0.0, 0.3])  # seed 1 subject c and seed 2 have no partner
    result = compare(method, reference)
    assert result["pair_mean"] == pytest.approx(0.075) and result["subject_pairs"] == 4
    assert all(math.isnan(v) for v in result["ci95"])  # 4 pairs < MIN_PAIRS: no interval
    assert verdict(result["ci95"]).startswith("too few pairs")
    six = {0: _cell("m", 0, {s: 0.6 for s in "abcdef"})}
    result = compare(six, {0: _cell("r", 0, {s: 0.5 + 0.01 * i for i, s in enumerate("abcdef")})})
    assert result["subject_pairs"] == MIN_PAIRS == 6
    assert result["ci95"][0] <= result["pair_mean"] <= result["ci95"][1] and verdict(result["ci95"]) == "better"


def test_one_seed_on_one_subject_is_never_called_better():
    """One pair: a degenerate interval [d, d] would call any difference significant."""
    result = compare({0: _cell("m", 0, {"a": 0.9})}, {0: _cell("r", 0, {"a": 0.1})})
    assert result["subject_pairs"] == 1 and result["pair_mean"] == pytest.approx(0.8)
    assert verdict(result["ci95"]) != "better"
    rows = {r["method"]: r for r in summarise_cells([_cell("scratch", 0, {"a": 0.1}), _cell("m", 0, {"a": 0.9})],
                                                      references=("scratch",))}
    results = {"summary": list(rows.values()), "config": {"pretrain_steps": 1, "finetune_steps": 1, "seeds": 1},
               "pretrain_data": {"path": "p.h5"}, "finetune_data": {"path": "f.h5"}, "test_subjects": ["a"]}
    text = render_markdown(results)
    assert "+0.800 [none: 1 pair(s) < 6]" in text and "too few pairs to tell" in text and ": better" not in text


def test_verdict_reads_the_interval():
    assert verdict([0.01, 0.05]) == "better"
    assert verdict([-0.05, -0.01]) == "worse"
    assert verdict([-0.01, 0.05]) == "no clear difference"


def test_summary_and_markdown_carry_the_interval_and_failures():
    cells = []
    for seed in range(3):
        cells.append(_cell("scratch", seed, {"a": 0.50, "b": 0.60, "c": 0.55}, failures={"missed": 1}))
        cells.append(_cell("multi", seed, {"a": 0.60, "b": 0.65, "c": 0.62}))
        cells.append(_cell("base", seed, {"a": 0.58, "b": 0.70, "c": 0.50}, failures={"false_positive": 2}))
    rows = {r["method"]: r for r in summarise_cells(cells, references=("scratch", "base"))}
    vs = rows["multi"]["vs_scratch"]
    assert vs["subject_pairs"] == 9 and vs["pair_mean"] == pytest.approx((0.10 + 0.05 + 0.07) / 3)
    assert vs["ci95"][0] > 0  # every pair favours multi
    assert rows["scratch"]["failures"] == {"lv": {"missed": 3, "false_positive": 0}}
    assert rows["base"]["failures"] == {"lv": {"missed": 0, "false_positive": 6}}
    results = {"summary": list(rows.values()), "config": {"pretrain_steps": 10, "finetune_steps": 5, "seeds": 3},
               "pretrain_data": {"path": "p.h5"}, "finetune_data": {"path": "f.h5"}, "test_subjects": ["a", "b", "c"]}
    text = render_markdown(results)
    assert "## Verdict" in text and "95 % CI" in text
    assert "**multi** vs scratch: +0.073 mean Dice" in text and ": better" in text
    assert "| scratch | 1 | 3 / 0 |" in text and "| base | 1 | 0 / 6 |" in text
    assert any(line.startswith("CT->CT, finetune, 1 labeled: **multi** vs base") for line in verdict_lines(results, "CT->CT"))


def test_frozen_cells_compare_with_frozen_contrastive_and_fine_tuned_scratch():
    cells = []
    for seed in range(2):
        cells.append(_cell("scratch", seed, {"a": 0.5}))
        for method, ft, frozen in (("contrastive", 0.6, 0.4), ("multi", 0.7, 0.45)):
            cells.append(_cell(method, seed, {"a": ft}))
            cells.append({**_cell(method, seed, {"a": frozen}), "protocol": "frozen"})
    rows = {(r["protocol"], r["method"]): r for r in summarise_cells(cells, references=("scratch", "contrastive"))}
    assert rows[("frozen", "multi")]["vs_contrastive"]["pair_mean"] == pytest.approx(0.05)  # frozen vs frozen
    assert rows[("frozen", "multi")]["vs_scratch"]["pair_mean"] == pytest.approx(-0.05)  # vs fine-tuned scratch
    assert rows[("finetune", "multi")]["vs_contrastive"]["pair_mean"] == pytest.approx(0.1)
