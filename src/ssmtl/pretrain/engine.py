"""The pre-training engine: one plain Accelerate training loop.

Per step, for each micro-batch: the sampled sequences go through
:class:`PretrainModule` (the DDP-wrapped unit). Inside it, every enabled task runs
on shared views and features (:class:`~ssmtl.api.views.StepContext`), the
weighting scheme combines their losses, and the engine takes **one** backward pass.
Then gradient clipping, the optimizer and scheduler step, and each task's
post-step hook (e.g. MoCo's EMA update on the unwrapped modules).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ssmtl.core import checkpointing as ckpt
from ssmtl.core.augment import make_augmenter
from ssmtl.data.cache import SliceCache
from ssmtl.pretrain.config import RunConfig, config_to_dict
from ssmtl.api.errors import SsmtlError
from ssmtl.core.export import write_export
from ssmtl.core.model import Encoder, UNet
from ssmtl.core.rundir import prepare_run_dir, write_json_atomic
from ssmtl.data.sampling import SequenceDataset, StepBatchSampler, collate_sequences
from ssmtl.api.tasks import DataInfo, PretextTask
from ssmtl.api.views import SequenceBatch, StepContext, task_views
from ssmtl.pretrain.weighting import LossWeighting, build_weighting


class PretrainModule(nn.Module):
    """The shared network, the task heads and the loss weighting: what DDP wraps.

    ``forward`` returns ``(total_loss, task_losses, effective_weights, metrics)``;
    ``task_losses`` and ``effective_weights`` are (num_tasks,) tensors in task order.
    """

    def __init__(self, network: UNet, tasks: dict[str, PretextTask], weighting: LossWeighting, augment,
                 decoder_slices: str = "all"):
        super().__init__()
        self.network = network
        self.tasks = nn.ModuleDict(tasks)
        self.weighting = weighting
        self.augment = augment
        self.builders, self.transforms = task_views(tasks)
        # tasks that need the decoder on every slice override "one"; the note says so
        needs_all = [n for n, t in tasks.items() if t.decodes_every_slice]
        self.decoder_slices = "all" if needs_all else decoder_slices
        self.notes = [f"train.decoder_slices=one ignored: task(s) {', '.join(needs_all)} need the decoder on every slice "
                      "of a sequence"] if needs_all and decoder_slices == "one" else []
        # called with each step's context after the tasks ran (tests, benchmarks, debugging);
        # empty by default, so no step keeps its views and features alive past its end
        self.step_observers: list[Callable[[StepContext], None]] = []
        self.memory_format = torch.contiguous_format

    def use_channels_last(self) -> None:
        """NHWC weights (every 4-D parameter and buffer) and input views: faster convolutions."""
        self.to(memory_format=torch.channels_last)
        self.memory_format = torch.channels_last

    def context(self, batch: SequenceBatch, step: int = 0) -> StepContext:
        """A fresh step context with this module's views, view transforms and decoder policy."""
        return StepContext(batch, self.network, make_augmenter(self.augment), self.builders, step, self.memory_format,
                           self.transforms, self.decoder_slices)

    def forward(self, batch: SequenceBatch, step: int):
        ctx = self.context(batch, step)
        losses: dict[str, torch.Tensor] = {}
        metrics: dict[str, torch.Tensor] = {}
        for name, task in self.tasks.items():
            out = task(ctx)
            losses[name] = out.loss
            for key, value in out.metrics.items():
                metrics[f"{name}/{key}"] = value.detach().float()
        total, weights = self.weighting(losses, step)
        for observer in self.step_observers:
            observer(ctx)
        stacked = torch.stack([losses[n].detach().float() for n in self.tasks])
        return total, stacked, weights, metrics


def build_tasks(config: RunConfig, network: UNet, registry) -> dict[str, PretextTask]:
    tasks = {}
    for name, task_config in config.tasks.items():
        spec = registry.task(name)
        task = spec.factory(task_config, network.info)
        if not isinstance(task, PretextTask):
            raise SsmtlError(f"task {name!r}: factory returned {type(task).__name__}, not a PretextTask")
        task.setup(network)
        tasks[name] = task
    return tasks


