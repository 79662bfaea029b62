"""The one training loop: pre-training and fine-tuning both run through it.

Per optimizer step: the model's forward on every micro-batch (inside the
Accelerator's autocast), one backward each, then the **non-finite policy**, gradient
clipping, the optimizer and scheduler step, and the caller's post-step hook (e.g.
MoCo's momentum update). Around the steps: logging through the run's
:class:`~ssmtl.training.recorder.Recorder`, periodic atomic checkpoints, and the progress
display. What differs between pre-training and fine-tuning is only the model (what its
forward computes) and the batches; the mechanics and policies are the same:

* **Non-finite policy.** A step whose loss is NaN or infinite on any process makes no
  update on every process (all take the same branch after one host sync per step); the
  culprit components are logged and named in a warning, and ``max_nonfinite_steps``
  consecutive such steps stop the run with a clear error.
* **Gradient clipping** of the global norm when ``grad_clip`` is set.
* **Checkpoints** every ``checkpoint_every`` steps and at the end, so ``--resume``
  continues exactly where a killed run stopped (the batches are a function of the
  step, and the RNG states are part of the checkpoint).
* **What people watch**: the recorder's trackers (``log_with``) are closed when the run
  ends, however it ends, and a completed run draws ``curves.png``.

The model's ``forward(batch, step)`` returns a :class:`StepLosses`-like 4-tuple:
``(total, losses (components,), weights (components,), metrics {"component/name": value})``.
"""

from __future__ import annotations

import math
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

from ssmtl.api.errors import SsmtlError
from ssmtl.training.progress import Progress
from ssmtl.training.recorder import Recorder
from ssmtl.training.loop_config import LoopConfig


@dataclass
class StepOutcome:
    lr: float  # the (first parameter group's) learning rate this step used
    losses: torch.Tensor  # (components,) detached, on the device
    weights: torch.Tensor  # (components,) effective weights
    metrics: dict[str, torch.Tensor]
    skipped: bool  # a non-finite loss on some process: no update was made
    nonfinite: list[str]  # the components that were not finite on this process


@dataclass
class LoopResult:
    steps: int  # the last step done
    seconds: float
    last: dict[str, float]  # the last logged value of each component, and "loss"


class TrainingLoop:
    """One optimizer step (:meth:`step`) and the run around it (:meth:`run`).

    ``model``, ``optimizer`` and ``scheduler`` are already ``accelerator.prepare``d;
    ``names`` are the loss components in the order of the model's ``losses`` vector;
    ``after_step(step)`` runs under ``no_grad`` after every optimizer step that was made.
    """

    def __init__(self, accelerator, model, optimizer, scheduler, policy: LoopConfig, names: list[str],
                 after_step: Callable[[int], None] | None = None):
        self.accelerator = accelerator
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.policy = policy
        self.names = names
        self.after_step = after_step

    def step(self, batches: list[Any], step: int) -> StepOutcome:
        acc, model = self.accelerator, self.model
        lr = self.scheduler.get_last_lr()[0]  # before the scheduler steps: the rate this step uses
        model.train()
        for micro, batch in enumerate(batches):
            last = micro == len(batches) - 1
            with (acc.no_sync(model) if not last and acc.num_processes > 1 else nullcontext()):
                with acc.autocast():
                    total, losses, weights, metrics = model(batch, step)
                acc.backward(total / len(batches))
        finite = torch.isfinite(total.detach()).float()
        if acc.num_processes > 1:
            finite = acc.reduce(finite, reduction="min")
        if finite.item() < 1:  # the one host sync per step; every process takes the same branch
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
            bad = [n for n, v in zip(self.names, losses.tolist()) if not math.isfinite(v)]
            return StepOutcome(lr, losses, weights, metrics, True, bad)
        if self.policy.grad_clip is not None:
            acc.clip_grad_norm_(model.parameters(), self.policy.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.after_step is not None:
            with torch.no_grad():
                self.after_step(step)
        return StepOutcome(lr, losses, weights, metrics, False, [])

    def _culprit(self, outcome: StepOutcome) -> str:
        if outcome.nonfinite:
            return ", ".join(outcome.nonfinite)
        if self.accelerator.num_processes > 1:
            return "another process"
        return "the weighted sum of the losses"

    def run(self, batches: Iterator[Any], start_step: int, stop: int, recorder: Recorder, *, slices_per_step: int,
            label: str, progress: bool = True, on_logged: Callable[[int], bool | None] | None = None) -> LoopResult:
        """Optimizer steps ``start_step + 1`` .. ``stop`` (counted as steps done: one counter for the
        console, ``metrics.jsonl``, the trackers and the checkpoints); ``batches`` yields
        micro-batches on the device.

        ``on_logged(done)`` runs on every process after each logging interval (e.g. validation);
        when it returns True (on every process alike) the run stops there, with a checkpoint.
        """
        acc, policy = self.accelerator, self.policy
        bar = Progress(progress and acc.is_main_process, label, stop, start_step, self.names)
        nonfinite_run = skipped = 0
        allowed = policy.max_skipped_share * (stop - start_step)  # skips this run can take
        last = stop
        t_start = t_last = time.perf_counter()
        completed = False
        try:
            for step in range(start_step, stop):
                done = step + 1
                outcome = self.step([next(batches) for _ in range(policy.grad_accum)], step)
                if outcome.skipped:
                    nonfinite_run += 1
                    culprit = self._culprit(outcome)
                    acc.print(f"warning: step {done}: non-finite loss from {culprit}; step skipped", file=sys.stderr)
                    recorder.skipped(done, outcome.nonfinite)
                    skipped += 1
                    if skipped > allowed:
                        recorder.flush()
                        raise SsmtlError(
                            f"stopping: {skipped} of the run's {stop - start_step} steps were skipped for a "
                            f"non-finite loss (last from {culprit}), more than train.max_skipped_share="
                            f"{policy.max_skipped_share:g}; the weights are not trained as asked and are not exported. "
                            "Lower the learning rate, enable gradient clipping, or check the data and the --init weights"
                        )
                    if nonfinite_run >= policy.max_nonfinite_steps:
                        recorder.flush()
                        raise SsmtlError(
                            f"stopping: {nonfinite_run} consecutive steps had a non-finite loss (last from {culprit}); "
                            "lower the learning rate, enable gradient clipping, or check the data"
                        )
                    continue
                nonfinite_run = 0
                now = time.perf_counter()
                recorder.add(done, outcome.lr, outcome.losses, outcome.weights, outcome.metrics,
                             slices_per_step / max(now - t_last, 1e-9))
                t_last = now
                if done % policy.log_every == 0 or done == stop:
                    recorder.flush()
                    bar.update(done, recorder.last, slices_per_step * (done - start_step) / max(now - t_start, 1e-9))
                    if on_logged is not None and on_logged(done):
                        last = done
                        break
                if done % policy.checkpoint_every == 0 and done < stop:
                    recorder.save_checkpoint(done)
            recorder.flush()
            recorder.save_checkpoint(last)
            completed = True
        finally:
            bar.close()
            recorder.finish(completed)
        return LoopResult(steps=last, seconds=time.perf_counter() - t_start, last=dict(recorder.last))
