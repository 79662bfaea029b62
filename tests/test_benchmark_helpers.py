"""The arithmetic of the benchmark scripts (their timings are measured by running them, not here)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import scaling  # noqa: E402


def test_linear_fit_against_a_hand_computation():
    # y = 2 + 3x exactly: slope 3, intercept 2, R² 1
    assert scaling.linear_fit([4, 16, 64], [14, 50, 194]) == {"slope": 3.0, "intercept": 2.0, "r2": 1.0}
    # x = 0, 1, 2 and y = 0, 2, 1: slope 0.5, intercept 0.5; residuals -0.5, 1, -0.5 -> SSres 1.5, SStot 2
    fit = scaling.linear_fit([0, 1, 2], [0, 2, 1])
    assert fit["slope"] == pytest.approx(0.5) and fit["intercept"] == pytest.approx(0.5)
    assert fit["r2"] == pytest.approx(1 - 1.5 / 2)


def test_steady_throughput_skips_the_warm_up_and_skipped_steps(tmp_path):
    lines = [{"step": s, "slices_per_s": v} for s, v in enumerate([5.0, 7.0, 100.0, 110.0, 90.0])]
    lines.insert(3, {"step": 3, "skipped": True, "nonfinite": ["order"]})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert scaling.steady_slices_per_s(tmp_path, warmup=2) == 100.0


def test_plan_counts_a_shared_pretraining_run_once_and_finds_the_draws_for_an_mde():
    import plan

    from ssmtl.experiments.intervals import minimal_detectable_effect

    def cell(draw, runs, finetune, evaluate, subjects=4):
        return {"draw": draw, "lr": 1e-3, "recipe": "default", "test_subjects": ["s"] * subjects,
                "candidates": [{"run": r, "lr": 1e-3 if i == 0 else 3e-3, "recipe": "default"} for i, r in enumerate(runs)],
                "seconds": {"finetune": finetune, "evaluate": evaluate}}

    # two settings of 2 draws share the CT pre-training runs (same folder): 600 s each, counted once
    ct_ct = {"pretrain_runs": [{"dir": f"multitask/seed{d}-x", "seconds": 600.0} for d in range(2)],
             "cells": [cell(d, [f"a{d}", f"b{d}"], 240.0, 24.0) for d in range(2)]}
    ct_mr = {"pretrain_runs": ct_ct["pretrain_runs"], "cells": [cell(d, [f"c{d}"], 120.0, 12.0) for d in range(2)]}
    cost = plan.costs([ct_ct, ct_mr])
    assert cost["pilot_draws"] == 2 and cost["subjects"] == 4
    assert cost["pretrain_minutes_per_draw"] == 10.0  # 2 runs x 600 s over 2 draws, not twice that
    assert cost["finetune_minutes_per_draw"] == 6.0 and cost["evaluate_minutes_per_subject"] == 36.0 / 60 / 4
    g = plan.draws_for(0.05, 0.0137, 0.0102, 18)
    assert minimal_detectable_effect(0.0137, 0.0102, g, 18) <= 0.05 < minimal_detectable_effect(0.0137, 0.0102, g - 1, 18)
    assert plan.draws_for(0.001, 1.0, 1.0, 18) is None  # beyond any budget
