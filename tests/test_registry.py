"""Plugin discovery: guarded loading, duplicate names, malformed plugins, allow-list."""

from __future__ import annotations

import sys
import types
from importlib import metadata
from typing import Literal

import pytest
from pydantic import BaseModel

from ssmtl.host import registry as registry_module
from ssmtl.api.errors import SsmtlError
from ssmtl.api.hooks import hookimpl
from ssmtl.host.registry import build_registry
from ssmtl.api.specs import DatasetSpec, DefaultsSpec, TaskSpec
from ssmtl.api.tasks import TaskConfig
from ssmtl.api.volumes import DatasetConfig

BUILTIN_TASKS = {"contrastive", "order"}


class ToyConfig(TaskConfig):
    name: Literal["toy"] = "toy"
    width: int = 3


class OtherToyConfig(TaskConfig):
    name: Literal["toy2"] = "toy2"


class ThirdToyConfig(TaskConfig):
    name: Literal["toy3"] = "toy3"


class DupOrderConfig(TaskConfig):
    """A third-party config claiming the built-in name ``order``."""

    name: Literal["order"] = "order"


def toy_factory(config, network):  # never called here
    raise AssertionError("not built in these tests")


def toy_spec(name="toy", model=ToyConfig) -> TaskSpec:
    return TaskSpec(name=name, config_model=model, factory=toy_factory, description="a toy task")


def plugin_module(name: str, **hooks) -> types.ModuleType:
    """A module-like plugin with the given hook functions (decorated with hookimpl)."""
    module = types.ModuleType(name)
    for hook_name, fn in hooks.items():
        fn.__name__ = hook_name
        setattr(module, hook_name, hookimpl(fn))
    return module


def tasks_plugin(name: str, *specs) -> types.ModuleType:
    return plugin_module(name, ssmtl_register_tasks=lambda: list(specs))


def problems_about(registry, name: str) -> list[str]:
    return [p for p in registry.problems if repr(name) in p or f"({name})" in p]


def info_of(registry, name: str):
    matches = [p for p in registry.plugins if p.name == name]
    assert len(matches) == 1, registry.plugins
    return matches[0]


# -- baseline ---------------------------------------------------------------------------


def test_builtins_only():
    registry = build_registry(external=False)
    assert registry.problems == []
    assert BUILTIN_TASKS <= set(registry.tasks)
    assert {"phantom", "nifti"} <= set(registry.datasets)
    assert "segmentation" in registry.heads
    order = info_of(registry, "ssmtl.plugins.tasks.order")
    assert order.builtin and order.distribution == "ssmtl" and order.provides == {"tasks": ["order"]}
    assert order.hooks == ["ssmtl_register_tasks"]


def test_lookup_of_unknown_name_lists_available():
    registry = build_registry(external=False)
    with pytest.raises(SsmtlError, match="unknown task 'nope'; available: .*contrastive.*order"):
        registry.task("nope")
    with pytest.raises(SsmtlError, match="unknown dataset 'nope'"):
        registry.dataset("nope")
    assert registry.task("order").name == "order"


# -- in-process plugins ----------------------------------------------------------------------


def test_valid_module_and_class_plugins_are_loaded():
    class ClassPlugin:
        @hookimpl
        def ssmtl_register_tasks(self):
            return [toy_spec("toy2", OtherToyConfig)]

    registry = build_registry(external=False, extra=[tasks_plugin("toy_plugin", toy_spec()), ClassPlugin()])
    assert registry.problems == []
    assert registry.tasks["toy"].config_model is ToyConfig
    assert registry.tasks["toy2"].config_model is OtherToyConfig
    assert BUILTIN_TASKS <= set(registry.tasks)
    info = info_of(registry, "toy_plugin")
    assert info.distribution == "(in-process)" and not info.builtin and info.error is None
    assert info.provides == {"tasks": ["toy"]}
    assert info_of(registry, "ClassPlugin").provides == {"tasks": ["toy2"]}


