"""``ssmtl plugin``: tools for plugin authors (``ssmtl plugins`` lists the installed ones)."""

from __future__ import annotations

from pathlib import Path

import typer

from ssmtl.cli.common import handle_errors, registry

app = typer.Typer(help="Create plugin packages (list installed plugins with `ssmtl plugins`).", no_args_is_help=True)


@app.command("new")
@handle_errors
def new(
    name: str = typer.Argument(..., metavar="NAME", help="Task name, e.g. `slice-stats`; the package becomes ssmtl-slice-stats."),
    directory: Path = typer.Option(Path("."), "--dir", help="Folder to create the package folder in."),
) -> None:
    """Scaffold a plugin package: a pretext task with its config, a simple working loss, tests and a README.

    Example: ssmtl plugin new slice-stats --dir plugins/ && pip install -e plugins/ssmtl-slice-stats
    """
    from ssmtl.cli.scaffold import write_plugin_package

    # a name an installed plugin already provides would be rejected when the new one loads
    root, files = write_plugin_package(name, directory, taken=registry().tasks)
    # plain echo, not rich: paths must not be wrapped or highlighted when copied from the terminal
    typer.echo(f"created {root}")
    for path in files:
        typer.echo(f"  {path.relative_to(root)}")
    typer.echo(
        "next:\n"
        f"  pip install -e {root}\n"
        f"  pytest {root}\n"
        "  ssmtl plugins\n"
        f"  ssmtl pretrain --data CACHE.h5 --task {name} --task contrastive --out runs/pre"
    )
