"""Small helpers shared by the training tests (tiny, fast settings)."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

TINY = [
    "--set", "model.base_channels=4",
    "--set", "model.depth=2",
    "--set", "tasks.contrastive.queue_size=64",
]

ALL_TASKS = ["contrastive", "order", "reconstruct", "neighbor", "position", "local-contrastive"]


def tiny_sets(tasks: list[str]) -> list[str]:
    """``--set`` pairs making a run tiny; task options only for enabled tasks."""
    sets = ["model.base_channels=4", "model.depth=2", "train.log_every=1", "data.num_workers=0"]
    if "contrastive" in tasks:
        sets.append("tasks.contrastive.queue_size=64")
    if "reconstruct" in tasks:
        sets.append("tasks.reconstruct.patch_size=4")
    if "local-contrastive" in tasks:
        sets.append("tasks.local-contrastive.num_points=16")
    return sets


def ssmtl_cmd() -> list[str]:
    return [sys.executable, "-m", "ssmtl"]


def accelerate_cmd(num_processes: int = 2) -> list[str]:
    return [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(num_processes),
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
        "-m", "ssmtl",
    ]


def run(cmd: list[str], cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, f"{' '.join(cmd)}\nstdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-5000:]}"
    return result


def kill_after_checkpoint(args: list[str], run_dir: Path, step: int, done_marker: str = "export") -> None:
    """Start a run and kill -9 it a random moment after checkpoint ``step`` is published.

    A fast machine may finish the run before the kill lands, or run on far enough to prune
    checkpoint ``step``; then the attempt is repeated with a shorter delay, so the test always
    exercises a real kill that leaves checkpoint ``step`` in place.
    """
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for delay_max in (0.2, 0.05, 0.0):
        shutil.rmtree(run_dir, ignore_errors=True)
        proc = subprocess.Popen(ssmtl_cmd() + args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        target = run_dir / "checkpoints" / f"step-{step:08d}"
        deadline = time.monotonic() + 120
        while not target.is_dir() and proc.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        time.sleep(random.uniform(0.0, delay_max))  # somewhere in the next steps, maybe mid-checkpoint
        proc.send_signal(signal.SIGKILL)
        if proc.wait() == -signal.SIGKILL and not (run_dir / done_marker).exists() and target.is_dir():
            return
    pytest.fail(f"the run always finished, or pruned checkpoint {step}, before it could be killed")


class NetworkPasses:
    """Watches the shared network from outside the step: forward hooks on its encoder and
    decoder record every pass, and the module's ``context`` is wrapped to keep each step's context.

    ``encoder_inputs``: the images of every encoder pass, in order (the very tensors);
    ``decoder_rows``: the batch size of every decoder pass; ``contexts``: each step's
    :class:`~ssmtl.api.views.StepContext`. Use as a context manager: the hooks and the
    wrapper are removed on exit. Register it after the tasks' ``setup``, or a task's
    copy of the encoder (MoCo's key encoder) inherits the hooks.
    """

    def __init__(self, module):
        self.module = module
        self.encoder_inputs: list = []
        self.decoder_rows: list[int] = []
        self.contexts: list = []

    def __enter__(self) -> "NetworkPasses":
        network = self.module.network
        self._handles = [
            network.encoder.register_forward_hook(lambda m, args, out: self.encoder_inputs.append(args[0])),
            network.decoder.register_forward_hook(lambda m, args, out: self.decoder_rows.append(args[0][0].shape[0])),
        ]
        make_context = self.module.context

        def observed(*args, **kwargs):  # every step's context, as forward builds it
            ctx = make_context(*args, **kwargs)
            self.contexts.append(ctx)
            return ctx

        self.module.context = observed  # an instance attribute: shadows the method until __exit__
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        del self.module.context
