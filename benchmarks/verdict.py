"""Print the verdict of a protocol run as Markdown, ready for the top of docs/benchmarks.md.

    python benchmarks/verdict.py benchmarks/out/cpu          # every setting under the folder
    python benchmarks/verdict.py benchmarks/out/cpu/ct-ct    # one setting

For every setting (a folder with a results.json written by `ssmtl benchmark`), one line
per (protocol, label budget, method, reference): the paired difference in mean Dice over
(seed, test subject) pairs, its 95 % bootstrap interval and what it says (better / worse
when the interval excludes 0, else no clear difference). Then a count of the verdicts of
multitask against each reference, the claim the protocol tests.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from ssmtl.experiments.paired import verdict
from ssmtl.experiments.results import verdict_lines

SETTING_NAMES = {"ct-ct": "CT->CT", "mr-mr": "MR->MR", "ct-mr": "CT->MR", "ablation": "ablation (CT->CT)",
                 "ct-ct-short": "shorter pre-training (CT->CT)", "weighting": "loss weighting (CT->CT)"}
REPEAT = "-pretrain-seed1"  # a setting repeated with every pre-training drawn from seed 1
CLAIM_METHOD = "multitask"


def setting_name(folder: str) -> str:
    base = folder.removesuffix(REPEAT)
    name = SETTING_NAMES.get(base, base)
    return f"{name}, pre-training seed 1" if folder.endswith(REPEAT) else name


def settings(root: Path) -> list[Path]:
    if (root / "results.json").is_file():
        return [root]
    found = sorted(p.parent for p in root.glob("*/results.json"))
    order = list(SETTING_NAMES)

    def rank(path: Path) -> tuple[int, str]:  # a repeat right after its setting
        base = path.name.removesuffix(REPEAT)
        return (order.index(base) if base in order else len(order), path.name)

    return sorted(found, key=rank)


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
    out = []
    for path in found:
        results = json.loads((path / "results.json").read_text())
        name = setting_name(path.name)
        cfg = results["config"]
        out += [f"### {name}", "",
                f"{cfg['seeds']} seeds, pre-training {cfg['pretrain_steps']} steps, fine-tuning {cfg['finetune_steps']} "
                f"steps, {len(results['test_subjects'])} test subjects.", ""]
        out += [f"- {line}" for line in verdict_lines(results)] + [""]
        for row in results["summary"]:
            for key in (k for k in row if k.startswith("vs_")):
                if row["method"] == CLAIM_METHOD and row[key].get("subject_pairs"):
                    tally[(key[3:], verdict(row[key]["ci95"]))] += 1
    if tally:
        out += [f"### {CLAIM_METHOD}, all settings and budgets", ""]
        for reference in dict.fromkeys(r for r, _ in tally):
            counts = {v: tally[(reference, v)] for v in ("better", "no clear difference", "worse")}
            out.append(f"- against {reference}: better in {counts['better']}, no clear difference in "
                       f"{counts['no clear difference']}, worse in {counts['worse']} (setting, protocol, budget) cells")
        out.append("")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
