"""Plugin discovery: the built-ins first, then the rest of the ``ssmtl`` entry-point group.

Loading rules (pytest/pluggy conventions):

* The built-in plugins are the ``ssmtl`` entry points of the ssmtl distribution itself:
  ``pyproject.toml`` is their only list. They are loaded first and marked built-in,
  whatever ``SSMTL_PLUGINS`` or ``--no-plugins`` say. A source checkout that was never
  installed has no entry points, and says so.
* The other entry points of the group are loaded next, sorted by name. Each load is
  guarded: a plugin that fails to import, has a malformed hook, whose hook raises, or
  that returns malformed specs is reported by name and skipped, and the host keeps
  working.
* Every plugin is registered in one pluggy ``PluginManager``, and its hooks are called
  through pluggy on that plugin's implementations alone (``subset_hook_caller``): each
  result belongs to the plugin that returned it, and hookimpl options (``specname``,
  ``tryfirst``/``trylast``, wrappers) work as pluggy documents them, within the plugin.
  A wrapper does not see other plugins' registrations: provenance is what the
  duplicate check and ``ssmtl plugins`` report.
* A name already provided by another plugin is rejected, and the message names both;
  so is a second plugin's ``ssmtl_defaults`` (what a bare command does must not
  depend on what else is installed).
* ``SSMTL_PLUGINS=a,b`` is an allow-list of external plugin (entry-point) names;
  ``external=False`` (the CLI's ``--no-plugins``) loads the built-ins only.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from dataclasses import dataclass, field
from importlib import metadata
from types import ModuleType
from typing import Any, Iterable, Mapping

import pluggy
from pydantic import BaseModel

from ssmtl.api import hooks as hookspecs
from ssmtl.api.errors import SsmtlError
from ssmtl.settings.sources import env_flag
from ssmtl.api.specs import DatasetSpec, DefaultsSpec, HeadSpec, NetworkSpec, PluginInfo, TaskSpec

ENTRY_POINT_GROUP = "ssmtl"
DISTRIBUTION = "ssmtl"  # the entry points of this distribution are the built-ins
ALLOW_ENV = "SSMTL_PLUGINS"
DISABLE_ENV = "SSMTL_NO_PLUGINS"
NOT_INSTALLED = (
    "ssmtl is not installed; run pip install -e . (the built-in plugins are found "
    "through the entry points of the installed ssmtl distribution)"
)

# kind -> (hook name, spec class, base class the config model must derive from)
_KINDS = {
    "tasks": ("ssmtl_register_tasks", TaskSpec, "ssmtl.api.tasks:TaskConfig"),
    "datasets": ("ssmtl_register_datasets", DatasetSpec, "ssmtl.api.volumes:DatasetConfig"),
    "heads": ("ssmtl_register_heads", HeadSpec, "ssmtl.api.heads:HeadConfig"),
    "networks": ("ssmtl_register_networks", NetworkSpec, "ssmtl.api.configs:NetworkConfig"),
}
_DEFAULTS_HOOK = "ssmtl_defaults"


def _import_attr(ref: str) -> Any:
    """``"module"`` or ``"module:attr"`` (an entry point's value) -> the object."""
    module, _, attr = ref.partition(":")
    obj = importlib.import_module(module)
    for part in filter(None, attr.split(".")):
        obj = getattr(obj, part)
    return obj


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
    networks: dict[str, NetworkSpec] = field(default_factory=dict)
    plugins: list[PluginInfo] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    #: what runs use when the user names nothing (empty when no plugin provides it)
    defaults: DefaultsSpec = field(default_factory=DefaultsSpec)

    def kind(self, kind: str) -> dict[str, Any]:
        return getattr(self, kind)

    def task(self, name: str) -> TaskSpec:
        return self._lookup("tasks", "task", name)

    def dataset(self, name: str) -> DatasetSpec:
        return self._lookup("datasets", "dataset", name)

    def head(self, name: str) -> HeadSpec:
        return self._lookup("heads", "head", name)

    def network(self, name: str) -> NetworkSpec:
        return self._lookup("networks", "network", name)

    def default_network(self) -> str:
        if self.defaults.network is None:
            raise SsmtlError("no default network: no plugin provides ssmtl_defaults; name the network (--set model.name=NAME)")
        return self.defaults.network

    def default_head(self) -> str:
        if self.defaults.head is None:
            raise SsmtlError("no default head: no plugin provides ssmtl_defaults; name the head (--head NAME)")
        return self.defaults.head

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
        info.hooks = sorted(caller.name for caller in (pm.get_hookcallers(plugin) or []))
        try:
            collected = {kind: _collect_specs(pm, plugin, *how) for kind, how in _KINDS.items()}
            defaults = [_checked_defaults(spec) for spec in _call_hook(pm, plugin, _DEFAULTS_HOOK)]
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
                    self._refuse(f"{kind[:-1]} {spec.name!r}", info, self._owner(kind, spec.name))
                    continue
                table[spec.name] = spec
                kept.append(spec.name)
            if kept:
                info.provides[kind] = kept
        for spec in defaults:
            owner = self._owner("defaults", "defaults", missing=None)
            if owner is None and "defaults" in info.provides:  # a second spec of this plugin
                owner = f"{info.distribution} ({info.name})"
            if owner is not None:
                self._refuse("defaults", info, owner, "; override a default with --task, --head, --methods or --set model.name instead")
                continue
            self.defaults = spec
            info.provides["defaults"] = ["defaults"]
        self.plugins.append(info)

    def _owner(self, kind: str, name: str, missing: str | None = "another plugin") -> str | None:
        for p in self.plugins:
            if name in p.provides.get(kind, []):
                return f"{p.distribution} ({p.name})"
        return missing

    def _refuse(self, what: str, info: PluginInfo, owner: str, advice: str = "") -> None:
        self.problems.append(f"{what} from {info.distribution} ({info.name}) rejected: already provided by {owner}{advice}")

    def _reject(self, info: PluginInfo) -> None:
        self.plugins.append(info)
        self.problems.append(f"plugin {info.name!r} from {info.distribution} skipped: {info.error}")


def _safe_unregister(pm: pluggy.PluginManager, plugin: Any) -> None:
    try:
        if pm.is_registered(plugin):
            pm.unregister(plugin)
    except Exception:
        pass


def _call_hook(pm: pluggy.PluginManager, plugin: Any, hook_name: str) -> list[Any]:
    """``hook_name`` called through pluggy on ``plugin``'s implementations alone: one
    result per implementation (a plugin may have several, e.g. through ``specname``)."""
    others = [p for p in pm.get_plugins() if p is not plugin]
    return pm.subset_hook_caller(hook_name, remove_plugins=others)()


def _collect_specs(pm: pluggy.PluginManager, plugin: Any, hook_name: str, spec_cls: type, base_ref: str) -> list[Any]:
    specs: list[Any] = []
    for result in _call_hook(pm, plugin, hook_name):
        try:
            specs.extend(result)
        except TypeError:
            raise TypeError(f"{hook_name}() returned {type(result).__name__}, expected a list of {spec_cls.__name__}") from None
    base = _import_attr(base_ref)
    for spec in specs:
        _check_spec(spec, spec_cls, base)
    return specs


def _check_name(name: Any, what: str) -> None:
    if not isinstance(name, str) or not name.replace("-", "_").isidentifier():
        raise ValueError(f"{what}invalid name {name!r}: use letters, digits, '-' and '_'")


def _check_spec(spec: Any, spec_cls: type, base: type) -> None:
    if not isinstance(spec, spec_cls):
        raise TypeError(f"expected {spec_cls.__name__}, got {type(spec).__name__}")
    _check_name(spec.name, "")
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


def _checked_defaults(spec: Any) -> DefaultsSpec:
    """A well-formed DefaultsSpec, its sequences made tuples. Whether the names exist is
    checked where they are used (another plugin may provide them)."""
    if not isinstance(spec, DefaultsSpec):
        raise TypeError(f"{_DEFAULTS_HOOK}() returned {type(spec).__name__}, expected DefaultsSpec")

    def names(value: Any, what: str) -> tuple[str, ...]:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise TypeError(f"DefaultsSpec.{what} must be a list of names, got {value!r}")
        for name in value:
            _check_name(name, f"DefaultsSpec.{what}: ")
        return tuple(value)

    for what in ("head", "network"):
        if getattr(spec, what) is not None:
            _check_name(getattr(spec, what), f"DefaultsSpec.{what}: ")
    if not isinstance(spec.task_sets, Mapping):
        raise TypeError(f"DefaultsSpec.task_sets must be a dict of name -> tasks, got {type(spec.task_sets).__name__}")
    task_sets = {}
    for key, tasks in spec.task_sets.items():
        _check_name(key, "DefaultsSpec.task_sets: ")
        task_sets[key] = names(tasks, f"task_sets[{key!r}]")
        if not task_sets[key]:
            raise ValueError(f"DefaultsSpec.task_sets[{key!r}] is empty")
    if spec.baseline is not None and spec.baseline not in task_sets:
        raise ValueError(f"DefaultsSpec.baseline {spec.baseline!r} is not one of its task_sets ({', '.join(task_sets) or 'none'})")
    return dataclasses.replace(spec, tasks=names(spec.tasks, "tasks"), task_sets=task_sets)


# -- discovery ------------------------------------------------------------------------


def _distribution_of(ep: metadata.EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "unknown", "?"
    return dist.metadata["Name"], dist.version


def builtin_plugins(entry_points: Iterable[metadata.EntryPoint] | None = None) -> tuple[str, ...]:
    """The built-in plugins, as entry-point values (module paths): the ``ssmtl`` entry
    points of the ssmtl distribution, sorted (datasets, defaults, heads, tasks)."""
    if entry_points is None:
        entry_points = metadata.entry_points(group=ENTRY_POINT_GROUP)
    refs = sorted({ep.value for ep in entry_points if _distribution_of(ep)[0] == DISTRIBUTION})
    if not refs:
        raise SsmtlError(NOT_INSTALLED)
    return tuple(refs)


def _load_builtin(ref: str) -> Any:
    try:
        return _import_attr(ref)
    except ModuleNotFoundError as exc:
        module = ref.partition(":")[0]
        if exc.name is None or not (module == exc.name or module.startswith(exc.name + ".")):
            raise  # a bug inside the module, not a missing module: keep the traceback
        raise SsmtlError(
            f"built-in plugin {ref} is listed in the installed metadata of ssmtl but does not exist; "
            "the installation is stale: run pip install -e ."
        ) from None


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
    builtins: Iterable[str | ModuleType] | None = None,
    extra: Iterable[Any] = (),
) -> Registry:
    """Load the built-ins, then (unless disabled) the other entry points, then ``extra`` plugin objects.

    ``builtins``: module paths (or modules) to load as the built-ins instead of the
    ssmtl distribution's entry points, e.g. a test's subset; ``()`` for none.
    """
    from ssmtl._version import __version__

    if external is None:
        external = not env_flag(DISABLE_ENV)
    entry_points = list(metadata.entry_points(group=ENTRY_POINT_GROUP)) if builtins is None or external else []
    registry = Registry()
    pm = new_plugin_manager()
    for ref in builtin_plugins(entry_points) if builtins is None else builtins:
        plugin = _load_builtin(ref) if isinstance(ref, str) else ref
        name = ref if isinstance(ref, str) else ref.__name__
        registry.add_plugin(pm, plugin, PluginInfo(name=name, distribution=DISTRIBUTION, version=__version__, builtin=True))
    if builtins is None and not any("defaults" in p.provides for p in registry.plugins):
        # ssmtl always ships its defaults plugin: metadata installed before it existed is stale
        registry.problems.append("the built-in plugins provide no defaults (ssmtl_defaults): the installed "
                                 "metadata of ssmtl is stale; run pip install -e .")
    if external:
        allowed = _allow_list(allow)
        external_names = {ep.name for ep in entry_points if _distribution_of(ep)[0] != DISTRIBUTION}
        if allowed is not None and allowed - external_names:
            missing = ", ".join(sorted(allowed - external_names))
            installed = ", ".join(sorted(external_names)) or "none"
            registry.problems.append(f"{ALLOW_ENV} names {missing}, which no installed plugin provides "
                                     f"(installed external plugins: {installed})")
        for ep in sorted(entry_points, key=lambda e: e.name):
            dist_name, dist_version = _distribution_of(ep)
            if dist_name == DISTRIBUTION:
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
