"""Plugin hygiene: allow-list, --no-plugins, what `ssmtl plugins --json` reports, broken plugins, safe loading.

Discovery through real entry points runs ``ssmtl`` in subprocesses with the
example package installed; broken plugins are injected in-process with the
``ssmtl_cli`` fixture. The last part checks that nothing in ssmtl unpickles
arbitrary objects: a static scan of the sources, and a resumed run with
``torch.load`` watched.
"""

from __future__ import annotations

import ast
import json
import pickle
import shutil
import types
from pathlib import Path
from typing import Literal

import pytest
import torch
from pydantic import BaseModel, Field
from torch import nn
from torch.nn import functional as F

import ssmtl
from ssmtl.api.heads import DownstreamHead, HeadConfig
from ssmtl.api.hooks import hookimpl
from ssmtl.api.specs import HeadSpec, TaskSpec
from ssmtl.api.tasks import TaskConfig
from ssmtl.testing import tiny_network

from plugin_packages import EXAMPLE, ROOT, TINY_RUN, clean_env, install_editable, plugins_json, ssmtl as ssmtl_process

PLUGIN_FIELDS = {"name", "distribution", "version", "builtin", "hooks", "provides", "error"}


def external(data: dict) -> set[str]:
    return {p["name"] for p in data["plugins"] if not p["builtin"]}


def builtin(data: dict) -> set[str]:
    return {p["name"] for p in data["plugins"] if p["builtin"]}


def plugin_module(name: str, **hooks) -> types.ModuleType:
    module = types.ModuleType(name)
    for hook_name, fn in hooks.items():
        fn.__name__ = hook_name
        setattr(module, hook_name, hookimpl(fn))
    return module


# -- discovery through installed entry points -------------------------------------------------


@pytest.fixture(scope="module")
def discovered():
    """`ssmtl plugins --json` with the example installed: everything, allow-listed, and --no-plugins."""
    install_editable(EXAMPLE)
    return {
        "all": plugins_json(),
        "allow rotation": plugins_json(env=clean_env(SSMTL_PLUGINS="rotation")),
        "allow other": plugins_json(env=clean_env(SSMTL_PLUGINS="someone-else")),
        "no-plugins": json.loads(ssmtl_process("--no-plugins", "plugins", "--json").stdout),
    }


@pytest.mark.slow
def test_allow_list_and_no_plugins(discovered):
    assert "rotation" in external(discovered["all"])
    assert external(discovered["allow rotation"]) == {"rotation"}
    assert external(discovered["allow other"]) == set()
    assert external(discovered["no-plugins"]) == set()
    # built-ins are never filtered
    assert builtin(discovered["all"]) == builtin(discovered["allow other"]) == builtin(discovered["no-plugins"])


@pytest.mark.slow
def test_a_task_outside_the_allow_list_is_unknown(discovered):
    result = ssmtl_process("config", "show", "--task", "rotation", env=clean_env(SSMTL_PLUGINS="someone-else"), check=False)
    assert result.returncode == 2 and "unknown task 'rotation'" in result.stderr


@pytest.mark.slow
def test_plugins_json_describes_every_plugin(discovered):
    data = discovered["all"]
    assert set(data) == {"plugins", "defaults", "problems"}
    assert data["defaults"]["tasks"] == ["contrastive", "order"] and data["defaults"]["head"] == "segmentation"
    assert data["defaults"]["network"] == "unet"
    for plugin in data["plugins"]:
        assert set(plugin) == PLUGIN_FIELDS
        if plugin["error"] is None:
            assert plugin["hooks"] and all(h.startswith("ssmtl_") for h in plugin["hooks"])
            assert plugin["provides"] and set(plugin["provides"]) <= {"tasks", "datasets", "heads", "networks", "defaults"}
        if plugin["builtin"]:
            assert (plugin["distribution"], plugin["version"]) == ("ssmtl", ssmtl.__version__)
    [rotation] = [p for p in data["plugins"] if p["name"] == "rotation"]
    assert (rotation["distribution"], rotation["version"]) == ("ssmtl-rotation", "0.1.0")
    provided = {kind: name for p in data["plugins"] for kind, names in p["provides"].items() for name in names}
    assert {"tasks", "datasets", "heads", "networks"} <= set(provided)


# -- broken plugins ----------------------------------------------------------------------------


