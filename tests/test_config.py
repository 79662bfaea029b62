"""Run-config resolution: source precedence, task tables, validation errors, schema, pickling."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from ssmtl.pretraining.config import (
    PretrainConfig,
    config_to_dict,
    env_layer,
    resolve_pretrain_config,
    pretrain_config_schema,
    validate_pretrain_config,
)
from ssmtl.api.errors import ConfigError
from ssmtl.host.registry import build_registry
from ssmtl.plugins.tasks.order import OrderConfig


@pytest.fixture(scope="module")
def builtin_registry():
    registry = build_registry(external=False)
    assert {"contrastive", "order"} <= set(registry.tasks)
    return registry


@pytest.fixture
def resolve(builtin_registry):
    """resolve_pretrain_config with the built-in registry and an empty environment by default."""

    def _resolve(**kwargs):
        kwargs.setdefault("environ", {})
        return resolve_pretrain_config(registry=builtin_registry, **kwargs)

    return _resolve


def write_toml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


TOML = """
seed = 3
[train]
steps = 11
batch_size = 5
lr = 0.01
[model]
base_channels = 4
depth = 2
[tasks.order]
num_slices = 5
[tasks.contrastive]
queue_size = 64
"""

YAML = """
seed: 3
train:
  steps: 11
  batch_size: 5
  lr: 0.01
model:
  base_channels: 4
  depth: 2
tasks:
  order:
    num_slices: 5
  contrastive:
    queue_size: 64
