"""The run configuration and how it is resolved from its sources.

Precedence, lowest to highest: model defaults, a TOML/YAML file (``--config``),
``SSMTL_*`` environment variables (``SSMTL_TRAIN__STEPS=100``, ``__`` nests,
``SSMTL_TASKS=contrastive,order``), CLI flags, then ``--set a.b=c``. Sources are
merged as plain dicts and validated once.

Task configs are a union discriminated by the task name: each registered task
brings its own pydantic model. ``tasks`` is a table keyed by task name
(``[tasks.order]`` in TOML, ``--set tasks.order.num_slices=4`` on the CLI); the
validator resolves each entry to its plugin's model through the registry. Resolving
in a ``mode="before"`` validator (instead of building the PretrainConfig class at run
time with ``create_model``) keeps PretrainConfig a static, picklable class that spawned
worker processes can import.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Literal, Mapping, Union

from pydantic import (
    BaseModel,
    Field,
    SerializeAsAny,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)
from typing_extensions import Annotated

from ssmtl.api.rules import CONFIG_RULES, AbsolutePath, Seed
from ssmtl.training.augment_config import AugmentConfig
from ssmtl.training.loop_config import LoopConfig
from ssmtl.api.errors import ConfigError
from ssmtl.settings.sources import (
    ENV_PREFIX,
    blame_environment,
    dotted_paths,
    env_origins,
    deep_merge,
    env_overrides,
    error_rows,
    flag_layer,
    parse_set_flags,
    read_config_file,
    set_path,
    summary,
)
from ssmtl.api.configs import NetworkConfig
from ssmtl.api.configs import TaskConfig
from ssmtl.host.networks import context_registry, network_models, resolve_network_config, validate_network_field

class DataConfig(BaseModel):
    """Where the slices come from and how sequences are sampled."""

    model_config = CONFIG_RULES
    path: AbsolutePath | list[AbsolutePath] | None = Field(None, description="HDF5 slice cache built by `ssmtl cache build`, a folder of caches, or a list of caches and folders: several caches train as one dataset (each subject keeps its cache in its identity).")
    weights: list[float] | None = Field(None, description="Sampling weight per cache, in the order data.path lists them (a folder's caches sorted by name). None: every sequence equally likely, so caches weigh by their size.")
    stride: int = Field(1, ge=1, description="Slice step between consecutive slices of a sequence.")
    sequence_length: int | None = Field(None, ge=1, description="Slices per sequence (k). Default: the largest any enabled task needs.")
    num_workers: int = Field(1, ge=0, le=64, description="Data loader worker processes.")
    modality: Literal["ct", "mr"] | None = Field(None, description="Use only volumes of this modality (mixed caches).")
    split: Literal["train", "all"] = Field("train", description="Which subjects pre-training reads: 'train' keeps the cache's held-out val/test subjects out (honest evaluation); 'all' reads every volume.")


class PretrainTrainConfig(LoopConfig):
    """Optimisation and bookkeeping of pre-training (the shared loop's fields, plus the engine's)."""

    steps: int = Field(1000, ge=1, description="Optimizer steps.")
    batch_size: int = Field(16, ge=1, description="Sequences per process per micro-batch.")
    warmup_steps: int = Field(50, ge=0, description="Linear learning-rate warm-up steps, then cosine decay to 0.")
    grad_clip: float | None = Field(1.0, gt=0, description="Clip the global gradient norm (None: off).")
    compile: bool = Field(False, description="torch.compile the shared network (falls back to eager if unavailable).")
    decoder_slices: Literal["all", "one"] = Field("one", description="Slices of each sampled sequence the shared decoder runs on: 'all', or 'one' picked at random per sequence (the encoder still sees every slice). 'one' divides the decoder's cost by the sequence length, and consecutive slices add little to a dense loss; tasks that need every slice (neighbor mode 'middle') switch it back to 'all' with a note.")
    channels_last: bool = Field(False, description="Keep the network weights and input views in channels_last (NHWC) memory format: faster convolutions on GPU tensor cores (bf16/fp16), often on CPU too.")


class WeightingConfig(BaseModel):
    """How task losses are combined into one."""

    model_config = CONFIG_RULES
    scheme: Literal["fixed", "uncertainty", "dwa"] = Field("fixed", description="Loss weighting: fixed weights, learned uncertainty (Kendall et al. 2018) or dynamic weight average (Liu et al. 2019).")
    temperature: float = Field(2.0, gt=0, description="Softmax temperature of dynamic weight averaging.")
    window: int | None = Field(None, ge=1, description="Dynamic weight averaging: optimizer steps per window whose mean losses are compared (the paper's epoch). None: one pass over the training slices.")
    normalise: bool = Field(False, description="Divide each task's loss by its own mean over the first normalise_steps steps (all processes together; checkpointed) before the scheme weighs it, so every task starts at about 1 whatever its scale: InfoNCE starts near ln(K+1), a pixel loss on CT's [0, 1] intensities near 1e-2 and on z-scored MR about 10x higher, so raw fixed weights mix the tasks differently per modality. Off by default: the paper's multi-task loss is the fixed-weight sum of the raw losses, and turning it on changes what that comparison means.")
    normalise_steps: int = Field(50, ge=1, description="weighting.normalise: optimizer steps over which each task's mean loss (its divisor) is taken; during them the divisor is the mean so far, then it is fixed.")


class PretrainConfig(BaseModel):
    """Everything a pre-training run needs. Saved as config.json in every run."""

    model_config = CONFIG_RULES
    seed: Seed = Field(0, description="Seed for weights, sampling and augmentation.")
    out: Path | None = Field(None, description="Run directory.")
    data: DataConfig = Field(default_factory=DataConfig)
    model: SerializeAsAny[NetworkConfig] = Field(
        default_factory=dict, validate_default=True,
        description="The shared network: `name` picks the network plugin (default: the plugins' default network), the other keys are its options.",
    )
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    train: PretrainTrainConfig = Field(default_factory=PretrainTrainConfig)
    weighting: WeightingConfig = Field(default_factory=WeightingConfig)
    tasks: dict[str, SerializeAsAny[TaskConfig]] = Field(
        None,  # type: ignore[assignment]  (the validator turns "not given" into the plugins' default tasks)
        description="Enabled pretext tasks, keyed by name, each with its own options. Not given: the plugins' default tasks.",
        validate_default=True,
    )

    @field_validator("tasks", mode="before")
    @classmethod
    def _resolve_tasks(cls, value: Any, info: ValidationInfo) -> dict[str, TaskConfig]:
        registry = context_registry(info)
        resolved, errors = resolve_task_configs({n: {} for n in default_tasks(registry)} if value is None else value, registry)
        if errors:
            raise ValueError("; ".join(f"{loc}: {msg}" for loc, msg in errors))
        return resolved

    @field_validator("model", mode="before")
    @classmethod
    def _resolve_model(cls, value: Any, info: ValidationInfo) -> NetworkConfig:
        return validate_network_field(value, context_registry(info))

    @model_validator(mode="after")
    def _needs_tasks(self):
        if not self.tasks:
            raise ValueError("at least one task must be enabled")
        return self

    @property
    def sequence_length(self) -> int:
        """k: the configured value, or the largest any task needs."""
        return self.data.sequence_length or 1


def default_tasks(registry) -> tuple[str, ...]:
    """The tasks a run enables when no source names any: the plugins' ``ssmtl_defaults``."""
    return tuple(registry.defaults.tasks)