class RequiredFieldConfig(TaskConfig):
    name: Literal["required-field"] = "required-field"
    width: int  # no default: `--task required-field` alone could never work


class PlainModelConfig(BaseModel):
    name: Literal["plain-model"] = "plain-model"


def _never_built(config, network):
    raise AssertionError("a rejected task is never built")


def broken_plugins() -> dict[str, tuple[types.ModuleType, str]]:
    """plugin name -> (plugin, text its error must contain)."""

    def signature(config):  # the hookspec takes no argument
        return []

    return {
        "bad_config_required": (
            plugin_module("bad_config_required", ssmtl_register_tasks=lambda: [TaskSpec("required-field", RequiredFieldConfig, _never_built)]),
            "no valid defaults",
        ),
        "bad_config_base": (
            plugin_module("bad_config_base", ssmtl_register_tasks=lambda: [TaskSpec("plain-model", PlainModelConfig, _never_built)]),
            "must subclass TaskConfig",
        ),
        "bad_signature": (plugin_module("bad_signature", ssmtl_register_tasks=signature), "invalid hooks"),
        "bad_return": (plugin_module("bad_return", ssmtl_register_tasks=lambda: [{"name": "x"}]), "expected TaskSpec, got dict"),
    }


def test_broken_plugins_are_reported_by_name_and_skipped(ssmtl_cli):
    broken = broken_plugins()
    plugins = [plugin for plugin, _ in broken.values()]
    result = ssmtl_cli("plugins", "--json", plugins=plugins)
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    for name, (_, needle) in broken.items():
        [entry] = [p for p in data["plugins"] if p["name"] == name]
        assert needle in entry["error"] and entry["provides"] == {}, entry
        assert any(f"plugin {name!r}" in p and "skipped" in p for p in data["problems"])
        assert f"plugin {name!r}" in result.stderr  # the warning reaches the terminal too
    shown = ssmtl_cli("config", "show", "--task", "contrastive", "--task", "order", plugins=plugins)
    assert shown.exit_code == 0 and "contrastive" in shown.stdout


def test_a_default_that_breaks_its_own_constraint_is_rejected_at_load(ssmtl_registry_factory):
    class BadDefaultConfig(TaskConfig):
        name: Literal["bad-default"] = "bad-default"
        width: int = Field(0, ge=1)

    plugin = plugin_module("bad_default", ssmtl_register_tasks=lambda: [TaskSpec("bad-default", BadDefaultConfig, _never_built)])
    registry = ssmtl_registry_factory(plugin, strict=False)
    assert "bad-default" not in registry.tasks
    assert any("bad_default" in p and "width" in p for p in registry.problems), registry.problems


# -- the heads hook ----------------------------------------------------------------------------


class ProbeHeadConfig(HeadConfig):
    name: Literal["probe-head"] = "probe-head"


class ProbeHead(DownstreamHead):
    """Per-pixel logits from a 1x1 convolution, cross-entropy loss."""

    def __init__(self, config, network_info, num_classes):
        super().__init__(config, network_info, num_classes)
        self.conv = nn.Conv2d(network_info.decoder_channels, num_classes, 1)

    def forward(self, decoder_features):
        return self.conv(decoder_features)

    def loss(self, logits, target):
        return F.cross_entropy(logits.float(), target)


def test_head_plugins_register_through_ssmtl_register_heads(ssmtl_registry_factory):
    plugin = plugin_module("probe_heads", ssmtl_register_heads=lambda: [HeadSpec("probe-head", ProbeHeadConfig, ProbeHead)])
    registry = ssmtl_registry_factory(plugin, builtins=["ssmtl.plugins.heads.segmentation"])
    assert set(registry.heads) == {"segmentation", "probe-head"}
    [info] = [p for p in registry.plugins if p.name == "probe_heads"]
    assert info.hooks == ["ssmtl_register_heads"] and info.provides == {"heads": ["probe-head"]}
    network = tiny_network()
    head = registry.head("probe-head").factory(ProbeHeadConfig(), network.info, 3)
    logits = head(network(torch.randn(2, 1, 32, 32)).decoder)
    assert logits.shape == (2, 3, 32, 32)
    assert head.predict(logits).shape == (2, 32, 32)


# -- no arbitrary unpickling -------------------------------------------------------------------

_PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib"}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _keyword_is(call: ast.Call, name: str, value) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is value for k in call.keywords)


