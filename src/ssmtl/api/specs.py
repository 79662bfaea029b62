"""Typed specs returned by the registration hooks.

Specs are small frozen dataclasses: the registry checks their types when a plugin
is loaded, so a plugin that returns something malformed is reported by name and
skipped instead of failing later in the middle of a run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from pydantic import BaseModel


@dataclass(frozen=True)
class PluginSpec:
    """What every registration spec holds: a name, a pydantic config model, a factory.

    ``Spec.of(ConfigModel, factory, "one line")`` takes the name from the config model's
    ``name`` default, so the two cannot disagree.
    """

    name: str
    config_model: type[BaseModel]
    factory: Callable[..., Any]
    description: str = ""

    @classmethod
    def of(cls, config_model: type[BaseModel], factory: Callable[..., Any], description: str = ""):
        field_ = config_model.model_fields.get("name")
        if field_ is None or not isinstance(field_.default, str):
            raise TypeError(f"{config_model.__name__} needs a `name` field whose default is the plugin name")
        return cls(name=field_.default, config_model=config_model, factory=factory, description=description)


@dataclass(frozen=True)
class TaskSpec(PluginSpec):
    """A pretext task.

    Attributes:
        name: the task name used on the CLI (``--task NAME``) and in configs.
        config_model: a subclass of :class:`ssmtl.api.configs.TaskConfig` whose
            ``name`` field is ``Literal[NAME]``.
        factory: ``factory(config, network_info) -> PretextTask`` (the task class itself will do).
        description: one line shown by ``ssmtl plugins``.
    """


@dataclass(frozen=True)
class DatasetSpec(PluginSpec):
    """A volume source for ``ssmtl cache build``, and optionally a reader of single scans for ``ssmtl predict``.

    Attributes:
        name: the value of ``--dataset``.
        config_model: a subclass of :class:`ssmtl.api.volumes.DatasetConfig`.
        factory: ``factory(config) -> VolumeSource``.
        description: one line shown by ``ssmtl plugins``.
        open_scan: ``open_scan(path) -> VolumeItem | None``: an unloaded item for one scan
            (a file, or a folder such as a DICOM series) this dataset reads, or None for a
            path it does not read (decided cheaply, by extension or a header peek). Its
            ``load()`` should report the :class:`~ssmtl.api.SourceGeometry` so predictions
            can be written in the scan's own grid. None: the dataset reads no single scans.
    """

    open_scan: Callable[[Any], Any] | None = None


@dataclass(frozen=True)
class HeadSpec(PluginSpec):
    """A downstream head for ``ssmtl finetune``.

    Attributes:
        name: the head name (``--head NAME``).
        config_model: a subclass of :class:`ssmtl.api.configs.HeadConfig`.
        factory: ``factory(config, network_info, num_classes) -> DownstreamHead`` (the head class itself will do).
        description: one line shown by ``ssmtl plugins``.
    """


@dataclass(frozen=True)
class NetworkSpec(PluginSpec):
    """A shared encoder-decoder for pre-training and fine-tuning (``--set model.name=NAME``).

    Attributes:
        name: the value of ``model.name`` in a run's config.
        config_model: a subclass of :class:`ssmtl.api.configs.NetworkConfig`.
        factory: ``factory(config) -> nn.Module`` keeping the
            :class:`~ssmtl.api.network.SharedNetwork` contract (``encoder``, ``decoder``,
            ``info``, ``config``, ``forward -> NetworkOutput``); the module's class itself will do.
        description: one line shown by ``ssmtl plugins``.
    """


@dataclass(frozen=True)
class DefaultsSpec:
    """What ssmtl does when the user names no pretext task, head, network or benchmark method.

    Core code never spells a plugin's name: it asks the registry, and the registry
    takes these names from the one plugin that provides them (the built-in
    ``ssmtl.plugins.defaults``). Every default can be overridden by the user.

    Attributes:
        tasks: the pretext tasks a pre-training run enables when no source
            (``--task``, a ``tasks`` table, ``SSMTL_TASKS``) names any.
        head: the downstream head of ``ssmtl finetune`` without ``--head``.
        task_sets: named task combinations that ``ssmtl benchmark --methods`` accepts
            by name (``multitask``, ``NAME=multitask:encoder``). The benchmark's
            default methods are ``scratch`` and then every set, in this order.
        baseline: the task set every benchmark method is also compared against,
            besides ``scratch`` (paired differences per seed); ``None``: only scratch.
        network: the shared network of a run whose config names none (``model.name``);
            also the network of exports written before networks were plugins (their
            manifest's ``model`` table has no ``name``).
    """

    tasks: tuple[str, ...] = ()
    head: str | None = None
    task_sets: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    baseline: str | None = None
    network: str | None = None


@dataclass
class PluginInfo:
    """What the registry knows about one loaded (or rejected) plugin."""

    name: str
    distribution: str
    version: str
    builtin: bool
    hooks: list[str] = field(default_factory=list)
    provides: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "builtin": self.builtin,
            "hooks": self.hooks,
            "provides": self.provides,
            "error": self.error,
        }