def _normalise_tasks(value: Any) -> dict[str, Any]:
    """Accept {name: {...}}, [name, ...] or [{name: ..., ...}, ...]."""
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (list, tuple)):
        out: dict[str, Any] = {}
        for item in value:
            if isinstance(item, str):
                out[item] = {}
            elif isinstance(item, TaskConfig):
                out[item.name] = item
            elif isinstance(item, Mapping) and "name" in item:
                out[str(item["name"])] = dict(item)
            else:
                raise ValueError(f"cannot read task entry {item!r}")
        return out
    raise ValueError("tasks must be a table keyed by task name")


def resolve_task_configs(value: Any, registry) -> tuple[dict[str, TaskConfig], list[tuple[str, str]]]:
    """Validate each task entry with its plugin's config model. Returns (configs, errors)."""
    try:
        entries = _normalise_tasks(value)
    except ValueError as exc:
        return {}, [("tasks", str(exc))]
    resolved: dict[str, TaskConfig] = {}
    errors: list[tuple[str, str]] = []
    for key, entry in entries.items():
        if key not in registry.tasks:
            available = ", ".join(sorted(registry.tasks)) or "none"
            errors.append((f"tasks.{key}", f"unknown task {key!r}; available: {available}"))
            continue
        model = registry.tasks[key].config_model
        if isinstance(entry, model):
            resolved[key] = entry
            continue
        data = entry.model_dump() if isinstance(entry, BaseModel) else dict(entry or {})
        data.setdefault("name", key)
        try:
            resolved[key] = model.model_validate(data)
        except ValidationError as exc:
            errors.extend(error_rows(exc, prefix=f"tasks.{key}"))
    return resolved, errors


