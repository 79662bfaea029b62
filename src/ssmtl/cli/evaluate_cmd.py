"""``ssmtl evaluate`` and ``ssmtl compare``: scores of fine-tuned runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from ssmtl.cli.common import console, handle_errors, registry
from ssmtl.cli.pretrain_cmd import one_or_many


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
    app.command("compare")(compare)


@handle_errors
def evaluate(
    run: Path = typer.Argument(..., metavar="RUN", help="Fine-tuning run directory."),
    data: Optional[List[Path]] = typer.Option(None, "--data", help="Cache (repeatable, or a folder) holding the evaluated volumes (default: the run's caches)."),
    split: str = typer.Option("test", "--split", help="Which subjects of the run's split.json: test, val or train."),
    space: str = typer.Option("auto", "--space", help="auto: at native resolution against the original label files when they are reachable, else on the cache grid; native: fail when not possible; cache: the cache grid."),
    resample: str = typer.Option("auto", "--resample", help="How predictions reach the native grid, as `ssmtl predict --resample`: auto, linear or nearest."),
    as_json: bool = typer.Option(False, "--json", help="Print eval.json instead of a table."),
) -> None:
    """Predict the run's held-out subjects and report 3D Dice and HD95 per structure.

    Scores at native resolution (each scan's own voxel grid, the original label files) when the
    cache records the way back and the files are reachable; otherwise on the cache grid, saying why.
    Writes RUN/eval.json (space, mean_dice, per_class, per_volume, and the cache-grid scores).

    Example: ssmtl evaluate runs/ft
    """
    from ssmtl.downstream.evaluate import evaluate_run, render_eval_table

    results = evaluate_run(run, one_or_many(data), split=split, space=space, resample=resample, registry=registry())
    if as_json:
        typer.echo(json.dumps(results, indent=2))
    else:
        console.print(render_eval_table(results))


@handle_errors
def compare(
    runs: List[str] = typer.Argument(..., metavar="RUN...", help="Evaluated runs as DIR or LABEL=DIR."),
) -> None:
    """Compare evaluated fine-tuning runs side by side (3D Dice per structure); runs that share a
    folder name are labelled by their parent folders too (a/ft, b/ft).

    Example: ssmtl compare scratch=runs/ft-scratch multitask=runs/ft
    """
    from ssmtl.downstream.evaluate import render_comparison_table
    from ssmtl.publish.compare import comparison_results

    console.print(render_comparison_table(comparison_results(runs)))