def test_plugin_whose_hook_raises_is_reported_and_skipped():
    def boom():
        raise RuntimeError("kaboom in hook")

    broken = plugin_module("broken_plugin", ssmtl_register_tasks=boom)
    registry = build_registry(external=False, extra=[broken, tasks_plugin("fine_plugin", toy_spec())])
    [problem] = problems_about(registry, "broken_plugin")
    assert "skipped" in problem and "RuntimeError: kaboom in hook" in problem
    assert info_of(registry, "broken_plugin").error == "RuntimeError: kaboom in hook"
    # built-ins and later plugins keep working
    assert BUILTIN_TASKS <= set(registry.tasks) and "toy" in registry.tasks
    assert "phantom" in registry.datasets


def test_failure_in_one_kind_rejects_the_whole_plugin():
    def datasets():
        raise ValueError("no datasets today")

    mixed = plugin_module("mixed_plugin", ssmtl_register_tasks=lambda: [toy_spec()], ssmtl_register_datasets=datasets)
    registry = build_registry(external=False, extra=[mixed])
    assert "toy" not in registry.tasks  # nothing half-registered
    assert problems_about(registry, "mixed_plugin")


def test_duplicate_task_name_names_both_plugins():
    dup = tasks_plugin("dup_plugin", toy_spec("order", DupOrderConfig))
    registry = build_registry(external=False, extra=[dup])
    [problem] = [p for p in registry.problems if "'order'" in p]
    assert "(in-process) (dup_plugin)" in problem
    assert "ssmtl (ssmtl.plugins.tasks.order)" in problem
    assert "rejected" in problem and "already provided" in problem
    # the built-in keeps the name
    from ssmtl.plugins.tasks.order import OrderConfig

    assert registry.tasks["order"].config_model is OrderConfig


def test_duplicate_between_two_external_plugins():
    first, second = tasks_plugin("first_plugin", toy_spec()), tasks_plugin("second_plugin", toy_spec())
    registry = build_registry(external=False, extra=[first, second])
    [problem] = [p for p in registry.problems if "'toy'" in p]
    assert "second_plugin" in problem and "first_plugin" in problem
    assert info_of(registry, "first_plugin").provides == {"tasks": ["toy"]}
    assert info_of(registry, "second_plugin").provides == {}


class NotATaskConfig(BaseModel):
    name: Literal["toy"] = "toy"


class WrongNameConfig(TaskConfig):
    name: Literal["other"] = "other"


class NoDefaultsConfig(TaskConfig):
    name: Literal["toy"] = "toy"
    required: int


class ToyDatasetConfig(DatasetConfig):
    name: Literal["toy"] = "toy"


@pytest.mark.parametrize(
    "spec,needle",
    [
        (toy_spec(model=NotATaskConfig), "config_model must subclass TaskConfig"),
        (toy_spec(model=ToyDatasetConfig), "config_model must subclass TaskConfig"),
        (toy_spec(model=dict), "config_model must subclass TaskConfig"),
        (toy_spec(model=WrongNameConfig), "defaults to 'other'"),
        (toy_spec(model=NoDefaultsConfig), "no valid defaults"),
        (TaskSpec(name="toy", config_model=ToyConfig, factory=None), "factory is not callable"),
        (TaskSpec(name="bad name!", config_model=ToyConfig, factory=toy_factory), "invalid name"),
        (DatasetSpec(name="toy", config_model=ToyDatasetConfig, factory=toy_factory), "expected TaskSpec"),
        ({"name": "toy"}, "expected TaskSpec"),
    ],
)
def test_malformed_spec_is_rejected(spec, needle):
    registry = build_registry(external=False, extra=[tasks_plugin("malformed_plugin", spec)])
    [problem] = problems_about(registry, "malformed_plugin")
    assert needle in problem
    assert "toy" not in registry.tasks and "bad name!" not in registry.tasks
    assert BUILTIN_TASKS <= set(registry.tasks)


