"""``ssmtl cache build``'s dataset options, generated from each dataset plugin's config model.

Every field of every registered dataset's pydantic config model becomes an option
(``label_values`` -> ``--label-values``) whose help is the field's description, so a
third-party dataset gets the same flags and ``--help`` as a built-in one.

* The options are made when ``cache build`` parses its arguments or prints its help,
  never when the CLI is built: ``ssmtl --help`` loads no plugin (and no torch).
* ``ssmtl cache build --help`` lists the options of every dataset, each saying which
  datasets have it; ``ssmtl cache build --dataset X --help`` lists X's alone.
* A value goes to the model as the text given (pydantic converts it, and its errors name
  the field); a list or table field reads YAML/JSON flow syntax (``[205, 420]``), as
  ``--set`` does. A field that is a bool in every dataset is a ``--x/--no-x`` flag.
* A field whose flag would shadow an option of the command itself (``--out``,
  ``--size``, ...) is left to ``--set``; ``--size`` also sets a dataset's own ``size``.
* An option of another dataset is an error that lists the dataset's own options.
"""

from __future__ import annotations

import inspect
import typing
from pathlib import Path
from typing import Any, Literal, Optional

import typer
import typer.main
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from typer.core import TyperCommand
from typing_extensions import Annotated

from ssmtl.cli.config_options import inner_type, typer_options

_PARAMS = "ssmtl.dataset_options.params"  # ctx.meta keys: made once per invocation
_VALUES = "ssmtl.dataset_options.values"
_NAMED = "ssmtl.dataset_options.dataset"
_CONTAINERS = (list, tuple, set, frozenset, dict)


def flag(field: str) -> str:
    return "--" + field.replace("_", "-")


class DatasetOptionsCommand(TyperCommand):
    """A Typer command plus one option per dataset config field (see the module docstring)."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        ctx.meta[_NAMED] = _named_dataset(args)  # before parsing: it decides what --help shows
        return super().parse_args(ctx, args)

    def get_params(self, ctx) -> list:
        params = super().get_params(ctx)
        if _PARAMS not in ctx.meta:
            ctx.meta[_PARAMS] = self._dataset_params(ctx.meta.get(_NAMED))
        own = len(self.params)  # then --help, which stays last
        return [*params[:own], *ctx.meta[_PARAMS], *params[own:]]

    def invoke(self, ctx):
        generated = {param.name for param in ctx.meta.get(_PARAMS, [])}
        ctx.meta[_VALUES] = {name: ctx.params.pop(name) for name in list(ctx.params) if name in generated}
        return super().invoke(ctx)

    def _dataset_params(self, named: str | None) -> list:
        from ssmtl.api.errors import SsmtlError
        from ssmtl.cli.common import fail, registry

        try:
            datasets = registry().datasets
        except SsmtlError as exc:  # outside handle_errors: e.g. ssmtl is not installed
            fail(str(exc))
        taken = {opt for param in self.params for opt in [*param.opts, *param.secondary_opts]}
        taken |= {param.name for param in self.params}
        by_field: dict[str, list[tuple[str, FieldInfo]]] = {}
        for dataset, spec in datasets.items():
            for name, info in spec.config_model.model_fields.items():
                if name != "name" and flag(name) not in taken and name not in taken:
                    by_field.setdefault(name, []).append((dataset, info))
        only = named if named in datasets else None
        return typer_options([_option(name, by_field[name], only) for name in sorted(by_field)])


def dataset_values(ctx, spec) -> dict[str, Any]:
    """The generated options the user gave, for ``spec``'s config model."""
    from ssmtl.api.errors import SsmtlError
    from ssmtl.settings.sources import parse_value

    fields = spec.config_model.model_fields
    given = {name: value for name, value in ctx.meta.get(_VALUES, {}).items() if value is not None}
    for name in given:
        if name not in fields:
            own = ", ".join(flag(f) for f in fields if f != "name") or "none"
            raise SsmtlError(f"{flag(name)} is not an option of dataset {spec.name!r} (its options: {own}; or --set FIELD=VALUE)")
    return {name: parse_value(value, flag(name)) if _is_container(fields[name].annotation) and isinstance(value, str) else value
            for name, value in given.items()}


# -- building the options ---------------------------------------------------------------------


def _named_dataset(args: list[str]) -> str | None:
    for i, arg in enumerate(args):
        if arg in ("--dataset", "-d") and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--dataset="):
            return arg.partition("=")[2]
    return None


def _option(name: str, owners: list[tuple[str, FieldInfo]], only: str | None) -> inspect.Parameter:
    mine = [(dataset, info) for dataset, info in owners if dataset == only]
    if only is not None:  # `--dataset X --help`: X's options only, with X's defaults
        help_text = f"{mine[0][1].description or ''}{_default_text(mine[0][1])}" if mine else ""
    else:
        by_text: dict[str, list[str]] = {}
        for dataset, info in owners:
            by_text.setdefault(info.description or "", []).append(dataset)
        help_text = " ".join(f"{', '.join(datasets)}: {text}".strip() for text, datasets in by_text.items())
    annotation = owners[0][1].annotation
    is_bool = all(inner_type(info.annotation) is bool for _, info in owners)
    option = typer.Option(
        f"{flag(name)}/--no-{flag(name)[2:]}" if is_bool else flag(name),
        help=help_text, hidden=only is not None and not mine,
        metavar=None if is_bool else _metavar(annotation), show_default=False,
    )
    kind = Optional[bool] if is_bool else Optional[str]
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[kind, option])


def _default_text(info: FieldInfo) -> str:
    default = info.get_default(call_default_factory=True)
    if default is None or default is PydanticUndefined:
        return ""
    if isinstance(default, (list, tuple)):
        default = "[" + ", ".join(map(str, default)) + "]"
    return f" (default: {str(default).lower() if isinstance(default, bool) else default})"


def _is_container(annotation: Any) -> bool:
    inner = inner_type(annotation)
    return (typing.get_origin(inner) or inner) in _CONTAINERS


def _metavar(annotation: Any) -> str:
    """Typer's way of showing a type (``<int>``, ``<ct|mr>``), from the field's annotation."""
    inner = inner_type(annotation)
    if typing.get_origin(inner) is Literal:
        return "<" + "|".join(str(a) for a in typing.get_args(inner)) + ">"
    if _is_container(inner):
        return "<table>" if (typing.get_origin(inner) or inner) is dict else "<list>"
    names = {int: "<int>", float: "<float>", str: "<str>", Path: "<path>"}
    return names.get(inner, "<value>") if isinstance(inner, type) else "<value>"
