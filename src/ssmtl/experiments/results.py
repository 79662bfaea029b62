"""What a benchmark's cells add up to: summaries over draws, paired differences by replication
unit, the verdict lines, results.md and the plot."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ssmtl.api.errors import SsmtlError
from ssmtl.storage.files import atomic_write
from ssmtl.experiments.methods import SCRATCH
from ssmtl.experiments.paired import compare, MIN_DRAWS

__all__ = ["SCRATCH", "draws_done", "summarise_cells", "interval_text", "verdict_lines", "render_markdown", "plot_dice_vs_labels"]


def _mean_std(values: list[float]) -> tuple[float, float, int]:
    clean = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not clean:
        return math.nan, math.nan, 0
    arr = np.asarray(clean, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0, len(arr)


def summarise_cells(cells: list[dict[str, Any]], references: tuple[str, ...] = (SCRATCH,)) -> list[dict[str, Any]]:
    """Mean +- std over draws per (protocol, method, budget), and paired differences vs each reference method.

    Each ``vs_<reference>`` entry has the per-draw difference of mean Dice (``mean``, ``std``,
    ``pairs`` = draws, ``wins``) and the paired comparison by replication unit
    (:func:`ssmtl.experiments.paired.compare`): ``pair_mean``, the 95 % t interval ``ci95``
    (none below ``MIN_DRAWS`` units), ``unit``, ``units``, ``draws``, ``subjects`` per unit,
    ``sigma_b2`` / ``sigma_w2``, ``mde80`` and ``verdict``. ``failures`` counts, per structure,
    the test volumes where it was missed or predicted though absent, over all draws. A
    frozen-encoder row is compared with the reference's frozen row when there is one
    (representation against representation: scratch's is the frozen random encoder), else with
    its fine-tuned row.
    """
    by: dict[tuple[str, str, int], dict[Any, dict[str, Any]]] = {}
    for c in cells:
        by.setdefault((c["protocol"], c["method"], c["labeled_volumes"]), {})[c["draw"]] = c
    rows = []
    for (protocol, method, budget), draws in by.items():
        mean, std, n = _mean_std([c["mean_dice"] for c in draws.values()])
        hd_mean, hd_std, _ = _mean_std([c["mean_hd95"] for c in draws.values()])
        classes = next(iter(draws.values()))["per_class"] or {}
        per_class = {name: _mean_std([(c["per_class"] or {}).get(name, {}).get("dice") for c in draws.values()])[:2] for name in classes}
        failures = {name: {k: sum(int(((c["per_class"] or {}).get(name) or {}).get(k) or 0) for c in draws.values())
                           for k in ("missed", "false_positive")} for name in classes}
        row = {"protocol": protocol, "method": method, "labeled_volumes": budget, "draws": n,
               "dice_mean": mean, "dice_std": std, "hd95_mean": hd_mean, "hd95_std": hd_std,
               "per_class_dice": {k: {"mean": v[0], "std": v[1]} for k, v in per_class.items()},
               "failures": failures, "chosen": _chosen(draws.values())}
        for reference in references:
            # the same protocol when the reference has it (frozen vs frozen), else fine-tuned
            ref = by.get((protocol, reference, budget)) or by.get(("finetune", reference, budget))
            if ref is None or reference == method or method == SCRATCH:
                continue
            diffs = [draws[d]["mean_dice"] - ref[d]["mean_dice"] for d in draws if d in ref
                     and draws[d]["mean_dice"] is not None and ref[d]["mean_dice"] is not None]
            d_mean, d_std, d_n = _mean_std(diffs)
            row[f"vs_{reference}"] = {"mean": d_mean, "std": d_std, "pairs": d_n, "wins": int(sum(d > 0 for d in diffs)),
                                      **compare(draws, ref)}
        rows.append(row)
    return rows


def draws_done(cells: list[dict[str, Any]], planned: int, pretrain_runs: int) -> dict[str, Any]:
    """The design fields that depend on how far the benchmark got: ``draws`` (those the cells hold;
    a benchmark writes its results after every complete draw), ``draws_planned``, and the
    ``pretrain_runs`` those draws used (draw d uses run d mod ``pretrain_runs``)."""
    done = sorted({int(c["draw"]) for c in cells})
    return {"draws": len(done), "draws_planned": planned, "pretrain_runs": len({d % pretrain_runs for d in done}),
            "draw_to_pretrain_run": f"d mod {pretrain_runs}"}


def _chosen(cells) -> dict[str, Any]:
    """Which fine-tuning candidate the draws kept, where they stopped and why."""
    kept = Counter(("" if c.get("recipe", "default") == "default" else f"{c['recipe']} at ")
                   + (f"lr {c['lr']:g}" if c.get("lr") is not None else "its lr") for c in cells)
    steps = [c.get("selected_step") for c in cells if c.get("selected_step") is not None]
    change = {part: [c["weight_change"][part] for c in cells if isinstance((c.get("weight_change") or {}).get(part), (int, float))]
              for part in ("encoder", "decoder")}
    return {"candidates": dict(kept), "selected_step_median": float(np.median(steps)) if steps else None,
            "stop_reasons": dict(Counter(c.get("stop_reason") or "unknown" for c in cells)),
            # how far fine-tuning moved each part from its start, |w - w0| / |w0|: does it erase pre-training?
            "weight_change_median": {part: float(np.median(v)) for part, v in change.items() if v}}


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


def _units(d: dict[str, Any]) -> tuple[int, str]:
    unit = d.get("unit", "draw")
    return d.get("units", d.get("draws", 0)), unit


def _plural(count: int, unit: str) -> str:
    return f"{count} {unit}" + ("" if count == 1 else "s")


def interval_text(d: dict[str, Any], joiner: str = ", ") -> str:
    """``-0.012, +0.034; 5 draws, MDE 0.051`` for a paired comparison's 95 % interval, or why
    there is none. The replicates and the minimal detectable effect (80 % power) travel with
    every interval: they say how much it could have seen."""
    count, unit = _units(d)
    replicates = _plural(count, unit) + (f" of {_plural(d['draws'], 'draw')}" if unit != "draw" else "")
    low, high = d["ci95"]
    if math.isnan(low) or math.isnan(high):
        return f"none: {replicates} < {MIN_DRAWS}"
    return f"{low:+.3f}{joiner}{high:+.3f}; {replicates}, MDE {d['mde80']:.3f}"


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
    the replicates and MDE, the test subjects per replicate, the verdict."""
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
                f"{_subjects_text(d)}): {d['verdict']}")
    return lines


