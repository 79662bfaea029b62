"""Typed specs returned by the registration hooks.

Specs are small frozen dataclasses: the registry checks their types when a plugin
is loaded, so a plugin that returns something malformed is reported by name and
skipped instead of failing later in the middle of a run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from pydantic import BaseModel


@dataclass(frozen=True)
class TaskSpec:
    """A pretext task.

    Attributes:
        name: the task name used on the CLI (``--task NAME``) and in configs.
        config_model: a subclass of :class:`ssmtl.api.tasks.TaskConfig` whose
            ``name`` field is ``Literal[NAME]``.
        factory: ``factory(config, network_info) -> PretextTask``.
        description: one line shown by ``ssmtl tasks``.
    """

    name: str
    config_model: type[BaseModel]
    factory: Callable[..., Any]
    description: str = ""


@dataclass(frozen=True)
class DatasetSpec:
    """A volume source for ``ssmtl cache build``.

    Attributes:
        name: the value of ``--dataset``.
        config_model: a subclass of :class:`ssmtl.api.volumes.DatasetConfig`.
        factory: ``factory(config) -> VolumeSource``.
        description: one line shown by ``ssmtl plugins``.
    """

    name: str
    config_model: type[BaseModel]
    factory: Callable[..., Any]
    description: str = ""


@dataclass(frozen=True)
class HeadSpec:
    """A downstream head for ``ssmtl finetune``.

    Attributes:
        name: the head name (``--head NAME``).
        config_model: a subclass of :class:`ssmtl.api.heads.HeadConfig`.
        factory: ``factory(config, network_info, num_classes) -> DownstreamHead``.
        description: one line shown by ``ssmtl plugins``.
    """

    name: str
    config_model: type[BaseModel]
    factory: Callable[..., Any]
    description: str = ""


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
