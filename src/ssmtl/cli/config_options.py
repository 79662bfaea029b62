"""Command options generated from the config models: each flag's type, default and help come
from the pydantic field it sets, as :mod:`ssmtl.cli.dataset_options` does for datasets.

A command lists which fields get a flag of their own (:class:`ConfigFlag`: the dotted path
in the command's config, the flag's name); everything else about the flag is read from the
field: the help is its ``description``, the default shown is the model's default, the
metavar is its type (``<int>``, ``<no|bf16|fp16>``), a bool field is a ``--x/--no-x``
switch and a list field is given by repeating the flag. Every other field is reached with
``--set PATH=VALUE``, the same syntax in every command.

* The options are made when the command parses its arguments or prints its help, never
  when the CLI is built: ``ssmtl --help`` imports no config model.
* A flag left out sets nothing (its value is ``None``), so a config file, an environment
  variable or the model's default decides; a value goes to the model as given, so a bad
  one is a validation error naming the field.
* A required field (``--data``, ``--out``) is marked ``[required]`` in the help, and checked
  once every source is merged (a config file may give it): :func:`require`.
"""

from __future__ import annotations

import inspect
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import typer
import typer.main
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from typer.core import TyperCommand
from typing_extensions import Annotated

_PARAMS = "ssmtl.config_options.params"  # ctx.meta keys: made once per invocation
_VALUES = "ssmtl.config_options.values"
_ARGS = "ssmtl.config_options.args"
_CONTAINERS = (list, tuple, set, frozenset, dict)


@dataclass(frozen=True)
class ConfigFlag:
    """One field of a command's config with a flag of its own.

    Args:
        path: the dotted path in the command's config (``train.steps``).
        flag: the flag (default: ``--`` and the path's last part with dashes, ``--steps``).
        short: a one-letter alias (``-n``).
        required: the command needs a value from some source (a flag, a file, the environment).
        field: where the field is described when ``path`` leads into a table the command's
            model does not type (the benchmark's ``finetune.train.lr``): ``(load_model, path)``,
            ``load_model`` a function that imports and returns the model.
        help: a sentence added after the field's description (what the flag means here).
        comma: a list field whose values may also be given comma-separated (``--labeled-volumes 1,2``).
    """

    path: str
    flag: str | None = None
    short: str | None = None
    required: bool = False
    field: tuple[Callable[[], type[BaseModel]], str] | None = None
    help: str = ""
    comma: bool = False

    @property
    def name(self) -> str:
        return self.flag or "--" + self.path.rsplit(".", 1)[-1].replace("_", "-")

    @property
    def param(self) -> str:
        return "cfg__" + self.path.replace(".", "__")


def field_info(model: type[BaseModel], path: str) -> FieldInfo:
    """The pydantic field at a dotted ``path`` of ``model`` (through nested models)."""
    parts = path.split(".")
    for i, part in enumerate(parts):
        info = model.model_fields[part]
        if i == len(parts) - 1:
            return info
        inner = inner_type(info.annotation)
        if not (isinstance(inner, type) and issubclass(inner, BaseModel)):
            raise KeyError(f"{path}: {part} is not a table of {model.__name__}")
        model = inner
    raise KeyError(path)


def default_text(info: FieldInfo) -> str | None:
    """The default as the help shows it (``1000``, ``no``, ``[]``), or None for no default."""
    default = info.get_default(call_default_factory=True)
    if default is PydanticUndefined:
        return None
    if isinstance(default, BaseModel):
        return None
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, (list, tuple)):
        return "[" + ", ".join(map(str, default)) + "]"
    return "none" if default is None else str(default)


class ConfigOptionsCommand(TyperCommand):
    """A Typer command plus one option per :class:`ConfigFlag` of its config (the module docstring).

    The command class's ``ssmtl_config`` is ``(load_model, flags)``: a function
    that imports and returns the config model, and the flags; or a function of the command
    line's arguments that returns them (``ssmtl config show --for finetune`` shows the flags of
    the command it resolves).
    """

    ssmtl_config: Any = None

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        ctx.meta[_ARGS] = list(args)  # before parsing: it may decide which flags exist
        return super().parse_args(ctx, args)

    def get_params(self, ctx) -> list:
        params = super().get_params(ctx)
        if _PARAMS not in ctx.meta:
            chosen = self.ssmtl_config
            load, flags = chosen(ctx.meta.get(_ARGS, [])) if callable(chosen) else chosen
            ctx.meta[_PARAMS] = (flags, make_options(load(), flags))
        own = len(self.params)  # then --help, which stays last
        return [*ctx.meta[_PARAMS][1], *params[:own], *params[own:]]

    def invoke(self, ctx):
        flags, generated = ctx.meta.get(_PARAMS, ((), []))
        names = {param.name for param in generated}
        given = {name: ctx.params.pop(name) for name in list(ctx.params) if name in names}
        ctx.meta[_VALUES] = {flag.path: given.get(flag.param) for flag in flags}
        return super().invoke(ctx)


