"""``ssmtl pretrain``, ``finetune``, ``evaluate`` and ``compare``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from ssmtl.cli import options as o
from ssmtl.cli.common import console, err_console, handle_errors, is_main_process, registry


def register(app: typer.Typer) -> None:
    app.command("pretrain")(pretrain)
    app.command("finetune")(finetune)
    app.command("evaluate")(evaluate)
    app.command("compare")(compare)


@handle_errors
def pretrain(
    data: o.Data = None, task: o.Task = None, out: o.Out = None, steps: o.Steps = None,
    batch_size: o.BatchSize = None, config: o.ConfigFile = None, set_: o.Sets = None,
    mixed_precision: o.MixedPrecision = None, seed: o.Seed = None, compile_: o.Compile = None,
    workers: o.Workers = None, log_with: o.LogWith = None,
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last valid checkpoint."),
) -> None:
    """Pre-train the shared encoder-decoder with several pretext tasks at once.

    Example: ssmtl pretrain --data data.h5 --task contrastive --task order --out runs/pre --steps 500

    Multi-GPU / multi-node: accelerate launch -m ssmtl pretrain ... (same flags).
    """
    from ssmtl.pretraining.engine import run_pretraining

    cfg = o.resolve(data, task, out, steps, batch_size, config, set_, mixed_precision, seed, compile_, workers, log_with)
    result = run_pretraining(cfg, resume=resume, registry=registry())
    if is_main_process():
        losses = ", ".join(f"{k}={v:.4f}" for k, v in result.final_losses.items())
        err_console.print(f"pre-training done: {result.steps} steps in {result.seconds:.1f}s ({losses})")
        console.print(f"export: {result.run_dir / 'export'}")


@handle_errors
def finetune(
    data: Optional[List[Path]] = typer.Option(None, "--data", help="Labeled HDF5 slice cache (data), or a folder of caches; repeat it to fine-tune on several caches as one dataset."),
    init: Optional[str] = typer.Option(None, "--init", help="Pre-training run directory, or `none` for the from-scratch baseline (init)."),
    init_parts: Optional[str] = typer.Option(None, "--init-parts", help="Load `all` of the export (encoder and decoder) or only the `encoder` (random decoder: the ablation of decoder pre-training)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Fine-tuning run directory (out)."),
    labeled_volumes: Optional[int] = typer.Option(None, "--labeled-volumes", "-n", help="Label budget, counted in volumes (subjects). Default 2."),
    steps: Optional[str] = typer.Option(None, "--steps", help="Optimizer steps N, or auto (the default): stop when the validation Dice has not improved for --patience steps, at most --max-steps (train.steps)."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="With --steps auto: the most steps (train.max_steps, default 1000)."),
    patience: Optional[int] = typer.Option(None, "--patience", help="With --steps auto: steps without a new best validation Dice before stopping (train.patience, default 200)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Slices per process per step (train.batch_size, default 16)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak AdamW learning rate (train.lr, default 3e-3)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed for initialisation, sampling and augmentation."),
    split_seed: Optional[int] = typer.Option(None, "--split-seed", help="Seed of the subject-level train/test split (keep it fixed to compare methods)."),
    test_fraction: Optional[float] = typer.Option(None, "--test-fraction", help="Fraction of labeled subjects held out for testing (default 0.3)."),
    head: Optional[str] = typer.Option(None, "--head", help="Downstream head plugin (default: the head `ssmtl plugins` lists under defaults, built-in: segmentation)."),
    mixed_precision: Optional[str] = typer.Option(None, "--mixed-precision", help="no, bf16 or fp16 (train.mixed_precision)."),
    freeze_encoder: Optional[bool] = typer.Option(None, "--freeze-encoder/--train-encoder", help="Train only the decoder and head."),
    class_balance: Optional[float] = typer.Option(None, "--class-balance", help="Fraction of slices sampled class first (a foreground class, then a slice showing it): small structures are seen often enough to be learned. 0: uniform."),
    workers: Optional[int] = typer.Option(None, "--num-workers", help="Data loader workers (num_workers)."),
    log_with: o.LogWith = None,
    config: o.ConfigFile = None,
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Override any fine-tuning field KEY=VALUE, e.g. train.grad_clip=1 or model.base_channels=8 (scratch only)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last valid checkpoint."),
) -> None:
    """Fine-tune segmentation on a few labeled volumes, from a pre-trained export or from scratch.

    Settings come from, lowest to highest: defaults, --config FILE, SSMTL_FINETUNE__* environment
    variables (SSMTL_FINETUNE__TRAIN__STEPS=500), flags, --set.

    Example: ssmtl finetune --data data.h5 --init runs/pre --labeled-volumes 2 --out runs/ft
    """
    from ssmtl.downstream.config import resolve_finetune_config
    from ssmtl.downstream.finetune import run_finetune

    flags = {
        "data": o.one_or_many(data), "init": init, "init_parts": init_parts, "out": out, "labeled_volumes": labeled_volumes,
        "train.steps": steps, "train.max_steps": max_steps, "train.patience": patience, "train.batch_size": batch_size, "train.lr": lr, "seed": seed, "split_seed": split_seed,
        "test_fraction": test_fraction, "head": head, "train.mixed_precision": mixed_precision,
        "freeze_encoder": freeze_encoder, "class_balance": class_balance, "num_workers": workers,
        "train.log_with": log_with or None,
    }
    cfg = resolve_finetune_config(file=config, flags=flags, sets=set_ or [], registry=registry())
    result = run_finetune(cfg, registry=registry(), resume=resume)
    if is_main_process():
        validation = result["validation"]
        if validation["dice"] is not None:
            how = "stopped on a plateau" if result["stopped_early"] else f"ran {result['steps']} steps"
            err_console.print(f"{how}; kept step {result['selected_step']} (validation Dice {validation['dice']:.3f} "
                              f"on {len(validation['subjects'])} {validation['source']})", highlight=False)
        console.print(f"fine-tuned model: {cfg.out}")



@handle_errors
def evaluate(
    run: Optional[Path] = typer.Option(None, "--run", help="Fine-tuning run directory."),
    data: Optional[List[Path]] = typer.Option(None, "--data", help="Cache (repeatable, or a folder) holding the test volumes (default: the run's caches)."),
    as_json: bool = typer.Option(False, "--json", help="Print eval.json (or scores.json) instead of a table."),
    space: str = typer.Option("auto", "--space", help="auto: at native resolution against the original label files when they are reachable, else on the cache grid; native: fail when not possible; cache: the cache grid."),
    resample: str = typer.Option("auto", "--resample", help="How predictions reach the native grid, as `ssmtl predict --resample`: auto, linear or nearest."),
    overlap: float = typer.Option(0.5, "--overlap", help="Sliding windows over scans wider than the cache, as `ssmtl predict --overlap`."),
    tta: bool = typer.Option(False, "--tta", help="Mirrored test-time augmentation along the axes the run's data allows, as `ssmtl predict --tta`."),
    predictions: Optional[Path] = typer.Option(None, "--predictions", help="Score a folder of predicted label maps (any tool's: ssmtl predict, nnU-Net) instead of a run; needs --references."),
    references: Optional[Path] = typer.Option(None, "--references", help="With --predictions: the folder of reference label maps (case.nii.gz, or case_seg.nii.gz ...)."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="With --predictions: a dataset.json (nnU-Net v2 or Decathlon) naming the structures; default: every value found, as label_<value>."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="With --predictions: the folder for scores.json and scores.csv (default: the predictions folder)."),
) -> None:
    """Predict the held-out test volumes slice by slice and report 3D Dice and HD95 per structure.

    Scores at native resolution (each scan's own voxel grid, the original label files) when the
    cache records the way back and the files are reachable; otherwise on the cache grid, saying why.
    Writes RUN/eval.json (space, mean_dice, per_class, per_volume, and the cache-grid scores).

    With --predictions DIR --references DIR it scores any folder of predictions instead, case by
    case (matched by file name), at each reference's own spacing, and writes scores.json and
    scores.csv. Exit code: 0 every matched case scored, 1 some could not be (one error line each),
    2 none.

    Example: ssmtl evaluate --predictions nnunet_pred/ --references labelsTr/ --labels dataset.json
    """
    from ssmtl.api.errors import SsmtlError

    if predictions is not None or references is not None:
        if run is not None or data is not None:
            raise SsmtlError("--predictions/--references score a folder; --run/--data evaluate a run: pass one or the other")
        if predictions is None or references is None:
            raise SsmtlError("--predictions and --references go together: the predicted and the reference label maps")
        _score_folders(predictions, references, labels, out, as_json)
        return
    if run is None:
        raise SsmtlError("--run: missing; pass a fine-tuning run, or --predictions and --references to score a folder")
    if labels is not None or out is not None:
        raise SsmtlError("--labels and --out belong to --predictions/--references (a run writes RUN/eval.json)")
    from ssmtl.downstream.evaluate import evaluate_run, render_eval_table
    from ssmtl.downstream.predictor import Windows

    results = evaluate_run(run, o.one_or_many(data), space=space, resample=resample, registry=registry(),
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
    runs: List[str] = typer.Argument(..., help="Evaluated runs as DIR or LABEL=DIR."),
) -> None:
    """Compare evaluated fine-tuning runs side by side (3D Dice per structure)."""
    from ssmtl.api.errors import SsmtlError
    from ssmtl.downstream.evaluate import render_comparison_table
    from ssmtl.downstream.records import read_eval_json

    results = {}
    for item in runs:
        label, sep, path = item.partition("=")
        path = Path(path if sep else label)
        label = label if sep else path.name
        eval_path = path / "eval.json"
        if not eval_path.is_file():
            raise SsmtlError(f"{eval_path}: not found; run `ssmtl evaluate --run {path}` first")
        results[label] = read_eval_json(eval_path)
    console.print(render_comparison_table(results))