def sequence_length(config: RunConfig, tasks: dict[str, PretextTask]) -> int:
    need = max(t.sequence_length for t in tasks.values())
    k = config.data.sequence_length or need
    if k < need:
        names = [n for n, t in tasks.items() if t.sequence_length > k]
        raise SsmtlError(f"data.sequence_length={k} is too short: task(s) {', '.join(names)} need {need} slices")
    return k


def build_pretrain_module(config: RunConfig, registry) -> PretrainModule:
    """Network + tasks + weighting, with the decoder frozen when no task trains it."""
    torch.manual_seed(config.seed)
    network = UNet(config.model)
    tasks = build_tasks(config, network, registry)
    if not any("decoder" in t.trains for t in tasks.values()):
        # no loss reaches the decoder: freeze it so it stays at init and DDP has no unused params
        network.decoder.requires_grad_(False)
    names = list(tasks)
    weighting = build_weighting(
        config.weighting.scheme,
        names,
        {n: config.tasks[n].weight for n in names},
        {n: config.tasks[n].warmup_steps for n in names},
        temperature=config.weighting.temperature,
    )
    return PretrainModule(network, tasks, weighting, config.augment, config.train.decoder_slices)


def ddp_ignored_names(module: PretrainModule) -> list[str]:
    return [f"tasks.{name}.{n}" for name, task in module.tasks.items() for n in task.ddp_ignored_names()]


def parameter_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on norms, biases and loss-weighting parameters."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.startswith("weighting.") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_lambda(warmup: int, total: int) -> Callable[[int], float]:
    """Linear warm-up, then cosine decay to 0 at ``total``."""
    warmup = min(warmup, max(total - 1, 0))

    def factor(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def select_volumes(cache: SliceCache, config: RunConfig) -> list[int]:
    chosen = []
    for v in cache.volumes:
        if config.data.modality and v.modality != config.data.modality:
            continue
        if config.data.split == "train" and v.split in ("val", "test"):
            continue
        chosen.append(v.index)
    if not chosen:
        raise SsmtlError(f"{cache.path}: no volumes match data.modality={config.data.modality} / data.split={config.data.split}")
    return chosen


@dataclass
class PretrainResult:
    run_dir: Path
    steps: int
    seconds: float
    final_losses: dict[str, float]


class MetricsLog:
    """Per-step values kept on the device and written to metrics.jsonl at log intervals.

    Keeping them on the device avoids a host-device sync per step; one transfer per
    interval writes one JSON line per step.
    """

    def __init__(self, path: Path | None, names: list[str]):
        self.path = path
        self.names = names
        self.pending: list[tuple[int, float, torch.Tensor, torch.Tensor, dict[str, torch.Tensor], float]] = []
        self.last: dict[str, float] = {}

    def add(self, step: int, lr: float, losses: torch.Tensor, weights: torch.Tensor, metrics: dict[str, torch.Tensor], slices_per_s: float) -> None:
        self.pending.append((step, lr, losses, weights, metrics, slices_per_s))

    def flush(self, reduce: Callable[[torch.Tensor], torch.Tensor]) -> list[dict[str, Any]]:
        if not self.pending:
            return []
        losses = reduce(torch.stack([p[2] for p in self.pending])).tolist()
        weights = torch.stack([p[3] for p in self.pending]).tolist()
        metric_keys = sorted(self.pending[-1][4])
        metrics = (
            reduce(torch.stack([torch.stack([p[4][k] for k in metric_keys]) for p in self.pending])).tolist()
            if metric_keys else [[] for _ in self.pending]
        )
        records = []
        for i, (step, lr, _, _, _, sps) in enumerate(self.pending):
            tasks = {n: {"loss": losses[i][j], "weight": weights[i][j]} for j, n in enumerate(self.names)}
            for key, value in zip(metric_keys, metrics[i]):
                task, metric = key.split("/", 1)
                tasks.setdefault(task, {})[metric] = value
            total = sum(t["loss"] * t["weight"] for t in tasks.values())
            records.append({"step": step, "loss": total, "lr": lr, "slices_per_s": sps, "tasks": tasks})
        if self.path is not None:
            with open(self.path, "a") as f:
                for r in records:
                    f.write(json.dumps(r) + "\n")
        self.pending.clear()
        self.last = {n: records[-1]["tasks"][n]["loss"] for n in self.names}
        self.last["loss"] = records[-1]["loss"]
        return records


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


def make_accelerator(config: RunConfig):
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    allow_precision(config.train.mixed_precision)
    return Accelerator(
        # without a GPU, Accelerate only forms a process group (gloo) when told it runs on CPU
        cpu=not torch.cuda.is_available(),
        mixed_precision=config.train.mixed_precision,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False, broadcast_buffers=True)],
    )


