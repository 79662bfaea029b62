"""Print the verdict of a protocol run as Markdown, ready for the top of docs/benchmarks.md.

    python benchmarks/verdict.py benchmarks/out/cpu          # every setting under the folder
    python benchmarks/verdict.py benchmarks/out/cpu/ct-ct    # one setting

For every setting (a folder with a results.json written by `ssmtl benchmark`): its design
(draws, pre-training runs per method, the fine-tuning candidates chosen on validation, test
subjects), then one line per (protocol, label budget, method, reference): the paired
difference in mean Dice, its 95 % t interval over draws (over pre-training runs where draws
share one) with the number of replicates and the MDE at 80 % power, and what it says (better
/ worse when the interval excludes 0, no clear difference, or too few draws to tell). Then a
count of the verdicts of multitask against each reference, the claim the protocol tests,
with the range of MDEs: "no clear difference" only rules out differences at least that large.
"""

from __future__ import annotations

import json
import math
import sys
from collections import Counter
from pathlib import Path

from ssmtl.experiments.paired import compare
from ssmtl.experiments.results import interval_text, verdict_lines

SETTING_NAMES = {"ct-ct": "CT->CT", "ct-mr": "CT->MR", "mr-mr": "MR->MR",
                 "ct-ct-pool": "CT->CT, pre-training also on a large unlabeled pool",
                 "ct-ct-frozen": "CT->CT, frozen encoder", "ablation": "ablation (CT->CT)",
                 "ablation-position": "ablation: position positives in the contrastive task (CT->CT)"}
CLAIM_METHOD = "multitask"
#: what a setting adds to the others: the frozen setting its frozen-encoder rows (its fine-tuned
#: rows repeat CT->CT with fewer candidates); the ablation its variants, against scratch and
#: against the full multitask pre-training (its multitask row repeats CT->CT with fewer draws)
PROTOCOLS = {"ct-ct-frozen": {"frozen"}}
VARIANTS_OF = {"ablation": CLAIM_METHOD}
#: a setting's method against another setting's, paired by draw (the same draws: the same labeled
#: and validation subjects and seeds): position positives against ct-ct's multitask
ACROSS = {"ablation-position": ("multitask", "ct-ct", "multitask")}
#: the settings whose multitask rows count towards the claim (the ablations ask other questions)
CLAIM_SETTINGS = ("ct-ct", "ct-mr", "ct-ct-pool", "ct-ct-frozen")
VERDICTS = ("better", "no clear difference", "worse")


def setting_name(folder: str) -> str:
    return SETTING_NAMES.get(folder, folder)


def settings(root: Path) -> list[Path]:
    if (root / "results.json").is_file():
        return [root]
    order = list(SETTING_NAMES)
    found = sorted(p.parent for p in root.glob("*/results.json"))
    return sorted(found, key=lambda p: (order.index(p.name) if p.name in order else len(order), p.name))


def design_line(results: dict) -> str:
    design = results["design"]
    runs = design["pretrain_runs"]
    per_run = ("one pre-training run per draw" if runs == design["draws"] else
               f"{runs} pre-training runs per method (draw d uses run {design.get('draw_to_pretrain_run', f'd mod {runs}')})")
    planned = design.get("draws_planned", design["draws"])
    per_run += f"; {planned} draws planned, not all done yet" if planned > design["draws"] else ""
    steps = ", ".join(f"{m} {s}" for m, s in design["pretrain_steps"].items()) or "none"
    pool = results.get("cohort") or {}
    pool_text = f"; pre-training reads {pool['subjects']} subjects, {pool['pool']} of them from outside the cohort" if pool.get("pool") else ""
    return (f"{design['draws']} draws, {per_run}; pre-training steps {steps}; fine-tuning candidates "
            f"{'; '.join(design['candidates'])} (kept per draw on validation); {len(results['test_subjects'])} test subjects{pool_text}.")