def test_hook_with_unknown_argument_is_rejected():
    def ssmtl_register_tasks(config):  # the spec takes no arguments
        return [toy_spec()]

    registry = build_registry(external=False, extra=[plugin_module("sig_plugin", ssmtl_register_tasks=ssmtl_register_tasks)])
    [problem] = problems_about(registry, "sig_plugin")
    assert "invalid hooks" in problem and "config" in problem
    assert "toy" not in registry.tasks


def test_unknown_hook_name_is_rejected():
    registry = build_registry(external=False, extra=[plugin_module("widget_plugin", ssmtl_register_widgets=lambda: [])])
    [problem] = problems_about(registry, "widget_plugin")
    assert "ssmtl_register_widgets" in problem
    assert BUILTIN_TASKS <= set(registry.tasks)


# -- hooks are called through pluggy ------------------------------------------------------------


def test_specname_hookimpl_registers_its_task():
    class SpecnamePlugin:
        @hookimpl(specname="ssmtl_register_tasks")
        def provide_my_tasks(self):
            return [toy_spec()]

    later = tasks_plugin("later_plugin", toy_spec("toy2", OtherToyConfig))
    registry = build_registry(external=False, extra=[SpecnamePlugin(), later])
    assert registry.problems == []
    assert registry.tasks["toy"].config_model is ToyConfig
    info = info_of(registry, "SpecnamePlugin")
    assert info.provides == {"tasks": ["toy"]} and info.hooks == ["ssmtl_register_tasks"]
    # each result belongs to its own plugin: the later plugin's call does not run the
    # earlier one's differently named implementation again (that would be a duplicate)
    assert info_of(registry, "later_plugin").provides == {"tasks": ["toy2"]}


def test_a_plugins_wrapper_and_call_order_apply_to_its_own_results():
    class Layered:
        @hookimpl(specname="ssmtl_register_tasks")
        def plain(self):
            return [toy_spec("toy2", OtherToyConfig)]

        @hookimpl(specname="ssmtl_register_tasks", tryfirst=True)
        def first(self):
            return [toy_spec()]

        @hookimpl(wrapper=True)
        def ssmtl_register_tasks(self):
            results = yield
            return results[:1]  # only what the tryfirst implementation returned

    registry = build_registry(external=False, builtins=(), extra=[Layered(), tasks_plugin("neighbour_plugin", toy_spec("toy3", ThirdToyConfig))])
    assert registry.problems == []
    assert info_of(registry, "Layered").provides == {"tasks": ["toy"]}
    # the wrapper wraps its own plugin's registration, not another plugin's
    assert info_of(registry, "neighbour_plugin").provides == {"tasks": ["toy3"]}


def test_hook_that_returns_no_list_is_reported():
    registry = build_registry(external=False, builtins=(), extra=[plugin_module("single_plugin", ssmtl_register_tasks=lambda: 42)])
    [problem] = problems_about(registry, "single_plugin")
    assert "ssmtl_register_tasks() returned int, expected a list of TaskSpec" in problem


# -- defaults ----------------------------------------------------------------------------------


def test_defaults_come_from_the_builtin_defaults_plugin():
    registry = build_registry(external=False)
    defaults = registry.defaults
    assert defaults.tasks == ("contrastive", "order") and defaults.head == "segmentation" == registry.default_head()
    assert defaults.task_sets == {"contrastive": ("contrastive",), "multitask": ("contrastive", "order", "position", "reconstruct", "neighbor")}
    assert defaults.baseline == "contrastive"
    info = info_of(registry, "ssmtl.plugins.defaults")
    assert info.builtin and info.provides == {"defaults": ["defaults"]} and info.hooks == ["ssmtl_defaults"]
    # every name it gives is provided by a built-in
    named = {*defaults.tasks, *(t for tasks in defaults.task_sets.values() for t in tasks)}
    assert named <= set(registry.tasks) and defaults.head in registry.heads


