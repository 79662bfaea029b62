"""Shared CLI plumbing: consoles, user-error handling, `--set` and option parsing."""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ssmtl.api.errors import ConfigError, SsmtlError

console = Console()
err_console = Console(stderr=True)


def fail(message: str, rows: list[tuple[str, str]] | None = None) -> None:
    """Print one error line (and a table when there are several problems); exit 2."""
    # the message is text, not markup: `pip install 'ssmtl[onnx]'` must keep its brackets
    err_console.print(f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False, soft_wrap=True)
    if rows and len(rows) > 1:
        table = Table(show_header=True, header_style="bold")
        table.add_column("field")
        table.add_column("problem")
        for loc, msg in rows:
            table.add_row(loc, msg)
        err_console.print(table)
    raise typer.Exit(2)


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn user errors into one clear line and exit code 2; bugs keep their traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ConfigError as exc:
            fail(str(exc), exc.rows)
        except SsmtlError as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            err_console.print("interrupted")
            raise typer.Exit(130)

    return wrapper


def is_main_process() -> bool:
    import os

    return os.environ.get("RANK", "0") in ("0", "") and os.environ.get("LOCAL_RANK", "0") in ("0", "")


def registry():
    from ssmtl.core.registry import get_registry

    reg = get_registry()
    if reg.problems and is_main_process() and not getattr(registry, "_warned", False):
        for problem in reg.problems:
            err_console.print(f"[yellow]warning:[/] {problem}", highlight=False)
        registry._warned = True  # type: ignore[attr-defined]
    return reg


def write_out(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