def design_lines(results: dict[str, Any]) -> list[str]:
    """What was compared, on what, and how often: the head of results.md."""
    design, cohort = results.get("design") or {}, results.get("cohort") or {}
    pre, ft = results.get("pretrain_data") or {}, results.get("finetune_data") or {}
    lines = [f"Pre-training data: {_files(pre)}; fine-tuning and test data: {_files(ft)}."]
    if cohort:
        lines.append(f"Pre-training reads {cohort['subjects']} subjects: {cohort['of_the_finetuning_cohort']} of the "
                     f"fine-tuning cohort (unlabeled for pre-training) and {cohort['pool']} from outside it, never labeled and "
                     "never tested here (a pool).")
    tests = len(results.get("test_subjects") or [])
    named = ("real names (--identify-subjects): for internal use, not for sharing" if results.get("identified_subjects")
             else "pseudonyms subject-001 ... in results.json")
    lines.append(f"{tests} test subjects, the same for every cell ({named}).")
    if design:
        runs = design["pretrain_runs"]
        planned = design.get("draws_planned", design["draws"])
        so_far = f" (of {planned} planned: the benchmark has not finished)" if planned > design["draws"] else ""
        lines.append(f"{design['draws']} draw(s) per label budget{so_far}: the labeled and validation subjects and the fine-tuning "
                     "seed of a draw are the same for every method. "
                     + (f"Each pre-trained method is pre-trained once per draw ({runs} runs): every draw is an independent replicate."
                        if runs == design["draws"] else
                        f"{runs} pre-training run(s) per pre-trained method, draw d fine-tunes from run "
                        f"{design.get('draw_to_pretrain_run', f'd mod {runs}')}: "
                        "draws that share a run are averaged and the pre-training run is the unit of the statistics."))
        steps = ", ".join(f"{m} {s}" for m, s in (design.get("pretrain_steps") or {}).items())
        lines.append(f"Pre-training steps: {steps or 'none'}. Fine-tuning candidates: {'; '.join(design['candidates'])}"
                     + ("; each draw keeps, per method, the one with the best Dice on its validation subjects (only that one is tested)."
                        if len(design["candidates"]) > 1 else "."))
    lines.append("Mean ± std over draws of the mean 3D Dice over structures and test volumes.")
    return lines + [_space_line(results)]


def _files(record: dict[str, Any]) -> str:
    files = record.get("file")
    files = files if isinstance(files, list) else [files]
    return ", ".join(f"`{f}`" for f in files if f) + (f" (fingerprint {record['fingerprint'][:16]})" if record.get("fingerprint") else "")


