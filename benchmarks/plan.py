"""Plan a protocol's draws from its pilot: measured costs, variance components, the MDE.

    python benchmarks/plan.py OUT/ct-ct OUT/ct-mr --budget-hours 11 [--json OUT/plan.json]

The pilot is the first draws of the real settings (the same design, so nothing is thrown
away). From each setting's results.json it takes

* the **cost of one draw** of all the given settings together, in CPU minutes: the
  pre-training runs a draw adds (a run that several settings share counted once) and every
  fine-tuning run of its cells (all candidates of the lr/recipe grid), and the cost **per
  test subject**: evaluation minutes per subject, over the kept run of every cell;
* the **variance components** of every comparison (between-draw ``sigma_b^2``,
  within-draw ``sigma_w^2``; :func:`ssmtl.experiments.intervals.variance_components`);

and asks :func:`ssmtl.experiments.intervals.plan` for the draws x test subjects with the
smallest MDE (80 % power) within the budget, for the comparison with the largest draw
variance (the design has to serve every comparison, so it is planned for the hardest).
It prints the MDE of every comparison at that design, and how many draws detecting 0.05
and 0.10 Dice would take. With a 3-draw pilot the components are rough (a variance from 3
draws has 2 degrees of freedom): the plan sizes the run; it is no result.

Timings are the seconds each run took when it was made (a reused run keeps its own), on
whatever machine made it; runs made two at a time on two cores count one core each.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from ssmtl.experiments.intervals import MIN_DRAWS, minimal_detectable_effect, plan

EFFECTS = (0.05, 0.10)


def load(folder: Path) -> dict:
    path = folder / "results.json"
    if not path.is_file():
        raise SystemExit(f"error: {path}: no results (run the pilot first)")
    results = json.loads(path.read_text())
    if "design" not in results:
        raise SystemExit(f"error: {path}: written before draws; re-run the benchmark")
    return results


def costs(settings: list[dict]) -> dict:
    """CPU minutes per draw (pre-training + fine-tuning) and per test subject (evaluation)."""
    pretrain, finetune, evaluate, subjects = {}, {}, {}, []
    draws = max(len({c["draw"] for c in r["cells"]}) for r in settings)
    for results in settings:
        for run in results["pretrain_runs"]:
            pretrain[run["dir"]] = run["seconds"] or 0.0
        for cell in results["cells"]:
            runs = tuple(c.get("run") for c in cell["candidates"])
            finetune[runs] = cell["seconds"]["finetune"] or 0.0
            kept = next(c.get("run") for c in cell["candidates"] if c["lr"] == cell["lr"] and c["recipe"] == cell["recipe"])
            evaluate[kept] = cell["seconds"]["evaluate"] or 0.0
            subjects.append(len(cell["test_subjects"] or []))
    n = max(subjects) if subjects else 1
    return {"pilot_draws": draws, "subjects": n,
            "pretrain_minutes_per_draw": sum(pretrain.values()) / 60 / draws,
            "finetune_minutes_per_draw": sum(finetune.values()) / 60 / draws,
            "evaluate_minutes_per_subject": sum(evaluate.values()) / 60 / draws / n}


def comparisons(folder: Path, results: dict) -> list[dict]:
    out = []
    for row in results["summary"]:
        for key in (k for k in row if k.startswith("vs_")):
            d = row[key]
            if d.get("units", 0) < 2 or d.get("sigma_b2") is None or math.isnan(d["sigma_b2"]):
                continue
            out.append({"setting": folder.name, "protocol": row["protocol"], "budget": row["labeled_volumes"],
                        "method": row["method"], "reference": key[3:], "sigma_b2": d["sigma_b2"],
                        "sigma_w2": 0.0 if math.isnan(d["sigma_w2"]) else d["sigma_w2"], "units": d["units"]})
    return out


def draws_for(effect: float, sigma_b2: float, sigma_w2: float, subjects: int, limit: int = 2000) -> int | None:
    """The fewest draws whose MDE is at most ``effect`` (None beyond ``limit``)."""
    low, high = MIN_DRAWS, limit
    if minimal_detectable_effect(sigma_b2, sigma_w2, high, subjects) > effect:
        return None
    while low < high:
        mid = (low + high) // 2
        if minimal_detectable_effect(sigma_b2, sigma_w2, mid, subjects) <= effect:
            high = mid
        else:
            low = mid + 1
    return low


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("settings", nargs="+", type=Path, help="pilot setting folders (each with a results.json)")
    parser.add_argument("--budget-hours", type=float, required=True, help="CPU hours for these settings, the pilot's draws included")
    parser.add_argument("--json", type=Path, help="write the plan here too")
    args = parser.parse_args(argv)
    loaded = [(folder, load(folder)) for folder in args.settings]
    cost = costs([r for _, r in loaded])
    found = [c for folder, r in loaded for c in comparisons(folder, r) if c["protocol"] == "finetune"]
    if not found:
        print("error: no comparison with 2 or more draws in the pilot: nothing to estimate the variance from", file=sys.stderr)
        return 2
    n = cost["subjects"]
    hardest = max(found, key=lambda c: c["sigma_b2"] + c["sigma_w2"] / n)
    per_draw = cost["pretrain_minutes_per_draw"] + cost["finetune_minutes_per_draw"]
    best = plan(hardest["sigma_b2"], hardest["sigma_w2"], budget_minutes=args.budget_hours * 60, minutes_per_draw=per_draw,
                minutes_per_subject=cost["evaluate_minutes_per_subject"], max_subjects=n)
    draws = best["draws"] or MIN_DRAWS
    rows = []
    for c in found:
        mde = minimal_detectable_effect(c["sigma_b2"], c["sigma_w2"], draws, n)
        rows.append({**c, "mde80": mde, **{f"draws_for_{e}": draws_for(e, c["sigma_b2"], c["sigma_w2"], n) for e in EFFECTS}})
    result = {"draws": draws, "planner_subjects": best["subjects"], "test_subjects": n, "budget_cpu_hours": args.budget_hours,
              "cpu_minutes_per_draw": per_draw + n * cost["evaluate_minutes_per_subject"], **cost,
              "planned_for": {k: hardest[k] for k in ("setting", "method", "reference", "sigma_b2", "sigma_w2")},
              "mde80": best["mde"], "comparisons": rows,
              "note": f"variance components from a {cost['pilot_draws']}-draw pilot: rough; the plan sizes the run, it is no result"}
    print(f"Pilot: {cost['pilot_draws']} draws of {', '.join(f.name for f, _ in loaded)}; one more draw of them all costs "
          f"{result['cpu_minutes_per_draw']:.0f} CPU minutes ({cost['pretrain_minutes_per_draw']:.0f} pre-training, "
          f"{cost['finetune_minutes_per_draw']:.0f} fine-tuning, {n * cost['evaluate_minutes_per_subject']:.1f} testing "
          f"{n} subjects).")
    print(f"Planned for the comparison with the largest draw variance, {hardest['setting']}: {hardest['method']} vs "
          f"{hardest['reference']} (sigma_b {math.sqrt(hardest['sigma_b2']):.3f}, sigma_w {math.sqrt(hardest['sigma_w2']):.3f}).")
    if best["draws"] is None:
        print(f"The budget of {args.budget_hours:g} CPU hours does not fit {MIN_DRAWS} draws; planning {MIN_DRAWS}.")
    else:
        print(f"Within {args.budget_hours:g} CPU hours: {draws} draws x {n} test subjects "
              f"(the planner's best subject count is {best['subjects']}; testing all {n} costs little), MDE at 80 % power "
              f"{best['mde']:.3f} Dice.")
    print("\n| setting | comparison | sigma_b | sigma_w | MDE at this design | draws for MDE 0.05 | draws for MDE 0.10 |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['setting']} | {r['method']} vs {r['reference']} | {math.sqrt(r['sigma_b2']):.3f} | {math.sqrt(r['sigma_w2']):.3f} | "
              f"{r['mde80']:.3f} | {r['draws_for_0.05'] or '> 2000'} | {r['draws_for_0.1'] or '> 2000'} |")
    print(f"\n{result['note']}.")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
