"""The pretext-task contract, as one reusable check.

:func:`check_task_contract` runs a task the way the engine does, on a tiny network
and a tiny batch, and fails with a readable :class:`TaskContractError` at the first
broken promise:

1. **Registration.** The plugin loads through the real registry with no problem
   reported (hooks match the hookspecs, specs are typed, the config model
   subclasses :class:`~ssmtl.api.configs.TaskConfig`, its ``name`` defaults to the
   task name).
2. **Config.** The defaults satisfy the model's own constraints (pydantic does
   not validate defaults), the given options validate, it rejects an unknown field
   (``extra="forbid"``: a typo in ``--set tasks.x.optoin=1`` must not pass
   silently), survives a JSON round trip (runs save ``config.json`` and resume
   from it) and resolves inside a :class:`~ssmtl.pretraining.config.PretrainConfig`.
3. **Heads.** The factory builds a :class:`~ssmtl.api.tasks.PretextTask` on a tiny
   network's :class:`~ssmtl.api.network.NetworkInfo` (the default U-Net, or any
   network plugin's: ``model={"name": ...}``); ``trains`` names only
   ``encoder``/``decoder``; extra views do not shadow built-in ones; the task does
   not adopt the shared network's parameters as its own; every name it asks DDP
   to ignore exists.
4. **Loss.** One forward pass gives a :class:`~ssmtl.api.tasks.TaskOutput` with a
   finite scalar loss that requires grad, and scalar, finite metrics whose keys do
   not change from step to step.
5. **Gradients.** After ``loss.backward()``: every encoder parameter has a
   gradient; decoder parameters have gradients if and only if ``"decoder" in
   task.trains``; every trainable parameter of the task itself has one. The
   engine wraps everything in DDP with ``find_unused_parameters=False``, so a
   trainable parameter that gets no gradient would stall multi-GPU training.

The pass runs ``steps`` times (default 2) with ``after_optimizer_step`` in between,
which catches state that breaks on the second step (queues, momentum copies). Odd
steps decode one slice per sequence (``train.decoder_slices="one"``, the engine's
default) unless the task's ``decodes_every_slice`` says it cannot: a dense task that
takes targets without ``ctx.decoded`` fails there with a shape error. The task's
``view_transforms`` are applied, as in the engine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
from pydantic import ValidationError

from ssmtl.training.augment import AugmentConfig, make_augmenter
from ssmtl.pretraining.config import resolve_task_configs
from ssmtl.api.errors import SsmtlError
from ssmtl.api.hooks import hookimpl
from ssmtl.api.network import SharedNetwork
from ssmtl.host.networks import build_network
from ssmtl.host.registry import build_registry
from ssmtl.api.specs import TaskSpec
from ssmtl.api.tasks import PretextTask, TaskConfig, TaskOutput
from ssmtl.api.views import BUILTIN_VIEWS, StepContext, task_views
from ssmtl.testing.tiny import harness_registry, TINY_SIZE, tiny_batch, tiny_model

KNOWN_PARTS = frozenset({"encoder", "decoder"})
_UNKNOWN_FIELD = "ssmtl_contract_unknown_option"
_SHOW = 5  # parameter names listed in an error message


class TaskContractError(AssertionError):
    """A task breaks the contract; the message names the task and the broken promise."""


@dataclass
class ContractReport:
    """What :func:`check_task_contract` verified, for further assertions in a test."""

    name: str
    config: TaskConfig
    trains: frozenset[str]
    sequence_length: int
    losses: list[float] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    views: list[str] = field(default_factory=list)
    encoder_parameters: int = 0
    decoder_parameters: int = 0
    task_parameters: int = 0


class _SpecPlugin:
    """Wraps a bare TaskSpec so it goes through the same registry checks as a plugin."""

    def __init__(self, spec: TaskSpec):
        self.__name__ = f"spec:{spec.name}"
        self._spec = spec

    @hookimpl
    def ssmtl_register_tasks(self):
        return [self._spec]


def _fail(name: str, message: str) -> TaskContractError:
    return TaskContractError(f"task {name!r}: {message}")


def _names(names: Iterable[str]) -> str:
    names = list(names)
    more = f" (and {len(names) - _SHOW} more)" if len(names) > _SHOW else ""
    return ", ".join(names[:_SHOW]) + more


def resolve_task_spec(spec_or_plugin: Any, name: str | None = None):
    """Load ``spec_or_plugin`` through the registry; return ``(spec, registry)``.

    ``spec_or_plugin`` is a :class:`~ssmtl.api.specs.TaskSpec`, or a plugin (a
    module or object with hook implementations). A plugin that provides several
    tasks needs ``name``.
    """
    plugin = _SpecPlugin(spec_or_plugin) if isinstance(spec_or_plugin, TaskSpec) else spec_or_plugin
    registry = build_registry(external=False, builtins=(), extra=[plugin])
    if registry.problems:
        raise TaskContractError("the plugin does not register cleanly:\n  " + "\n  ".join(registry.problems))
    if not registry.tasks:
        raise TaskContractError(f"{getattr(plugin, '__name__', plugin)!r} provides no task (no ssmtl_register_tasks hook?)")
    if name is None:
        if len(registry.tasks) > 1:
            raise TaskContractError(f"the plugin provides several tasks ({', '.join(sorted(registry.tasks))}); pass name=")
        name = next(iter(registry.tasks))
    if name not in registry.tasks:
        raise TaskContractError(f"the plugin provides no task {name!r} (it provides {', '.join(sorted(registry.tasks))})")
    return registry.tasks[name], registry


def _check_config(spec: TaskSpec, registry, overrides: dict[str, Any]) -> TaskConfig:
    name, model = spec.name, spec.config_model
    try:
        # pydantic does not validate defaults, so a default that breaks its own field's
        # constraint only shows up once the config is saved and read back
        model.model_validate(model().model_dump())
    except ValidationError as exc:
        raise _fail(name, f"the defaults of {model.__name__} break its own constraints: {exc}") from None
    try:
        config = model.model_validate({"name": name, **overrides})
    except ValidationError as exc:
        raise _fail(name, f"config {overrides!r} does not validate: {exc}") from None
    try:
        model.model_validate({"name": name, _UNKNOWN_FIELD: 1})
    except ValidationError:
        pass
    else:
        raise _fail(name, f"{model.__name__} accepts unknown fields; keep TaskConfig's model_config (extra='forbid') so typos are errors")
    try:
        again = model.model_validate(config.model_dump(mode="json"))
    except ValueError as exc:  # ValidationError, or PydanticSerializationError for values JSON cannot hold
        raise _fail(name, f"config does not survive a JSON round trip (runs save config.json and resume from it): {exc}") from None
    if again != config:
        raise _fail(name, f"config changes in a JSON round trip: {config!r} -> {again!r}")
    resolved, errors = resolve_task_configs({name: overrides}, registry)
    if errors or not isinstance(resolved.get(name), model):
        raise _fail(name, f"config does not resolve inside a PretrainConfig: {errors}")
    return config


def _build(spec: TaskSpec, config: TaskConfig, network: SharedNetwork) -> PretextTask:
    name = spec.name
    task = spec.factory(config, network.info)
    if not isinstance(task, PretextTask):
        raise _fail(name, f"factory returned {type(task).__name__}, not a PretextTask")
    trains = frozenset(task.trains)
    if not trains or not trains <= KNOWN_PARTS:
        raise _fail(name, f"trains={set(trains)!r}: use a non-empty subset of {set(KNOWN_PARTS)!r}")
    task.setup(network)
    shared = {id(p) for p in network.parameters()}
    adopted = [n for n, p in task.named_parameters() if id(p) in shared]
    if adopted:
        raise _fail(name, f"registers parameters of the shared network as its own ({_names(adopted)}); "
                          "use ctx.encode/ctx.decode, or deep-copy (as MoCo's key encoder does)")
    own = {n for n, _ in task.named_parameters()} | {n for n, _ in task.named_buffers()}
    unknown = [n for n in task.ddp_ignored_names() if n not in own]
    if unknown:
        raise _fail(name, f"ddp_ignored_names() lists names the task does not have: {_names(unknown)}")
    return task


def _check_output(name: str, out: Any, metric_keys: set[str] | None) -> TaskOutput:
    if not isinstance(out, TaskOutput):
        raise _fail(name, f"forward returned {type(out).__name__}, not a TaskOutput")
    loss = out.loss
    if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise _fail(name, f"the loss must be a scalar (0-dim) tensor, got {shape}")
    if not torch.isfinite(loss.detach()).item():
        raise _fail(name, f"the loss is not finite ({loss.item()})")
    if not loss.requires_grad:
        raise _fail(name, "the loss does not require grad: nothing it computes is trained")
    for key, value in out.metrics.items():
        if not isinstance(value, torch.Tensor) or value.numel() != 1 or not torch.isfinite(value.detach()).all():
            raise _fail(name, f"metric {key!r} must be a finite one-element tensor, got {value!r}")
    if metric_keys is not None and set(out.metrics) != metric_keys:
        raise _fail(name, f"metric keys changed between steps: {sorted(metric_keys)} -> {sorted(out.metrics)}")
    return out


def _missing_grads(module: torch.nn.Module) -> list[str]:
    return [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None]


def _check_gradients(name: str, task: PretextTask, network: SharedNetwork) -> None:
    missing = _missing_grads(network.encoder)
    if missing:
        raise _fail(name, f"encoder parameters get no gradient: {_names(missing)}")
    decoder_grads = [n for n, p in network.decoder.named_parameters() if p.grad is not None]
    if "decoder" in task.trains:
        missing = _missing_grads(network.decoder)
        if missing:
            raise _fail(name, f"trains the decoder, but decoder parameters get no gradient: {_names(missing)}")
    elif decoder_grads:
        raise _fail(name, f"does not list 'decoder' in trains, but its loss reaches the decoder ({_names(decoder_grads)}); "
                          "add it to trains (the engine freezes the decoder when no task trains it)")
    missing = _missing_grads(task)
    if missing:
        raise _fail(name, f"trainable task parameters get no gradient (DDP runs with find_unused_parameters=False): "
                          f"{_names(missing)}; freeze them with requires_grad_(False) or use them in the loss")
    for part, module in (("encoder", network.encoder), ("decoder", network.decoder), ("task", task)):
        bad = [n for n, p in module.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
        if bad:
            raise _fail(name, f"non-finite gradients in {part} parameters: {_names(bad)}")


def check_task_contract(
    spec_or_plugin: Any,
    *,
    name: str | None = None,
    config: dict[str, Any] | None = None,
    model: dict[str, Any] | None = None,
    batch_size: int = 2,
    sequence_length: int | None = None,
    size: int = TINY_SIZE,
    steps: int = 2,
    seed: int = 0,
) -> ContractReport:
    """Check that a pretext task keeps the contract described in this module.

    Args:
        spec_or_plugin: a :class:`~ssmtl.api.specs.TaskSpec`, or a plugin module /
            object whose ``ssmtl_register_tasks`` provides the task.
        name: which task, when the plugin provides several.
        config: task options to validate and run with (default: the defaults).
        model: the network's options: overrides of the tiny default U-Net (4 base
            channels, depth 2), or a whole ``model`` table naming another network
            plugin (``{"name": "monai-basic-unet", "features": [4, 4, 8, 8, 16, 4]}``).
        batch_size: sequences per batch.
        sequence_length: slices per sequence (default: what the task asks for).
        size: in-plane size of the synthetic slices.
        steps: forward/backward passes (with ``after_optimizer_step`` in between).
        seed: seeds torch's RNG for reproducible failures.

    Returns:
        a :class:`ContractReport`. Raises :class:`TaskContractError` (an
        ``AssertionError``, so pytest reports it as a failure) otherwise.
    """
    spec, registry = resolve_task_spec(spec_or_plugin, name)
    task_config = _check_config(spec, registry, dict(config or {}))
    torch.manual_seed(seed)
    networks = harness_registry()  # the task's own registry holds only the task; networks are the installed ones
    network = build_network(tiny_model(model, networks), networks)
    task = _build(spec, task_config, network)
    try:
        builders, transforms = task_views({spec.name: task})  # as the engine collects them
    except SsmtlError as exc:
        raise TaskContractError(str(exc)) from None
    k = sequence_length or task.sequence_length
    batch = tiny_batch(batch_size=batch_size, sequence_length=k, size=size, seed=seed)
    report = ContractReport(
        name=spec.name, config=task_config, trains=frozenset(task.trains), sequence_length=k,
        views=sorted(set(builders) - set(BUILTIN_VIEWS)),
        encoder_parameters=sum(p.numel() for p in network.encoder.parameters()),
        decoder_parameters=sum(p.numel() for p in network.decoder.parameters()),
        task_parameters=sum(p.numel() for p in task.parameters() if p.requires_grad),
    )
    network.train()
    task.train()
    metric_keys: set[str] | None = None
    for step in range(steps):
        network.zero_grad(set_to_none=True)
        task.zero_grad(set_to_none=True)
        # odd steps decode one slice per sequence (train.decoder_slices="one", the default)
        policy = "one" if step % 2 == 1 and not task.decodes_every_slice else "all"
        ctx = StepContext(batch, network, make_augmenter(AugmentConfig()), builders, step, transforms=transforms, decoder_slices=policy)
        out = _check_output(spec.name, task(ctx), metric_keys)
        metric_keys = set(out.metrics)
        out.loss.backward()
        _check_gradients(spec.name, task, network)
        with torch.no_grad():
            task.after_optimizer_step(network, step)
        report.losses.append(float(out.loss.detach()))
        report.metrics = {k: float(v.detach()) for k, v in out.metrics.items()}
    if not all(math.isfinite(v) for v in report.losses):
        raise _fail(spec.name, f"losses {report.losses} are not all finite")
    return report
