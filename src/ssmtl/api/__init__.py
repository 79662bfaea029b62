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
* **Task toolkit**: :func:`global_pool`, :func:`apply_affine`, :func:`correspondence`;
  the momentum-contrast kit (InfoNCE losses, the key queue, split and shuffle BatchNorm,
  momentum schedules, gathering across processes) is its own sub-package,
  :mod:`ssmtl.api.ssl`, beside :mod:`ssmtl.api.datasets`.
* **Dataset toolkit** (see :mod:`ssmtl.api.datasets`): finding files
  (:class:`FileKind`, :func:`walk_files`), pairing images with labels and naming
  subjects (:func:`pair_files`, :func:`unique_subjects`, nnU-Net's channel naming:
  :func:`channel_cases`, :func:`image_cases`), label mapping
  (:func:`map_labels`, :func:`collect_label_values`, :func:`class_name_table`),
  grid checks (:func:`spatial_shape`, :func:`check_same_grid`), reorientation
  (:func:`to_canonical`, :func:`lps_to_canonical`), :func:`detect_modality`, the
  :class:`LabeledDatasetConfig` / :class:`FolderDatasetConfig` bases, the
  :class:`ImageLabelItem` volume and :func:`folder_source`.

Names load on first use, so ``import ssmtl`` (and ``ssmtl --help``) stays fast. Each
public name is listed once, in ``__init__.pyi`` (what type checkers read, and what
:mod:`ssmtl.api._lazy` reads to know where a name lives); the definitions live in the
submodules of this package, which import nothing else from ``ssmtl``.
"""

from ssmtl.api._lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, __file__)
