"""Where a run's settings come from, and how they become one validated config.

Every command that trains (``pretrain``, ``finetune``) resolves its pydantic config the
same way. Precedence, lowest to highest:

1. the model's defaults;
2. a TOML, YAML or JSON file (``--config``);
3. environment variables: ``PREFIX`` + the dotted path in upper case, ``__`` for each dot
   (``SSMTL_TRAIN__STEPS=100`` for pre-training, ``SSMTL_FINETUNE__TRAIN__STEPS=100`` for
   fine-tuning);
4. command-line flags (only those the user actually set: flags default to ``None``);
5. ``--set a.b=c`` (repeatable, reaches any field).

Sources are merged as plain dicts and validated **once**; a validation error becomes a
:class:`~ssmtl.api.ConfigError` with one ``(field, problem)`` row per problem.

Files and values are parsed by :mod:`ssmtl.api.structured`, within its bounds (size, depth,
YAML alias expansion, digits, duplicate keys); each refusal names the file, the variable or
the ``--set`` item.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from pydantic import BaseModel, ValidationError

from ssmtl.api import structured
from ssmtl.api.datasets.limits import MAX_VOXELS_ENV, max_voxels
from ssmtl.api.errors import ConfigError, InputFileError

ENV_PREFIX = "SSMTL_"
#: ``SSMTL_*`` variables that are not config fields of any command.
NON_CONFIG_ENV = frozenset({"SSMTL_PLUGINS", "SSMTL_NO_PLUGINS", "SSMTL_SAMPLE_DATA", "SSMTL_DEBUG", "SSMTL_MAX_VOXELS"})
#: the yes/no variables among them
FLAG_ENV = frozenset({"SSMTL_NO_PLUGINS", "SSMTL_DEBUG"})


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


def env_flag(name: str, environ: Mapping[str, str] | None = None) -> bool:
    """A yes/no environment variable (``SSMTL_DEBUG``, ``SSMTL_NO_PLUGINS``); a value that is
    neither is an error naming the variable, not silently false."""
    raw = (os.environ if environ is None else environ).get(name, "")
    value = raw.strip().lower()
    if value in _TRUE or value in _FALSE:
        return value in _TRUE
    raise ConfigError(f"environment variable {name}={raw!r}: expected 1/true/yes or 0/false/no")


def check_environment(known: Mapping[str, Iterable[str] | None], environ: Mapping[str, str] | None = None) -> None:
    """Refuse an ``SSMTL_*`` variable that no command reads (a typo such as ``SSMTL_TRIAN__STEPS``
    would otherwise be ignored) and a yes/no variable with another value.

    ``known``: the first components the commands' configs read (``train``, ``seed``, ...), each
    with the second components it takes when it is a command's own prefix (``finetune``: the
    fine-tuning config's fields), else None (the config's validation names a bad field).
    """
    environ = os.environ if environ is None else environ
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name in NON_CONFIG_ENV - FLAG_ENV - {MAX_VOXELS_ENV}:
            continue
        if name in FLAG_ENV:
            env_flag(name, environ)
            continue
        if name == MAX_VOXELS_ENV:
            max_voxels(environ)
            continue
        parts = name[len(ENV_PREFIX):].lower().split("__")
        if not all(parts):  # SSMTL_TRAIN__ or SSMTL_TRAIN____STEPS: an empty component
            raise ConfigError(f"environment variable {name}: not a setting of ssmtl (an empty name between or after "
                              f"'__'; settings are {ENV_PREFIX}SECTION__FIELD, e.g. {ENV_PREFIX}TRAIN__STEPS)")
        fields = known.get(parts[0], ()) if parts[0] in known else None
        if parts[0] not in known or (fields is not None and (len(parts) < 2 or parts[1] not in set(fields))):
            own = parts[0] in known and fields is not None  # a command's own prefix, e.g. SSMTL_FINETUNE__
            what = f"{ENV_PREFIX}{parts[0].upper()}__FIELD" if own else f"{ENV_PREFIX}SECTION__FIELD, e.g. {ENV_PREFIX}TRAIN__STEPS"
            raise ConfigError(f"environment variable {name}: not a setting of ssmtl (settings are {what}; "
                              f"known: {', '.join(sorted(fields if own else known))})")


def error_rows(exc: ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    """One ``(dotted field, message)`` row per pydantic error, the offending value shown."""
    rows = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"])
        loc = f"{prefix}.{loc}" if prefix and loc else (prefix or loc or "(root)")
        msg = err["msg"]
        if "input" in err and err["type"] not in ("missing",) and not isinstance(err["input"], (dict, list)):
            msg = f"{msg} (got {err['input']!r})"
        rows.append((loc, msg))
    return rows


def summary(rows: list[tuple[str, str]], what: str = "configuration") -> str:
    """The one-line message of a list of error rows: the first, and how many more."""
    loc, msg = rows[0]
    more = f" (and {len(rows) - 1} more)" if len(rows) > 1 else ""
    return f"invalid {what}: {loc}: {msg}{more}"


def validate_model(model: type[BaseModel], data: Mapping[str, Any], prefix: str,
                   context: Mapping[str, Any] | None = None) -> BaseModel:
    """Validate ``data`` with ``model``; raise a :class:`ConfigError` naming each bad field.

    ``context`` reaches the model's validators (``{"registry": ...}`` for configs whose tables
    name plugins)."""
    try:
        return model.model_validate(dict(data), context=context)
    except ValidationError as exc:
        rows = error_rows(exc, prefix=prefix)
        loc, msg = rows[0]
        raise ConfigError(f"invalid {prefix} option {loc}: {msg}", rows) from None


def parse_value(text: str, source: str = "value") -> Any:
    """Parse a CLI/env value: YAML scalars and flow lists (8, 1e-3, true, [1, 2], null); text that
    is not YAML stays a string. A value past the parsing bounds is a ConfigError naming ``source``
    (``environment variable SSMTL_SEED``, ``--set seed=...``)."""
    try:
        return structured.parse_value(text, source)
    except InputFileError as exc:
        raise ConfigError(str(exc)) from None


def set_path(target: dict[str, Any], dotted: str, value: Any) -> None:
    """``set_path(d, "train.steps", 5)``: create the tables on the way, refuse to descend into a value."""
    keys = dotted.split(".")
    if not all(keys):
        raise ConfigError(f"invalid key {dotted!r}: expected a dotted path like train.steps")
    node = target
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set {dotted!r}: {key!r} is not a table")
        node = child
    node[keys[-1]] = value


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated with ``override``, merging nested tables key by key."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def read_config_file(path: Path) -> dict[str, Any]:
    """A TOML, YAML or JSON file as a dict; one clear error naming the file otherwise."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise ConfigError(f"{path}: config file not found")
    if path.suffix.lower() not in structured.FORMATS:
        raise ConfigError(f"{path}: unsupported config format (use .toml, .yaml or .json)")
    try:
        data = structured.read_document(path, structured.CONFIG_LIMITS)
    except InputFileError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.reason}") from None
    if data is None:  # an empty YAML file
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be a table/mapping at the top level")
    return data


