"""``ssmtl pretrain``: multi-task pre-training, its flags generated from the pre-training config."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import typer
from typing_extensions import Annotated

from ssmtl.cli.common import console, err_console, handle_errors, is_main_process, registry
from ssmtl.cli.config_options import ConfigFlag, config_command, flag_values, require


def _pretrain_config_model():
    from ssmtl.pretraining.config import PretrainConfig

    return PretrainConfig


#: the fields of the pre-training config (PretrainConfig) with a flag of their own; every other
#: field is reached with --set PATH=VALUE
PRETRAIN_FLAGS = [
    ConfigFlag("data.path", "--data", required=True,
               help="Repeat it to train on several caches as one dataset."),
    ConfigFlag("out", "--out", "-o", required=True),
    ConfigFlag("train.steps"),
    ConfigFlag("train.batch_size"),
    ConfigFlag("train.lr"),
    ConfigFlag("seed"),
    ConfigFlag("train.mixed_precision"),
    ConfigFlag("train.compile"),
    ConfigFlag("data.num_workers", "--workers", "-j"),
    ConfigFlag("train.log_with"),
]

Task = Annotated[Optional[List[str]], typer.Option(
    "--task", "-t", metavar="NAME[:WEIGHT]", help="Pretext task, repeatable; NAME or NAME:WEIGHT (see `ssmtl tasks`). "
    "Default: the tasks `ssmtl plugins` lists under defaults (built-in: contrastive + order).")]
ConfigFile = Annotated[Optional[Path], typer.Option(
    "--config", "-c", metavar="FILE", help="A TOML, YAML or JSON config file (below SSMTL_* variables, flags and --set).")]
Sets = Annotated[Optional[List[str]], typer.Option(
    "--set", metavar="PATH=VALUE", help="Any field of the command's config, by its dotted path, after the flags; repeatable "
    "(e.g. pretrain: model.base_channels=8, tasks.order.num_slices=4; finetune: train.lp_steps=100; benchmark: "
    "pretrain.model.base_channels=8, finetune.train.warmup_steps=50). `ssmtl config show --for COMMAND` lists the paths.")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its last valid checkpoint.")]


def register(app: typer.Typer) -> None:
    config_command(app, "pretrain", _pretrain_config_model, PRETRAIN_FLAGS)(pretrain)


def resolve_pretrain(ctx: typer.Context, task: list[str] | None, config: Path | None, sets: list[str] | None):
    """Every source -> one validated pre-training config (flags left out override nothing)."""
    from ssmtl.pretraining.config import resolve_pretrain_config

    flags: dict[str, Any] = flag_values(ctx)
    if "data.path" in flags:
        flags["data.path"] = one_or_many(flags["data.path"])
    return resolve_pretrain_config(file=config, flags=flags, tasks=task, sets=sets, registry=registry())


@handle_errors
def pretrain(ctx: typer.Context, task: Task = None, config: ConfigFile = None, set_: Sets = None,
             resume: Resume = False) -> None:
    """Pre-train the shared encoder-decoder with several pretext tasks at once.

    Settings come from, lowest to highest: the defaults, --config FILE, SSMTL_* environment
    variables (SSMTL_TRAIN__STEPS=500), the flags, then --set.

    Example: ssmtl pretrain --data data.h5 --task contrastive --task order --out runs/pre --steps 500

    Multi-GPU / multi-node: accelerate launch -m ssmtl pretrain ... (same flags).
    """
    from ssmtl.pretraining.engine import run_pretraining

    cfg = resolve_pretrain(ctx, task, config, set_)
    require(PRETRAIN_FLAGS, {"data.path": cfg.data.path, "out": cfg.out})
    result = run_pretraining(cfg, registry(), resume=resume)
    if is_main_process():
        losses = ", ".join(f"{k}={v:.4f}" for k, v in result.final_losses.items())
        err_console.print(f"pre-training done: {result.steps} steps in {result.seconds:.1f}s ({losses})")
        console.print(f"export: {result.run_dir / 'export'}")


def one_or_many(paths: list[Path] | list[str] | None) -> Path | list[Path] | None:
    """A repeated --data as the config stores it: one path stays a path (one-cache configs are
    unchanged), several become a list, none leaves the setting to the other sources."""
    if not paths:
        return None
    return Path(paths[0]) if len(paths) == 1 else [Path(p) for p in paths]