def unsafe_loads(source: str) -> list[str]:
    """Calls that can unpickle arbitrary objects, as 'line: call'."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in _PICKLE_MODULES:
            found += [f"{node.lineno}: from {node.module} import {a.name}" for a in node.names if "load" in a.name.lower()]
        if isinstance(node, ast.ImportFrom) and node.module == "torch" and any(a.name == "load" for a in node.names):
            found.append(f"{node.lineno}: from torch import load")
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        head, _, tail = name.rpartition(".")
        if name == "torch.load" and not _keyword_is(node, "weights_only", True):
            found.append(f"{node.lineno}: torch.load without weights_only=True")
        elif head.split(".")[0] in _PICKLE_MODULES and tail.lower().startswith(("load", "unpickl")):
            found.append(f"{node.lineno}: {name}")
        elif name in ("np.load", "numpy.load") and _keyword_is(node, "allow_pickle", True):
            found.append(f"{node.lineno}: {name}(allow_pickle=True)")
        elif tail == "read_pickle" or tail == "Unpickler":
            found.append(f"{node.lineno}: {name}")
    return found


def test_the_scanner_finds_each_unsafe_form():
    source = (
        "import pickle, torch, numpy as np\nfrom pickle import loads\n"
        "pickle.load(f)\ntorch.load(p)\ntorch.load(p, weights_only=False)\nnp.load(p, allow_pickle=True)\n"
        "torch.load(p, weights_only=True)\nnp.load(p)\n"
    )
    assert [line.split(":")[0] for line in unsafe_loads(source)] == ["2", "3", "4", "5", "6"]


def test_sources_never_unpickle_arbitrary_objects():
    offenders = {
        str(path.relative_to(ROOT)): found
        for path in sorted((ROOT / "src").rglob("*.py"))
        if (found := unsafe_loads(path.read_text()))
    }
    assert offenders == {}, "load checkpoints with safetensors or torch.load(..., weights_only=True)"


@pytest.mark.slow
def test_resume_loads_checkpoints_without_arbitrary_unpickling(ssmtl_cli, ssmtl_tiny_cache, tmp_path, monkeypatch):
    out = tmp_path / "run"
    args = ["pretrain", "--data", ssmtl_tiny_cache, "--task", "contrastive", "--task", "order", "--out", out,
            "--workers", "0", "--set", "train.checkpoint_every=1", *TINY_RUN]
    steps = args.index("--steps")
    args[steps + 1] = "3"
    first = ssmtl_cli("--no-plugins", *args)
    assert first.exit_code == 0, first.output
    checkpoint = out / "checkpoints" / "step-00000002"
    assert (checkpoint / "model.safetensors").is_file()
    assert not (checkpoint / "pytorch_model.bin").exists()  # model weights: safetensors only
    shutil.rmtree(out / "checkpoints" / "step-00000003")  # as if killed after step 2: the resume loads step 2

    loads: list[tuple[str, object]] = []
    failures: list[BaseException] = []
    real_load = torch.load

    def watched_load(f, *a, **kw):
        loads.append((Path(str(f)).name, kw.get("weights_only")))
        try:
            return real_load(f, *a, **kw)
        except BaseException as exc:  # Accelerate swallows a failed RNG-state load; record it
            failures.append(exc)
            raise

    def no_pickle(*a, **kw):
        raise AssertionError("pickle.load(s) called while resuming")

    monkeypatch.setattr(torch, "load", watched_load)
    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "loads", no_pickle)
    resumed = ssmtl_cli("--no-plugins", *args, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "resuming from" in resumed.stderr
    names = {name for name, _ in loads}
    assert {"optimizer.bin", "scheduler.bin", "random_states_0.pkl"} <= names, loads
    assert all(weights_only is True for _, weights_only in loads), loads
    assert failures == []


def test_an_allow_list_naming_no_installed_plugin_is_reported(monkeypatch):
    from ssmtl.host.registry import build_registry

    monkeypatch.setenv("SSMTL_PLUGINS", "rotation,no-such-plugin")
    registry = build_registry(external=True)
    [problem] = [p for p in registry.problems if "SSMTL_PLUGINS" in p]
    assert "no-such-plugin" in problem and "rotation," not in problem.split("provides")[0]
    assert "rotation" in registry.tasks  # the names that exist still load
