"""Plugin discovery: built-ins first, then the ``ssmtl`` entry-point group.

Loading rules (pytest/pluggy conventions):

* Built-in plugins are plain modules registered through the same hooks that third
  parties implement; they are always loaded.
* Entry points in the group ``ssmtl`` are loaded next. Each load is guarded: a plugin
  that fails to import, has a malformed hook, or returns malformed specs is reported
  by name and skipped, and the host keeps working.
* A name already provided by another plugin is rejected, and the message names both.
* ``SSMTL_PLUGINS=a,b`` is an allow-list of external plugin (entry-point) names;
  ``external=False`` (the CLI's ``--no-plugins``) loads built-ins only.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from importlib import metadata
from types import ModuleType
from typing import Any, Iterable

import pluggy
from pydantic import BaseModel

from ssmtl.api import hooks as hookspecs
from ssmtl.api.errors import SsmtlError
from ssmtl.api.specs import DatasetSpec, HeadSpec, PluginInfo, TaskSpec

ENTRY_POINT_GROUP = "ssmtl"
ALLOW_ENV = "SSMTL_PLUGINS"
DISABLE_ENV = "SSMTL_NO_PLUGINS"

BUILTIN_PLUGINS: tuple[str, ...] = (
    "ssmtl.plugins.tasks.contrastive",
    "ssmtl.plugins.tasks.order",
    "ssmtl.plugins.tasks.reconstruct",
    "ssmtl.plugins.tasks.neighbor",
    "ssmtl.plugins.tasks.position",
    "ssmtl.plugins.tasks.local_contrastive",
    "ssmtl.plugins.datasets.phantom",
    "ssmtl.plugins.datasets.nifti",
    "ssmtl.plugins.datasets.dicom",
    "ssmtl.plugins.datasets.itk",
    "ssmtl.plugins.datasets.mmwhs",
    "ssmtl.plugins.datasets.acdc",
    "ssmtl.plugins.datasets.manifest",
    "ssmtl.plugins.heads.segmentation",
)

# kind -> (hook name, spec class, base class the config model must derive from)
_KINDS = {
    "tasks": ("ssmtl_register_tasks", TaskSpec, "ssmtl.api.tasks:TaskConfig"),
    "datasets": ("ssmtl_register_datasets", DatasetSpec, "ssmtl.api.volumes:DatasetConfig"),
    "heads": ("ssmtl_register_heads", HeadSpec, "ssmtl.api.heads:HeadConfig"),
}


def _import_attr(ref: str) -> Any:
    module, attr = ref.split(":")
    return getattr(importlib.import_module(module), attr)


def new_plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    return pm


@dataclass
class Registry:
    """Everything the plugins provide, by kind and name, plus a report of what failed."""

    tasks: dict[str, TaskSpec] = field(default_factory=dict)
    datasets: dict[str, DatasetSpec] = field(default_factory=dict)
    heads: dict[str, HeadSpec] = field(default_factory=dict)
    plugins: list[PluginInfo] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def kind(self, kind: str) -> dict[str, Any]:
        return getattr(self, kind)

    def task(self, name: str) -> TaskSpec:
        return self._lookup("tasks", "task", name)

    def dataset(self, name: str) -> DatasetSpec:
        return self._lookup("datasets", "dataset", name)

    def head(self, name: str) -> HeadSpec:
        return self._lookup("heads", "head", name)

    def _lookup(self, kind: str, label: str, name: str):
        table = self.kind(kind)
        if name not in table:
            available = ", ".join(sorted(table)) or "none"
            raise SsmtlError(f"unknown {label} {name!r}; available: {available}")
        return table[name]

    # -- building -------------------------------------------------------------------
    def add_plugin(self, pm: pluggy.PluginManager, plugin: Any, info: PluginInfo) -> None:
        """Register one plugin object, validate what it provides, keep it or report it."""
        try:
            pm.register(plugin, name=info.name)
            pm.check_pending()
        except Exception as exc:  # malformed hook implementation, unknown hook name
            _safe_unregister(pm, plugin)
            info.error = f"invalid hooks: {exc}"
            self._reject(info)
            return
        info.hooks = sorted(
            impl.name
            for impl in (pm.get_hookcallers(plugin) or [])
        )
        collected: dict[str, list[Any]] = {}
        try:
            for kind, (hook_name, spec_cls, base_ref) in _KINDS.items():
                impl = getattr(plugin, hook_name, None)
                if impl is None:
                    continue
                specs = list(impl() or [])
                base = _import_attr(base_ref)
                for spec in specs:
                    _check_spec(spec, spec_cls, base)
                collected[kind] = specs
        except Exception as exc:
            _safe_unregister(pm, plugin)
            info.error = f"{type(exc).__name__}: {exc}"
            self._reject(info)
            return
        for kind, specs in collected.items():
            table = self.kind(kind)
            kept = []
            for spec in specs:
                if spec.name in table:
                    owner = self._owner(kind, spec.name)
                    self.problems.append(
                        f"{kind[:-1]} {spec.name!r} from {info.distribution} ({info.name}) "
                        f"rejected: already provided by {owner}"
                    )
                    continue
                table[spec.name] = spec
                kept.append(spec.name)
            if kept:
                info.provides[kind] = kept
        self.plugins.append(info)

    def _owner(self, kind: str, name: str) -> str:
        for p in self.plugins:
            if name in p.provides.get(kind, []):
                return f"{p.distribution} ({p.name})"
        return "another plugin"

    def _reject(self, info: PluginInfo) -> None:
        self.plugins.append(info)
        self.problems.append(f"plugin {info.name!r} from {info.distribution} skipped: {info.error}")


def _safe_unregister(pm: pluggy.PluginManager, plugin: Any) -> None:
    try:
        if pm.is_registered(plugin):
            pm.unregister(plugin)
    except Exception:
        pass


def _check_spec(spec: Any, spec_cls: type, base: type) -> None:
    if not isinstance(spec, spec_cls):
        raise TypeError(f"expected {spec_cls.__name__}, got {type(spec).__name__}")
    if not isinstance(spec.name, str) or not spec.name.replace("-", "_").isidentifier():
        raise ValueError(f"invalid name {spec.name!r}: use letters, digits, '-' and '_'")
    model = spec.config_model
    if not (isinstance(model, type) and issubclass(model, BaseModel) and issubclass(model, base)):
        raise TypeError(f"{spec_cls.__name__} {spec.name!r}: config_model must subclass {base.__name__}")
    name_field = model.model_fields.get("name")
    if name_field is not None and name_field.default != spec.name:
        raise ValueError(
            f"{spec_cls.__name__} {spec.name!r}: config_model.name defaults to "
            f"{name_field.default!r}, expected {spec.name!r}"
        )
    try:
        defaults = model()
    except Exception as exc:
        raise TypeError(f"{spec_cls.__name__} {spec.name!r}: config_model() has no valid defaults: {exc}") from exc
    try:
        # pydantic does not validate defaults: round-trip them so a default that breaks
        # its own constraint is caught here, at load time, with the plugin's name
        model.model_validate(defaults.model_dump())
    except Exception as exc:
        raise TypeError(f"{spec_cls.__name__} {spec.name!r}: the defaults of {model.__name__} break its own constraints: {exc}") from exc
    if not callable(spec.factory):
        raise TypeError(f"{spec_cls.__name__} {spec.name!r}: factory is not callable")


def _distribution_of(ep: metadata.EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "unknown", "?"
    return dist.metadata["Name"], dist.version


def _allow_list(allow: Iterable[str] | None) -> set[str] | None:
    if allow is not None:
        return set(allow)
    raw = os.environ.get(ALLOW_ENV)
    if raw is None:
        return None
    return {n.strip() for n in raw.split(",") if n.strip()}


def build_registry(
    *,
    external: bool | None = None,
    allow: Iterable[str] | None = None,
    builtins: Iterable[str | ModuleType] = BUILTIN_PLUGINS,
    extra: Iterable[Any] = (),
) -> Registry:
    """Load built-ins, then (unless disabled) entry points, then ``extra`` plugin objects."""
    from ssmtl import __version__

    if external is None:
        external = os.environ.get(DISABLE_ENV, "") in ("", "0", "false")
    registry = Registry()
    pm = new_plugin_manager()
    for ref in builtins:
        module = importlib.import_module(ref) if isinstance(ref, str) else ref
        info = PluginInfo(name=module.__name__, distribution="ssmtl", version=__version__, builtin=True)
        registry.add_plugin(pm, module, info)
    if external:
        allowed = _allow_list(allow)
        for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist_name, dist_version = _distribution_of(ep)
            if dist_name == "ssmtl":
                continue  # our own entry points are the built-ins, already registered
            if allowed is not None and ep.name not in allowed:
                continue
            info = PluginInfo(name=ep.name, distribution=dist_name, version=dist_version, builtin=False)
            try:
                plugin = ep.load()
            except BaseException as exc:  # a plugin may even call sys.exit at import
                if isinstance(exc, KeyboardInterrupt):
                    raise
                info.error = f"import failed: {type(exc).__name__}: {exc}"
                registry._reject(info)
                continue
            registry.add_plugin(pm, plugin, info)
    for plugin in extra:
        name = getattr(plugin, "__name__", type(plugin).__name__)
        info = PluginInfo(name=name, distribution="(in-process)", version="", builtin=False)
        registry.add_plugin(pm, plugin, info)
    return registry


_CACHE: dict[tuple, Registry] = {}


def get_registry(external: bool | None = None) -> Registry:
    """The process-wide registry (loaded once per process and option set)."""
    if external is None:
        external = _DEFAULT_EXTERNAL
    key = (external, os.environ.get(ALLOW_ENV), os.environ.get(DISABLE_ENV))
    if key not in _CACHE:
        _CACHE[key] = build_registry(external=external)
    return _CACHE[key]


_DEFAULT_EXTERNAL: bool | None = None


def set_default_external(external: bool | None) -> None:
    """The CLI's ``--no-plugins`` (False): later ``get_registry()`` calls load built-ins only.

    A process-level setting rather than an environment variable, so one in-process
    invocation (a test's CliRunner) does not leak into the next; ``None`` defers to
    ``SSMTL_NO_PLUGINS``. ``accelerate launch`` passes the flag to every rank anyway.
    """
    global _DEFAULT_EXTERNAL
    _DEFAULT_EXTERNAL = external
