"""The life of one training run, the same for pre-training and fine-tuning.

A wing (``pretraining/engine.py``, ``downstream/finetune.py``) says only what differs:
which module trains, on which batches, with which objective, and what the run leaves
behind. Everything around the loop happens here, once, in this order:

1. **Guard** (:meth:`TrainingRun.__enter__`): the run directory is watched
   (:func:`~ssmtl.training.rundir.run_directory`: a full disk is one error line, a run that
   fails before it trained removes the folder it created) and the Accelerator is made
   (precision, trackers writing under the run).
2. The wing checks its inputs and builds its module, optimizer and schedule: nothing is
   written while a plugin may still fail.
3. **Open** (:meth:`TrainingRun.open`): the run directory is created and locked, of the
   right kind; with ``--resume`` the newest checkpoint is verified (one checksum pass) and
   refused when the config changed what cannot change; ``config.json`` and the wing's
   other records (``split.json``) are written.
4. **Resume** (:meth:`TrainingRun.resume`): the data stream is opened at the step to
   resume from *before* the checkpoint restores the random-number state, exactly as an
   uninterrupted run opened it before its first step (whatever the stream draws when it
   opens, it draws alike in both), then model, optimizer, schedule and RNG are restored.
   The stream is a start/stop sampler (a batch is a function of its step), so there is no
   loader state to skip through.
5. **Train** (:meth:`TrainingRun.train`): the trackers start, and the one loop
   (:class:`~ssmtl.training.loop.TrainingLoop`) runs to the stop step, checkpointing.
6. **Finish** (:meth:`TrainingRun.finish`): the main process writes the run's outputs (the
   pre-training export, the fine-tuned weights and ``run.json``); every process waits.

The process group is left up at the end (no ``accelerator.end_training()``): a caller (the
benchmark, a notebook, a test under ``debug_launcher``) may run several trainings in it.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from ssmtl.storage.files import save_json
from ssmtl.training.accelerator import make_accelerator
from ssmtl.training.checkpointing import CheckpointInfo, check_resume
from ssmtl.training.loop import LoopConfig, LoopResult, TrainingLoop
from ssmtl.training.recorder import Recorder
from ssmtl.training.rundir import prepare_run_dir, run_directory

#: the file every run writes first: its resolved config
CONFIG_FILE = "config.json"


class TrainingRun:
    """``with TrainingRun(out, kind, what, policy, resume) as run:`` around one training run.

    Args:
        out: the run directory.
        kind: ``pretrain`` or ``finetune`` (the run marker; :data:`~ssmtl.training.rundir.KINDS`).
        what: how an error names the run (``"the pre-training run"``).
        policy: the ``train`` section (precision, trackers, checkpoint and log intervals).
        resume: continue ``out`` from its newest valid checkpoint.
        find_unused_parameters: some trainable parameters get no gradient in some steps
            (fine-tuning's LP-FT phase): DDP must look for them.
    """

    def __init__(self, out: Path, kind: str, what: str, policy: LoopConfig, *, resume: bool = False,
                 find_unused_parameters: bool = False):
        self.out, self.kind, self.what, self.policy, self.resume_asked = Path(out), kind, what, policy, resume
        self.find_unused_parameters = find_unused_parameters
        self.accelerator: Any = None
        self.recorder: Recorder | None = None
        self.found: CheckpointInfo | None = None
        self.start_step = 0
        self._config: dict[str, Any] = {}
        self._stack = contextlib.ExitStack()

    # -- 1. guard -------------------------------------------------------------------------
    def __enter__(self) -> "TrainingRun":
        self._stack.enter_context(run_directory(self.out, self.what))
        try:
            self.accelerator = make_accelerator(self.policy.mixed_precision, self.policy.log_with, self.out,
                                                find_unused_parameters=self.find_unused_parameters)
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc) -> bool | None:
        return self._stack.__exit__(*exc)

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    # -- 3. open ----------------------------------------------------------------------------
    def open(self, *, names: list[str], config: Mapping[str, Any], fingerprint: Mapping[str, Any],
             inputs: Iterable[tuple[str, Any]] = (), records: Mapping[str, Any] | None = None,
             notes: Iterable[str] = ()) -> Recorder:
        """Create and lock the run directory, find the checkpoint to resume from, write the records.

        Args:
            names: the loss components, in the order of the model's loss vector.
            config: the resolved config (``config.json``; the trackers' hyper-parameters).
            fingerprint: what a resumed run may not change (the config and the data's fingerprint).
            inputs: ``(flag, path)`` of every input: the run directory may not be, hold or lie in one.
            records: other JSON files of the run (``{"split.json": {...}}``), written with ``config.json``.
            notes: lines for stderr (``note: ...``), printed once the run directory exists.

        Returns:
            the run's :class:`~ssmtl.training.recorder.Recorder` (the wing may add checkpoint extras).
        """
        acc = self.accelerator
        if self.main:
            prepare_run_dir(self.out, resume=self.resume_asked, kind=self.kind, inputs=list(inputs))
        acc.wait_for_everyone()
        for note in notes:
            acc.print(f"note: {note}", file=sys.stderr)
        recorder = Recorder(acc, self.out, names, keep_checkpoints=self.policy.keep_checkpoints)
        recorder.config = dict(fingerprint)
        self.found = recorder.latest_checkpoint() if self.resume_asked else None
        check_resume(self.found, recorder.config, self.out)  # before config.json is rewritten
        self.start_step = self.found.step if self.found is not None else 0
        self._config = dict(config)
        if self.main:
            save_json(self.out / CONFIG_FILE, self._config)
            for name, record in (records or {}).items():
                save_json(self.out / name, record)
        acc.wait_for_everyone()
        self.recorder = recorder
        return recorder

    # -- 4. resume ----------------------------------------------------------------------------
    def resume(self, open_stream: Callable[[int], Iterator[Any]]) -> Iterator[Any]:
        """Open the data stream at :attr:`start_step`, then restore the checkpoint (if any).

        ``open_stream(step)`` returns the micro-batches from optimizer step ``step`` on.
        """
        batches = open_stream(self.start_step)
        self.recorder.load_checkpoint(self.found)
        return batches

    # -- 5. train -------------------------------------------------------------------------------
    def train(self, loop: TrainingLoop, batches: Iterator[Any], stop: int, *, slices_per_step: int, label: str,
              progress: bool = True, on_logged: Callable[[int], bool | None] | None = None) -> LoopResult:
        """Start the trackers and run ``loop`` from :attr:`start_step` to ``stop``."""
        self.recorder.start(self.start_step, project=self.kind, config=self._config)
        return loop.run(batches, self.start_step, stop, self.recorder, slices_per_step=slices_per_step,
                        label=label, progress=progress, on_logged=on_logged)

    # -- 6. finish --------------------------------------------------------------------------------
    def finish(self, write_outputs: Callable[[], None]) -> None:
        """The main process writes the run's outputs; every process waits for it."""
        if self.main:
            write_outputs()
        self.accelerator.wait_for_everyone()