# -- sources -----------------------------------------------------------------------------


def env_layer(environ: Mapping[str, str] | None) -> dict[str, Any]:
    """``SSMTL_SECTION__FIELD=value``; ``SSMTL_TASKS=a,b`` lists the enabled tasks."""
    environ = os.environ if environ is None else environ
    layer = env_overrides(ENV_PREFIX, [f for f in PretrainConfig.model_fields if f != "tasks"], environ)
    raw = environ.get(f"{ENV_PREFIX}TASKS")
    if raw is not None:
        layer["tasks"] = {n.strip(): {} for n in raw.split(",") if n.strip()}
        if not layer["tasks"]:  # the validation error would name no field and no variable
            raise ConfigError(f"environment variable {ENV_PREFIX}TASKS={raw!r}: names no task; expected task names "
                              f"separated by commas, e.g. {ENV_PREFIX}TASKS=order,contrastive (unset it for the defaults)")
    return layer


def parse_task_flags(task_flags: list[str]) -> dict[str, dict[str, Any]]:
    """``--task NAME`` or ``--task NAME:WEIGHT`` -> {name: {} or {"weight": w}}."""
    tasks: dict[str, dict[str, Any]] = {}
    for flag in task_flags:
        name, colon, weight = flag.partition(":")
        name, weight = name.strip(), weight.strip()
        if not name or (colon and not weight):
            raise ConfigError(f"--task {flag!r}: expected NAME or NAME:WEIGHT, e.g. --task order:0.5")
        if name in tasks:
            raise ConfigError(f"--task {name}: given twice; give each task once (NAME:WEIGHT sets its weight)")
        entry: dict[str, Any] = {}
        if weight:
            try:
                entry["weight"] = float(weight)
            except ValueError:
                raise ConfigError(f"--task {flag!r}: weight {weight!r} is not a number") from None
            if not math.isfinite(entry["weight"]):
                raise ConfigError(f"--task {flag!r}: weight {weight!r} is not a finite number")
        tasks[name] = entry
    return tasks


def _replace_tasks(merged: dict[str, Any], tasks: Any) -> None:
    """A source that lists tasks defines the enabled set; options of kept tasks carry over."""
    old = merged.get("tasks") or {}
    new = _normalise_tasks(tasks)
    merged["tasks"] = {
        name: deep_merge(dict(old.get(name) or {}), dict(opts or {})) if isinstance(opts, Mapping) or opts is None else opts
        for name, opts in new.items()
    }


