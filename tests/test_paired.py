"""Benchmark cells compared by draw: the summary, results.md and the CLI table, by hand."""

from __future__ import annotations

import json
import math

import pytest

from ssmtl.api.errors import SsmtlError
from ssmtl.experiments.intervals import minimal_detectable_effect, variance_components
from ssmtl.experiments.paired import compare, MIN_DRAWS, verdict, volume_scores
from ssmtl.experiments.results import render_markdown, summarise_cells, verdict_lines

T2_975 = 0.95 * math.sqrt(2 / (1 - 0.95 ** 2))  # t_{0.975, 2} in closed form (2 d.o.f.): 4.3027


def _cell(method, seed, scores, budget=1, failures=None):
    per_volume = [{"subject": s, "mean_dice": d} for s, d in scores.items()]
    mean = sum(scores.values()) / len(scores)
    per_class = {"lv": {"dice": mean, "missed": (failures or {}).get("missed", 0),
                        "false_positive": (failures or {}).get("false_positive", 0)}}
    return {"method": method, "protocol": "finetune", "labeled_volumes": budget, "draw": seed, "mean_dice": mean,
            "mean_hd95": 1.0, "per_class": per_class, "per_volume": per_volume}


def _results(rows, seeds, subjects):
    return {"summary": list(rows.values()), "design": {"draws": seeds, "pretrain_runs": seeds, "candidates": ["default, lr 0.003"],
                                                       "pretrain_steps": {"m": 10}},
            "pretrain_data": {"file": "p.h5"}, "finetune_data": {"file": "f.h5"}, "test_subjects": subjects}


def test_volume_scores_average_a_subjects_volumes_and_skip_nan():
    cell = {"per_volume": [{"subject": "a", "mean_dice": 0.5}, {"subject": "a", "mean_dice": 0.7},
                           {"subject": "b", "mean_dice": math.nan}, {"subject": "c", "mean_dice": None}]}
    assert volume_scores(cell) == pytest.approx({"a": 0.6})


def test_cells_pair_by_draw_and_subject():
    method = {0: _cell("m", 0, {"a": 0.8, "b": 0.6}), 1: _cell("m", 1, {"a": 0.7, "b": 0.9, "c": 0.5})}
    reference = {0: _cell("r", 0, {"a": 0.7, "b": 0.7}), 1: _cell("r", 1, {"a": 0.7, "b": 0.6}), 2: _cell("r", 2, {"a": 0.1})}
    result = compare(method, reference)  # seed 1 subject c and seed 2 have no partner
    assert result["draw_differences"] == pytest.approx([0.0, 0.15]) and result["pair_mean"] == pytest.approx(0.075)
    assert result["draws"] == 2 and result["subjects"] == [2, 2] and result["subject_pairs"] == 4
    assert all(math.isnan(v) for v in result["ci95"]) and math.isnan(result["mde80"])  # 2 draws < MIN_DRAWS
    assert result["verdict"] == verdict(result["ci95"]) == "too few draws to tell (an interval needs 3)"


def test_three_draws_give_the_t_interval_and_a_verdict():
    # draw means 0.10, 0.12, 0.14 (every subject alike in a draw): 0.12 +- 4.3027 * 0.02 / sqrt(3)
    method = {(s, 0): _cell("m", s, {"a": 0.6 + 0.02 * s, "b": 0.7 + 0.02 * s}) for s in range(3)}
    reference = {(s, 0): _cell("r", s, {"a": 0.5, "b": 0.6}) for s in range(3)}  # draw ids (seed, pretrain seed)
    result = compare(method, reference)
    half = T2_975 * 0.02 / math.sqrt(3)
    assert MIN_DRAWS == 3 and result["draws"] == 3 and result["subjects"] == [2, 2, 2]
    assert result["ci95"] == pytest.approx([0.12 - half, 0.12 + half]) and result["verdict"] == "better"
    assert (result["sigma_b2"], result["sigma_w2"]) == pytest.approx((0.0004, 0.0))
    assert result["mde80"] == pytest.approx(3.264 * 0.02, abs=1e-4)  # 3 draws: 3.264 draw SDs


def test_one_draw_on_one_subject_is_never_called_better():
    """One draw: no spread between draws to measure, so no interval and no verdict."""
    result = compare({0: _cell("m", 0, {"a": 0.9})}, {0: _cell("r", 0, {"a": 0.1})})
    assert result["draws"] == 1 and result["pair_mean"] == pytest.approx(0.8)
    assert result["verdict"].startswith("too few draws") and all(math.isnan(v) for v in result["ci95"])
    rows = {r["method"]: r for r in summarise_cells([_cell("scratch", 0, {"a": 0.1}), _cell("m", 0, {"a": 0.9})],
                                                      references=("scratch",))}
    text = render_markdown(_results(rows, 1, ["a"]))
    assert "+0.800 [none: 1 draw < 3]" in text and "too few draws to tell" in text and ": better" not in text


