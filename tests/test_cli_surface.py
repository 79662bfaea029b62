"""One surface: every command's help, its generated flags and the config models stay in step.

* Every command's ``--help`` works and shows every option's help text whole (a bracket in
  `ssmtl[onnx]` is text, not a style tag to swallow).
* A training command's generated flags show the model's real default and where the value
  goes (``[train.steps; default: 1000]``), mark the required ones, and each flag lands on
  its field; ``--set PATH=VALUE`` reaches every field of the config, the same way in every
  command.
* The run directory is positional in every command that takes one.
* One step counter: the steps the console prints are the steps of the losses, the validations
  and the learning rates in metrics.jsonl.
* The Python API documents every parameter of its functions (Args, Returns, Raises).
"""

from __future__ import annotations

import inspect
import json
import re
import sys
import typing
from pathlib import Path

import pytest
import typer.main
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from ssmtl.cli.app import app
from ssmtl.cli.benchmark_cmd import BENCHMARK_FLAGS
from ssmtl.cli.config_options import default_text, field_info
from ssmtl.cli.finetune_cmd import FINETUNE_FLAGS
from ssmtl.cli.pretrain_cmd import PRETRAIN_FLAGS

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from python_api_docs import docstring_sections, documented_args  # noqa: E402


def _commands(command=None, path=("ssmtl",)):
    command = command or typer.main.get_command(app)
    subcommands = getattr(command, "commands", None)
    if not subcommands:
        yield path, command
        return
    for name, sub in subcommands.items():
        yield from _commands(sub, (*path, name))


def _flat(text: str) -> str:
    """Help text without its white space: the formatter wraps lines (also after a hyphen)."""
    return "".join(text.split())


def _help(ssmtl_cli, *path: str) -> str:
    result = ssmtl_cli(*path, "--help", env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.stderr
    return _flat(result.stdout)


def test_every_commands_help_shows_every_option_whole(ssmtl_cli):
    commands = list(_commands())
    assert len(commands) >= 15
    for path, command in commands:
        shown = _help(ssmtl_cli, *path[1:])
        ctx = command.make_context(path[-1], ["--help"], resilient_parsing=True)
        for param in command.get_params(ctx):
            if getattr(param, "help", None) and not getattr(param, "hidden", False):
                assert _flat(param.help) in shown, (" ".join(path), param.name)


def test_extras_keep_their_brackets(ssmtl_cli):
    assert _flat("pip install 'ssmtl[onnx]'") in _help(ssmtl_cli, "export")
    assert _flat("pip install 'ssmtl[tensorboard]'") in _help(ssmtl_cli, "pretrain")


@pytest.mark.parametrize("command, model, flags", [
    ("pretrain", "ssmtl.pretraining.config:PretrainConfig", PRETRAIN_FLAGS),
    ("finetune", "ssmtl.downstream.config:FinetuneConfig", FINETUNE_FLAGS),
    ("benchmark", "ssmtl.experiments.config:BenchmarkConfig", BENCHMARK_FLAGS),
])
def test_generated_flags_show_the_models_defaults_and_requirements(ssmtl_cli, command, model, flags):
    model = _load(model)
    shown = _help(ssmtl_cli, command)
    for flag in flags:
        # a field of another command's config (the benchmark's --lr is fine-tuning's train.lr) shows that default
        info = field_info(flag.field[0](), flag.field[1]) if flag.field else field_info(model, flag.path)
        assert _flat(info.description or "") in shown, flag.path
        where = "required" if flag.required else f"default: {default_text(info)}"
        assert _flat(f"[{flag.path}; {where}]") in shown, flag.path
        assert flag.name in shown
    if command == "benchmark":  # one name per concept: fine-tuning's --lr and --steps, as in `ssmtl finetune`
        assert "--lr" in shown and "--steps" in shown and "--finetune-lr<" not in shown
    if command == "pretrain":  # the issue's own examples
        assert _flat("[train.steps; default: 1000]") in shown and _flat("[train.batch_size; default: 16]") in shown
        assert _flat("[data.path; required]") in shown and _flat("[out; required]") in shown


def test_a_missing_required_flag_is_one_line(ssmtl_cli, tmp_path):
    result = ssmtl_cli("pretrain", "--data", tmp_path / "x.h5")
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: --out is required (out: give the flag, or set it in --config FILE)"


def _sample(info, path: str) -> tuple[list[str], object]:
    """Arguments that set the field, and the value the resolved config must then hold."""
    inner = _inner(info.annotation)
    if inner is bool:
        return [], True
    if typing.get_origin(inner) is typing.Literal:
        value = [a for a in typing.get_args(inner) if a is not None][-1]
        return [str(value)], value
    if path.endswith("log_with"):
        return ["tensorboard"], ["tensorboard"]
    if inner is int or "int" in str(inner):
        return ["3"], 3
    if inner is float:
        return ["0.25"], 0.25
    return None, None  # paths and names: checked elsewhere


def _inner(annotation):
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, __import__("types").UnionType) and len(args) == 1:
        return args[0]
    return annotation