def resolve_pretrain_config(
    *,
    file: Path | None = None,
    flags: Mapping[str, Any] | None = None,
    tasks: list[str] | None = None,
    sets: list[str] | None = None,
    environ: Mapping[str, str] | None = None,
    registry,
) -> PretrainConfig:
    """Merge all sources in precedence order and validate once."""
    merged: dict[str, Any] = {"tasks": {n: {} for n in default_tasks(registry)}}
    layers: list[dict[str, Any]] = []
    if file is not None:
        layers.append(read_config_file(file))
    layers.append(env_layer(environ))
    layers.append(flag_layer(flags))
    if tasks:
        layers.append({"tasks": parse_task_flags(tasks)})
    for layer in layers:
        layer = dict(layer)
        if "tasks" in layer:
            _replace_tasks(merged, layer.pop("tasks"))
        merged = deep_merge(merged, layer)
    for key, value in parse_set_flags(sets or []):
        parts = key.split(".")
        if parts[0] == "tasks" and len(parts) >= 2 and parts[1] not in (merged.get("tasks") or {}):
            enabled = ", ".join(merged.get("tasks") or {}) or "none"
            raise ConfigError(
                f"--set {key}: task {parts[1]!r} is not enabled (enabled: {enabled}); add --task {parts[1]}"
            )
        set_path(merged, key, value)
    try:
        return validate_pretrain_config(merged, registry)
    except ConfigError as exc:
        environ = os.environ if environ is None else environ
        origins = env_origins(ENV_PREFIX, PretrainConfig.model_fields, environ)
        later = dotted_paths(flag_layer(flags)) + [key for key, _ in parse_set_flags(sets or [])]
        later += ["tasks"] if tasks else []
        raise blame_environment(exc, origins, later, environ=environ) from None


def validate_pretrain_config(data: Mapping[str, Any], registry) -> PretrainConfig:
    """Validate a merged dict; raise :class:`ConfigError` with one row per problem."""
    data = dict(data)
    resolved, rows = resolve_task_configs(data.get("tasks", {n: {} for n in default_tasks(registry)}), registry)
    data["tasks"] = resolved
    network, network_rows = resolve_network_config(data.get("model"), registry)
    rows += network_rows
    if network is not None:
        data["model"] = network
    try:
        config = PretrainConfig.model_validate(data, context={"registry": registry})
    except ValidationError as exc:
        task_rows = bool(rows)
        more = [r for r in error_rows(exc) if not r[0].startswith("tasks") and not (network_rows and r[0].startswith("model"))]
        if task_rows:  # the empty task table is a consequence of the task errors already listed
            more = [r for r in more if "at least one task" not in r[1]]
        rows += more if (more or task_rows) else error_rows(exc)
        config = None
    if rows:
        raise ConfigError(summary(rows), rows)
    return config


def config_to_dict(config: PretrainConfig) -> dict[str, Any]:
    return config.model_dump(mode="json")


def _union(models: list[type[BaseModel]]) -> Any:
    """The models as one type, discriminated by ``name`` when there are several."""
    if len(models) == 1:
        return models[0]
    return Annotated[Union[tuple(models)], Field(discriminator="name")]


def pretrain_config_schema(registry) -> dict[str, Any]:
    """JSON Schema of PretrainConfig with ``tasks`` and ``model`` as the unions of every registered task
    and network model."""
    fields: dict[str, Any] = {}
    tasks = [spec.config_model for spec in registry.tasks.values()]
    if tasks:
        fields["tasks"] = (dict[str, _union(tasks)], Field(default_factory=dict, description=PretrainConfig.model_fields["tasks"].description))
    networks = network_models(registry)
    if networks:
        fields["model"] = (_union(networks), Field(default_factory=dict, description=PretrainConfig.model_fields["model"].description))
    if not fields:
        return PretrainConfig.model_json_schema()
    return create_model("PretrainConfig", __base__=PretrainConfig, **fields).model_json_schema()
