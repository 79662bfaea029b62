"""One Accelerator setup for every training run (pre-training and fine-tuning)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ssmtl.core.trackers import check_trackers, logs_dir


def allow_precision(precision: str | None) -> None:
    """Let a new Accelerator in this process use ``precision``.

    Accelerate keeps one process-wide state and refuses a second Accelerator with a
    different precision; a process that runs several trainings (a notebook, the
    benchmark, a test session) resets that part of it. The distributed part
    (process group, ranks) is kept.
    """
    from accelerate.state import AcceleratorState

    current = AcceleratorState._shared_state.get("_mixed_precision") if AcceleratorState._shared_state else None
    if precision is not None and current is not None and getattr(current, "value", current) != precision:
        AcceleratorState._reset_state(reset_partial_state=False)


def make_accelerator(mixed_precision: str | None, log_with: Sequence[str] = (), run_dir: Path | None = None):
    """An Accelerator on the GPU if there is one, else a CPU process group (gloo) when
    launched with several processes; ``mixed_precision`` None defers to ``accelerate launch``.

    DDP runs with ``find_unused_parameters=False``: every trainable parameter gets a
    gradient every step (tasks and heads promise it; the contract check tests it).

    ``log_with``: experiment trackers (checked to be installed), writing under
    ``run_dir/logs`` (:mod:`ssmtl.core.trackers`).
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

    allow_precision(mixed_precision)
    tracking = {}
    if log_with:
        tracking = {
            "log_with": check_trackers(log_with),
            "project_config": ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(logs_dir(run_dir))),
        }
    return Accelerator(
        # without a GPU, Accelerate only forms a process group (gloo) when told it runs on CPU
        cpu=not torch.cuda.is_available(),
        mixed_precision=mixed_precision,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False, broadcast_buffers=True)],
        **tracking,
    )