@dataclass
class StepOutcome:
    losses: torch.Tensor  # (num_tasks,) detached, on the device
    weights: torch.Tensor  # (num_tasks,) effective weights
    metrics: dict[str, torch.Tensor]
    skipped: bool  # a non-finite loss on some rank: no update was made
    nonfinite_tasks: list[str]


class Trainer:
    """The mechanics of one optimizer step, separate from the run's bookkeeping.

    Builds the network, task heads and weighting, wraps them with Accelerate, and
    runs ``step``: forward on every micro-batch, one backward each, gradient
    clipping, the optimizer and scheduler step and the tasks' post-step hooks.
    ``run_pretraining`` and the benchmarks use the same object, so what is timed is
    exactly what trains.
    """

    def __init__(self, config: RunConfig, registry, accelerator, *, num_volumes: int, num_slices: int):
        self.config = config
        self.accelerator = accelerator
        module = build_pretrain_module(config, registry)
        self.sequence_length = sequence_length(config, module.tasks)
        info = DataInfo(
            num_volumes=num_volumes, num_slices=num_slices, sequence_length=self.sequence_length,
            global_batch=config.train.batch_size * accelerator.num_processes,
        )
        self.notes = module.notes + [note for task in module.tasks.values() for note in task.on_data(info)]
        if any(t.needs_sync_batchnorm for t in module.tasks.values()) and accelerator.num_processes > 1:
            module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
        if config.train.channels_last:
            module.use_channels_last()
        if config.train.compile:
            _maybe_compile(module, config, self.sequence_length, accelerator)
        ignored = ddp_ignored_names(module)
        if ignored:
            from torch.nn.parallel import DistributedDataParallel

            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, ignored)
        optimizer = torch.optim.AdamW(parameter_groups(module, config.train.weight_decay), lr=config.train.lr)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config.train.warmup_steps, config.train.steps))
        self.model, self.optimizer, self.scheduler = accelerator.prepare(module, optimizer, scheduler)
        self.unwrapped: PretrainModule = accelerator.unwrap_model(self.model)
        self.names = list(self.unwrapped.tasks)

    def step(self, batches: list[SequenceBatch], step: int) -> StepOutcome:
        acc, model = self.accelerator, self.model
        model.train()
        for micro, batch in enumerate(batches):
            last = micro == len(batches) - 1
            with (acc.no_sync(model) if not last and acc.num_processes > 1 else _null()):
                with acc.autocast():
                    total, losses, weights, metrics = model(batch, step)
                acc.backward(total / len(batches))
        finite = torch.isfinite(total.detach()).float()
        if acc.num_processes > 1:
            finite = acc.reduce(finite, reduction="min")
        if finite.item() < 1:  # the one host sync per step; every rank takes the same branch
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
            bad = [n for n, v in zip(self.names, losses.tolist()) if not math.isfinite(v)]
            return StepOutcome(losses, weights, metrics, True, bad)
        if self.config.train.grad_clip is not None:
            acc.clip_grad_norm_(model.parameters(), self.config.train.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for task in self.unwrapped.tasks.values():
                task.after_optimizer_step(self.unwrapped.network, step)
        return StepOutcome(losses, weights, metrics, False, [])


def make_loader(config: RunConfig, dataset: SequenceDataset, accelerator, start_step: int) -> torch.utils.data.DataLoader:
    accum = config.train.grad_accum
    sampler = StepBatchSampler(
        len(dataset), config.train.batch_size, seed=config.seed,
        rank=accelerator.process_index, world=accelerator.num_processes,
        start=start_step * accum, stop=config.train.steps * accum,
    )
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, num_workers=config.data.num_workers, collate_fn=collate_sequences,
        pin_memory=accelerator.device.type == "cuda", persistent_workers=False,
        prefetch_factor=4 if config.data.num_workers > 0 else None,
        # a private generator: creating the iterator must not draw from the global RNG,
        # which the checkpoint restores (augmentations must match an uninterrupted run)
        generator=torch.Generator().manual_seed(config.seed),
    )