def config_command(app: typer.Typer, name: str, load_model: Callable[[], type[BaseModel]] | None,
                   flags: list[ConfigFlag] | Callable[[list[str]], tuple[Callable, list[ConfigFlag]]]) -> Callable:
    """``@config_command(app, "pretrain", load, FLAGS)``: register a command with generated options
    (``load`` None and ``flags`` a function of the arguments: chosen per invocation)."""
    chosen = flags if load_model is None else (load_model, flags)
    command = type(f"{name.title()}Command", (ConfigOptionsCommand,), {"ssmtl_config": staticmethod(chosen) if callable(chosen) else chosen})
    return app.command(name, cls=command)


def flag_values(ctx) -> dict[str, Any]:
    """``{path: value}`` of the generated flags the user gave (a list for a repeated flag; the
    items of a ``comma`` flag split at commas)."""
    flags = {flag.path: flag for flag in ctx.meta.get(_PARAMS, ((), []))[0]}
    values = {}
    for path, value in ctx.meta.get(_VALUES, {}).items():
        if value in (None, [], ()):
            continue
        if flags.get(path) is not None and flags[path].comma:
            value = [part.strip() for item in value for part in str(item).split(",") if part.strip()]
        values[path] = value
    return values


def require(flags: list[ConfigFlag], resolved: dict[str, Any]) -> None:
    """Refuse a missing required field, once every source was merged (``resolved``: path -> value)."""
    from ssmtl.api.errors import SsmtlError

    for flag in flags:
        if flag.required and resolved.get(flag.path) in (None, [], ""):
            raise SsmtlError(f"{flag.name} is required ({flag.path}: give the flag, or set it in --config FILE)")


# -- building the options ---------------------------------------------------------------------


def make_options(model: type[BaseModel], flags: list[ConfigFlag]) -> list:
    """Typer's own options for ``flags``."""
    return typer_options([_parameter(flag, *((flag.field[0](), flag.field[1]) if flag.field else (model, flag.path)))
                          for flag in flags])


def typer_options(parameters: list[inspect.Parameter]) -> list:
    """Typer's own options for these parameters, built the public way: from a signature
    (also what :mod:`ssmtl.cli.dataset_options` generates its options with)."""

    def holder(**values: Any) -> None:  # never called
        pass

    holder.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    app = typer.Typer(add_completion=False)
    app.command()(holder)
    return list(typer.main.get_command(app).params)


def _parameter(flag: ConfigFlag, model: type[BaseModel], path: str) -> inspect.Parameter:
    info = field_info(model, path)
    annotation = info.annotation
    is_bool = inner_type(annotation) is bool
    repeat = _is_container(annotation)
    shown = default_text(info)
    text = " ".join(t for t in (info.description or "", flag.help) if t)
    # where the value goes and what it is when the flag is left out: the model's own default
    where = "required" if flag.required else (f"default: {shown}" if shown is not None else "")
    text += f" [{flag.path}{'; ' + where if where else ''}]"
    names = [f"{flag.name}/--no-{flag.name[2:]}" if is_bool else flag.name] + ([flag.short] if flag.short else [])
    option = typer.Option(*names, help=text, metavar=None if is_bool else _metavar(annotation, repeat),
                          show_default=False)
    scalar = inner_type(annotation)
    # a plain int or float field is parsed by the flag itself, so a bad value is named by the flag
    # ("Invalid value for '--steps'"); anything else goes to the model as text and is named by its field
    simple = scalar if scalar in (int, float) else str
    kind = Optional[bool] if is_bool else (Optional[list[str]] if repeat else Optional[simple])
    return inspect.Parameter(flag.param, inspect.Parameter.KEYWORD_ONLY, default=None,
                             annotation=Annotated[kind, option])


def inner_type(annotation: Any) -> Any:
    """``X | None`` -> X; ``Annotated[X, ...]`` -> X."""
    if typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return inner_type(args[0])
    return annotation


def _is_container(annotation: Any) -> bool:
    """A list field (or one that may be a list: ``Path | list[Path]``): given by repeating the flag."""
    inner = inner_type(annotation)
    options = typing.get_args(inner) if typing.get_origin(inner) in (typing.Union, types.UnionType) else (inner,)
    return any((typing.get_origin(a) or a) in (list, tuple, set, frozenset) for a in options)


def _metavar(annotation: Any, repeat: bool) -> str:
    """Typer's way of showing a type (``<int>``, ``<ct|mr>``), from the field's annotation."""
    inner = inner_type(annotation)
    options = typing.get_args(inner) if typing.get_origin(inner) in (typing.Union, types.UnionType) else (inner,)
    shown = []
    for option in (o for o in options if o is not type(None)):
        if typing.get_origin(option) is Annotated:
            option = typing.get_args(option)[0]
        if typing.get_origin(option) is Literal:
            shown += [str(a) for a in typing.get_args(option)]
        elif (typing.get_origin(option) or option) in (list, tuple, set, frozenset):
            args = typing.get_args(option)
            shown.append(_metavar(args[0], False).strip("<>") if args else "value")
        elif isinstance(option, type):
            shown.append({int: "int", float: "float", str: "text", Path: "path", bool: "bool"}.get(option, option.__name__.lower()))
    text = "|".join(dict.fromkeys(shown)) or "value"
    return f"<{text}>"
