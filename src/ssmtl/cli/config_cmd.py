"""``ssmtl config``: the JSON Schema and the resolved configuration of a training command."""

from __future__ import annotations

import json
from typing import Any

import typer

from ssmtl.cli.common import handle_errors, registry
from ssmtl.cli.config_options import config_command
from ssmtl.cli.finetune_cmd import FINETUNE_FLAGS, _finetune_config_model, resolve_finetune
from ssmtl.cli.pretrain_cmd import PRETRAIN_FLAGS, ConfigFile, Sets, Task, _pretrain_config_model, resolve_pretrain

app = typer.Typer(help="Inspect the configuration of a training command: its JSON Schema and its resolved values.",
                  no_args_is_help=True)

COMMANDS = ("pretrain", "finetune")
For = typer.Option("pretrain", "--for", help="Which command's config: pretrain or finetune.")


def _chosen(args: list[str]):
    """The flags of the command ``--for`` names (pretrain when it names none)."""
    named = next((args[i + 1] for i, a in enumerate(args[:-1]) if a == "--for"), None)
    named = next((a.partition("=")[2] for a in args if a.startswith("--for=")), named)
    if named == "finetune":
        return _finetune_config_model, [_optional(f) for f in FINETUNE_FLAGS]
    return _pretrain_config_model, [_optional(f) for f in PRETRAIN_FLAGS]


def _optional(flag):
    """Showing a config needs no run directory or data: the flag stays, nothing is required."""
    import dataclasses

    return dataclasses.replace(flag, required=False)


@app.command("schema")
@handle_errors
def schema(command: str = For) -> None:
    """Print the JSON Schema of a command's config (tasks and model: unions discriminated by plugin name)."""
    from ssmtl.api.errors import SsmtlError

    if command == "pretrain":
        from ssmtl.pretraining.config import pretrain_config_schema

        document = pretrain_config_schema(registry())
    elif command == "finetune":
        from ssmtl.downstream.config import FinetuneConfig

        document = FinetuneConfig.model_json_schema()
    else:
        raise SsmtlError(f"--for {command!r}: use {' or '.join(COMMANDS)}")
    typer.echo(json.dumps(document, indent=2))


@config_command(app, "show", None, _chosen)
@handle_errors
def show(
    ctx: typer.Context,
    command: str = For,
    task: Task = None, config: ConfigFile = None, set_: Sets = None,
    fmt: str = typer.Option("yaml", "--format", help="Output format: yaml or json."),
) -> None:
    """Print a command's resolved config: defaults < --config file < SSMTL_* variables < flags < --set.

    Takes the flags of the command it shows (`ssmtl config show --for finetune --lr 1e-3`);
    every path it prints can be set with --set PATH=VALUE.
    """
    import yaml

    from ssmtl.api.errors import SsmtlError

    if fmt not in ("yaml", "json"):
        raise SsmtlError(f"--format {fmt!r}: use yaml or json")
    if command not in COMMANDS:
        raise SsmtlError(f"--for {command!r}: use {' or '.join(COMMANDS)}")
    if command == "finetune":
        if task:
            raise SsmtlError("--task belongs to pretrain; fine-tuning has no pretext tasks")
        resolved: Any = resolve_finetune(ctx, config, set_)
    else:
        resolved = resolve_pretrain(ctx, task, config, set_)
    data = resolved.model_dump(mode="json")
    if fmt == "json":
        typer.echo(json.dumps(data, indent=2))
    else:
        typer.echo(yaml.safe_dump(data, sort_keys=False).rstrip())

