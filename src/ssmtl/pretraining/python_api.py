"""``ssmtl.pretrain(...)``: pre-training from Python, the same code ``ssmtl pretrain`` runs.

The config is resolved from the same sources as on the command line, lowest to highest:
defaults, ``config`` (a TOML/YAML/JSON file), ``SSMTL_*`` environment variables, the
keyword arguments, then ``settings`` (any field, as ``--set`` reaches it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ssmtl.host import registry as plugin_registry
from ssmtl.host.registry import Registry
from ssmtl.pretraining.config import resolve_pretrain_config
from ssmtl.pretraining.engine import PretrainResult, run_pretraining
from ssmtl.settings.sources import as_set_flags


def pretrain(
    data: str | Path | list[str | Path] | None = None,
    out: str | Path | None = None,
    *,
    tasks: Sequence[str] | None = None,
    steps: int | None = None,
    batch_size: int | None = None,
    seed: int | None = None,
    log_with: Sequence[str] | None = None,
    config: str | Path | None = None,
    settings: Mapping[str, Any] | Iterable[str] | None = None,
    resume: bool = False,
    progress: bool = True,
    registry: Registry | None = None,
) -> PretrainResult:
    """Pre-train the shared network on the slice cache ``data`` with several pretext tasks at
    once; the run directory ``out`` gets config.json, metrics.jsonl, curves.png, checkpoints
    and ``export/``.

    Args:
        data: an HDF5 slice cache (``ssmtl cache build``), a folder of caches, or a list of
            them: several caches train as one dataset (``data.weights`` in ``settings`` weights them).
        out: the run directory (new or empty, unless ``resume``).
        tasks: pretext task names (``["contrastive", "order"]``; ``"NAME:WEIGHT"`` sets a
            weight); default: the plugins' default tasks.
        steps, batch_size, seed: ``train.steps``, ``train.batch_size``, ``seed``.
        log_with: experiment trackers (``["tensorboard"]``), see ``train.log_with``.
        config: a TOML, YAML or JSON config file.
        settings: any other field, ``{"model.base_channels": 8, "tasks.order.num_slices": 4}``
            (or ``--set``-style ``["model.base_channels=8"]``).
        resume: continue ``out`` from its last valid checkpoint.
        progress: show the progress bar.
        registry: the plugins (tasks, networks) to resolve and build with (default: the
            installed ones, as the command line loads them).

    Returns:
        a :class:`~ssmtl.pretraining.engine.PretrainResult` (``run_dir``, ``steps``, ``seconds``,
        ``final_losses``).

    Raises:
        ConfigError: a bad setting (one row per problem), before any training.
        SsmtlError: a bad input (cache, run directory), before any training; a run stopped by
            non-finite losses.
    """
    registry = registry or plugin_registry.get_registry()
    flags = {"data.path": list(data) if isinstance(data, (list, tuple)) else data, "out": out, "train.steps": steps, "train.batch_size": batch_size, "seed": seed,
             "train.log_with": list(log_with) if log_with else None}
    run_config = resolve_pretrain_config(file=config, flags=flags, tasks=list(tasks) if tasks else None,
                                    sets=as_set_flags(settings), registry=registry)
    return run_pretraining(run_config, registry, resume=resume, progress=progress)
