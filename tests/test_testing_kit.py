"""ssmtl.testing itself: its pytest11 registration, its fixtures, and that the contract check catches each flaw."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from importlib import metadata
from typing import Any, Literal

import pytest
import torch
from pydantic import ConfigDict, Field
from torch import nn

import ssmtl.testing
from ssmtl.data.cache import SliceCache
from ssmtl.api.hooks import hookimpl
from ssmtl.host.registry import builtin_plugins
from ssmtl.api.specs import TaskSpec
from ssmtl.api.tasks import PretextTask, TaskConfig, TaskOutput
from ssmtl.plugins.tasks.order import OrderConfig
from ssmtl.testing import TaskContractError, check_task_contract, tiny_batch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- registration and fixtures ---------------------------------------------------------------


def test_registered_on_the_pytest11_entry_point(request):
    [entry] = [ep for ep in metadata.entry_points(group="pytest11") if ep.name == "ssmtl"]
    assert entry.value == "ssmtl.testing"
    assert request.config.pluginmanager.get_plugin("ssmtl") is ssmtl.testing


def test_importing_the_plugin_does_not_import_torch():
    code = "import sys, ssmtl.testing; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_plugin_manager_fixture_is_fresh(ssmtl_plugin_manager):
    assert ssmtl_plugin_manager.get_plugins() == set()
    assert hasattr(ssmtl_plugin_manager.hook, "ssmtl_register_tasks")


def test_registry_factory_holds_only_the_given_plugins(ssmtl_registry_factory):
    assert ssmtl_registry_factory().tasks == {}
    registry = ssmtl_registry_factory(toy_plugin("toy"), builtins=["ssmtl.plugins.tasks.order"])
    assert set(registry.tasks) == {"toy", "order"}
    assert set(ssmtl_registry_factory(builtins=True).tasks) >= {"contrastive", "order", "reconstruct"}


def test_registry_factory_is_strict_about_problems(ssmtl_registry_factory):
    dup = toy_plugin("order", model=OrderConfig)
    with pytest.raises(AssertionError, match="'order'.*already provided"):
        ssmtl_registry_factory(dup, builtins=["ssmtl.plugins.tasks.order"])
    registry = ssmtl_registry_factory(dup, builtins=["ssmtl.plugins.tasks.order"], strict=False)
    assert len(registry.problems) == 1


def test_tiny_cache_fixture(ssmtl_tiny_cache):
    summary = SliceCache(ssmtl_tiny_cache).summary()
    assert summary["volumes"] == 4 and summary["slices"] == 32
    assert list(summary["slice_shape"]) == [32, 32] and summary["dataset"] == "phantom"


def test_cli_fixture_keeps_stdout_and_stderr_apart_and_isolates_no_plugins(ssmtl_cli, monkeypatch):
    monkeypatch.delenv("SSMTL_NO_PLUGINS", raising=False)
    result = ssmtl_cli("--no-plugins", "plugins", "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert all(p["builtin"] for p in data["plugins"])
    assert "SSMTL_NO_PLUGINS" not in os.environ  # the CLI sets it; the fixture restores the environment
    failed = ssmtl_cli("cache", "info", "/no/such/cache.h5")
    assert failed.exit_code == 2 and failed.stdout == "" and failed.stderr.startswith("error:")


def test_cli_fixture_injects_plugins_without_installing_them(ssmtl_cli, monkeypatch):
    monkeypatch.setenv("SSMTL_NO_PLUGINS", "1")  # as an earlier in-process `--no-plugins` leaves it
    data = json.loads(ssmtl_cli("plugins", "--json", plugins=[toy_plugin("toy")]).stdout)
    toy = [p for p in data["plugins"] if p["name"] == "toy_plugin_toy"]
    assert toy and toy[0]["provides"] == {"tasks": ["toy"]}
    assert len([p for p in data["plugins"] if p["builtin"]]) == len(builtin_plugins())
    only = json.loads(ssmtl_cli("plugins", "--json", plugins=[toy_plugin("toy")], builtins=False).stdout)
    assert [p["name"] for p in only["plugins"]] == ["toy_plugin_toy"]
    hidden = json.loads(ssmtl_cli("--no-plugins", "plugins", "--json", plugins=[toy_plugin("toy")]).stdout)
    assert "toy_plugin_toy" not in [p["name"] for p in hidden["plugins"]]
    by_env = json.loads(ssmtl_cli("plugins", "--json", plugins=[toy_plugin("toy")], env={"SSMTL_NO_PLUGINS": "1"}).stdout)
    assert "toy_plugin_toy" not in [p["name"] for p in by_env["plugins"]]
    assert os.environ["SSMTL_NO_PLUGINS"] == "1"  # restored after every call


def test_tiny_batch_is_a_sequence_batch_with_positions():
    batch = tiny_batch(batch_size=3, sequence_length=4, size=16, depth=8)
    assert batch.slices.shape == (3, 4, 16, 16)
    steps = batch.slice_index[:, 1:] - batch.slice_index[:, :-1]
    assert (steps == 1).all()
    assert torch.allclose(batch.positions, batch.slice_index.float() / 7)
    with pytest.raises(ValueError, match="exceeds"):
        tiny_batch(sequence_length=20, depth=8)


# -- the contract check catches each flaw ------------------------------------------------------


class ToyConfig(TaskConfig):
    name: Literal["toy"] = "toy"
    flaw: str = "none"


class ToyTask(PretextTask):
    """An encoder task (pooled features -> linear -> MSE to 0) that can be given one flaw."""

    trains = frozenset({"encoder"})

    def __init__(self, config: ToyConfig, network):
        super().__init__(config, network)
        self.head = nn.Linear(network.bottleneck_channels, 1)
        if config.flaw == "unused-parameter":
            self.spare = nn.Linear(2, 2)
        if config.flaw == "trains-decoder":
            self.trains = frozenset({"encoder", "decoder"})

    def view_builders(self):
        if self.config.flaw == "shadows-view":
            return {"raw": lambda ctx: ctx.view("sequence")}
        return {}

    def setup(self, network):
        if self.config.flaw == "adopts-encoder":
            self.encoder = network.encoder

    def ddp_ignored_names(self):
        return ["no_such_buffer"] if self.config.flaw == "ignores-unknown" else []

    def forward(self, ctx):
        flaw = self.config.flaw
        features = ctx.pooled("sequence")
        loss = self.head(features).pow(2).mean()
        if flaw == "uses-decoder":
            loss = loss + ctx.decode("sequence").mean()
        if flaw == "vector-loss":
            loss = self.head(features).pow(2).squeeze(1)
        if flaw == "nan-loss":
            loss = loss * float("nan")
        if flaw == "detached-loss":
            loss = loss.detach()
        if flaw == "matrix-metric":
            return TaskOutput(loss=loss, metrics={"m": torch.zeros(2, 2)})
        if flaw == "no-output":
            return loss
        return TaskOutput(loss=loss, metrics={"scale": features.detach().abs().mean()})


def toy_plugin(name: str = "toy", model=ToyConfig, factory=ToyTask, extra_specs=()) -> types.ModuleType:
    module = types.ModuleType(f"toy_plugin_{name}")

    @hookimpl
    def ssmtl_register_tasks():
        return [TaskSpec(name=name, config_model=model, factory=factory), *extra_specs]

    module.ssmtl_register_tasks = ssmtl_register_tasks
    return module


def test_a_sound_toy_task_passes():
    report = check_task_contract(toy_plugin())
    assert report.trains == {"encoder"} and report.metrics.keys() == {"scale"}
    assert report.task_parameters == sum(p.numel() for p in nn.Linear(16, 1).parameters())


@pytest.mark.parametrize(
    "flaw,needle",
    [
        ("unused-parameter", "get no gradient.*spare.weight"),
        ("uses-decoder", "reaches the decoder"),
        ("trains-decoder", "decoder parameters get no gradient"),
        ("shadows-view", "built-in view"),
        ("adopts-encoder", "shared network"),
        ("ignores-unknown", "no_such_buffer"),
        ("vector-loss", "scalar"),
        ("nan-loss", "not finite"),
        ("detached-loss", "does not require grad"),
        ("matrix-metric", "metric 'm'"),
        ("no-output", "not a TaskOutput"),
    ],
)
def test_each_flaw_is_caught(flaw, needle):
    with pytest.raises(TaskContractError, match=needle):
        check_task_contract(toy_plugin(), config={"flaw": flaw})


class LooseConfig(ToyConfig):
    model_config = ConfigDict(extra="allow")


class BadDefaultConfig(ToyConfig):
    width: int = Field(0, ge=1)


class NotJsonConfig(ToyConfig):
    scale: Any = complex(1, 2)  # saved as the string "1+2j", read back as a string


class UnserialisableConfig(ToyConfig):
    handle: Any = Field(default_factory=object)


@pytest.mark.parametrize(
    "model,needle",
    [
        (LooseConfig, "accepts unknown fields"),
        (BadDefaultConfig, "break its own constraints"),
        (NotJsonConfig, "changes in a JSON round trip"),
        (UnserialisableConfig, "does not survive a JSON round trip"),
    ],
)
def test_config_flaws_are_caught(model, needle):
    with pytest.raises(TaskContractError, match=needle):
        check_task_contract(toy_plugin(model=model))


def test_registration_problems_and_ambiguity_are_reported():
    with pytest.raises(TaskContractError, match="not a PretextTask"):
        check_task_contract(toy_plugin(factory=lambda config, network: nn.Linear(1, 1)))
    with pytest.raises(TaskContractError, match="does not register cleanly"):
        check_task_contract(toy_plugin(model=dict))
    two = toy_plugin(extra_specs=[TaskSpec(name="order", config_model=OrderConfig, factory=ToyTask)])
    with pytest.raises(TaskContractError, match="pass name="):
        check_task_contract(two)
    with pytest.raises(TaskContractError, match="no task 'nope'"):
        check_task_contract(two, name="nope")
    with pytest.raises(TaskContractError, match="provides no task"):
        check_task_contract(types.ModuleType("empty_plugin"))