def render_markdown(results: dict[str, Any]) -> str:
    summary = results["summary"]
    budgets = sorted({r["labeled_volumes"] for r in summary})
    lines = ["# Benchmark results", "", *design_lines(results), ""]
    verdicts = verdict_lines(results)
    if verdicts:
        lines += ["## Verdict", "", "Paired by draw and test subject. The unit of replication is the draw (its labeled "
                  "subjects, fine-tuning seed and, with one pre-training run per draw, its pre-training run); where draws "
                  "share a pre-training run, their differences are averaged per run and the run is the unit. A 95 % "
                  f"Student t interval on the per-unit mean differences, units - 1 degrees of freedom, none below {MIN_DRAWS} "
                  "units. MDE: the smallest true difference that many units of that many test subjects detect with 80 % "
                  "power (two-sided, alpha 0.05). better / worse: the interval excludes 0.", ""]
        lines += [f"- {v}" for v in verdicts] + [""]
    for protocol in sorted({r["protocol"] for r in summary}, key=lambda p: p != "finetune"):
        rows = [r for r in summary if r["protocol"] == protocol]
        lines += [f"## {protocol}: 3D Dice by label budget", ""]
        if protocol == "frozen" and any(r["method"] == SCRATCH for r in rows):
            lines += ["In the frozen protocol scratch is a frozen random encoder (its decoder and head trained): the floor "
                      "a representation has to clear.", ""]
        lines += ["| method | " + " | ".join(f"{b} labeled" for b in budgets) + " |", "|---|" + "---|" * len(budgets)]
        for method in dict.fromkeys(r["method"] for r in rows):
            cells = {r["labeled_volumes"]: r for r in rows if r["method"] == method}
            lines.append(f"| {method} | " + " | ".join(_fmt(cells[b]["dice_mean"], cells[b]["dice_std"]) if b in cells else "–" for b in budgets) + " |")
        lines.append("")
        for reference in dict.fromkeys(key[3:] for r in rows for key in r if key.startswith("vs_")):  # summarise_cells' order
            diff_rows = [r for r in rows if f"vs_{reference}" in r]
            lines += [f"Paired difference in mean Dice against **{reference}**: mean of the per-unit mean differences "
                      "[95 % t interval; replicates, MDE at 80 % power] (draws where the method is better / draws):", "",
                      "| method | " + " | ".join(f"{b} labeled" for b in budgets) + " |", "|---|" + "---|" * len(budgets)]
            for method in dict.fromkeys(r["method"] for r in diff_rows):
                cells = {r["labeled_volumes"]: r[f"vs_{reference}"] for r in diff_rows if r["method"] == method}
                lines.append(f"| {method} | " + " | ".join(_fmt_diff(cells[b]) if b in cells else "–" for b in budgets) + " |")
            lines.append("")
        lines += _detail_tables(protocol, rows)
    return "\n".join(lines)


def _detail_tables(protocol: str, rows: list[dict[str, Any]]) -> list[str]:
    lines = [f"### {protocol}: fine-tuning kept (draws per candidate), selected step and why it stopped", "",
             "Weight change: the median over draws of ||w - w0|| / ||w0|| from the start (pre-trained or random) to the "
             "kept weights, encoder / decoder.", "",
             "| method | labeled | kept | median selected step | stop | weight change |", "|---|---|---|---|---|---|"]
    for r in rows:
        chosen = r.get("chosen") or {}
        kept = "; ".join(f"{k}: {v}" for k, v in (chosen.get("candidates") or {}).items()) or "–"
        step = chosen.get("selected_step_median")
        stops = "; ".join(f"{k}: {v}" for k, v in (chosen.get("stop_reasons") or {}).items()) or "–"
        change = chosen.get("weight_change_median") or {}
        moved = " / ".join(f"{change[p]:.3f}" if p in change else "–" for p in ("encoder", "decoder")) if change else "–"
        lines.append(f"| {r['method']} | {r['labeled_volumes']} | {kept} | {'–' if step is None else f'{step:g}'} | {stops} | {moved} |")
    lines += ["", f"### {protocol}: Dice per structure (mean over draws)", ""]
    classes = list(rows[0]["per_class_dice"]) if rows else []
    lines += ["| method | labeled | " + " | ".join(classes) + " | HD95 (mm) |", "|---|---|" + "---|" * (len(classes) + 1)]
    for r in rows:
        hd = "–" if math.isnan(r["hd95_mean"]) else f"{r['hd95_mean']:.1f}"
        lines.append(f"| {r['method']} | {r['labeled_volumes']} | " + " | ".join(
            "–" if math.isnan(r["per_class_dice"][c]["mean"]) else f"{r['per_class_dice'][c]['mean']:.3f}" for c in classes) + f" | {hd} |")
    lines += ["", f"### {protocol}: missed / false-positive structures (test volumes, all draws)", "",
              "A missed structure scores Dice 0 and HD95 = the volume's diagonal; so does one predicted where it is absent.", "",
              "| method | labeled | " + " | ".join(classes) + " |", "|---|---|" + "---|" * len(classes)]
    for r in rows:
        failures = r.get("failures") or {}
        lines.append(f"| {r['method']} | {r['labeled_volumes']} | " + " | ".join(
            f"{failures.get(c, {}).get('missed', 0)} / {failures.get(c, {}).get('false_positive', 0)}" for c in classes) + " |")
    return lines + [""]


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
    ax.set_ylabel("mean 3D Dice (± std over draws)")
    ax.set_title("Dice vs label budget")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