def test_verdict_reads_the_interval():
    assert verdict([0.01, 0.05]) == "better"
    assert verdict([-0.05, -0.01]) == "worse"
    assert verdict([-0.01, 0.05]) == "no clear difference"


def _three_seed_cells():
    cells = []
    for seed in range(3):
        shift = (0.0, 0.06, -0.03)[seed]  # the draws differ: what the interval is built on
        cells.append(_cell("scratch", seed, {"a": 0.50, "b": 0.60, "c": 0.55}, failures={"missed": 1}))
        cells.append(_cell("multi", seed, {"a": 0.60 + shift, "b": 0.65 + shift, "c": 0.62 + shift}))
        cells.append(_cell("base", seed, {"a": 0.58, "b": 0.70, "c": 0.50}, failures={"false_positive": 2}))
    return cells


def test_summary_and_markdown_carry_draws_mde_and_failures():
    rows = {r["method"]: r for r in summarise_cells(_three_seed_cells(), references=("scratch", "base"))}
    vs = rows["multi"]["vs_scratch"]
    # per-draw differences: a +0.10, b +0.05, c +0.07 plus the draw's shift
    means = [0.22 / 3, 0.22 / 3 + 0.06, 0.22 / 3 - 0.03]
    assert vs["draws"] == 3 and vs["subjects"] == [3, 3, 3] and vs["pair_mean"] == pytest.approx(sum(means) / 3)
    sd = math.sqrt(sum((m - sum(means) / 3) ** 2 for m in means) / 2)
    assert vs["ci95"] == pytest.approx([sum(means) / 3 - T2_975 * sd / math.sqrt(3), sum(means) / 3 + T2_975 * sd / math.sqrt(3)])
    diffs = {s: [0.10 + d, 0.05 + d, 0.07 + d] for s, d in enumerate((0.0, 0.06, -0.03))}
    assert (vs["sigma_b2"], vs["sigma_w2"]) == pytest.approx(variance_components(diffs))
    assert vs["mde80"] == pytest.approx(minimal_detectable_effect(vs["sigma_b2"], vs["sigma_w2"], 3, 3))
    assert vs["verdict"] == "no clear difference"  # +0.083, but three draws spread 0.045 apart
    assert rows["scratch"]["failures"] == {"lv": {"missed": 3, "false_positive": 0}}
    assert rows["base"]["failures"] == {"lv": {"missed": 0, "false_positive": 6}}
    json.loads(json.dumps(rows["multi"]))  # results.json holds it as it is

    results = _results(rows, 3, ["a", "b", "c"])
    text = render_markdown(results)
    interval = f"{vs['ci95'][0]:+.3f}, {vs['ci95'][1]:+.3f}; 3 draws, MDE {vs['mde80']:.3f}"
    assert f"| multi | {vs['pair_mean']:+.3f} [{interval}] (3/3) |" in text  # the difference table; 3 of 3 seeds favour multi
    assert "## Verdict" in text and "The unit of replication is the draw" in text and "none below 3 units" in text
    assert (f"**multi** vs scratch: {vs['pair_mean']:+.3f} mean Dice (95 % CI {interval.replace(', ', ' to ', 1)}; "
            "3 test subject(s) each): no clear difference") in text
    assert "(seed, test subject)" not in text and "bootstrap" not in text
    assert "| scratch | 1 | 3 / 0 |" in text and "| base | 1 | 0 / 6 |" in text
    assert any(line.startswith("CT->CT, finetune, 1 labeled: **multi** vs base") for line in verdict_lines(results, "CT->CT"))


def test_cli_table_shows_draws_and_mde():
    from rich.console import Console

    from ssmtl.cli.benchmark_cmd import render_table

    rows = {r["method"]: r for r in summarise_cells(_three_seed_cells())}
    vs = rows["multi"]["vs_scratch"]
    console = Console(record=True, width=400)
    console.print(render_table(_results(rows, 3, ["a", "b", "c"])))
    text = console.export_text()
    assert f"; 3 draws, MDE {vs['mde80']:.3f}])" in text and "none below 3" in text and "(seed, test subject)" not in text


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


def test_a_summary_from_before_the_draw_is_refused():
    """results.json written by the flat bootstrap has pairs, no draws: its interval must not be read as by draw."""
    old = {"method": "multi", "protocol": "finetune", "labeled_volumes": 1,
           "vs_scratch": {"pair_mean": 0.03, "ci95": [0.01, 0.05], "subject_pairs": 54}}
    with pytest.raises(SsmtlError, match="run the same `ssmtl benchmark` command again"):
        verdict_lines({"summary": [old]})
