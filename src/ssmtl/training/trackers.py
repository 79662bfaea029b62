"""Experiment trackers (``train.log_with`` / ``--log-with``): TensorBoard, Weights & Biases,
MLflow and Aim, through Accelerate's trackers.

The :class:`~ssmtl.training.recorder.Recorder` stays the one place that logs: every record it
writes to ``metrics.jsonl`` also goes to the trackers, flattened to scalars
(``loss``, ``lr``, ``contrastive/loss``, ``contrastive/acc``, ``val_dice``, ...), at the
record's step. Everything stays on the machine unless the user says otherwise:

* every tracker writes under ``RUN_DIR/logs/`` (TensorBoard event files in
  ``logs/<pretrain|finetune>/``, the Aim repository in ``logs/``);
* Weights & Biases runs in offline mode (``WANDB_MODE=online`` in the environment, or
  ``wandb sync RUN_DIR/logs/wandb/...`` later, uploads);
* MLflow writes a file store under ``logs/mlruns`` unless ``MLFLOW_TRACKING_URI`` names
  a server.

The tracker packages are optional extras (``pip install 'ssmtl[tensorboard]'``); asking
for one that is not installed is one clear error before any work.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping

from ssmtl.api.errors import SsmtlError

Tracker = Literal["tensorboard", "wandb", "mlflow", "aim"]
TRACKERS: tuple[str, ...] = ("tensorboard", "wandb", "mlflow", "aim")
LOGS_DIR = "logs"


def _available(name: str) -> bool:
    """What Accelerate itself will accept (it silently drops a tracker it cannot import)."""
    from accelerate import utils

    return {
        "tensorboard": utils.is_tensorboard_available,
        "wandb": utils.is_wandb_available,
        "mlflow": utils.is_mlflow_available,
        "aim": utils.is_aim_available,
    }[name]()


def check_trackers(names: Iterable[str]) -> list[str]:
    """The requested trackers, each installed; otherwise one error naming the extra to install."""
    names = list(dict.fromkeys(names))
    for name in names:
        if name not in TRACKERS:
            raise SsmtlError(f"--log-with {name}: unknown tracker; use one of {', '.join(TRACKERS)}")
        if not _available(name):
            raise SsmtlError(f"--log-with {name} needs the {name} package: pip install 'ssmtl[{name}]'")
    return names


def logs_dir(run_dir: Path) -> Path:
    return Path(run_dir) / LOGS_DIR


def _init_kwargs(names: list[str], run_dir: Path) -> dict[str, dict[str, Any]]:
    """Per-tracker arguments that keep every tracker local (offline) unless the environment says otherwise."""
    kwargs: dict[str, dict[str, Any]] = {}
    if "wandb" in names:
        kwargs["wandb"] = {"dir": str(logs_dir(run_dir))}
        if "WANDB_MODE" not in os.environ:
            kwargs["wandb"]["mode"] = "offline"
    return kwargs


def start_trackers(accelerator, names: list[str], run_dir: Path, project: str, config: Mapping[str, Any]) -> None:
    """``accelerator.init_trackers`` (main process) with the flattened run config as hyper-parameters."""
    if not names or not accelerator.is_main_process:
        return
    logs_dir(run_dir).mkdir(parents=True, exist_ok=True)
    if "mlflow" in names and "MLFLOW_TRACKING_URI" not in os.environ:
        import mlflow

        mlflow.set_tracking_uri((logs_dir(run_dir) / "mlruns").resolve().as_uri())
    accelerator.init_trackers(project, config=hyperparameters(config), init_kwargs=_init_kwargs(names, run_dir))


def finish_trackers(accelerator) -> None:
    """Flush and close every tracker (not ``accelerator.end_training``, which would also
    destroy the process group a caller may still use)."""
    if not accelerator.is_main_process:
        return
    for tracker in accelerator.trackers:
        tracker.finish()
    accelerator.trackers.clear()


def hyperparameters(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{"train.lr": 0.001, ...}`` of str/int/float/bool values: what every
    tracker accepts as hyper-parameters (lists and None become text)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(hyperparameters(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


def scalars(record: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """A metrics.jsonl record as ``{"loss": ..., "contrastive/loss": ..., "val_dice": ...}``: every
    finite number but the step; nested tables join their keys with ``/``, and the per-task
    table's entries go in under the task's name alone."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if key == "step" and not prefix:
            continue
        if isinstance(value, Mapping):
            out.update(scalars(value, "" if key == "tasks" and not prefix else f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[f"{prefix}{key}"] = float(value)
    return out
