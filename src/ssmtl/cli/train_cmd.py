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
    workers: o.Workers = None,
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last valid checkpoint."),
) -> None:
    """Pre-train the shared encoder-decoder with several pretext tasks at once.

    Example: ssmtl pretrain --data data.h5 --task contrastive --task order --out runs/pre --steps 500

    Multi-GPU / multi-node: accelerate launch -m ssmtl pretrain ... (same flags).
    """
    from ssmtl.pretrain.engine import run_pretraining

    cfg = o.resolve(data, task, out, steps, batch_size, config, set_, mixed_precision, seed, compile_, workers)
    result = run_pretraining(cfg, resume=resume, registry=registry())
    if is_main_process():
        losses = ", ".join(f"{k}={v:.4f}" for k, v in result.final_losses.items())
        err_console.print(f"pre-training done: {result.steps} steps in {result.seconds:.1f}s ({losses})")
        console.print(f"export: {result.run_dir / 'export'}")


@handle_errors
def finetune(
    data: Path = typer.Option(..., "--data", help="Labeled HDF5 slice cache."),
    init: str = typer.Option(..., "--init", help="Pre-training run directory, or `none` for the from-scratch baseline."),
    init_parts: str = typer.Option("all", "--init-parts", help="Load `all` of the export (encoder and decoder) or only the `encoder` (random decoder: the ablation of decoder pre-training)."),
    out: Path = typer.Option(..., "--out", "-o", help="Fine-tuning run directory."),
    labeled_volumes: int = typer.Option(2, "--labeled-volumes", "-n", help="Label budget, counted in volumes (subjects)."),
    steps: int = typer.Option(300, "--steps", help="Optimizer steps."),
    batch_size: int = typer.Option(16, "--batch-size", help="Slices per step."),
    lr: float = typer.Option(1e-3, "--lr", help="Peak AdamW learning rate."),
    seed: int = typer.Option(0, "--seed", help="Seed for the choice of labeled volumes and training."),
    split_seed: int = typer.Option(0, "--split-seed", help="Seed of the subject-level train/test split (keep it fixed to compare methods)."),
    test_fraction: float = typer.Option(0.3, "--test-fraction", help="Fraction of labeled subjects held out for testing."),
    head: Optional[str] = typer.Option(None, "--head", help="Downstream head plugin (default: the head `ssmtl plugins` lists under defaults, built-in: segmentation)."),
    mixed_precision: str = typer.Option("no", "--mixed-precision", help="no, bf16 or fp16."),
    freeze_encoder: bool = typer.Option(False, "--freeze-encoder", help="Train only the decoder and head."),
    class_balance: float = typer.Option(0.0, "--class-balance", help="Fraction of slices sampled class first (a foreground class, then a slice showing it): small structures are seen often enough to be learned. 0: uniform."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Override any fine-tuning field KEY=VALUE, e.g. model.base_channels=8 (scratch only)."),
) -> None:
    """Fine-tune segmentation on a few labeled volumes, from a pre-trained export or from scratch.

    Example: ssmtl finetune --data data.h5 --init runs/pre --labeled-volumes 2 --out runs/ft
    """
    from ssmtl.pretrain.config import parse_set_flags, set_path
    from ssmtl.data.build import validate_model
    from ssmtl.downstream.finetune import FinetuneConfig, run_finetune

    raw = {
        "data": data, "init": init, "init_parts": init_parts, "out": out, "labeled_volumes": labeled_volumes, "steps": steps,
        "batch_size": batch_size, "lr": lr, "seed": seed, "split_seed": split_seed,
        "test_fraction": test_fraction, "head": head, "mixed_precision": mixed_precision,
        "freeze_encoder": freeze_encoder, "class_balance": class_balance,
    }
    for key, value in parse_set_flags(set_ or []):
        set_path(raw, key, value)
    cfg = validate_model(FinetuneConfig, raw, prefix="finetune")
    run_finetune(cfg, registry=registry())
    if is_main_process():
        console.print(f"fine-tuned model: {out}")


@handle_errors
def evaluate(
    run: Path = typer.Option(..., "--run", help="Fine-tuning run directory."),
    data: Optional[Path] = typer.Option(None, "--data", help="Cache holding the test volumes (default: the run's cache)."),
    as_json: bool = typer.Option(False, "--json", help="Print eval.json instead of a table."),
) -> None:
    """Predict the held-out test volumes slice by slice and report 3D Dice and HD95 per structure.

    Writes RUN/eval.json (mean_dice, per_class, per_volume).
    """
    from ssmtl.downstream.evaluate import evaluate_run, render_eval_table

    results = evaluate_run(run, data)
    if as_json:
        typer.echo(json.dumps(results, indent=2))
    else:
        console.print(render_eval_table(results))


@handle_errors
def compare(
    runs: List[str] = typer.Argument(..., help="Evaluated runs as DIR or LABEL=DIR."),
) -> None:
    """Compare evaluated fine-tuning runs side by side (3D Dice per structure)."""
    from ssmtl.api.errors import SsmtlError
    from ssmtl.downstream.evaluate import render_comparison_table

    results = {}
    for item in runs:
        label, sep, path = item.partition("=")
        path = Path(path if sep else label)
        label = label if sep else path.name
        eval_path = path / "eval.json"
        if not eval_path.is_file():
            raise SsmtlError(f"{eval_path}: not found; run `ssmtl evaluate --run {path}` first")
        results[label] = json.loads(eval_path.read_text())
    console.print(render_comparison_table(results))
