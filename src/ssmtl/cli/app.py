"""The ``ssmtl`` command line.

Heavy imports (torch, h5py, accelerate) happen inside command bodies so that
``--help`` and shell completion stay fast.
"""

from __future__ import annotations

from typing import Optional

import typer
from rich.markup import escape

from ssmtl._version import __version__
from ssmtl.cli.common import check_environment, handle_errors, set_debug
from ssmtl.cli import (
    benchmark_cmd, cache_cmd, config_cmd, evaluate_cmd, finetune_cmd, plugin_cmd, plugins_cmd, predict_cmd, pretrain_cmd,
    publish_cmd,
)

app = typer.Typer(
    name="ssmtl",
    help="Self-supervised multi-task pre-training on sequential medical images (CT/MR slices).\n\n"
    "Typical session: `ssmtl cache build` -> `ssmtl pretrain` -> `ssmtl finetune` -> `ssmtl evaluate RUN` -> `ssmtl predict RUN`.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    # help is plain text: a bracket is a bracket (`pip install 'ssmtl[onnx]'`, `[default: 1000]`),
    # never a style tag rich would swallow
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ssmtl {__version__}")
        raise typer.Exit()


@app.callback()
@handle_errors
def root(
    no_plugins: bool = typer.Option(False, "--no-plugins", help="Load built-in plugins only (ignore the `ssmtl` entry points)."),
    debug: bool = typer.Option(False, "--debug", help="Print the full traceback behind an error line (a plugin's failure, a file reader's); also SSMTL_DEBUG=1."),
    version: Optional[bool] = typer.Option(None, "--version", callback=_version, is_eager=True, help="Show the version and exit."),
) -> None:
    """ssmtl: pre-train one encoder-decoder with several pretext tasks at once, then fine-tune segmentation."""
    from ssmtl.host.registry import set_default_external

    set_debug(debug)
    check_environment()
    set_default_external(False if no_plugins else None)


app.add_typer(cache_cmd.app, name="cache")
app.add_typer(config_cmd.app, name="config")
app.add_typer(plugin_cmd.app, name="plugin")
pretrain_cmd.register(app)
finetune_cmd.register(app)
evaluate_cmd.register(app)
benchmark_cmd.register(app)
publish_cmd.register(app)
predict_cmd.register(app)
plugins_cmd.register(app)


def _leave_process_group() -> None:
    """Under `accelerate launch`, tear the process group down before the interpreter exits.

    The training functions leave it up (a notebook or the benchmark runs several trainings in
    one group); the command line owns its process, so it closes the group here. Left to the
    interpreter's exit, gloo's threads were sometimes destroyed while still joinable, and a
    rank that had finished its work died with "terminate called without an active exception"
    (SIGABRT), failing a run that had succeeded.
    """
    import sys

    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def main() -> None:
    """The console script: a usage mistake (an unknown option, a value of the wrong type) is one
    `error:` line and exit code 2, like every other bad input, instead of a boxed panel."""
    import sys

    from ssmtl.cli.common import err_console

    try:
        code = app(standalone_mode=False)
        _leave_process_group()
    except typer.Abort:
        err_console.print("interrupted")
        sys.exit(130)
    except typer.TyperException as exc:  # click's UsageError, BadParameter, NoSuchOption ... (vendored by typer)
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError":  # a bare group: its help, as before
            exc.show()
            sys.exit(2)
        where = f"; see `{ctx.command_path} --help`" if ctx is not None and getattr(ctx, "command_path", "") else ""
        message = exc.format_message().strip().rstrip(".") if where else exc.format_message().strip()
        err_console.print(f"[bold red]error:[/] {escape(message)}{escape(where)}", highlight=False)
        sys.exit(getattr(exc, "exit_code", 2))
    sys.exit(code if isinstance(code, int) else 0)
