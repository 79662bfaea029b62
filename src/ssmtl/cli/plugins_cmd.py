"""``ssmtl plugins`` and ``ssmtl tasks``: what the installed plugins provide."""

from __future__ import annotations

import dataclasses
import json

import typer

from ssmtl.cli.common import console, handle_errors, registry


def register(app: typer.Typer) -> None:
    app.command("plugins")(plugins)
    app.command("tasks")(tasks)


@handle_errors
def plugins(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """List every plugin (built-in and from entry points) with its version and what it provides."""
    from rich.table import Table

    reg = registry()
    if as_json:
        defaults = dataclasses.asdict(reg.defaults)
        typer.echo(json.dumps({"plugins": [p.to_dict() for p in reg.plugins], "defaults": defaults, "problems": reg.problems}, indent=2))
        return
    table = Table(title="ssmtl plugins", title_justify="left")
    for col in ("plugin", "distribution", "version", "provides", "status"):
        table.add_column(col)
    for p in reg.plugins:
        table.add_row(
            p.name, p.distribution + (" (built-in)" if p.builtin else ""), p.version, _provides(p.provides),
            "[red]" + p.error + "[/]" if p.error else "ok",
        )
    console.print(table)
    console.print(_defaults_line(reg), highlight=False, markup=False)


def _provides(provides: dict[str, list[str]]) -> str:
    """``{"tasks": ["a", "b"], "defaults": [...]}`` -> ``task a, task b, defaults``."""
    return ", ".join("defaults" if kind == "defaults" else f"{kind[:-1]} {name}"
                     for kind, names in provides.items() for name in names)


def _defaults_line(reg) -> str:
    """What a bare command uses, and which plugin says so."""
    d = reg.defaults
    source = next((p.name for p in reg.plugins if "defaults" in p.provides), None)
    if source is None:
        return "defaults: none (no plugin provides ssmtl_defaults)"
    sets = "; ".join(f"{name} = {'+'.join(tasks)}" for name, tasks in d.task_sets.items()) or "none"
    return "\n".join([
        f"defaults (from {source}):",
        f"  tasks: {', '.join(d.tasks) or 'none'}",
        f"  head: {d.head or 'none'}",
        f"  network: {d.network or 'none'}",
        f"  benchmark task sets: {sets}",
        f"  benchmark baseline: {d.baseline or 'scratch only'}",
    ])


@handle_errors
def tasks() -> None:
    """List the pretext tasks with what they train and their options (set with --set tasks.NAME.OPTION=V)."""
    from rich.table import Table

    reg = registry()
    for name, spec in sorted(reg.tasks.items()):
        table = Table(title=f"[bold]{name}[/]: {spec.description}", title_justify="left", show_edge=False)
        table.add_column("option")
        table.add_column("default")
        table.add_column("description")
        for field_name, field in spec.config_model.model_fields.items():
            if field_name == "name":
                continue
            default = field.get_default(call_default_factory=True)
            table.add_row(field_name, repr(default), field.description or "")
        console.print(table)
        console.print()
