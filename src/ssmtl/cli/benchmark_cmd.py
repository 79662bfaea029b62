"""``ssmtl benchmark``: scratch vs MoCo v2 vs multi-task, by label budget, across domains."""

from __future__ import annotations

import math
from pathlib import Path
from typing import List, Optional

import typer

from ssmtl.cli import options as o
from ssmtl.cli.common import console, err_console, handle_errors, registry


def register(app: typer.Typer) -> None:
    app.command("benchmark")(benchmark)


def _ints(text: str, flag: str) -> list[int]:
    from ssmtl.api.errors import SsmtlError

    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise SsmtlError(f"{flag} {text!r}: expected comma-separated integers, e.g. 1,2,4") from None


def _floats(text: str | None, flag: str) -> list[float] | None:
    from ssmtl.api.errors import SsmtlError

    if text is None:
        return None
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise SsmtlError(f"{flag} {text!r}: expected comma-separated numbers, e.g. 3e-4,1e-3,3e-3") from None


@handle_errors
def benchmark(
    data: List[Path] = typer.Option(..., "--data", help="Cache to pre-train on (its train subjects), or a folder of caches; repeatable: several caches read as one dataset (e.g. the cohort and a large unlabeled pool)."),
    finetune_data: Optional[List[Path]] = typer.Option(None, "--finetune-data", help="Labeled cache to fine-tune and test on (default: --data), a folder, repeatable. Another modality = cross-domain."),
    methods: Optional[str] = typer.Option(None, "--methods", help="Comma-separated: scratch, a task set of the plugins' defaults (built-in: contrastive = MoCo v2, multitask = contrastive+order+position+reconstruct+neighbor; see `ssmtl plugins`), NAME=task+task (tasks or task sets: mt-local=multitask+local-contrastive), or NAME=METHOD:encoder to fine-tune from the pre-trained encoder only (random decoder; shares METHOD's pre-training). Default: scratch and every task set."),
    labeled_volumes: str = typer.Option("1,2,4", "--labeled-volumes", help="Label budgets in subjects, comma-separated."),
    draws: int = typer.Option(3, "--draws", help="Draws per label budget (labeled and validation subjects, fine-tuning seed; the same for every method within a draw). No interval below 3."),
    pretrain_seeds: Optional[int] = typer.Option(None, "--pretrain-seeds", help="Pre-training runs per method; draw d fine-tunes from run d mod K (default: one per draw)."),
    out: Path = typer.Option(..., "--out", "-o", help="Benchmark directory; re-running reuses what is already done."),
    runs: Optional[Path] = typer.Option(None, "--runs", help="Folder of the runs (default: --out); benchmarks naming the same folder share identical runs."),
    pretrain_steps: Optional[int] = typer.Option(None, "--pretrain-steps", help="Pre-training steps per run (pretrain.train.steps; default: `ssmtl pretrain`'s)."),
    finetune_steps: Optional[str] = typer.Option(None, "--finetune-steps", help="Fine-tuning steps per cell, or auto (finetune.train.steps; default: what `ssmtl finetune` does)."),
    finetune_batch_size: Optional[int] = typer.Option(None, "--finetune-batch-size", help="Slices per fine-tuning step (finetune.train.batch_size)."),
    finetune_lr: Optional[float] = typer.Option(None, "--finetune-lr", help="Fine-tuning peak learning rate (finetune.train.lr; default: `ssmtl finetune`'s)."),
    finetune_lrs: Optional[str] = typer.Option(None, "--finetune-lrs", help="Learning-rate grid, comma-separated (e.g. 3e-4,1e-3,3e-3): each draw keeps, per method, the lr with the best validation Dice."),
    frozen_encoder: bool = typer.Option(False, "--frozen-encoder", help="Also train decoder + head on each frozen encoder (representation quality), a frozen random encoder included."),
    identify_subjects: bool = typer.Option(False, "--identify-subjects", help="Real subject names in results.json/results.md (internal use; default: pseudonyms and counts)."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="PATH=VALUE for any benchmark field, repeatable: e.g. pretrain.model.base_channels=8 (every pre-training; scratch gets the same network), finetune.train.warmup_steps=50 (every cell), draws=5."),
    split_seed: int = typer.Option(0, "--split-seed", help="Test split seed when the fine-tuning cache stores no split."),
) -> None:
    """Run the paper's protocol and write results.json, results.md and dice_vs_labels.png.

    Every (method, budget, draw) cell fine-tunes on the draw's labeled subjects, keeps the
    candidate (lr) with the best validation Dice and is tested on the same held-out subjects;
    methods are compared by draw. Interrupted? Run the same command again.

    Example: ssmtl benchmark --data ct.h5 --finetune-data mr.h5 --methods scratch,contrastive,multitask --labeled-volumes 1,2 --draws 5 --out bench/
    """
    from ssmtl.experiments.benchmark import Benchmark, BenchmarkConfig
    from ssmtl.settings.sources import parse_set_flags, set_path, validate_model

    values = {
        "data": o.one_or_many(data), "finetune_data": o.one_or_many(finetune_data), "out": out, "runs": runs,
        "methods": [m for m in methods.split(",") if m.strip()] if methods is not None else None,
        "labeled_volumes": _ints(labeled_volumes, "--labeled-volumes"), "draws": draws, "pretrain_seeds": pretrain_seeds,
        "finetune_lrs": _floats(finetune_lrs, "--finetune-lrs"), "frozen_encoder": frozen_encoder,
        "identify_subjects": identify_subjects, "split_seed": split_seed, "pretrain": {}, "finetune": {},
    }
    if finetune_steps is not None and finetune_steps.strip().isdigit():
        finetune_steps = int(finetune_steps)
    for path, value in (("pretrain.train.steps", pretrain_steps), ("finetune.train.steps", finetune_steps),
                        ("finetune.train.batch_size", finetune_batch_size), ("finetune.train.lr", finetune_lr)):
        if value is not None:
            set_path(values, path, value)
    for path, value in parse_set_flags(set_ or []):
        set_path(values, path, value)
    config = validate_model(BenchmarkConfig, values, prefix="benchmark")
    bench = Benchmark(config, registry(), log=lambda m: err_console.print(f"[bold]benchmark[/] {m}", highlight=False))
    results = bench.run()
    console.print(render_table(results))
    console.print(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'dice_vs_labels.png'}")


