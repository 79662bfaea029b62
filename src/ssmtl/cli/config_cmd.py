"""``ssmtl config``: the JSON Schema and the resolved configuration."""

from __future__ import annotations

import json

import typer

from ssmtl.cli import options as o
from ssmtl.cli.common import handle_errors, registry

app = typer.Typer(help="Inspect the run configuration.", no_args_is_help=True)


@app.command("schema")
@handle_errors
def schema() -> None:
    """Print the JSON Schema of the run config (tasks: a union discriminated by task name)."""
    from ssmtl.pretraining.config import run_config_schema

    typer.echo(json.dumps(run_config_schema(registry()), indent=2))


@app.command("show")
@handle_errors
def show(
    data: o.Data = None, task: o.Task = None, out: o.Out = None, steps: o.Steps = None,
    batch_size: o.BatchSize = None, config: o.ConfigFile = None, set_: o.Sets = None,
    mixed_precision: o.MixedPrecision = None, seed: o.Seed = None, compile_: o.Compile = None,
    workers: o.Workers = None,
    fmt: str = typer.Option("yaml", "--format", help="Output format: yaml or json."),
) -> None:
    """Print the resolved config: defaults < --config file < SSMTL_* env < flags < --set."""
    import yaml

    from ssmtl.api.errors import SsmtlError
    from ssmtl.pretraining.config import config_to_dict

    if fmt not in ("yaml", "json"):
        raise SsmtlError(f"--format {fmt!r}: use yaml or json")
    cfg = o.resolve(data, task, out, steps, batch_size, config, set_, mixed_precision, seed, compile_, workers)
    data_dict = config_to_dict(cfg)
    if fmt == "json":
        typer.echo(json.dumps(data_dict, indent=2))
    else:
        typer.echo(yaml.safe_dump(data_dict, sort_keys=False).rstrip())