def by_method(cells: list[dict]) -> dict[tuple[str, int], dict[int, dict]]:
    """(method, budget) -> draw -> cell, fine-tuning protocol."""
    by: dict[tuple[str, int], dict[int, dict]] = {}
    for cell in cells:
        if cell["protocol"] == "finetune":
            by.setdefault((cell["method"], cell["labeled_volumes"]), {})[cell["draw"]] = cell
    return by


def pair_line(budget: int, method: str, cells: dict, reference: str, ref: dict) -> str:
    d = compare(cells, ref)
    return (f"finetune, {budget} labeled: **{method}** vs {reference}: {d['pair_mean']:+.3f} mean Dice "
            f"(95 % CI {interval_text(d, ' to ')}): {d['verdict']}")


def against(results: dict, reference: str) -> list[str]:
    """Every other pre-trained method of a setting against ``reference``, paired by draw."""
    by = by_method(results["cells"])
    return [pair_line(budget, method, cells, reference, by[(reference, budget)]) for (method, budget), cells in by.items()
            if method != reference and (reference, budget) in by and next(iter(cells.values()))["tasks"]]


def across(results: dict, method: str, theirs: dict, reference: str, where: str) -> list[str]:
    """A method of this setting against a method of another setting with the same draws, paired by draw."""
    mine, other = by_method(results["cells"]), by_method(theirs["cells"])
    return [pair_line(budget, method, cells, f"{reference} ({where})", other[(reference, budget)])
            for (name, budget), cells in mine.items() if name == method and (reference, budget) in other]


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        print("usage: python benchmarks/verdict.py OUT_DIR", file=sys.stderr)
        return 2
    root = Path(argv[0])
    found = settings(root)
    if not found:
        print(f"error: {root}: no results.json (run the protocol first)", file=sys.stderr)
        return 2
    tally: Counter[tuple[str, str]] = Counter()
    mdes: dict[str, list[float]] = {}
    out = []
    for path in found:
        results = json.loads((path / "results.json").read_text())
        if "design" not in results:
            print(f"error: {path / 'results.json'}: written before draws were the unit; run its benchmark again", file=sys.stderr)
            return 2
        out += [f"### {setting_name(path.name)}", "", design_line(results), ""]
        shown = [r for r in results["summary"] if r["protocol"] in PROTOCOLS.get(path.name, {r["protocol"]})
                 and r["method"] != VARIANTS_OF.get(path.name)]
        out += [f"- {line}" for line in verdict_lines({**results, "summary": shown})]
        if path.name in VARIANTS_OF:
            out += [f"- {line}" for line in against(results, VARIANTS_OF[path.name])]
        if path.name in ACROSS and (path.parent / ACROSS[path.name][1] / "results.json").is_file():
            method, other, reference = ACROSS[path.name]
            theirs = json.loads((path.parent / other / "results.json").read_text())
            out += [f"- {line}" for line in across(results, method, theirs, reference, setting_name(other))]
        out.append("")
        if path.name not in CLAIM_SETTINGS:
            continue
        for row in shown:
            for key in (k for k in row if k.startswith("vs_")):
                d = row[key]
                if row["method"] == CLAIM_METHOD and d.get("draws"):
                    tally[(key[3:], d["verdict"])] += 1
                    if not math.isnan(d["mde80"]):
                        mdes.setdefault(key[3:], []).append(d["mde80"])
    if tally:
        out += [f"### {CLAIM_METHOD}, all settings and budgets", ""]
        for reference in dict.fromkeys(r for r, _ in tally):
            counts = {v: tally[(reference, v)] for v in VERDICTS}
            few = sum(n for (r, v), n in tally.items() if r == reference and v not in VERDICTS)
            seen = mdes.get(reference)
            power = (f"; MDE at 80 % power {min(seen):.3f} to {max(seen):.3f}" if seen else "")
            out.append(f"- against {reference}: better in {counts['better']}, no clear difference in "
                       f"{counts['no clear difference']}, worse in {counts['worse']}"
                       + (f", too few draws to tell in {few}" if few else "") + f" (setting, protocol, budget) cells{power}")
        out += ["", "A difference below a comparison's MDE can hide in \"no clear difference\": that verdict rules out "
                "only differences about as large as the MDE or larger.", ""]
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
