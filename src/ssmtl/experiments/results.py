"""What a benchmark's cells add up to: summaries over seeds, paired differences by draw, tables, the plot."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ssmtl.api.errors import SsmtlError
from ssmtl.storage.files import atomic_write
from ssmtl.experiments.paired import compare, MIN_DRAWS, verdict

SCRATCH = "scratch"  # the random-init baseline; the other named methods are the plugins' task sets


def _mean_std(values: list[float]) -> tuple[float, float, int]:
    clean = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not clean:
        return math.nan, math.nan, 0
    arr = np.asarray(clean, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0, len(arr)


def summarise_cells(cells: list[dict[str, Any]], references: tuple[str, ...] = (SCRATCH,)) -> list[dict[str, Any]]:
    """Mean +- std over seeds per (protocol, method, budget), and paired differences vs each reference method.

    Each ``vs_<reference>`` entry has the per-seed difference of mean Dice (``mean``, ``std``,
    ``pairs`` = seeds, ``wins``) and the paired comparison with the draw (here: the seed) as
    the unit: ``pair_mean``, the 95 % t interval ``ci95`` (none below ``MIN_DRAWS`` draws),
    ``draws``, ``subjects`` per draw, ``sigma_b2`` / ``sigma_w2``, ``mde80`` and ``verdict``
    (see :mod:`ssmtl.experiments.paired`). ``failures`` counts, per structure, the test volumes
    where it was missed or predicted though absent, over all seeds. A frozen-encoder row is
    compared with the reference's frozen row when there is one (representation against
    representation), else with its fine-tuned row (scratch has no frozen protocol).
    """
    by = {}
    for c in cells:
        by.setdefault((c["protocol"], c["method"], c["labeled_volumes"]), {})[c["seed"]] = c
    rows = []
    for (protocol, method, budget), seeds in by.items():
        mean, std, n = _mean_std([c["mean_dice"] for c in seeds.values()])
        hd_mean, hd_std, _ = _mean_std([c["mean_hd95"] for c in seeds.values()])
        classes = next(iter(seeds.values()))["per_class"] or {}
        per_class = {name: _mean_std([(c["per_class"] or {}).get(name, {}).get("dice") for c in seeds.values()])[:2] for name in classes}
        failures = {name: {k: sum(int(((c["per_class"] or {}).get(name) or {}).get(k) or 0) for c in seeds.values())
                           for k in ("missed", "false_positive")} for name in classes}
        row = {"protocol": protocol, "method": method, "labeled_volumes": budget, "seeds": n,
               "dice_mean": mean, "dice_std": std, "hd95_mean": hd_mean, "hd95_std": hd_std,
               "per_class_dice": {k: {"mean": v[0], "std": v[1]} for k, v in per_class.items()},
               "failures": failures}
        for reference in references:
            # the same protocol when the reference has it (frozen vs frozen), else fine-tuned (scratch)
            ref = by.get((protocol, reference, budget)) or by.get(("finetune", reference, budget))
            if ref is None or reference == method or method == SCRATCH:
                continue
            diffs = [seeds[s]["mean_dice"] - ref[s]["mean_dice"] for s in seeds if s in ref
                     and seeds[s]["mean_dice"] is not None and ref[s]["mean_dice"] is not None]
            d_mean, d_std, d_n = _mean_std(diffs)
            row[f"vs_{reference}"] = {"mean": d_mean, "std": d_std, "pairs": d_n, "wins": int(sum(d > 0 for d in diffs)),
                                      **compare(seeds, ref)}
        rows.append(row)
    return rows


def _fmt(mean: float, std: float) -> str:
    return "–" if math.isnan(mean) else f"{mean:.3f} ± {std:.3f}"


def _space_line(results: dict[str, Any]) -> str:
    """Which grid the metrics were computed on (eval.json's ``space`` of every cell)."""
    spaces = results.get("space") or []
    if spaces == ["native"]:
        return "Metrics at native resolution: each test scan's own voxel grid, against its original label file."
    reasons = sorted({c.get("space_reason") for c in results.get("cells", []) if c.get("space") == "cache"} - {None})
    why = f" ({reasons[0]})" if reasons else ""
    return ("Metrics on the cache grid (the resampled slices), not at native resolution" + why + "."
            if spaces == ["cache"] else f"Metrics in mixed spaces {spaces}: not comparable across cells.")


def interval_text(d: dict[str, Any], joiner: str = ", ") -> str:
    """``-0.012, +0.034; 5 draws, MDE 0.051`` for a paired comparison's 95 % interval, or why
    there is none. The draws and the minimal detectable effect (80 % power) travel with every
    interval: they say how much it could have seen."""
    low, high = d["ci95"]
    if math.isnan(low) or math.isnan(high):
        return f"none: {d['draws']} draw(s) < {MIN_DRAWS}"
    return f"{low:+.3f}{joiner}{high:+.3f}; {d['draws']} draws, MDE {d['mde80']:.3f}"


def _subjects_text(d: dict[str, Any]) -> str:
    counts = d.get("subjects") or []
    if not counts:
        return "no test subject"
    low, high = min(counts), max(counts)
    return f"{low} test subject(s) each" if low == high else f"{low} to {high} test subjects each"


def _fmt_diff(d: dict[str, Any]) -> str:
    if not d.get("draws"):
        return "–"
    return f"{d['pair_mean']:+.3f} [{interval_text(d)}] ({d['wins']}/{d['pairs']})"


def verdict_lines(results: dict[str, Any], setting: str = "") -> list[str]:
    """One line per (protocol, budget, method, reference): the paired difference, its 95 % CI with
    the draws and MDE, the test subjects per draw, the verdict."""
    lines = []
    prefix = f"{setting}, " if setting else ""
    for r in results["summary"]:
        for key in (k for k in r if k.startswith("vs_")):
            d = r[key]
            if "draws" not in d and d.get("subject_pairs"):
                # a flat bootstrap over (seed, test subject) pairs: reading its interval as by draw would be wrong
                raise SsmtlError("results.json summarised before the draw was the unit; run the same `ssmtl "
                                 "benchmark` command again (it reuses every cell) to rewrite its summary")
            if not d.get("draws"):
                continue
            lines.append(
                f"{prefix}{r['protocol']}, {r['labeled_volumes']} labeled: **{r['method']}** vs {key[3:]}: "
                f"{d['pair_mean']:+.3f} mean Dice (95 % CI {interval_text(d, ' to ')}; "
                f"{_subjects_text(d)}): {verdict(d['ci95'])}")
    return lines


def render_markdown(results: dict[str, Any]) -> str:
    summary = results["summary"]
    budgets = sorted({r["labeled_volumes"] for r in summary})
    lines = ["# Benchmark results", ""]
    lines.append(f"Pre-training data: `{results['pretrain_data']['path']}`; fine-tuning/test data: `{results['finetune_data']['path']}`.")
    lines.append(f"Test subjects (same for every cell): {', '.join(results['test_subjects'])}.")
    cfg = results["config"]
    lines.append(f"Pre-training {cfg['pretrain_steps']} steps per method; fine-tuning {cfg['finetune_steps']} steps; {cfg['seeds']} seed(s); mean ± std over seeds of the mean 3D Dice over structures and test volumes.")
    lines.append(_space_line(results))
    lines.append("")
    verdicts = verdict_lines(results)
    if verdicts:
        lines += ["## Verdict", "", "Paired by draw (a seed: which subjects are labeled, the initialisation) and test subject. "
                  "The draw is the unit: a 95 % Student t interval on the per-draw mean differences, with draws - 1 "
                  f"degrees of freedom, and none below {MIN_DRAWS} draws. MDE: the smallest true difference that many "
                  "draws of that many test subjects detect with 80 % power (two-sided, alpha 0.05). "
                  "better / worse: the interval excludes 0.", ""]
        lines += [f"- {v}" for v in verdicts] + [""]
    for protocol in sorted({r["protocol"] for r in summary}, key=lambda p: p != "finetune"):
        rows = [r for r in summary if r["protocol"] == protocol]
        lines += [f"## {protocol}: 3D Dice by label budget", "", "| method | " + " | ".join(f"{b} labeled" for b in budgets) + " |",
                  "|---|" + "---|" * len(budgets)]
        for method in dict.fromkeys(r["method"] for r in rows):
            cells = {r["labeled_volumes"]: r for r in rows if r["method"] == method}
            lines.append(f"| {method} | " + " | ".join(_fmt(cells[b]["dice_mean"], cells[b]["dice_std"]) if b in cells else "–" for b in budgets) + " |")
        lines.append("")
        for reference in dict.fromkeys(key[3:] for r in rows for key in r if key.startswith("vs_")):  # summarise_cells' order
            diff_rows = [r for r in rows if f"vs_{reference}" in r]
            if not diff_rows:
                continue
            lines += [f"Paired difference in mean Dice against **{reference}**: mean of the per-draw mean differences "
                      "[95 % t interval over draws; draws, MDE at 80 % power] (seeds where the method is better / seeds):", "",
                      "| method | " + " | ".join(f"{b} labeled" for b in budgets) + " |", "|---|" + "---|" * len(budgets)]
            for method in dict.fromkeys(r["method"] for r in diff_rows):
                cells = {r["labeled_volumes"]: r[f"vs_{reference}"] for r in diff_rows if r["method"] == method}
                lines.append(f"| {method} | " + " | ".join(_fmt_diff(cells[b]) if b in cells else "–" for b in budgets) + " |")
            lines.append("")
        lines += [f"### {protocol}: Dice per structure (mean over seeds)", ""]
        classes = list(rows[0]["per_class_dice"]) if rows else []
        lines += ["| method | labeled | " + " | ".join(classes) + " | HD95 (mm) |", "|---|---|" + "---|" * (len(classes) + 1)]
        for r in rows:
            hd = "–" if math.isnan(r["hd95_mean"]) else f"{r['hd95_mean']:.1f}"
            lines.append(f"| {r['method']} | {r['labeled_volumes']} | " + " | ".join(
                "–" if math.isnan(r["per_class_dice"][c]["mean"]) else f"{r['per_class_dice'][c]['mean']:.3f}" for c in classes) + f" | {hd} |")
        lines.append("")
        lines += [f"### {protocol}: missed / false-positive structures (test volumes, all seeds)", "",
                  "A missed structure scores Dice 0 and HD95 = the volume's diagonal; so does one predicted where it is absent.", "",
                  "| method | labeled | " + " | ".join(classes) + " |", "|---|---|" + "---|" * len(classes)]
        for r in rows:
            failures = r.get("failures") or {}
            lines.append(f"| {r['method']} | {r['labeled_volumes']} | " + " | ".join(
                f"{failures.get(c, {}).get('missed', 0)} / {failures.get(c, {}).get('false_positive', 0)}" for c in classes) + " |")
        lines.append("")
    return "\n".join(lines)


def plot_dice_vs_labels(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for protocol in sorted({r["protocol"] for r in results["summary"]}, key=lambda p: p != "finetune"):
        for method in dict.fromkeys(r["method"] for r in results["summary"] if r["protocol"] == protocol):
            rows = sorted((r for r in results["summary"] if r["protocol"] == protocol and r["method"] == method), key=lambda r: r["labeled_volumes"])
            label = method if protocol == "finetune" else f"{method} ({protocol})"
            ax.errorbar([r["labeled_volumes"] for r in rows], [r["dice_mean"] for r in rows], yerr=[r["dice_std"] for r in rows],
                        marker="o", capsize=3, label=label, linestyle="-" if protocol == "finetune" else "--")
    budgets = sorted({r["labeled_volumes"] for r in results["summary"]})
    ax.set_xticks(budgets)
    ax.set_xlabel("labeled volumes")
    ax.set_ylabel("mean 3D Dice (± std over seeds)")
    ax.set_title("Dice vs label budget")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
