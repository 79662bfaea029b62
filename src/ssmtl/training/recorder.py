"""What a training run leaves on disk while it runs: ``metrics.jsonl``, checkpoints, and what
people watch: experiment trackers and ``curves.png``.

One :class:`Recorder` per run owns them all (and is the one writer of ``metrics.jsonl``):

* **Metrics.** Per-step values stay on the device and are written at log intervals,
  one JSON line per step (``step``, ``loss``, ``lr``, ``slices_per_s`` and, per loss
  component, its ``loss``, ``weight`` and metrics), so logging costs no host-device
  sync per step. ``step`` counts optimizer steps done (the loss of the first step is
  ``step: 1``), as the console and the checkpoints count them. A skipped step
  (non-finite loss) gets its own line, in step order. On resume, lines of steps after
  the resumed step are dropped (they are recomputed), so the file never repeats a step. :meth:`log` adds a record of its own
  (e.g. a validation score) to the file.
* **Trackers.** When the Accelerator was made with ``log_with``
  (:mod:`ssmtl.training.trackers`), :meth:`start` starts them and every record written to
  ``metrics.jsonl`` goes to them too, flattened to scalars at the record's step;
  :meth:`finish` closes them and draws ``curves.png`` (:mod:`ssmtl.training.curves`).
* **Checkpoints.** ``accelerator.save_state`` into a hidden temporary directory, then
  :func:`ssmtl.training.checkpointing.finalize` (checksums, atomic rename); the newest
  ``keep`` are kept. :meth:`latest_checkpoint` finds the newest one that verifies and
  :meth:`load_checkpoint` restores it.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from ssmtl.api.errors import SsmtlError
from ssmtl.training import checkpointing as ckpt
from ssmtl.training import trackers
from ssmtl.storage.files import save_text
from ssmtl.training.curves import write_curves
from ssmtl.training.rundir import METRICS


@dataclass
class _Pending:
    step: int
    lr: float = 0.0
    losses: torch.Tensor | None = None  # (components,) detached; None for a skipped step
    weights: torch.Tensor | None = None
    metrics: dict[str, torch.Tensor] | None = None
    slices_per_s: float = 0.0
    nonfinite: tuple[str, ...] = ()


class Recorder:
    """``metrics.jsonl`` and checkpoints of one run directory (files written by the main process)."""

    def __init__(self, accelerator, run_dir: Path, names: list[str], *, keep_checkpoints: int):
        self.accelerator = accelerator
        self.main = accelerator.is_main_process
        self.run_dir = Path(run_dir)
        self.names = names
        self.keep = keep_checkpoints
        self.checkpoints = self.run_dir / "checkpoints"
        self.path = self.run_dir / METRICS
        self.pending: list[_Pending] = []
        self.last: dict[str, float] = {}
        #: ``extras(directory) -> state``: called on the main process while a checkpoint is
        #: assembled, to add files to it (checksummed with the rest) and JSON state to its manifest
        self.checkpoint_extras: Callable[[Path], dict[str, Any]] | None = None
        #: the run's resolved config, stored in every checkpoint so --resume can refuse changes
        self.config: dict[str, Any] | None = None
        if accelerator.num_processes > 1:
            self._reduce: Callable[[torch.Tensor], torch.Tensor] = lambda t: accelerator.reduce(t, reduction="mean")
        else:
            self._reduce = lambda t: t

    # -- metrics ----------------------------------------------------------------------
    def start(self, step: int, *, project: str = "run", config: Mapping[str, Any] | None = None) -> None:
        """A fresh ``metrics.jsonl`` at step 0; on resume, keep only the lines of the ``step`` steps
        done before (the losses, and the caller's records such as validation, made by then).
        Starts the trackers (``project``: their run name; ``config``: the hyper-parameters they record)."""
        if self.accelerator.log_with:
            names = [str(t) for t in self.accelerator.log_with]  # LoggerType values
            trackers.start_trackers(self.accelerator, names, self.run_dir, project, config or {})
        if not self.main:
            return
        if step == 0:
            self.path.unlink(missing_ok=True)
            return
        kept = []
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    record = json.loads(line)
                    if record.get("step", step + 1) <= step:
                        kept.append(line)
                except (json.JSONDecodeError, AttributeError):
                    continue  # a line cut by the kill
        save_text(self.path, "".join(line + "\n" for line in kept))

    def add(self, step: int, lr: float, losses: torch.Tensor, weights: torch.Tensor,
            metrics: dict[str, torch.Tensor], slices_per_s: float) -> None:
        self.pending.append(_Pending(step, lr, losses, weights, metrics, slices_per_s))

    def skipped(self, step: int, nonfinite: list[str]) -> None:
        self.pending.append(_Pending(step, nonfinite=tuple(nonfinite)))

    def flush(self) -> list[dict[str, Any]]:
        """Write the pending steps (values averaged over processes); returns their records."""
        done = [p for p in self.pending if p.losses is not None]
        records: dict[int, dict[str, Any]] = {}
        if done:
            losses = self._reduce(torch.stack([p.losses for p in done])).tolist()
            weights = torch.stack([p.weights for p in done]).tolist()
            keys = sorted(done[-1].metrics)
            values = (self._reduce(torch.stack([torch.stack([p.metrics[k] for k in keys]) for p in done])).tolist()
                      if keys else [[] for _ in done])
            for i, p in enumerate(done):
                parts = {n: {"loss": losses[i][j], "weight": weights[i][j]} for j, n in enumerate(self.names)}
                for key, value in zip(keys, values[i]):
                    part, metric = key.split("/", 1)
                    parts.setdefault(part, {})[metric] = value
                total = sum(parts[n]["loss"] * parts[n]["weight"] for n in self.names)
                records[id(p)] = {"step": p.step, "loss": total, "lr": p.lr, "slices_per_s": p.slices_per_s, "tasks": parts}
            last = records[id(done[-1])]
            self.last = {n: last["tasks"][n]["loss"] for n in self.names}
            self.last["loss"] = last["loss"]
        ordered = [records.get(id(p)) or {"step": p.step, "skipped": True, "nonfinite": list(p.nonfinite)} for p in self.pending]
        self._write(ordered)
        self.pending.clear()
        return ordered

    def log(self, record: Mapping[str, Any]) -> None:
        """Add one record of the caller's (``{"step": ..., "val_dice": ...}``) to ``metrics.jsonl``
        and the trackers, after the pending steps. Call it on every process, as :meth:`flush`
        (averaging the pending steps over processes is a collective)."""
        self.flush()
        self._write([dict(record)])

    def _write(self, records: list[dict[str, Any]]) -> None:
        if not self.main or not records:
            return
        with open(self.path, "a") as f:
            f.write("".join(json.dumps(r) + "\n" for r in records))
        if self.accelerator.trackers:
            for record in records:
                if not record.get("skipped"):
                    self.accelerator.log(trackers.scalars(record), step=record["step"])

    def finish(self, completed: bool = True) -> None:
        """Close the trackers; after a completed run, draw ``curves.png`` from ``metrics.jsonl``."""
        trackers.finish_trackers(self.accelerator)
        if completed and self.main:
            write_curves(self.run_dir)

    # -- checkpoints ------------------------------------------------------------------
    def save_checkpoint(self, step: int, state: dict[str, Any] | None = None) -> Path:
        """Every process saves its state into one temporary directory; the main process publishes it.

        The pending metrics are written first, so a run resumed from this checkpoint finds every
        step before it in ``metrics.jsonl``."""
        acc = self.accelerator
        self.flush()
        tmp, final = ckpt.temporary_dir(self.checkpoints, step), ckpt.checkpoint_dir(self.checkpoints, step)
        try:
            if self.main:
                tmp.mkdir(parents=True, exist_ok=True)
            acc.wait_for_everyone()
            acc.save_state(str(tmp))
            acc.wait_for_everyone()
            if self.main:
                extras = self.checkpoint_extras(tmp) if self.checkpoint_extras is not None else {}
                config = {"config": self.config} if self.config is not None else {}
                ckpt.finalize(tmp, final, {"step": step, **(state or {}), **extras, **config})
                ckpt.prune(self.checkpoints, self.keep)
        except BaseException:
            if self.main:  # e.g. a full disk: the staging folder goes, the last good checkpoint stays
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        acc.wait_for_everyone()
        return final

    def latest_checkpoint(self) -> ckpt.CheckpointInfo | None:
        """The newest checkpoint that verifies (each damaged one is reported and skipped)."""
        acc = self.accelerator
        found = ckpt.latest_valid(self.checkpoints, warn=lambda m: acc.print(f"warning: {m}", file=sys.stderr))
        if found is None:
            acc.print("no valid checkpoint found; starting from step 0", file=sys.stderr)
        return found

    def load_checkpoint(self, found: ckpt.CheckpointInfo | None) -> int:
        """Restore model, optimizer, scheduler and RNG states from ``found``; the step to resume at."""
        if found is None:
            return 0
        acc = self.accelerator
        try:
            rng = found.path / f"random_states_{acc.process_index}.pkl"
            if rng.is_file():
                ckpt.check_rng_state(rng)
            acc.load_state(str(found.path))
        except Exception as exc:  # a checkpoint that verified its checksums yet cannot be loaded was edited
            raise SsmtlError(f"{found.path}: cannot resume from this checkpoint: {ckpt.scrub(exc)} (its files match "
                             "checkpoint.json, so they were replaced, not damaged by a crash)") from None
        self.accelerator.print(f"resuming from {found.path} at step {found.step}", file=sys.stderr)
        return found.step