"""


# -- precedence -----------------------------------------------------------------------


def test_defaults(resolve, builtin_registry):
    config = resolve()
    assert config.seed == 0 and config.train.steps == 1000 and config.model.base_channels == 16
    assert tuple(config.tasks) == builtin_registry.defaults.tasks == ("contrastive", "order")
    assert isinstance(config.tasks["order"], OrderConfig) and config.tasks["order"].num_slices == 3


@pytest.mark.parametrize("suffix,text", [(".toml", TOML), (".yaml", YAML), (".yml", YAML)])
def test_file_overrides_defaults(resolve, tmp_path, suffix, text):
    config = resolve(file=write_toml(tmp_path / f"run{suffix}", text))
    assert config.seed == 3
    assert (config.train.steps, config.train.batch_size, config.train.lr) == (11, 5, 0.01)
    assert config.train.grad_accum == 1  # untouched default
    assert (config.model.base_channels, config.model.depth) == (4, 2)
    assert config.tasks["order"].num_slices == 5 and config.tasks["contrastive"].queue_size == 64


def test_env_overrides_file(resolve, tmp_path):
    env = {"SSMTL_TRAIN__STEPS": "7", "SSMTL_TRAIN__LR": "1e-4", "SSMTL_SEED": "9"}
    config = resolve(file=write_toml(tmp_path / "run.toml", TOML), environ=env)
    assert config.train.steps == 7 and config.seed == 9
    assert config.train.lr == pytest.approx(1e-4)
    assert config.train.batch_size == 5  # from the file, not overridden


def test_env_tasks_defines_enabled_set_and_keeps_file_options(resolve, tmp_path):
    config = resolve(file=write_toml(tmp_path / "run.toml", TOML), environ={"SSMTL_TASKS": "order"})
    assert list(config.tasks) == ["order"]
    assert config.tasks["order"].num_slices == 5  # options of a kept task carry over


def test_env_ignores_non_config_variables(resolve):
    env = {"SSMTL_PLUGINS": "x", "SSMTL_NO_PLUGINS": "1", "SSMTL_NOT_A_FIELD": "3", "HOME": "/x"}
    assert env_layer(env) == {}
    assert resolve(environ=env).train.steps == 1000


def test_flags_override_env_and_none_flags_are_ignored(resolve, tmp_path):
    env = {"SSMTL_TRAIN__STEPS": "7", "SSMTL_TRAIN__BATCH_SIZE": "3"}
    flags = {"train.steps": 21, "train.batch_size": None, "seed": None, "model.depth": 3}
    config = resolve(file=write_toml(tmp_path / "run.toml", TOML), environ=env, flags=flags)
    assert config.train.steps == 21
    assert config.train.batch_size == 3  # None flag leaves the env value
    assert config.seed == 3  # None flag leaves the file value
    assert config.model.depth == 3


def test_set_overrides_flags(resolve, tmp_path):
    config = resolve(
        file=write_toml(tmp_path / "run.toml", TOML),
        environ={"SSMTL_TRAIN__STEPS": "7"},
        flags={"train.steps": 21},
        sets=["train.steps=33", "train.lr=2e-3", "augment.crop_scale=[0.5, 0.9]"],
    )
    assert config.train.steps == 33
    assert config.train.lr == pytest.approx(2e-3)
    assert config.augment.crop_scale == (0.5, 0.9)


def test_task_flags_with_weights(resolve):
    config = resolve(tasks=["order:0.5"])
    assert list(config.tasks) == ["order"]
    assert config.tasks["order"].weight == 0.5
    config = resolve(tasks=["order", "contrastive:2"])
    assert set(config.tasks) == {"order", "contrastive"}
    assert config.tasks["order"].weight == 1.0 and config.tasks["contrastive"].weight == 2.0


def test_task_flags_override_env_tasks(resolve):
    config = resolve(environ={"SSMTL_TASKS": "contrastive"}, tasks=["order:0.25"])
    assert list(config.tasks) == ["order"]
    assert config.tasks["order"].weight == 0.25


def test_task_flags_keep_file_options_of_listed_tasks(resolve, tmp_path):
    config = resolve(file=write_toml(tmp_path / "run.toml", TOML), tasks=["order:0.25"])
    assert list(config.tasks) == ["order"]
    assert config.tasks["order"].weight == 0.25 and config.tasks["order"].num_slices == 5


@pytest.mark.parametrize("bad", ["order:abc", ":1", ""])
def test_bad_task_flag(resolve, bad):
    with pytest.raises(ConfigError, match="--task"):
        resolve(tasks=[bad])


def test_set_reaches_task_config(resolve):
    config = resolve(sets=["tasks.order.num_slices=4", "tasks.contrastive.temperature=0.07"])
    assert config.tasks["order"].num_slices == 4
    assert config.tasks["contrastive"].temperature == pytest.approx(0.07)


def test_set_for_disabled_task_names_it(resolve):
    with pytest.raises(ConfigError) as info:
        resolve(tasks=["order"], sets=["tasks.contrastive.queue_size=8"])
    assert "'contrastive'" in str(info.value) and "not enabled" in str(info.value)
    with pytest.raises(ConfigError, match="'foo'"):
        resolve(sets=["tasks.foo.x=1"])


@pytest.mark.parametrize("bad", ["train.steps", "=3", "train..steps=3"])
def test_malformed_set(resolve, bad):
    with pytest.raises(ConfigError):
        resolve(sets=[bad])


# -- validation errors -----------------------------------------------------------------


def test_unknown_task_lists_available(resolve, builtin_registry):
    with pytest.raises(ConfigError) as info:
        resolve(tasks=["nope"])
    message = str(info.value)
    assert "tasks.nope" in message and "'nope'" in message
    assert "contrastive" in message and "order" in message
    available = ", ".join(sorted(builtin_registry.tasks))
    assert ("tasks.nope", f"unknown task 'nope'; available: {available}") in info.value.rows


@pytest.mark.parametrize(
    "setting,path",
    [
        ("train.steps=0", "train.steps"),
        ("model.norm=bogus", "model.norm"),
        ("train.bogus=1", "train.bogus"),
        ("tasks.order.num_slices=1", "tasks.order.num_slices"),
        ("tasks.order.colour=3", "tasks.order.colour"),
        ("data.stride=-2", "data.stride"),
    ],
)
def test_invalid_values_name_the_field(resolve, setting, path):
    with pytest.raises(ConfigError) as info:
        resolve(sets=[setting])
    assert str(info.value).startswith(f"invalid configuration: {path}:")
    assert any(loc == path for loc, _ in info.value.rows)


def test_invalid_env_value_names_the_field(resolve):
    with pytest.raises(ConfigError, match=r"train\.batch_size"):
        resolve(environ={"SSMTL_TRAIN__BATCH_SIZE": "zero"})


def test_all_problems_are_reported(resolve):
    with pytest.raises(ConfigError) as info:
        resolve(sets=["train.steps=0", "model.norm=bogus", "tasks.order.num_slices=99"])
    locs = {loc for loc, _ in info.value.rows}
    assert {"train.steps", "model.norm", "tasks.order.num_slices"} <= locs


def test_bad_config_files(resolve, tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        resolve(file=tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="cannot parse"):
        resolve(file=write_toml(tmp_path / "broken.toml", "[train\nsteps = 1"))
    with pytest.raises(ConfigError, match="unsupported"):
        resolve(file=write_toml(tmp_path / "run.ini", "a=1"))
    with pytest.raises(ConfigError, match="top level"):
        resolve(file=write_toml(tmp_path / "list.yaml", "- 1\n- 2\n"))


def test_no_tasks_is_an_error(builtin_registry):
    with pytest.raises(ConfigError, match="at least one task"):
        validate_pretrain_config({"tasks": {}}, builtin_registry)


# -- round trips -------------------------------------------------------------------------


def test_config_to_dict_round_trips(resolve, builtin_registry):
    config = resolve(tasks=["order:0.5", "contrastive"], sets=["tasks.order.num_slices=4", "train.steps=5"])
    data = config_to_dict(config)
    json.dumps(data)  # plain JSON
    assert data["tasks"]["order"] == {**OrderConfig().model_dump(), "weight": 0.5, "num_slices": 4}
    again = validate_pretrain_config(json.loads(json.dumps(data)), builtin_registry)
    assert again == config
    assert isinstance(again.tasks["order"], OrderConfig)


def test_run_config_pickles(resolve):
    config = resolve(tasks=["order"], sets=["tasks.order.num_slices=4"])
    clone = pickle.loads(pickle.dumps(config))
    assert clone == config and isinstance(clone, PretrainConfig)
    assert isinstance(clone.tasks["order"], OrderConfig) and clone.tasks["order"].num_slices == 4


def test_run_config_unpickles_in_a_fresh_interpreter(resolve):
    """A spawned worker imports PretrainConfig statically; unpickling must not need the parent's state."""
    config = resolve(tasks=["order"], sets=["tasks.order.num_slices=4", "train.steps=17"])
    code = (
        "import pickle, sys; c = pickle.load(sys.stdin.buffer); "
        "print(type(c).__name__, type(c.tasks['order']).__name__, c.tasks['order'].num_slices, c.train.steps)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], input=pickle.dumps(config), capture_output=True, timeout=120
    )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().split() == ["PretrainConfig", "OrderConfig", "4", "17"]


# -- schema ---------------------------------------------------------------------------------


def test_schema_has_discriminated_task_union(builtin_registry):
    schema = pretrain_config_schema(builtin_registry)
    tasks = schema["properties"]["tasks"]
    assert tasks["type"] == "object"
    items = tasks["additionalProperties"]
    assert items["discriminator"]["propertyName"] == "name"
    assert set(items["discriminator"]["mapping"]) == set(builtin_registry.tasks) >= {"contrastive", "order"}
    refs = {entry["$ref"].rsplit("/", 1)[-1] for entry in items["oneOf"]}
    assert refs == {spec.config_model.__name__ for spec in builtin_registry.tasks.values()}
    for name, ref in items["discriminator"]["mapping"].items():
        model = ref.rsplit("/", 1)[-1]
        assert model == builtin_registry.tasks[name].config_model.__name__
        assert schema["$defs"][model]["properties"]["name"]["const"] == name
    order = schema["$defs"]["OrderConfig"]
    assert order["properties"]["name"]["const"] == "order"
    assert order["properties"]["num_slices"]["minimum"] == 2
    # the rest of PretrainConfig is still there
    assert {"train", "model", "data", "augment", "weighting", "seed"} <= set(schema["properties"])
