"""``ssmtl.api``: the one module a plugin imports.

Everything a task, dataset, head or network plugin needs is here, and nothing else in
``ssmtl`` is part of the plugin contract::

    from ssmtl.api import hookimpl, PretextTask, TaskConfig, TaskOutput, TaskSpec, StepContext

* **Hooks and specs**: :data:`hookimpl`, :class:`TaskSpec`, :class:`DatasetSpec`,
  :class:`HeadSpec` (what the ``ssmtl_register_*`` hooks return), :class:`DefaultsSpec`
  (what ``ssmtl_defaults`` returns).
* **Contracts**: :class:`PretextTask` / :class:`TaskConfig` / :class:`TaskOutput` /
  :class:`DataInfo` (tasks), :class:`StepContext` / :class:`View` /
  :class:`SequenceBatch` (the shared views and features of one step),
  :class:`DownstreamHead` / :class:`HeadConfig` (heads), :class:`DatasetConfig` /
  :class:`VolumeSource` / :class:`VolumeItem` / :class:`RawVolume` (datasets),
  :class:`NetworkInfo` / :class:`SharedNetwork` (the shared network, as plugins see it).
* **Errors**: :class:`SsmtlError` (one clear line, exit code 2), :class:`ConfigError`,
  :class:`InputFileError`.
* **Task toolkit**: :func:`info_nce`, :func:`multi_positive_info_nce`,
  :class:`KeyQueue`, :func:`concat_all_gather`, :func:`shuffle_bn_forward`, :func:`rank`,
  :func:`world_size`, :func:`global_pool`, :func:`apply_affine`, :func:`correspondence`.
* **Dataset toolkit**: file pairing, label mapping, grid checks, subject naming and the
  :class:`LabeledDatasetConfig` base (see :mod:`ssmtl.api.datasets`).

Names load on first use, so ``import ssmtl`` (and ``ssmtl --help``) stays fast; the
definitions live in the submodules of this package, which import nothing else from
``ssmtl``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ssmtl.api.hooks import hookimpl

# public name -> submodule of ssmtl.api that defines it
_WHERE: dict[str, str] = {
    # hooks and specs
    "hookspec": "hooks",
    "TaskSpec": "specs",
    "DatasetSpec": "specs",
    "HeadSpec": "specs",
    "DefaultsSpec": "specs",
    # errors
    "SsmtlError": "errors",
    "ConfigError": "errors",
    "InputFileError": "errors",
    # the shared network, as plugins see it
    "NetworkInfo": "network",
    "NetworkOutput": "network",
    "SharedNetwork": "network",
    "global_pool": "network",
    # tasks
    "TaskConfig": "tasks",
    "PretextTask": "tasks",
    "TaskOutput": "tasks",
    "DataInfo": "tasks",
    "StepContext": "views",
    "View": "views",
    "SequenceBatch": "views",
    "BUILTIN_VIEWS": "views",
    # heads
    "HeadConfig": "heads",
    "DownstreamHead": "heads",
    # datasets
    "DatasetConfig": "volumes",
    "Modality": "volumes",
    "RawVolume": "volumes",
    "VolumeItem": "volumes",
    "VolumeSource": "volumes",
    "SPLITS": "volumes",
    # dataset toolkit
    "to_slices": "datasets.arrays",
    "from_slices": "datasets.arrays",
    "check_finite": "datasets.arrays",
    # task toolkit
    "info_nce": "losses",
    "multi_positive_info_nce": "losses",
    "KeyQueue": "queue",
    "concat_all_gather": "distributed",
    "shuffle_bn_forward": "distributed",
    "rank": "distributed",
    "world_size": "distributed",
    "is_distributed": "distributed",
    "apply_affine": "geometry",
    "correspondence": "geometry",
}

__all__ = ["hookimpl", *_WHERE]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'ssmtl.api' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"ssmtl.api.{module}"), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # what static type checkers and IDEs see
    from ssmtl.api.distributed import concat_all_gather, is_distributed, rank, shuffle_bn_forward, world_size
    from ssmtl.api.errors import ConfigError, InputFileError, SsmtlError
    from ssmtl.api.geometry import apply_affine, correspondence
    from ssmtl.api.heads import DownstreamHead, HeadConfig
    from ssmtl.api.hooks import hookspec
    from ssmtl.api.losses import info_nce, multi_positive_info_nce
    from ssmtl.api.network import NetworkInfo, NetworkOutput, SharedNetwork, global_pool
    from ssmtl.api.queue import KeyQueue
    from ssmtl.api.specs import DatasetSpec, DefaultsSpec, HeadSpec, TaskSpec
    from ssmtl.api.tasks import DataInfo, PretextTask, TaskConfig, TaskOutput
    from ssmtl.api.views import BUILTIN_VIEWS, SequenceBatch, StepContext, View
    from ssmtl.api.volumes import SPLITS, DatasetConfig, Modality, RawVolume, VolumeItem, VolumeSource
    from ssmtl.api.datasets.arrays import check_finite, from_slices, to_slices
