"""What one pre-training step computes: the shared network, every task, the loss weighting.

:class:`PretrainModule` is the unit DDP wraps. Its ``forward(batch, step)`` builds one
:class:`~ssmtl.api.StepContext` (each view built once, each encoded once, however many
tasks ask), runs every enabled task on it, and combines their losses with the
weighting scheme into the one total the engine back-propagates.
"""

from __future__ import annotations

import torch
from torch import nn

from ssmtl.api.errors import SsmtlError
from ssmtl.api.ssl.split_bn import set_split_batchnorm
from ssmtl.api.tasks import PretextTask
from ssmtl.api.views import SequenceBatch, StepContext, task_views
from ssmtl.training.augment import make_augmenter
from ssmtl.api.network import SharedNetwork
from ssmtl.host.networks import build_network
from ssmtl.host.plugin_calls import checked_task_output, plugin_call, refuse
from ssmtl.pretraining.config import PretrainConfig
from ssmtl.pretraining.weighting import LossWeighting, build_weighting


class PretrainModule(nn.Module):
    """The shared network, the task heads and the loss weighting: what DDP wraps.

    ``forward`` returns ``(total_loss, task_losses, effective_weights, metrics)``;
    ``task_losses`` and ``effective_weights`` are (num_tasks,) tensors in task order.
    """

    def __init__(self, network: SharedNetwork, tasks: dict[str, PretextTask], weighting: LossWeighting, augment,
                 decoder_slices: str = "all", registry=None, flip_axes: tuple[int, ...] = ()):
        super().__init__()
        self.registry = registry  # names a failing task's package in the error line
        self.network = network
        self.tasks = nn.ModuleDict(tasks)
        self.weighting = weighting
        self.augment = augment
        self.builders, self.transforms = task_views(tasks)
        # tasks that need the decoder on every slice override "one"; the note says so
        needs_all = [n for n, t in tasks.items() if t.decodes_every_slice]
        self.decoder_slices = "all" if needs_all else decoder_slices
        self.notes = [f"train.decoder_slices=one ignored: task(s) {', '.join(needs_all)} need the decoder on every slice "
                      "of a sequence"] if needs_all and decoder_slices == "one" else []
        self.flip_axes = tuple(flip_axes)  # the data's: every random view mirrors only along these
        self.encoder_bn_groups = _encoder_bn_groups(tasks)
        self.augmenter = make_augmenter(augment, self.flip_axes)
        self.memory_format = torch.contiguous_format

    def use_channels_last(self) -> None:
        """NHWC weights (every 4-D parameter and buffer) and input views: faster convolutions."""
        self.to(memory_format=torch.channels_last)
        self.memory_format = torch.channels_last

    def context(self, batch: SequenceBatch, step: int = 0) -> StepContext:
        """A fresh step context with this module's views, view transforms and decoder policy.

        With ``encoder_bn_groups`` > 1 the shared encoder's BatchNorm normalises every view in
        groups of whole sequences (set each step: the sequence length is the batch's).
        """
        if self.encoder_bn_groups > 1:
            set_split_batchnorm(self.network.encoder, self.encoder_bn_groups, unit=batch.sequence_length)
        return StepContext(batch, self.network, self.augmenter, self.builders, step, self.memory_format,
                           self.transforms, self.decoder_slices)

    def forward(self, batch: SequenceBatch, step: int):
        ctx = self.context(batch, step)
        losses: dict[str, torch.Tensor] = {}
        metrics: dict[str, torch.Tensor] = {}
        for name, task in self.tasks.items():
            with plugin_call("task", name, "forward", self.registry):
                out = task(ctx)
            out = checked_task_output(name, out, self.registry)
            losses[name] = out.loss
            for key, value in out.metrics.items():
                metrics[f"{name}/{key}"] = value.detach().float()
        total, weights = self.weighting(losses, step)
        stacked = torch.stack([losses[n].detach().float() for n in self.tasks])
        return total, stacked, weights, metrics


def _encoder_bn_groups(tasks: dict[str, PretextTask]) -> int:
    """The BatchNorm groups of the shared encoder the tasks ask for (1: none); tasks must agree."""
    asked = {name: int(task.encoder_bn_groups) for name, task in tasks.items() if int(task.encoder_bn_groups) > 1}
    if len(set(asked.values())) > 1:
        raise SsmtlError("tasks ask for different BatchNorm groups of the shared encoder: "
                         + ", ".join(f"{n} {g}" for n, g in asked.items()) + "; set them alike")
    return next(iter(asked.values()), 1)


def build_tasks(config: PretrainConfig, network: SharedNetwork, registry) -> dict[str, PretextTask]:
    tasks = {}
    for name, task_config in config.tasks.items():
        spec = registry.task(name)
        with plugin_call("task", name, "its factory (__init__)", registry):
            task = spec.factory(task_config, network.info)
        if not isinstance(task, PretextTask):
            raise refuse("task", name, "the factory", f"returned {type(task).__name__}, not a PretextTask", registry)
        with plugin_call("task", name, "setup", registry):
            task.setup(network)
        tasks[name] = task
    return tasks


def sequence_length(config: PretrainConfig, tasks: dict[str, PretextTask]) -> int:
    need = max(t.sequence_length for t in tasks.values())
    k = config.data.sequence_length or need
    if k < need:
        names = [n for n, t in tasks.items() if t.sequence_length > k]
        raise SsmtlError(f"data.sequence_length={k} is too short: task(s) {', '.join(names)} need {need} slices")
    return k


def build_pretrain_module(config: PretrainConfig, registry, flip_axes: tuple[int, ...] = ()) -> PretrainModule:
    """Network + tasks + weighting, with the decoder frozen when no task trains it; every random
    view mirrors only along ``flip_axes`` (the data's declaration, :mod:`ssmtl.data.laterality`)."""
    torch.manual_seed(config.seed)
    network = build_network(config.model, registry)
    tasks = build_tasks(config, network, registry)
    if not any("decoder" in t.trains for t in tasks.values()):
        # no loss reaches the decoder: freeze it so it stays at init and DDP has no unused params
        network.decoder.requires_grad_(False)
    names = list(tasks)
    weighting = build_weighting(
        config.weighting.scheme,
        names,
        {n: config.tasks[n].weight for n in names},
        {n: config.tasks[n].warmup_steps for n in names},
        temperature=config.weighting.temperature,
        window=None if config.weighting.window is None else config.weighting.window * config.train.grad_accum,
        normalise_steps=config.weighting.normalise_steps if config.weighting.normalise else None,
    )
    return PretrainModule(network, tasks, weighting, config.augment, config.train.decoder_slices, registry,
                          flip_axes=flip_axes)


def ddp_ignored_names(module: PretrainModule) -> list[str]:
    """What the tasks ask DDP not to broadcast (e.g. a large key queue), with their module paths."""
    return [f"tasks.{name}.{n}" for name, task in module.tasks.items() for n in task.ddp_ignored_names()]