def render_table(results):
    from rich.markup import escape
    from rich.table import Table

    from ssmtl.experiments.intervals import MIN_DRAWS
    from ssmtl.experiments.results import interval_text

    budgets = sorted({r["labeled_volumes"] for r in results["summary"]})
    table = Table(title="3D Dice (mean ± std over draws)", title_justify="left")
    table.add_column("method")
    table.add_column("protocol")
    for b in budgets:
        table.add_column(f"{b} labeled", justify="right")
    for row_key in dict.fromkeys((r["method"], r["protocol"]) for r in results["summary"]):
        cells = {r["labeled_volumes"]: r for r in results["summary"] if (r["method"], r["protocol"]) == row_key}
        values = []
        for b in budgets:
            r = cells.get(b)
            if r is None or math.isnan(r["dice_mean"]):
                values.append("–")
                continue
            text = f"{r['dice_mean']:.3f} ± {r['dice_std']:.3f}"
            vs = r.get("vs_scratch") or {}
            if vs.get("subject_pairs"):
                # escaped: "[none: 4 pair(s) < 6]" is text, not a rich style tag to drop
                text += escape(f" ({vs['pair_mean']:+.3f} [{interval_text(vs)}])")
            values.append(text)
        table.add_row(row_key[0], row_key[1], *values)
    table.caption = escape("(+x.xxx [low, high; G draws, MDE m]) = paired difference against scratch, mean over "
                           f"draws, 95 % t interval over the G draws (or pre-training runs, where draws share one), "
                           f"none below {MIN_DRAWS}; MDE: the difference they detect with 80 % power")
    return table
