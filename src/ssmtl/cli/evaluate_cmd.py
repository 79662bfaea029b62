"""``ssmtl evaluate`` and ``ssmtl compare``: scores of fine-tuned runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from ssmtl.cli.common import console, err_console, handle_errors, registry
from ssmtl.cli.pretrain_cmd import one_or_many


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
    app.command("compare")(compare)


@handle_errors
def evaluate(
    run: Optional[Path] = typer.Argument(None, metavar="RUN", help="Fine-tuning run directory (or --predictions and --references)."),
    data: Optional[List[Path]] = typer.Option(None, "--data", help="Cache (repeatable, or a folder) holding the evaluated volumes (default: the run's caches)."),
    split: str = typer.Option("test", "--split", help="Which subjects of the run's split.json: test, val or train."),
    space: str = typer.Option("auto", "--space", help="auto: at native resolution against the original label files when they are reachable, else on the cache grid; native: fail when not possible; cache: the cache grid."),
    resample: str = typer.Option("auto", "--resample", help="How predictions reach the native grid, as `ssmtl predict --resample`: auto, linear or nearest."),
    overlap: float = typer.Option(0.5, "--overlap", help="Sliding windows over scans wider than the cache, as `ssmtl predict --overlap`."),
    tta: bool = typer.Option(False, "--tta", help="Mirrored test-time augmentation along the axes the run's data allows, as `ssmtl predict --tta`."),
    predictions: Optional[Path] = typer.Option(None, "--predictions", help="Score a folder of predicted label maps (any tool's: ssmtl predict, nnU-Net) instead of a run; needs --references."),
    references: Optional[Path] = typer.Option(None, "--references", help="With --predictions: the folder of reference label maps (case.nii.gz, or case_seg.nii.gz ...)."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="With --predictions: a dataset.json (nnU-Net v2 or Decathlon) naming the structures; default: every value found, as label_<value>."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="With --predictions: the folder for scores.json and scores.csv (default: the predictions folder)."),
    as_json: bool = typer.Option(False, "--json", help="Print eval.json (or scores.json) instead of a table."),
) -> None:
    """Predict a run's held-out subjects and report 3D Dice and HD95 per structure, or score any
    folder of predictions.

    Scores at native resolution (each scan's own voxel grid, the original label files) when the
    cache records the way back and the files are reachable; otherwise on the cache grid, saying why.
    Writes RUN/eval.json (space, mean_dice, per_class, per_volume, and the cache-grid scores).

    With --predictions DIR --references DIR it scores any folder of predictions instead, case by
    case (matched by file name), at each reference's own spacing, and writes scores.json and
    scores.csv. Exit code: 0 every matched case scored, 1 some could not be (one error line each),
    2 none.

    Examples: ssmtl evaluate runs/ft

      ssmtl evaluate --predictions nnunet_pred/ --references labelsTr/ --labels dataset.json
    """
    from ssmtl.api.errors import SsmtlError

    if predictions is not None or references is not None:
        if run is not None or data is not None:
            raise SsmtlError("--predictions/--references score a folder; RUN/--data evaluate a run: pass one or the other")
        if predictions is None or references is None:
            raise SsmtlError("--predictions and --references go together: the predicted and the reference label maps")
        _score_folders(predictions, references, labels, out, as_json)
        return
    if run is None:
        raise SsmtlError("RUN: missing; pass a fine-tuning run, or --predictions and --references to score a folder")
    if labels is not None or out is not None:
        raise SsmtlError("--labels and --out belong to --predictions/--references (a run writes RUN/eval.json)")
    from ssmtl.downstream.evaluate import evaluate_run, render_eval_table
    from ssmtl.downstream.predictor import Windows

    results = evaluate_run(run, one_or_many(data), split=split, space=space, resample=resample, registry=registry(),
                           windows=Windows(overlap=overlap), tta=tta,
                           log=lambda line: err_console.print(line, highlight=False, markup=False))
    if as_json:
        typer.echo(json.dumps(results, indent=2))
    else:
        console.print(render_eval_table(results))


def _score_folders(predictions: Path, references: Path, labels: Optional[Path], out: Optional[Path], as_json: bool) -> None:
    from ssmtl.downstream.score_folders import FolderScoreOptions, render_score_tables, score_folders

    record = score_folders(FolderScoreOptions(predictions, references, labels, out),
                           log=lambda line: err_console.print(line, highlight=False, markup=False))
    if as_json:
        typer.echo(json.dumps({k: v for k, v in record.items() if k != "written"}, indent=2))
    else:
        for table in render_score_tables(record):
            console.print(table)
    err_console.print(f"scores: {', '.join(record['written'])}", highlight=False)
    if record["failed"]:
        raise typer.Exit(1)


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