def test_third_party_defaults_are_rejected_naming_both():
    other = plugin_module("other_defaults", ssmtl_defaults=lambda: DefaultsSpec(tasks=("toy",)),
                          ssmtl_register_tasks=lambda: [toy_spec()])
    registry = build_registry(external=False, extra=[other])
    [problem] = registry.problems
    assert problem.startswith("defaults from (in-process) (other_defaults) rejected: already provided by ssmtl (ssmtl.plugins.defaults)")
    assert "--task" in problem  # says how to get other defaults
    assert registry.defaults.tasks == ("contrastive", "order")
    assert info_of(registry, "other_defaults").provides == {"tasks": ["toy"]}  # the rest of the plugin is kept


def test_defaults_of_a_plugin_when_no_builtin_provides_them():
    mine = plugin_module("my_defaults", ssmtl_defaults=lambda: DefaultsSpec(tasks=["toy"], task_sets={"pair": ["toy", "toy2"]}, baseline="pair"))
    registry = build_registry(external=False, builtins=(), extra=[mine])
    assert registry.defaults == DefaultsSpec(tasks=("toy",), task_sets={"pair": ("toy", "toy2")}, baseline="pair")
    with pytest.raises(SsmtlError, match=r"no default head.*--head NAME"):
        registry.default_head()
    assert build_registry(external=False, builtins=()).defaults == DefaultsSpec()


@pytest.mark.parametrize(
    "returned,needle",
    [
        ([DefaultsSpec()], "ssmtl_defaults() returned list, expected DefaultsSpec"),
        (DefaultsSpec(tasks="contrastive"), "DefaultsSpec.tasks must be a list of names"),
        (DefaultsSpec(head="no good"), "DefaultsSpec.head: invalid name 'no good'"),
        (DefaultsSpec(task_sets={"x": ()}), "DefaultsSpec.task_sets['x'] is empty"),
        (DefaultsSpec(task_sets={"x": ("toy",)}, baseline="y"), "DefaultsSpec.baseline 'y' is not one of its task_sets (x)"),
    ],
)
def test_malformed_defaults_reject_the_plugin(returned, needle):
    registry = build_registry(external=False, builtins=(), extra=[plugin_module("bad_defaults", ssmtl_defaults=lambda: returned)])
    [problem] = problems_about(registry, "bad_defaults")
    assert needle in problem
    assert registry.defaults == DefaultsSpec()


# -- entry points -----------------------------------------------------------------------------


class FakeDist:
    def __init__(self, name: str, version: str = "1.0"):
        self.metadata = {"Name": name}
        self.version = version


class FakeEntryPoint:
    """Duck-typed importlib.metadata.EntryPoint with a distribution attached."""

    def __init__(self, name: str, value: str, dist: FakeDist | None):
        self._ep = metadata.EntryPoint(name=name, value=value, group="ssmtl")
        self.name, self.value, self.group, self.dist = name, value, "ssmtl", dist

    def load(self):
        return self._ep.load()


@pytest.fixture
def fake_entry_points(monkeypatch):
    """Replace the ``ssmtl`` entry-point group with fake ones; returns a setter."""
    monkeypatch.delenv("SSMTL_PLUGINS", raising=False)
    monkeypatch.delenv("SSMTL_NO_PLUGINS", raising=False)
    good = tasks_plugin("fake_good_plugin", toy_spec())
    other = tasks_plugin("fake_other_plugin", toy_spec("toy2", OtherToyConfig))
    monkeypatch.setitem(sys.modules, "fake_good_plugin", good)
    monkeypatch.setitem(sys.modules, "fake_other_plugin", other)
    exits = types.ModuleType("fake_exit_plugin")
    monkeypatch.setitem(sys.modules, "fake_exit_plugin", exits)
    eps = [
        FakeEntryPoint("good", "fake_good_plugin", FakeDist("good-dist", "2.1")),
        FakeEntryPoint("other", "fake_other_plugin", FakeDist("other-dist")),
        FakeEntryPoint("missing", "ssmtl_no_such_module_xyz.plugin", FakeDist("missing-dist")),
        FakeEntryPoint("exits", "fake_exit_plugin:does_not_exist", None),
    ]
    return use_entry_points(monkeypatch, eps)


_real_entry_points = metadata.entry_points  # before any test replaces it


