"""``ssmtl finetune``: segmentation on a few labeled volumes, its flags generated from the
fine-tuning config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from ssmtl.cli.common import console, err_console, handle_errors, is_main_process, registry
from ssmtl.cli.config_options import ConfigFlag, config_command, flag_values, require
from ssmtl.cli.pretrain_cmd import ConfigFile, Resume, Sets, one_or_many


def _finetune_config_model():
    from ssmtl.downstream.config import FinetuneConfig

    return FinetuneConfig


#: the fields of the fine-tuning config (FinetuneConfig) with a flag of their own; every other
#: field is reached with --set PATH=VALUE (`ssmtl config show finetune` lists them)
FINETUNE_FLAGS = [
    ConfigFlag("data", "--data", required=True, help="Repeat it to fine-tune on several caches as one dataset."),
    ConfigFlag("out", "--out", "-o", required=True),
    ConfigFlag("init"),
    ConfigFlag("init_parts"),
    ConfigFlag("labeled_volumes", short="-n"),
    ConfigFlag("train.steps"),
    ConfigFlag("train.max_steps"),
    ConfigFlag("train.patience"),
    ConfigFlag("train.batch_size"),
    ConfigFlag("train.lr"),
    ConfigFlag("seed"),
    ConfigFlag("split_seed"),
    ConfigFlag("test_fraction"),
    ConfigFlag("head"),
    ConfigFlag("train.mixed_precision"),
    ConfigFlag("freeze_encoder"),
    ConfigFlag("class_balance"),
    ConfigFlag("num_workers", "--workers", "-j"),
    ConfigFlag("train.log_with"),
]


def register(app: typer.Typer) -> None:
    config_command(app, "finetune", _finetune_config_model, FINETUNE_FLAGS)(finetune)


def resolve_finetune(ctx: typer.Context, config: Path | None, sets: list[str] | None):
    """Every source -> one validated fine-tuning config (flags left out override nothing)."""
    from ssmtl.downstream.config import resolve_finetune_config

    flags: dict[str, Any] = flag_values(ctx)
    if "data" in flags:
        flags["data"] = one_or_many(flags["data"])
    return resolve_finetune_config(file=config, flags=flags, sets=sets or [], registry=registry())


@handle_errors
def finetune(ctx: typer.Context, config: ConfigFile = None, set_: Sets = None, resume: Resume = False) -> None:
    """Fine-tune segmentation on a few labeled volumes, from a pre-trained export or from scratch.

    Settings come from, lowest to highest: the defaults, --config FILE, SSMTL_FINETUNE__*
    environment variables (SSMTL_FINETUNE__TRAIN__STEPS=500), the flags, then --set.

    Example: ssmtl finetune --data data.h5 --init runs/pre --labeled-volumes 2 --out runs/ft
    """
    from ssmtl.downstream.finetune import run_finetune

    cfg = resolve_finetune(ctx, config, set_)
    require(FINETUNE_FLAGS, {"data": cfg.data, "out": cfg.out})
    result = run_finetune(cfg, registry(), resume=resume)
    if is_main_process():
        validation = result["validation"]
        if validation["dice"] is not None:
            how = "stopped on a plateau" if result["stopped_early"] else f"ran {result['steps']} steps"
            err_console.print(f"{how}; kept step {result['selected_step']} (validation Dice {validation['dice']:.3f} "
                              f"on {len(validation['subjects'])} {validation['source']})", highlight=False)
        console.print(f"fine-tuned model: {cfg.out}")
