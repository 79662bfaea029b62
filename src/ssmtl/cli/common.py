"""Shared CLI plumbing: consoles, user-error handling, `--set` and option parsing."""

from __future__ import annotations

import functools

from typing import Any, Callable

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ssmtl.api.errors import ConfigError, SsmtlError

# soft_wrap: a printed line is never broken by rich at the console width (80 columns when
# stdout is not a terminal), so a long path stays one line to copy or to parse; tables
# still fit the width
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


def fail(message: str, rows: list[tuple[str, str]] | None = None) -> None:
    """Print one error line (and a table when there are several problems); exit 2."""
    # the message is text, not markup: `pip install 'ssmtl[onnx]'` must keep its brackets
    err_console.print(f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False)
    if rows and len(rows) > 1:
        table = Table(show_header=True, header_style="bold")
        table.add_column("field")
        table.add_column("problem")
        for loc, msg in rows:
            table.add_row(loc, msg)
        err_console.print(table)
    raise typer.Exit(2)


_DEBUG = False


def set_debug(flag: bool) -> None:
    """``ssmtl --debug``: a process-level switch (like ``--no-plugins``), so one in-process
    invocation does not leak into the next; ``SSMTL_DEBUG=1`` does the same from outside."""
    global _DEBUG
    _DEBUG = flag


def debug_enabled() -> bool:
    from ssmtl.settings.sources import env_flag

    try:
        return _DEBUG or env_flag("SSMTL_DEBUG")
    except SsmtlError:
        return False  # the bad value itself is reported by check_environment


def show_cause(exc: BaseException) -> None:
    """With ``--debug``: the full traceback behind a one-line error (a plugin's, a file reader's)."""
    if debug_enabled():
        import traceback

        cause = exc.__cause__ or exc
        err_console.print("".join(traceback.format_exception(type(cause), cause, cause.__traceback__)).rstrip(),
                          markup=False, highlight=False)


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn user errors into one clear line and exit code 2; bugs keep their traceback.

    A plugin's failure is a user error too (core.plugin_calls makes it one): one line naming
    the plugin and the call; ``--debug`` or ``SSMTL_DEBUG=1`` also prints its traceback.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ConfigError as exc:
            show_cause(exc)
            fail(str(exc), exc.rows)
        except SsmtlError as exc:
            show_cause(exc)
            fail(str(exc))
        except KeyboardInterrupt:
            err_console.print("interrupted")
            raise typer.Exit(130)

    return wrapper


def is_main_process() -> bool:
    import os

    return os.environ.get("RANK", "0") in ("0", "") and os.environ.get("LOCAL_RANK", "0") in ("0", "")


def registry():
    from ssmtl.host.registry import get_registry

    reg = get_registry()
    if reg.problems and is_main_process() and not getattr(registry, "_warned", False):
        for problem in reg.problems:
            err_console.print(f"[yellow]warning:[/] {problem}", highlight=False)
        registry._warned = True  # type: ignore[attr-defined]
    return reg


def check_environment() -> None:
    """Refuse an unknown ``SSMTL_*`` variable or a bad yes/no value before any command runs."""
    import os

    from ssmtl.settings.sources import ENV_PREFIX, NON_CONFIG_ENV, check_environment as check

    names = [k for k in os.environ if k.startswith(ENV_PREFIX)]
    known: dict[str, Any] = {}
    if any(k not in NON_CONFIG_ENV for k in names):  # only then pay for importing the config models
        from ssmtl.downstream.config import ENV as FINETUNE_ENV, FinetuneConfig
        from ssmtl.pretraining.config import PretrainConfig

        known = {name: None for name in PretrainConfig.model_fields}
        known[FINETUNE_ENV[len(ENV_PREFIX):].rstrip("_").lower()] = list(FinetuneConfig.model_fields)
    if names:
        check(known)
