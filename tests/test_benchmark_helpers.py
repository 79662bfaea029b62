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