def env_overrides(prefix: str, fields: Iterable[str], environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``PREFIX`` + ``SECTION__FIELD=value`` -> ``{"section": {"field": value}}``.

    Only variables whose first component is one of ``fields`` (the model's top-level
    fields) are read; others are left alone (they may belong to another command).
    """
    environ = os.environ if environ is None else environ
    fields = set(fields)
    out: dict[str, Any] = {}
    for key, raw in environ.items():
        if not key.startswith(prefix) or key in NON_CONFIG_ENV:
            continue
        dotted = key[len(prefix):].lower().replace("__", ".")
        if dotted.split(".")[0] not in fields:
            continue
        if not all(dotted.split(".")):
            raise ConfigError(f"environment variable {key}: not a setting of ssmtl (an empty name between or after "
                              f"'__'; settings are {prefix}SECTION__FIELD)")
        try:
            set_path(out, dotted, parse_value(raw, f"environment variable {key}"))
        except ConfigError as exc:
            message = str(exc)
            named = message if key in message else f"environment variable {key}: {message}"
            raise ConfigError(named, exc.rows) from None
    return out


def env_origins(prefix: str, fields: Iterable[str], environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The dotted path each variable :func:`env_overrides` reads sets -> that variable's name."""
    environ = os.environ if environ is None else environ
    fields = set(fields)
    origins = {}
    for key in environ:
        dotted = key[len(prefix):].lower().replace("__", ".")
        if key.startswith(prefix) and key not in NON_CONFIG_ENV and dotted.split(".")[0] in fields:
            origins[dotted] = key
    return origins


def blame_environment(exc: ConfigError, origins: Mapping[str, str], overridden: Iterable[str] = (),
                      loc_prefix: str = "", environ: Mapping[str, str] | None = None) -> ConfigError:
    """``exc`` with the environment variable named when its first bad field came from one.

    A variable is only blamed while no later source (a flag, ``--set``) replaced its value:
    ``overridden`` holds those sources' dotted paths.
    """
    environ = os.environ if environ is None else environ
    later = list(overridden)
    strip = f"{loc_prefix}." if loc_prefix else ""
    for loc, _ in exc.rows[:1]:
        loc = loc[len(strip):] if loc.startswith(strip) else loc
        for dotted, var in origins.items():
            hit = loc == dotted or loc.startswith(f"{dotted}.")
            replaced = any(dotted == q or dotted.startswith(f"{q}.") for q in later)
            if hit and not replaced:
                return ConfigError(f"environment variable {var}={environ.get(var, '')!r}: {exc}", exc.rows)
    return exc


def dotted_paths(layer: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``{"train": {"steps": 5}}`` -> ``["train.steps"]``: the leaves a source layer sets."""
    paths = []
    for key, value in layer.items():
        path = f"{prefix}{key}"
        paths += dotted_paths(value, f"{path}.") if isinstance(value, Mapping) and value else [path]
    return paths


def parse_set_flags(set_flags: Iterable[str]) -> list[tuple[str, Any]]:
    """``["a.b=1", ...]`` -> ``[("a.b", 1), ...]`` (values parsed like YAML scalars)."""
    pairs = []
    for item in set_flags:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item[:200]!r}: expected KEY=VALUE, e.g. --set train.steps=100")
        pairs.append((key.strip(), parse_value(value, f"--set {key.strip()}")))
    return pairs


def as_set_flags(settings: Mapping[str, Any] | Iterable[str] | None) -> list[str]:
    """``--set`` strings from the Python API's ``settings``: ``{"train.lr": 3e-4}`` (values as
    Python objects, written as JSON, which ``--set`` reads as YAML) or ``["train.lr=3e-4"]``."""
    if settings is None:
        return []
    if isinstance(settings, Mapping):
        return [f"{key}={json.dumps(value, default=str)}" for key, value in settings.items()]
    if isinstance(settings, str):
        raise ConfigError(f"settings {settings!r}: give a mapping {{'train.lr': 3e-4}} or a list of 'KEY=VALUE' strings")
    return [str(item) for item in settings]


def flag_layer(flags: Mapping[str, Any] | None) -> dict[str, Any]:
    """``{"train.steps": 5, "seed": None}`` -> ``{"train": {"steps": 5}}``: unset flags (None) are dropped."""
    layer: dict[str, Any] = {}
    for dotted, value in (flags or {}).items():
        if value is not None:
            set_path(layer, dotted, value)
    return layer


def layered(
    model: type[BaseModel],
    *,
    env_prefix: str,
    file: Path | None = None,
    flags: Mapping[str, Any] | None = None,
    sets: Iterable[str] = (),
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Merge file, environment, flags and ``--set`` (in that order) into one dict for ``model``."""
    merged: dict[str, Any] = {}
    if file is not None:
        merged = deep_merge(merged, read_config_file(file))
    merged = deep_merge(merged, env_overrides(env_prefix, model.model_fields, environ))
    merged = deep_merge(merged, flag_layer(flags))
    for key, value in parse_set_flags(sets):
        set_path(merged, key, value)
    return merged