def ssmtl_entry_points() -> list:
    """The real entry points of the ssmtl distribution: the built-ins."""
    return [ep for ep in _real_entry_points(group="ssmtl") if ep.dist.metadata["Name"] == "ssmtl"]


def use_entry_points(monkeypatch, eps: list, builtins: bool = True) -> list:
    """``metadata.entry_points`` as the registry sees it: the built-ins (unless not) plus
    ``eps``. Returns the list of calls made."""
    eps = (ssmtl_entry_points() if builtins else []) + list(eps)
    calls = []

    def entry_points(**kwargs):
        calls.append(kwargs)
        return [ep for ep in eps if ep.group == kwargs.get("group")]

    monkeypatch.setattr(registry_module.metadata, "entry_points", entry_points)
    return calls


def test_entry_points_are_loaded_and_failures_reported(fake_entry_points):
    registry = build_registry(external=True)
    assert fake_entry_points == [{"group": "ssmtl"}]
    assert "toy" in registry.tasks and "toy2" in registry.tasks and BUILTIN_TASKS <= set(registry.tasks)
    good = info_of(registry, "good")
    assert (good.distribution, good.version, good.builtin) == ("good-dist", "2.1", False)
    [missing] = problems_about(registry, "missing")
    assert "missing-dist" in missing and "import failed" in missing and "ModuleNotFoundError" in missing
    [exits] = problems_about(registry, "exits")
    assert "unknown" in exits and "import failed" in exits
    assert info_of(registry, "missing").error.startswith("import failed")
    # no problem about the skipped ssmtl entry point (it would be a duplicate otherwise)
    assert not any("'order'" in p for p in registry.problems)
    assert len(registry.problems) == 2


def test_entry_point_that_calls_sys_exit_is_reported(fake_entry_points, monkeypatch):
    def load_and_exit(self):
        raise SystemExit(3)

    monkeypatch.setattr(FakeEntryPoint, "load", load_and_exit)
    registry = build_registry(external=True)
    assert all("import failed: SystemExit" in p for p in registry.problems)
    assert len(registry.problems) == 4  # good, other, missing, exits; ssmtl's own is skipped before loading
    assert BUILTIN_TASKS <= set(registry.tasks)


def test_external_false_loads_builtins_only(fake_entry_points):
    registry = build_registry(external=False)
    assert fake_entry_points == [{"group": "ssmtl"}]  # listed once, for the built-ins
    assert "toy" not in registry.tasks and registry.problems == []
    assert all(p.builtin for p in registry.plugins) and BUILTIN_TASKS <= set(registry.tasks)


def test_no_plugins_env_disables_external(fake_entry_points, monkeypatch):
    monkeypatch.setenv("SSMTL_NO_PLUGINS", "1")
    registry = build_registry()
    assert "toy" not in registry.tasks and all(p.builtin for p in registry.plugins)
    monkeypatch.setenv("SSMTL_NO_PLUGINS", "0")
    assert "toy" in build_registry().tasks


def test_allow_list_env(fake_entry_points, monkeypatch):
    monkeypatch.setenv("SSMTL_PLUGINS", "good, missing")
    registry = build_registry(external=True)
    assert "toy" in registry.tasks and "toy2" not in registry.tasks
    assert {p.name for p in registry.plugins if not p.builtin} == {"good", "missing"}
    assert len(registry.problems) == 1 and "'missing'" in registry.problems[0]


def test_allow_argument_overrides_env(fake_entry_points, monkeypatch):
    monkeypatch.setenv("SSMTL_PLUGINS", "good")
    registry = build_registry(external=True, allow=["other"])
    assert "toy2" in registry.tasks and "toy" not in registry.tasks
    assert registry.problems == []
    empty = build_registry(external=True, allow=[])
    assert {p.name for p in empty.plugins if not p.builtin} == set()


