"""One Accelerator setup for every training run (pre-training and fine-tuning)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ssmtl.training.trackers import check_trackers, logs_dir


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


def mps_available() -> bool:
    """Apple's GPU (Metal Performance Shaders) is there and usable by this torch build."""
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def accelerator_type() -> str:
    """The device a run trains on when nothing else says: ``cuda``, else ``mps``, else ``cpu``."""
    if torch.cuda.is_available():
        return "cuda"
    return "mps" if mps_available() else "cpu"


def make_accelerator(mixed_precision: str | None, log_with: Sequence[str] = (), run_dir: Path | None = None,
                     find_unused_parameters: bool = False):
    """An Accelerator on the GPU if there is one (CUDA, else Apple's MPS), else a CPU process group
    (gloo) when launched with several processes; ``mixed_precision`` None defers to ``accelerate launch``.

    DDP runs with ``find_unused_parameters=False``: every trainable parameter gets a
    gradient every step (tasks and heads promise it; the contract check tests it). A run
    that freezes part of its module for some steps only (fine-tuning's LP-FT) asks for
    ``find_unused_parameters=True``, so that DDP lets those parameters go without a gradient.

    The learning-rate schedule steps once per optimizer step, on every process count: the
    loop steps it itself (also on a skipped step, so the schedule stays a function of the
    step). Accelerate's default would step a prepared scheduler once per *process* per step,
    which on two GPUs ran the cosine to 0 halfway through the run.

    ``log_with``: experiment trackers (checked to be installed), writing under
    ``run_dir/logs`` (:mod:`ssmtl.training.trackers`).
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
        # without a GPU, Accelerate only forms a process group (gloo) when told it runs on CPU;
        # with Apple's GPU it picks MPS itself when not told to use the CPU
        cpu=accelerator_type() == "cpu",
        mixed_precision=mixed_precision,
        step_scheduler_with_optimizer=False,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters, broadcast_buffers=True)],
        **tracking,
    )
