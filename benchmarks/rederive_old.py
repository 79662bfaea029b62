"""Re-derive the draw-level intervals of results made before the draw was the unit.

    python benchmarks/rederive_old.py benchmarks/results/cpu_protocol

The committed protocol results (3 seeds x 18 test subjects per comparison) were summarised
with a percentile bootstrap over the 54 (seed, test subject) pairs, as if they were
independent. Their cells keep every per-volume score, so the intervals can be recomputed with
the seed as the draw (:func:`ssmtl.experiments.paired.compare`: the Student t interval over the
3 draw means, and the MDE at 80 % power). Those runs pre-trained each method once per setting:
all 3 draws share one pre-training run, so even these intervals are conditional on that run
(they cover labeled subjects, initialisations and test subjects, not the pre-training), and
with one run the pre-training run as the unit would leave no interval at all.

Prints one Markdown table: setting, comparison, the old interval, the re-derived one, the MDE.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ssmtl.experiments.paired import compare

REFERENCES = ("scratch", "contrastive")
#: the settings in the order docs/benchmarks.md showed them; a setting that copied another's cells shows the rest
ORDER = ("ct-ct", "ct-ct-pretrain-seed1", "mr-mr", "ct-mr", "ct-mr-pretrain-seed1", "ct-ct-frozen", "ct-ct-short",
         "ct-ct-short-pretrain-seed1", "ablation", "ablation-pretrain-seed1")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python benchmarks/rederive_old.py RESULTS_DIR", file=sys.stderr)
        return 2
    root = Path(argv[0])
    seen: set[str] = set()  # a setting that copied another's cells shows them once
    counts = {"old": 0, "new": 0, "rows": 0}
    mdes: list[float] = []
    print("| setting | comparison | old: flat bootstrap over 54 pairs | by draw: t over 3 draws | MDE (80 %) | verdict |")
    print("|---|---|---|---|---|---|")
    found = sorted(root.glob("*/results.json"), key=lambda p: (ORDER.index(p.parent.name) if p.parent.name in ORDER else len(ORDER), p))
    for path in found:
        results = json.loads(path.read_text())
        by: dict[tuple[str, str], dict[int, dict]] = {}
        for cell in results["cells"]:
            by.setdefault((cell["protocol"], cell["method"]), {})[cell["seed"]] = cell
        old = {(r["protocol"], r["method"], k[3:]): r[k] for r in results["summary"] for k in r if k.startswith("vs_")}
        for (protocol, method), cells in by.items():
            for reference in REFERENCES:
                ref = by.get((protocol, reference)) or by.get(("finetune", reference))
                if ref is None or reference == method or method == "scratch" or (method, reference) == ("contrastive", "contrastive"):
                    continue
                key = json.dumps([[c["per_volume"] for _, c in sorted(x.items())] for x in (cells, ref)], sort_keys=True)
                if key in seen:
                    continue
                seen.add(key)
                d = compare(cells, ref)
                before = old.get((protocol, method, reference)) or {}
                low, high = before.get("ci95") or (float("nan"), float("nan"))
                name = path.parent.name + ("" if protocol == "finetune" else f" ({protocol})")
                print(f"| {name} | {method} vs {reference} | {before.get('pair_mean', float('nan')):+.3f} [{low:+.3f}, {high:+.3f}] | "
                      f"{d['pair_mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}] | {d['mde80']:.3f} | {d['verdict']} |")
                counts["rows"] += 1
                counts["old"] += int(low > 0 or high < 0)
                counts["new"] += int(d["verdict"] in ("better", "worse"))
                mdes.append(d["mde80"])
    mdes.sort()
    print(f"\n{counts['rows']} comparisons: {counts['old']} old intervals exclude 0, {counts['new']} by draw; MDE by draw "
          f"{mdes[0]:.3f} to {mdes[-1]:.3f}, median {mdes[len(mdes) // 2]:.3f}.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