def run_pretraining(config: RunConfig, *, resume: bool = False, registry=None, progress: bool = True) -> PretrainResult:
    """Pre-train ``config.tasks`` on ``config.data.path`` into ``config.out``."""
    from accelerate.utils import set_seed

    if registry is None:
        from ssmtl.core.registry import get_registry

        registry = get_registry()
    if config.out is None:
        raise SsmtlError("no run directory: pass --out")
    if config.data.path is None:
        raise SsmtlError("no data: pass --data CACHE.h5")

    accelerator = make_accelerator(config)
    main = accelerator.is_main_process
    out = Path(config.out)
    # every rank checks inputs; only the main process creates the directory
    cache = SliceCache(config.data.path)
    volumes = select_volumes(cache, config)
    if main:
        prepare_run_dir(out, resume=resume)
    accelerator.wait_for_everyone()
    set_seed(config.seed)
    trainer = Trainer(config, registry, accelerator, num_volumes=len(volumes),
                      num_slices=sum(cache.volumes[v].num_slices for v in volumes))
    for note in trainer.notes:
        accelerator.print(f"note: {note}", file=sys.stderr)
    k, names = trainer.sequence_length, trainer.names

    ckpt_root = out / "checkpoints"
    start_step = 0
    if resume:
        found = ckpt.latest_valid(ckpt_root, warn=(lambda m: accelerator.print(f"warning: {m}", file=sys.stderr)))
        if found is not None:
            accelerator.load_state(str(found.path))
            start_step = found.step
            accelerator.print(f"resuming from {found.path} at step {start_step}", file=sys.stderr)
        elif main:
            accelerator.print("no valid checkpoint found; starting from step 0", file=sys.stderr)
    if main:
        write_json_atomic(out / "config.json", config_to_dict(config))
        if start_step == 0:
            (out / "metrics.jsonl").unlink(missing_ok=True)
        else:
            _truncate_metrics(out / "metrics.jsonl", start_step)

    accum = config.train.grad_accum
    batches = iter(make_loader(config, SequenceDataset(cache, k, config.data.stride, volumes), accelerator, start_step))
    log = MetricsLog(out / "metrics.jsonl" if main else None, names)
    slices_per_step = config.train.batch_size * k * accum * accelerator.num_processes
    bar = _Progress(enabled=progress and main, total=config.train.steps, start=start_step, names=names)
    reduce = (lambda t: accelerator.reduce(t, reduction="mean")) if accelerator.num_processes > 1 else (lambda t: t)
    nonfinite_run = 0
    t_start = t_last = time.perf_counter()
    try:
        for step in range(start_step, config.train.steps):
            micro = [next(batches).to(accelerator.device) for _ in range(accum)]
            outcome = trainer.step(micro, step)
            if outcome.skipped:
                nonfinite_run += 1
                bad = ", ".join(outcome.nonfinite_tasks) or "(another rank)"
                accelerator.print(f"warning: step {step}: non-finite loss from task(s) {bad}; step skipped", file=sys.stderr)
                if main:
                    with open(out / "metrics.jsonl", "a") as f:
                        f.write(json.dumps({"step": step, "skipped": True, "nonfinite_tasks": outcome.nonfinite_tasks}) + "\n")
                if nonfinite_run >= config.train.max_nonfinite_steps:
                    raise SsmtlError(
                        f"stopping: {nonfinite_run} consecutive steps had a non-finite loss (last from {bad}); "
                        "lower train.lr, enable train.grad_clip, or check the data"
                    )
                continue
            nonfinite_run = 0
            done = step + 1
            now = time.perf_counter()
            log.add(step, trainer.scheduler.get_last_lr()[0], outcome.losses, outcome.weights, outcome.metrics,
                    slices_per_step / max(now - t_last, 1e-9))
            t_last = now
            if done % config.train.log_every == 0 or done == config.train.steps:
                log.flush(reduce)
                bar.update(done, log.last, slices_per_step * (done - start_step) / max(now - t_start, 1e-9))
            if done % config.train.checkpoint_every == 0 and done < config.train.steps:
                save_checkpoint(accelerator, ckpt_root, done, config.train.keep_checkpoints)
        log.flush(reduce)
        save_checkpoint(accelerator, ckpt_root, config.train.steps, config.train.keep_checkpoints)
    finally:
        bar.close()
    unwrapped = trainer.unwrapped
    if main:
        write_export(
            out,
            unwrapped.network,
            {
                "config": config_to_dict(config),
                "tasks": {n: config.tasks[n].model_dump(mode="json") for n in names},
                "steps": config.train.steps,
                "sequence_length": k,
                "data": {"path": str(config.data.path), "fingerprint": cache.fingerprint, "volumes": [cache.volumes[v].subject for v in volumes]},
                "trained": sorted({part for t in unwrapped.tasks.values() for part in t.trains}),
                "world_size": accelerator.num_processes,
                "mixed_precision": accelerator.mixed_precision,
            },
        )
    accelerator.wait_for_everyone()
    seconds = time.perf_counter() - t_start
    # no accelerator.end_training(): it destroys the process group, and a caller (the
    # benchmark, a notebook, a test under debug_launcher) may run several trainings
    return PretrainResult(run_dir=out, steps=config.train.steps, seconds=seconds, final_losses=dict(log.last))


