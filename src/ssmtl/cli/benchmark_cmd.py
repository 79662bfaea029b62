"""``ssmtl benchmark``: scratch vs MoCo v2 vs multi-task, by label budget, across domains."""

from __future__ import annotations

import math
from pathlib import Path
from typing import List, Optional

import typer

from ssmtl.cli.pretrain_cmd import one_or_many
from ssmtl.cli.common import console, err_console, handle_errors, registry


def register(app: typer.Typer) -> None:
    app.command("benchmark")(benchmark)


def _ints(text: str, flag: str) -> list[int]:
    from ssmtl.api.errors import SsmtlError

    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise SsmtlError(f"{flag} {text!r}: expected comma-separated integers, e.g. 1,2,4") from None


@handle_errors
def benchmark(
    data: List[Path] = typer.Option(..., "--data", help="Cache to pre-train on (its train subjects), or a folder of caches; repeatable: several caches read as one dataset."),
    finetune_data: Optional[List[Path]] = typer.Option(None, "--finetune-data", help="Labeled cache to fine-tune and test on (default: --data), a folder, repeatable. Another modality = cross-domain."),
    methods: Optional[str] = typer.Option(None, "--methods", help="Comma-separated: scratch, a task set of the plugins' defaults (built-in: contrastive = MoCo v2, multitask = contrastive+order+position+reconstruct+neighbor; see `ssmtl plugins`), NAME=task+task, or NAME=METHOD:encoder to fine-tune from the pre-trained encoder only (random decoder; shares METHOD's pre-training). Default: scratch and every task set."),
    labeled_volumes: str = typer.Option("1,2,4", "--labeled-volumes", help="Label budgets in subjects, comma-separated."),
    seeds: int = typer.Option(3, "--seeds", help="Seeds per (method, budget): labeled subjects and initialisation."),
    out: Path = typer.Option(..., "--out", "-o", help="Benchmark directory; re-running reuses what is already done."),
    pretrain_steps: int = typer.Option(500, "--pretrain-steps", help="Pre-training steps per method."),
    # the three fine-tuning defaults are `ssmtl finetune`'s, written out so that the CLI does not import
    # torch to show them (test_benchmark ties them to FinetuneTrainConfig)
    finetune_steps: str = typer.Option("auto", "--finetune-steps", help="Fine-tuning steps per cell, or auto (stop on a validation plateau; see `ssmtl finetune --steps`). Default: what `ssmtl finetune` does."),
    finetune_batch_size: int = typer.Option(16, "--finetune-batch-size", help="Slices per fine-tuning step."),
    finetune_lr: float = typer.Option(3e-3, "--finetune-lr", help="Fine-tuning peak learning rate (default: `ssmtl finetune`'s)."),
    frozen_encoder: bool = typer.Option(False, "--frozen-encoder", help="Also train decoder + head on each frozen pre-trained encoder (representation quality)."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Pre-training override KEY=VALUE for every method (e.g. model.base_channels=8); the scratch baseline gets the same model."),
    split_seed: int = typer.Option(0, "--split-seed", help="Test split seed when the fine-tuning cache stores no split."),
) -> None:
    """Run the paper's protocol and write results.json, results.md and dice_vs_labels.png.

    Pre-training runs once per method; every (method, budget, seed) cell fine-tunes and is
    tested on the same held-out subjects. Interrupted? Run the same command again.

    Example: ssmtl benchmark --data ct.h5 --finetune-data mr.h5 --methods scratch,contrastive,multitask --labeled-volumes 1,2 --seeds 3 --out bench/
    """
    from ssmtl.experiments.benchmark import Benchmark, BenchmarkConfig
    from ssmtl.settings.sources import validate_model

    config = validate_model(BenchmarkConfig, {
        "data": one_or_many(data), "finetune_data": one_or_many(finetune_data), "out": out, "methods": [m for m in methods.split(",") if m.strip()] if methods is not None else None,
        "labeled_volumes": _ints(labeled_volumes, "--labeled-volumes"), "seeds": seeds, "pretrain_steps": pretrain_steps,
        "finetune_steps": finetune_steps, "finetune_batch_size": finetune_batch_size, "finetune_lr": finetune_lr,
        "frozen_encoder": frozen_encoder, "pretrain_sets": list(set_ or []), "split_seed": split_seed,
    }, prefix="benchmark")
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
    table = Table(title="3D Dice (mean ± std over seeds)", title_justify="left")
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
                           f"draws (seeds), 95 % t interval over the G draws, none below {MIN_DRAWS}; MDE: the "
                           "difference G draws detect with 80 % power")
    return table