@pytest.mark.parametrize("command, model, flags", [
    ("pretrain", "ssmtl.pretraining.config:PretrainConfig", PRETRAIN_FLAGS),
    ("finetune", "ssmtl.downstream.config:FinetuneConfig", FINETUNE_FLAGS),
])
def test_each_generated_flag_lands_on_its_field(ssmtl_cli, command, model, flags):
    model = _load(model)
    for flag in flags:
        argv, expected = _sample(field_info(model, flag.path), flag.path)
        if argv is None:
            continue
        if flag.path == "train.mixed_precision":
            argv, expected = ["bf16"], "bf16"
        if flag.path == "init_parts":
            argv, expected = ["encoder"], "encoder"
        result = ssmtl_cli("config", "show", "--for", command, "--format", "json", flag.name, *argv)
        assert result.exit_code == 0, (flag.name, result.stderr)
        value = json.loads(result.stdout)
        for part in flag.path.split("."):
            value = value[part]
        assert value == expected, flag.name


def _leaf_paths(model: type[BaseModel], prefix: str = "") -> list[tuple[str, object]]:
    out = []
    for name, info in model.model_fields.items():
        inner = _inner(info.annotation)
        path = f"{prefix}{name}"
        if isinstance(inner, type) and issubclass(inner, BaseModel) and info.default_factory is not None:
            out += _leaf_paths(inner, path + ".")
        elif name not in ("tasks", "model", "head_options", "out", "data", "path", "init"):
            default = info.get_default(call_default_factory=True)
            if default is not PydanticUndefined:
                out.append((path, default))
    return out


@pytest.mark.parametrize("command, model", [
    ("pretrain", "ssmtl.pretraining.config:PretrainConfig"), ("finetune", "ssmtl.downstream.config:FinetuneConfig"),
])
def test_set_reaches_every_field(ssmtl_cli, command, model):
    model = _load(model)
    sets = []
    for path, default in _leaf_paths(model):
        value = json.dumps(list(default) if isinstance(default, tuple) else default)
        sets += ["--set", f"{path}={value}"]
    result = ssmtl_cli("config", "show", "--for", command, "--format", "json", *sets)
    assert result.exit_code == 0, result.stderr
    assert len(sets) > 40


@pytest.mark.parametrize("command", ["evaluate", "report", "export", "predict"])
def test_the_run_directory_is_positional(ssmtl_cli, command):
    usage = _help(ssmtl_cli, command).split("Options:")[0]
    assert re.search(r"\[OPTIONS\][\[{]?RUN", usage), usage
    assert "--run<" not in _help(ssmtl_cli, command) and "--run[" not in _help(ssmtl_cli, command)


def test_workers_is_one_name_everywhere(ssmtl_cli):
    for command in (("pretrain",), ("finetune",), ("predict",), ("cache", "build")):
        shown = _help(ssmtl_cli, *command)
        assert "--workers" in shown and "-j" in shown and "--num-workers" not in shown, command


def test_the_console_and_the_metrics_count_steps_alike(ssmtl_cli, ssmtl_tiny_cache, tmp_path):
    out = tmp_path / "ft"
    result = ssmtl_cli("finetune", "--data", ssmtl_tiny_cache, "--out", out, "--steps", "3", "--batch-size", "2",
                       "--labeled-volumes", "1", "--set", "model.base_channels=4", "--set", "model.depth=2",
                       "--set", "train.log_every=1", "--set", "train.validate_every=1")
    assert result.exit_code == 0, result.stderr
    printed = [int(m) for m in re.findall(r"^step (\d+): loss=", result.stderr, flags=re.M)]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["step"] for r in records if "loss" in r]
    validated = [r["step"] for r in records if "val_dice" in r]
    assert printed == losses == validated == [1, 2, 3]
    # and the lr of step k is the rate step k used: 3e-3 x the cosine factor 0.5 (1 + cos(pi (k - 1) / 3))
    assert [r["lr"] for r in records if "loss" in r] == pytest.approx([3e-3, 2.25e-3, 7.5e-4])


@pytest.mark.parametrize("name", ["pretrain", "finetune", "evaluate", "score_predictions", "predict", "load_network", "export", "report"])
def test_every_api_function_documents_its_parameters(name):
    import ssmtl

    function = getattr(ssmtl, name)
    summary, sections = docstring_sections(function.__doc__ or "")
    assert summary and set(sections) == {"Args", "Returns", "Raises"}, name
    assert documented_args(sections["Args"]) == list(inspect.signature(function).parameters), name


def test_the_api_takes_the_clis_names():
    import ssmtl

    assert "format" in inspect.signature(ssmtl.export).parameters
    assert {"space", "split", "resample"} <= set(inspect.signature(ssmtl.evaluate).parameters)


def _load(ref: str):
    import importlib

    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)