def test_external_plugin_duplicate_of_builtin_names_distribution(fake_entry_points, monkeypatch):
    clash = tasks_plugin("clash_plugin", toy_spec("order", DupOrderConfig))
    monkeypatch.setitem(sys.modules, "fake_clash_plugin", clash)
    use_entry_points(monkeypatch, [FakeEntryPoint("clash", "fake_clash_plugin", FakeDist("clash-dist", "0.3"))])
    registry = build_registry(external=True)
    [problem] = registry.problems
    assert "clash-dist (clash)" in problem and "ssmtl (ssmtl.plugins.tasks.order)" in problem


# -- the built-ins are the entry points of the ssmtl distribution ------------------------------


def test_builtins_load_first_and_win_a_name_whatever_the_order_of_names(monkeypatch):
    monkeypatch.setitem(sys.modules, "zz_builtin_plugin", tasks_plugin("zz_builtin_plugin", toy_spec()))
    monkeypatch.setitem(sys.modules, "aa_external_plugin", tasks_plugin("aa_external_plugin", toy_spec()))
    use_entry_points(monkeypatch, [
        FakeEntryPoint("aa", "aa_external_plugin", FakeDist("aa-dist")),
        FakeEntryPoint("zz", "zz_builtin_plugin", FakeDist("ssmtl")),
    ])
    registry = build_registry(external=True)
    builtin = info_of(registry, "zz_builtin_plugin")
    assert builtin.builtin and builtin.distribution == "ssmtl" and builtin.provides == {"tasks": ["toy"]}
    [problem] = registry.problems
    assert "aa-dist (aa)" in problem and "already provided by ssmtl (zz_builtin_plugin)" in problem
    # --no-plugins keeps every built-in, and only those
    only = build_registry(external=False)
    assert "zz_builtin_plugin" in {p.name for p in only.plugins} and all(p.builtin for p in only.plugins)


def test_an_uninstalled_checkout_says_how_to_install(monkeypatch, ssmtl_cli):
    use_entry_points(monkeypatch, [FakeEntryPoint("good", "fake_good_plugin", FakeDist("good-dist"))], builtins=False)
    with pytest.raises(SsmtlError, match=r"^ssmtl is not installed; run pip install -e \."):
        build_registry(external=False)
    assert build_registry(external=False, builtins=()).plugins == []  # an explicit list needs no installation
    result = ssmtl_cli("--no-plugins", "plugins")
    assert result.exit_code == 2 and result.stderr.startswith("error: ssmtl is not installed; run pip install -e .")


def test_a_stale_installation_is_named(monkeypatch):
    use_entry_points(monkeypatch, [FakeEntryPoint("gone", "ssmtl.plugins.tasks.gone", FakeDist("ssmtl"))])
    with pytest.raises(SsmtlError, match=r"built-in plugin ssmtl.plugins.tasks.gone .* stale: run pip install -e \."):
        build_registry(external=False)


def test_an_installation_older_than_the_defaults_plugin_is_named(monkeypatch):
    without = [ep for ep in ssmtl_entry_points() if ep.value != "ssmtl.plugins.defaults"]
    monkeypatch.setattr(registry_module.metadata, "entry_points", lambda **kw: without)
    registry = build_registry(external=False)
    assert registry.problems == ["the built-in plugins provide no defaults (ssmtl_defaults): the installed "
                                 "metadata of ssmtl is stale; run pip install -e ."]
    assert registry.defaults == DefaultsSpec() and BUILTIN_TASKS <= set(registry.tasks)


def test_a_spec_takes_its_name_from_the_config_model():

    from pydantic import BaseModel

    from ssmtl.api import DatasetSpec, TaskConfig, TaskSpec

    class SliceStatsConfig(TaskConfig):
        name: Literal["slice-stats"] = "slice-stats"

    spec = TaskSpec.of(SliceStatsConfig, dict, "one line")
    assert (spec.name, spec.config_model, spec.factory, spec.description) == ("slice-stats", SliceStatsConfig, dict, "one line")
    assert isinstance(spec, TaskSpec)

    class Nameless(BaseModel):
        size: int = 1

    with pytest.raises(TypeError, match="Nameless needs a `name` field"):
        DatasetSpec.of(Nameless, dict)
