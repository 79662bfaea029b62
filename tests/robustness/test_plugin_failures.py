"""#15 class 5: a broken plugin cannot take the tool down. Every call into plugin code that fails
is one `error:` line naming the plugin kind, its name, its package and the call, exit 2; the
traceback is there with --debug or SSMTL_DEBUG=1 only."""

from __future__ import annotations

import os
import re
import subprocess

import pytest
import torch
from robustness.broken_plugin import DISTRIBUTION, VERSION, install_broken_plugin
from robustness.harness import Case, assert_all_held, run_cases, ssmtl_cli

TINY = ["--steps", "1", "--batch-size", "2", "--set", "model.base_channels=4", "--set", "model.depth=2",
        "--set", "data.num_workers=0"]
PACKAGE = f"(package {DISTRIBUTION} {VERSION})"


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory) -> dict[str, str]:
    """The environment of a process that has the broken plugin package installed."""
    folder = install_broken_plugin(tmp_path_factory.mktemp("broken_plugin"))
    path = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, "SSMTL_NO_PLUGINS": "0"}


def test_each_failing_plugin_call_is_one_line_naming_the_plugin(plugin_env, ssmtl_tiny_cache, tmp_path):
    cache = ssmtl_tiny_cache

    def case(name, argv, message, out):
        return Case(name, argv, message=message, inputs=[cache], absent=[out] if out else [], watch=[tmp_path], env=plugin_env)

    def pretrain(task, message, *, in_training=False):
        """A failure while building leaves no run directory; one in a training step keeps the run's
        config.json and metrics.jsonl for inspection (the run directory rules are #15 class 4's)."""
        out = tmp_path / task
        return case(task, ssmtl_cli("pretrain", "--data", cache, "--out", out, "--task", task, *TINY), message,
                    None if in_training else out)

    def built(name):  # one output per case: cases run two at a time, and a build locks its output
        return tmp_path / f"{name}.h5"

    cases = [
        pretrain("raise-init", f"task 'raise-init' {PACKAGE} failed in its factory (__init__): ValueError: boom in __init__"),
        pretrain("raise-on-data", f"task 'raise-on-data' {PACKAGE} failed in on_data: ValueError: boom in on_data"),
        pretrain("raise-forward", f"task 'raise-forward' {PACKAGE} failed in forward: ValueError: boom in forward", in_training=True),
        pretrain("none-forward", f"task 'none-forward' {PACKAGE}: forward returned NoneType, expected a TaskOutput", in_training=True),
        case("network", ssmtl_cli("pretrain", "--data", cache, "--out", tmp_path / "net", "--task", "order", "--steps", "1",
                                   "--set", "model.name=raise-network"),
             f"network 'raise-network' {PACKAGE} failed in its factory (build): ValueError: boom in the network factory",
             tmp_path / "net"),
        case("head", ssmtl_cli("finetune", "--data", cache, "--out", tmp_path / "head", "--head", "raise-head", "--steps", "1",
                                "--set", "model.base_channels=4", "--set", "model.depth=2"),
             f"head 'raise-head' {PACKAGE} failed in its factory (build): ValueError: boom in the head factory", tmp_path / "head"),
        case("dataset", ssmtl_cli("cache", "build", "--dataset", "raise-dataset", "--out", built("raise-dataset")),
             f"dataset 'raise-dataset' {PACKAGE} failed in its factory: ValueError: boom in the dataset factory", built("raise-dataset")),
        case("dataset item load", ssmtl_cli("cache", "build", "--dataset", "raise-load", "--out", built("raise-load")),
             f"broken://s1: dataset 'raise-load' {PACKAGE} failed in load: KeyError: 'no such field'", built("raise-load")),
        case("dataset returns a list", ssmtl_cli("cache", "build", "--dataset", "wrong-dataset", "--out", built("wrong-dataset")),
             f"dataset 'wrong-dataset' {PACKAGE}: the factory returned list, not a VolumeSource", built("wrong-dataset")),
    ]
    outcomes = run_cases(cases)
    assert_all_held(outcomes)
    for outcome in outcomes:
        assert outcome.stderr.count("\n") <= 3, outcome.stderr  # the line (and a progress bar), nothing else


@pytest.mark.parametrize("switch", ["--debug", "SSMTL_DEBUG=1"])
def test_debug_shows_the_plugins_traceback_behind_the_line(plugin_env, ssmtl_tiny_cache, tmp_path, switch):
    env = dict(os.environ, OMP_NUM_THREADS="1", **plugin_env)
    flags = [switch] if switch.startswith("--") else []
    if not flags:
        env["SSMTL_DEBUG"] = "1"
    argv = ssmtl_cli(*flags, "cache", "build", "--dataset", "raise-dataset", "--out", tmp_path / "x.h5")
    result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2
    assert "Traceback (most recent call last)" in result.stderr
    assert "ssmtl_broken_test.py" in result.stderr and "ValueError: boom in the dataset factory" in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: dataset 'raise-dataset' {PACKAGE} failed in its factory: ValueError: boom in the dataset factory"]


def test_a_task_output_is_checked_before_it_reaches_the_engine():
    from ssmtl.api import TaskOutput
    from ssmtl.host.plugin_calls import PluginCallError, checked_task_output, plugin_call

    scalar = checked_task_output("t", TaskOutput(torch.tensor([2.0])))  # one number: accepted, as a scalar
    assert scalar.loss.shape == () and scalar.loss.item() == 2.0
    # (a wrong return value reaches the user as the none-forward case above shows, one line)
    for bad, needle in [(None, "returned NoneType"), (TaskOutput(torch.tensor(1)), "dtype torch.int64"), (TaskOutput("1"), "type str"), (TaskOutput(torch.ones(2, 2)), "shape (2, 2)"),
                        (TaskOutput(torch.tensor(True)), "dtype torch.bool"),
                        (TaskOutput(torch.tensor(1.0), {"acc": 0.5}), "metrics that are not a dict of tensors")]:
        with pytest.raises(PluginCallError, match=re.escape(needle)) as info:
            checked_task_output("t", bad)
        assert str(info.value).startswith("task 't'") and info.value.call == "forward"
    with pytest.raises(PluginCallError) as info:  # the cause is kept for --debug
        with plugin_call("head", "h", "loss", registry=object()):
            raise KeyError("missing")
    assert str(info.value) == "head 'h' failed in loss: KeyError: 'missing'" and isinstance(info.value.__cause__, KeyError)
