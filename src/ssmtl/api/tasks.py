"""The pretext-task contract.

A task plugin provides a :class:`TaskConfig` subclass and a factory that builds a
:class:`PretextTask`. The engine calls ``task(ctx)`` once per step inside the
shared forward pass; the task asks the :class:`~ssmtl.api.views.StepContext` for
encoder or decoder features of named views (computed once and shared with every
other task that asks for the same view) and returns its loss. It owns its heads,
and everything it returns is trained by the engine's single backward pass.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, ClassVar

import torch
from torch import nn

from ssmtl.api.configs import TaskConfig

if TYPE_CHECKING:
    from ssmtl.api.network import NetworkInfo, SharedNetwork
    from ssmtl.api.views import StepContext, View


@dataclass(frozen=True)
class DataInfo:
    """What a task may need to know about the training data before the first step."""

    num_volumes: int
    num_slices: int  # slices the run samples from (after modality/split selection)
    sequence_length: int
    global_batch: int  # sequences per optimizer micro-step, all processes together
    total_steps: int | None = None  # optimizer steps of the whole run (None: unknown), e.g. for a momentum schedule


@dataclass
class TaskOutput:
    """A task's result for one step: the loss to weight, plus detached metrics to log."""

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


class PretextTask(nn.Module, ABC):
    """Base class of every pretext task.

    Class attributes:
        trains: which parts of the shared network the task's loss reaches
            (``{"encoder"}`` or ``{"encoder", "decoder"}``). The engine freezes the
            decoder when no enabled task trains it, so DDP never sees unused
            parameters.

    What a task needs from the engine, it declares (the engine never reads a task's
    config): ``trains`` above, ``sequence_length``, ``decodes_every_slice``,
    ``needs_sync_batchnorm`` and ``encoder_bn_groups`` below.
    """

    trains: ClassVar[frozenset[str]] = frozenset({"encoder"})

    def __init__(self, config: TaskConfig, network: "NetworkInfo"):
        super().__init__()
        self.config = config
        self.network_info = network

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def sequence_length(self) -> int:
        """The number of consecutive slices per sample this task needs (k)."""
        return 1

    def view_builders(self) -> dict[str, Callable[["StepContext"], "View"]]:
        """Extra named views this task defines (e.g. a masked input). Names must be unique."""
        return {}

    def view_transforms(self) -> dict[str, Callable[["StepContext", "View"], "View"]]:
        """Changes this task makes to an existing view *for every task*, by view name.

        Each callable receives the step context and the view as built (or as changed
        by an earlier task's transform, in task order) and returns the view every task
        then sees, e.g. ``reconstruct`` masks the shared ``sequence`` view so that one
        network pass serves all tasks. Keep the original pixels on the returned view if
        your loss needs them.
        """
        return {}

    @property
    def decodes_every_slice(self) -> bool:
        """True when the task needs decoder features of every slice of a sequence (e.g.
        to predict the middle slice from both neighbours); the engine then ignores
        ``train.decoder_slices="one"`` and says so."""
        return False

    @property
    def needs_sync_batchnorm(self) -> bool:
        """True when the task needs batch statistics shared across processes: with more
        than one process the engine then converts every BatchNorm of the shared network
        and of all tasks to ``SyncBatchNorm`` (e.g. ``contrastive`` with ``bn_mode="sync"``,
        MoCo's alternative to shuffle-BN). Default False."""
        return False

    @property
    def encoder_bn_groups(self) -> int:
        """The groups the shared encoder's BatchNorm layers normalise every view in (1, the default:
        the whole batch). More than 1: each view's rows are normalised in contiguous groups of
        whole sequences, at least 4 rows each (:func:`~ssmtl.api.ssl.split_bn_groups_in_units`), as
        that many processes would normalise their shares of the batch; e.g. ``contrastive`` with
        split BN, whose queries must be normalised among other samples than their keys. Tasks
        that ask must agree."""
        return 1

    def setup(self, network: "SharedNetwork") -> None:
        """Called once after the shared network is built, e.g. to copy a momentum encoder."""

    def on_data(self, info: DataInfo) -> list[str]:
        """Called once before training (and before a resume loads state) with the data size.

        Returns human-readable notes about adjustments the task made (printed once).
        """
        return []

    @abstractmethod
    def forward(self, ctx: "StepContext") -> TaskOutput:
        """Compute this step's loss from shared features (``ctx.encode`` / ``ctx.decode``)."""

    def after_optimizer_step(self, network: "SharedNetwork", step: int) -> None:
        """Called under ``no_grad`` on the unwrapped modules after every optimizer step."""

    def ddp_ignored_names(self) -> list[str]:
        """Names (relative to this module) of parameters/buffers DDP must not broadcast."""
        return []
