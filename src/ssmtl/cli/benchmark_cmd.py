"""``ssmtl benchmark``: scratch vs MoCo v2 vs multi-task, by label budget and draw, across domains.

Its flags are generated from :class:`~ssmtl.experiments.config.BenchmarkConfig` (and, for the
pre-training and fine-tuning tables, from the configs of ``ssmtl pretrain`` and ``ssmtl
finetune``, whose defaults they show); ``--set PATH=VALUE`` reaches any field, e.g.
``pretrain.model.base_channels=8`` or ``finetune.train.warmup_steps=50``.
"""

from __future__ import annotations

import math
from typing import Any

import typer

from ssmtl.cli.common import console, err_console, handle_errors, registry
from ssmtl.cli.config_options import ConfigFlag, config_command, flag_values, require
from ssmtl.cli.pretrain_cmd import ConfigFile, Sets, one_or_many


def _benchmark_config_model():
    from ssmtl.experiments.config import BenchmarkConfig

    return BenchmarkConfig


def _pretrain_model():
    from ssmtl.pretraining.config import PretrainConfig

    return PretrainConfig


def _finetune_model():
    from ssmtl.downstream.config import FinetuneConfig

    return FinetuneConfig


#: the benchmark's flags; the last four set fields of the pre-training and fine-tuning tables
BENCHMARK_FLAGS = [
    ConfigFlag("data", "--data", required=True, help="Repeat it to read several caches as one dataset."),
    ConfigFlag("finetune_data"),
    ConfigFlag("out", "--out", "-o", required=True),
    ConfigFlag("runs"),
    ConfigFlag("methods", comma=True, help="Comma-separated or repeated."),
    ConfigFlag("labeled_volumes", comma=True, help="Comma-separated or repeated."),
    ConfigFlag("draws"),
    ConfigFlag("pretrain_seeds"),
    ConfigFlag("finetune_lrs", comma=True, help="Comma-separated or repeated."),
    ConfigFlag("frozen_encoder"),
    ConfigFlag("identify_subjects"),
    ConfigFlag("split_seed"),
    ConfigFlag("pretrain.train.steps", "--pretrain-steps", field=(_pretrain_model, "train.steps"),
               help="Every pre-training run's steps."),
    ConfigFlag("finetune.train.steps", "--steps", field=(_finetune_model, "train.steps"), help="Every fine-tuning cell's steps."),
    ConfigFlag("finetune.train.lr", "--lr", field=(_finetune_model, "train.lr"),
               help="Every fine-tuning cell's peak learning rate (without --finetune-lrs)."),
    ConfigFlag("finetune.train.batch_size", "--batch-size", field=(_finetune_model, "train.batch_size"),
               help="Every fine-tuning cell's batch."),
]


def register(app: typer.Typer) -> None:
    config_command(app, "benchmark", _benchmark_config_model, BENCHMARK_FLAGS)(benchmark)


@handle_errors
def benchmark(ctx: typer.Context, config: ConfigFile = None, set_: Sets = None) -> None:
    """Run the paper's protocol and write results.json, results.md and dice_vs_labels.png.

    Every (method, budget, draw) cell fine-tunes on the draw's labeled subjects, keeps the
    candidate (lr, recipe) with the best validation Dice and is tested on the same held-out
    subjects; methods are compared by draw (a t interval over draws, with the minimal
    detectable effect). Interrupted? Run the same command again.

    Example: ssmtl benchmark --data ct.h5 --finetune-data mr.h5 --methods scratch,contrastive,multitask --labeled-volumes 1 --draws 5 --out bench/
    """
    from ssmtl.experiments.benchmark import Benchmark, BenchmarkConfig
    from ssmtl.settings.sources import deep_merge, parse_set_flags, read_config_file, set_path, validate_model

    values: dict[str, Any] = read_config_file(config) if config is not None else {}
    for path, value in flag_values(ctx).items():
        if path in ("data", "finetune_data"):
            value = one_or_many(value)
        set_path(values, path, value)
    for path, value in parse_set_flags(set_ or []):
        set_path(values, path, value)
    values = deep_merge({"pretrain": {}, "finetune": {}}, values)
    require(BENCHMARK_FLAGS, {"data": values.get("data"), "out": values.get("out")})
    bench_config = validate_model(BenchmarkConfig, values, prefix="benchmark")
    bench = Benchmark(bench_config, registry(), log=lambda m: err_console.print(f"[bold]benchmark[/] {m}", highlight=False))
    results = bench.run()
    console.print(render_table(results))
    out = bench_config.out
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
