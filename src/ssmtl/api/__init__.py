"""``ssmtl.api``: the one module a plugin imports.

Everything a task, dataset, head or network plugin needs is here, and nothing else in
``ssmtl`` is part of the plugin contract::

    from ssmtl.api import hookimpl, PretextTask, TaskConfig, TaskOutput, TaskSpec, StepContext

* **Hooks and specs**: :data:`hookimpl`, :class:`TaskSpec`, :class:`DatasetSpec`,
  :class:`HeadSpec`, :class:`NetworkSpec` (what the ``ssmtl_register_*`` hooks return),
  :class:`DefaultsSpec` (what ``ssmtl_defaults`` returns).
* **Contracts**: :class:`PretextTask` / :class:`TaskConfig` / :class:`TaskOutput` /
  :class:`DataInfo` (tasks), :class:`StepContext` / :class:`View` /
  :class:`SequenceBatch` (the shared views and features of one step),
  :class:`DownstreamHead` / :class:`HeadConfig` (heads), :class:`DatasetConfig` /
  :class:`VolumeSource` / :class:`VolumeItem` / :class:`RawVolume` /
  :class:`SourceGeometry` (datasets),
  :class:`NetworkInfo` / :class:`SharedNetwork` (the shared network, as plugins see it),
  :class:`NetworkConfig` / :class:`NetworkOutput` / :class:`NativeClass` (networks).
* **Errors**: :class:`SsmtlError` (one clear line, exit code 2), :class:`ConfigError`,
  :class:`InputFileError`.
* **Task toolkit**: :func:`info_nce`, :func:`multi_positive_info_nce`,
  :class:`KeyQueue`, :func:`concat_all_gather`, :func:`shuffle_bn_forward`,
  :func:`split_bn_forward` (split BatchNorm in one process), :func:`ema_momentum` /
  :func:`initial_weight_share` (momentum-encoder schedules), :func:`rank`,
  :func:`world_size`, :func:`global_pool`, :func:`apply_affine`, :func:`correspondence`.
* **Dataset toolkit** (see :mod:`ssmtl.api.datasets`): finding files
  (:class:`FileKind`, :func:`walk_files`), pairing images with labels and naming
  subjects (:func:`pair_files`, :func:`unique_subjects`, nnU-Net's channel naming:
  :func:`channel_cases`, :func:`image_cases`), label mapping
  (:func:`map_labels`, :func:`collect_label_values`, :func:`class_name_table`),
  grid checks (:func:`spatial_shape`, :func:`check_same_grid`), reorientation
  (:func:`to_canonical`, :func:`lps_to_canonical`), :func:`detect_modality`, the
  :class:`LabeledDatasetConfig` / :class:`FolderDatasetConfig` bases, the
  :class:`ImageLabelItem` volume and :func:`folder_source`.

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
    "NetworkSpec": "specs",
    "DefaultsSpec": "specs",
    # errors
    "SsmtlError": "errors",
    "ConfigError": "errors",
    "InputFileError": "errors",
    # the rules every config shares
    "CONFIG_RULES": "rules",
    "Seed": "rules",
    "AbsolutePath": "rules",
    "MAX_SEED": "rules",
    # the shared network, as plugins see it
    "NetworkInfo": "network",
    "NetworkOutput": "network",
    "SharedNetwork": "network",
    "NetworkConfig": "network",
    "NativeClass": "network",
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
    "SourceGeometry": "volumes",
    "VolumeItem": "volumes",
    "VolumeSource": "volumes",
    "SPLITS": "volumes",
    # dataset toolkit
    "to_slices": "datasets.arrays",
    "from_slices": "datasets.arrays",
    "check_finite": "datasets.arrays",
    "check_claimed_size": "datasets.limits",
    "max_voxels": "datasets.limits",
    "MAX_VOXELS_ENV": "datasets.limits",
    "DEFAULT_MAX_VOXELS": "datasets.limits",
    "is_hidden": "datasets.files",
    "check_directory": "datasets.files",
    "walk_files": "datasets.files",
    "FileKind": "datasets.files",
    "LABEL_SUFFIX": "datasets.pairing",
    "IMAGE_SUFFIX": "datasets.pairing",
    "CHANNEL_SUFFIX": "datasets.pairing",
    "split_channel": "datasets.pairing",
    "channel_cases": "datasets.pairing",
    "image_cases": "datasets.pairing",
    "subject_name": "datasets.pairing",
    "image_key": "datasets.pairing",
    "label_key": "datasets.pairing",
    "LabelIndex": "datasets.pairing",
    "split_same_folder": "datasets.pairing",
    "pair_files": "datasets.pairing",
    "unique_subjects": "datasets.pairing",
    "MAX_CLASSES": "datasets.labels",
    "LabelReader": "datasets.labels",
    "check_label_values": "datasets.labels",
    "check_class_names": "datasets.labels",
    "class_name_table": "datasets.labels",
    "integer_labels": "datasets.labels",
    "collect_label_values": "datasets.labels",
    "map_labels": "datasets.labels",
    "AFFINE_TOLERANCE_MM": "datasets.grids",
    "spatial_shape": "datasets.grids",
    "check_same_grid": "datasets.grids",
    "LPS_TO_RAS": "datasets.orientation",
    "affine_from_geometry": "datasets.orientation",
    "check_affine": "datasets.orientation",
    "to_canonical": "datasets.orientation",
    "lps_to_canonical": "datasets.orientation",
    "detect_modality": "datasets.modality",
    "CT_DETECTION_PERCENTILE": "datasets.modality",
    "CT_DETECTION_THRESHOLD": "datasets.modality",
    "LabeledDatasetConfig": "datasets.config",
    "FolderDatasetConfig": "datasets.config",
    "ImageLabelItem": "datasets.sources",
    "folder_source": "datasets.sources",
    # task toolkit
    "info_nce": "losses",
    "multi_positive_info_nce": "losses",
    "KeyQueue": "queue",
    "concat_all_gather": "distributed",
    "shuffle_bn_forward": "distributed",
    "rank": "distributed",
    "world_size": "distributed",
    "is_distributed": "distributed",
    "split_bn_forward": "split_batchnorm",
    "split_bn_groups": "split_batchnorm",
    "split_batchnorm": "split_batchnorm",
    "batchnorm_layers": "split_batchnorm",
    "MIN_SPLIT_BN_GROUP": "split_batchnorm",
    "ema_momentum": "momentum",
    "initial_weight_share": "momentum",
    "MomentumSchedule": "momentum",
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
    from ssmtl.api.rules import CONFIG_RULES, MAX_SEED, AbsolutePath, Seed
    from ssmtl.api.geometry import apply_affine, correspondence
    from ssmtl.api.heads import DownstreamHead, HeadConfig
    from ssmtl.api.hooks import hookspec
    from ssmtl.api.losses import info_nce, multi_positive_info_nce
    from ssmtl.api.network import NativeClass, NetworkConfig, NetworkInfo, NetworkOutput, SharedNetwork, global_pool
    from ssmtl.api.momentum import MomentumSchedule, ema_momentum, initial_weight_share
    from ssmtl.api.queue import KeyQueue
    from ssmtl.api.split_batchnorm import (
        MIN_SPLIT_BN_GROUP,
        batchnorm_layers,
        split_batchnorm,
        split_bn_forward,
        split_bn_groups,
    )
    from ssmtl.api.specs import DatasetSpec, DefaultsSpec, HeadSpec, NetworkSpec, TaskSpec
    from ssmtl.api.tasks import DataInfo, PretextTask, TaskConfig, TaskOutput
    from ssmtl.api.views import BUILTIN_VIEWS, SequenceBatch, StepContext, View
    from ssmtl.api.volumes import SPLITS, DatasetConfig, Modality, RawVolume, SourceGeometry, VolumeItem, VolumeSource
    from ssmtl.api.datasets.arrays import check_finite, from_slices, to_slices
    from ssmtl.api.datasets.limits import DEFAULT_MAX_VOXELS, MAX_VOXELS_ENV, check_claimed_size, max_voxels
    from ssmtl.api.datasets.config import FolderDatasetConfig, LabeledDatasetConfig
    from ssmtl.api.datasets.files import FileKind, check_directory, is_hidden, walk_files
    from ssmtl.api.datasets.grids import AFFINE_TOLERANCE_MM, check_same_grid, spatial_shape
    from ssmtl.api.datasets.labels import (
        MAX_CLASSES,
        LabelReader,
        check_class_names,
        check_label_values,
        class_name_table,
        collect_label_values,
        integer_labels,
        map_labels,
    )
    from ssmtl.api.datasets.modality import CT_DETECTION_PERCENTILE, CT_DETECTION_THRESHOLD, detect_modality
    from ssmtl.api.datasets.orientation import (
        LPS_TO_RAS,
        affine_from_geometry,
        check_affine,
        lps_to_canonical,
        to_canonical,
    )
    from ssmtl.api.datasets.pairing import (
        CHANNEL_SUFFIX,
        IMAGE_SUFFIX,
        LABEL_SUFFIX,
        LabelIndex,
        channel_cases,
        image_cases,
        image_key,
        label_key,
        pair_files,
        split_channel,
        split_same_folder,
        subject_name,
        unique_subjects,
    )
    from ssmtl.api.datasets.sources import ImageLabelItem, folder_source
