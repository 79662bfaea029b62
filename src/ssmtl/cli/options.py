"""The pre-training options shared by ``ssmtl pretrain`` and ``ssmtl config show``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import typer
from typing_extensions import Annotated

Data = Annotated[Optional[List[Path]], typer.Option("--data", help="HDF5 slice cache (from `ssmtl cache build`), or a folder of caches; repeat it to train on several caches as one dataset (data.path).")]
Task = Annotated[Optional[List[str]], typer.Option("--task", "-t", help="Pretext task, repeatable; NAME or NAME:WEIGHT (see `ssmtl tasks`). Default: the tasks `ssmtl plugins` lists under defaults (built-in: contrastive + order).")]
Out = Annotated[Optional[Path], typer.Option("--out", "-o", help="Run directory.")]
Steps = Annotated[Optional[int], typer.Option("--steps", help="Optimizer steps (train.steps).")]
BatchSize = Annotated[Optional[int], typer.Option("--batch-size", help="Sequences per process per step (train.batch_size).")]
ConfigFile = Annotated[Optional[Path], typer.Option("--config", "-c", help="TOML/YAML/JSON config file (below env vars, flags and --set in precedence).")]
Sets = Annotated[Optional[List[str]], typer.Option("--set", help="Override any field: KEY=VALUE, e.g. model.base_channels=8 or tasks.order.num_slices=4 (repeatable).")]
MixedPrecision = Annotated[Optional[str], typer.Option("--mixed-precision", help="no, bf16 or fp16 (train.mixed_precision).")]
Seed = Annotated[Optional[int], typer.Option("--seed", help="Seed (seed); same seed + same process count = same run on CPU.")]
Compile = Annotated[Optional[bool], typer.Option("--compile/--no-compile", help="torch.compile the network (train.compile).")]
Workers = Annotated[Optional[int], typer.Option("--num-workers", help="Data loader workers (data.num_workers).")]
LogWith = Annotated[Optional[List[str]], typer.Option("--log-with", help="Experiment tracker, repeatable: tensorboard, wandb (offline), mlflow (file store) or aim; writes under RUN/logs (train.log_with). Each is an optional extra: pip install 'ssmtl[tensorboard]'.")]


def one_or_many(paths: list[Path] | None) -> Path | list[Path] | None:
    """A repeated --data as the config stores it: one path stays a path (one-cache configs are
    unchanged), several become a list, none leaves the setting to the other sources."""
    if not paths:
        return None
    return paths[0] if len(paths) == 1 else list(paths)


def resolve(data, task, out, steps, batch_size, config, sets, mixed_precision, seed, compile_, workers, log_with=None):
    """All sources -> one validated RunConfig (flags left unset do not override anything)."""
    from ssmtl.cli.common import registry
    from ssmtl.pretraining.config import resolve_run_config

    flags: dict[str, Any] = {
        "data.path": one_or_many(data),
        "out": out,
        "train.steps": steps,
        "train.batch_size": batch_size,
        "train.mixed_precision": mixed_precision,
        "seed": seed,
        "train.compile": compile_,
        "data.num_workers": workers,
        "train.log_with": log_with or None,
    }
    return resolve_run_config(file=config, flags=flags, tasks=task, sets=sets, registry=registry())