def save_checkpoint(accelerator, root: Path, step: int, keep: int) -> Path:
    tmp = ckpt.temporary_dir(root, step)
    final = ckpt.checkpoint_dir(root, step)
    if accelerator.is_main_process:
        tmp.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        ckpt.finalize(tmp, final, {"step": step})
        ckpt.prune(root, keep)
    accelerator.wait_for_everyone()
    return final


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines of steps at or after ``step`` (they will be recomputed on resume)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", -1) < step:
                kept.append(line)
        except json.JSONDecodeError:
            continue  # a line cut by the kill
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(l + "\n" for l in kept))
    os.replace(tmp, path)


def _maybe_compile(module: PretrainModule, config: RunConfig, k: int, accelerator) -> None:
    """``torch.compile`` the encoder, the decoder and every copy of the encoder a task
    holds (MoCo's key encoder) in place; fall back to eager if compilation fails.

    Shapes are static (``dynamic=False``): every step has the same batch shape. With
    the default, the recompile that follows the probe below produces dynamic-shape
    kernels, which on an H200 were slower than eager (wide model, 256²: 42.8 ms per
    step against 38.9 ms eager; static, key encoder included: 30.2 ms).

    Compilation errors surface at the first call, not at ``torch.compile``, so a tiny
    forward runs here inside the guard, on the training device: a CPU probe on a GPU
    run would build (and need a C++ toolchain for) CPU kernels that never run.
    """
    network = module.network
    parts = [network.encoder, network.decoder]
    parts += [child for task in module.tasks.values() for child in task.children() if isinstance(child, Encoder)]
    try:
        for part in parts:
            # in place (nn.Module.compile): the state dict keeps its plain names, so a
            # checkpoint of a compiled run resumes without --compile and vice versa
            part.compile(dynamic=False)
        side = 2 ** config.model.depth * 2
        module.to(accelerator.device)  # where accelerator.prepare would put it anyway
        probe = torch.zeros(2, config.model.in_channels, side, side, device=accelerator.device)
        with torch.no_grad():
            network.decoder(network.encoder(probe))
    except Exception as exc:  # no compiler toolchain, unsupported platform or op
        for part in parts:
            part._compiled_call_impl = None  # what nn.Module.compile set: back to eager
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        accelerator.print(f"warning: torch.compile unavailable ({first}); running eagerly", file=sys.stderr)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _Progress:
    """A rich progress bar on the main process: step, each task's loss, slices/s, ETA."""

    def __init__(self, enabled: bool, total: int, start: int, names: list[str]):
        self.enabled = enabled
        self.names = names
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.console = Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]pretrain"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=self.console, transient=False,
        )
        self.task = self.progress.add_task("pretrain", total=total, completed=start, info="")
        self.progress.start()
        self.interactive = self.console.is_terminal

    def update(self, done: int, last: dict[str, float], slices_per_s: float) -> None:
        if not self.enabled:
            return
        info = " ".join(f"{n}={last.get(n, float('nan')):.3f}" for n in self.names)
        info += f" | {slices_per_s:.0f} slices/s"
        self.progress.update(self.task, completed=done, info=info)
        if not self.interactive:
            self.console.print(f"step {done}: loss={last.get('loss', float('nan')):.4f} {info}")

    def close(self) -> None:
        if self.enabled:
            self.progress.stop()
