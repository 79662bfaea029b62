"""Pre-training: build the module, then run the one training loop on sampled sequences.

Per step, for each micro-batch, the sampled sequences go through
:class:`~ssmtl.pretraining.module.PretrainModule` (the DDP-wrapped unit): every enabled
task runs on shared views and features, the weighting scheme combines their losses,
and :class:`~ssmtl.training.loop.TrainingLoop` takes **one** backward pass, applies the
non-finite policy, clips, steps, and runs each task's post-step hook (e.g. MoCo's momentum
update). :class:`~ssmtl.training.lifecycle.TrainingRun` owns the rest of the run's life, as
for fine-tuning; the run ends with the export downstream fine-tuning loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn

from ssmtl.api.errors import SsmtlError
from ssmtl.api.tasks import DataInfo
from ssmtl.api.views import SequenceBatch
from ssmtl.host.plugin_calls import plugin_call
from ssmtl.host.registry import Registry
from ssmtl.training.augment import flip_note
from ssmtl.training.export import write_export
from ssmtl.training.lifecycle import TrainingRun
from ssmtl.training.loop import TrainingLoop
from ssmtl.training.optim import build_optimizer
from ssmtl.data.cache import SliceCache
from ssmtl.data.cache_set import CacheSet, check_slice_shapes, data_record, open_caches
from ssmtl.data.laterality import run_flip_axes
from ssmtl.data.sampling import SequenceDataset, StepBatchSampler, WeightedStepBatchSampler, collate_sequences
from ssmtl.pretraining.compile import compile_in_place
from ssmtl.pretraining.config import PretrainConfig, config_to_dict
from ssmtl.pretraining.module import PretrainModule, build_pretrain_module, ddp_ignored_names, sequence_length
from ssmtl.pretraining.weighting import micro_batches_per_pass


def select_volumes(cache: SliceCache | CacheSet, config: PretrainConfig) -> list[int]:
    chosen = []
    for v in cache.volumes:
        if config.data.modality and v.modality != config.data.modality:
            continue
        if config.data.split == "train" and v.split in ("val", "test"):
            continue
        chosen.append(v.index)
    if not chosen:
        raise SsmtlError(f"{cache.path}: no volumes match data.modality={config.data.modality} / data.split={config.data.split}")
    check_slice_shapes(cache, chosen)
    return chosen


@dataclass
class PretrainResult:
    run_dir: Path
    steps: int
    seconds: float
    final_losses: dict[str, float]


class Trainer(TrainingLoop):
    """The pre-training module, optimizer and schedule, prepared by Accelerate, and the
    loop's :meth:`step` on them. ``run_pretraining`` and the benchmarks use the same
    object, so what is timed is exactly what trains."""

    def __init__(self, config: PretrainConfig, registry: Registry, accelerator, *, num_volumes: int, num_slices: int,
                 flip_axes: tuple[int, ...] = ()):
        self.config, self.registry = config, registry
        module = build_pretrain_module(config, registry, flip_axes)
        self.sequence_length = sequence_length(config, module.tasks)
        info = DataInfo(
            num_volumes=num_volumes, num_slices=num_slices, sequence_length=self.sequence_length,
            global_batch=config.train.batch_size * accelerator.num_processes, total_steps=config.train.steps,
        )
        self.notes = list(module.notes)
        if (note := flip_note(config.augment, flip_axes)) is not None:
            self.notes.append(note)
        for name, task in module.tasks.items():
            with plugin_call("task", name, "on_data", registry):
                self.notes += task.on_data(info)
        self.notes += module.weighting.on_data(micro_batches_per_pass(num_slices, info.global_batch))
        if any(t.needs_sync_batchnorm for t in module.tasks.values()) and accelerator.num_processes > 1:
            module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
        if config.train.channels_last:
            module.use_channels_last()
        if config.train.compile:
            compile_in_place(module, accelerator)
        ignored = ddp_ignored_names(module)
        if ignored:
            from torch.nn.parallel import DistributedDataParallel

            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, ignored)
        train = config.train
        optimizer, scheduler = build_optimizer(module, lr=train.lr, weight_decay=train.weight_decay,
                                               warmup_steps=train.warmup_steps, total_steps=train.steps)
        model, optimizer, scheduler = accelerator.prepare(module, optimizer, scheduler)
        self.unwrapped: PretrainModule = accelerator.unwrap_model(model)
        super().__init__(accelerator, model, optimizer, scheduler, train, list(self.unwrapped.tasks),
                         after_step=self._after_step)

    def _after_step(self, step: int) -> None:
        for name, task in self.unwrapped.tasks.items():
            with plugin_call("task", name, "after_optimizer_step", self.registry):
                task.after_optimizer_step(self.unwrapped.network, step)


def make_sampler(config: PretrainConfig, dataset: SequenceDataset, rank: int, world: int, start: int, stop: int) -> StepBatchSampler:
    """Uniform over the sequences, or, with ``data.weights``, weighted per cache."""
    weights, cache = config.data.weights, dataset.cache
    if weights is None:
        return StepBatchSampler(len(dataset), config.train.batch_size, seed=config.seed, rank=rank, world=world,
                                start=start, stop=stop)
    caches = cache.paths if isinstance(cache, CacheSet) else [cache.path]
    if len(weights) != len(caches):
        raise SsmtlError(f"data.weights has {len(weights)} value(s) but data.path names {len(caches)} cache(s): "
                         + ", ".join(str(p) for p in caches))
    owner = np.array([cache.cache_of(int(v)) if isinstance(cache, CacheSet) else 0 for v in dataset.windows[:, 0]])
    groups = [np.flatnonzero(owner == c) for c in range(len(caches))]
    return WeightedStepBatchSampler(groups, weights, config.train.batch_size, seed=config.seed, rank=rank,
                                    world=world, start=start, stop=stop)


def make_loader(config: PretrainConfig, dataset: SequenceDataset, accelerator, start_step: int) -> torch.utils.data.DataLoader:
    accum = config.train.grad_accum
    sampler = make_sampler(config, dataset, accelerator.process_index, accelerator.num_processes,
                           start_step * accum, config.train.steps * accum)
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, num_workers=config.data.num_workers, collate_fn=collate_sequences,
        pin_memory=accelerator.device.type == "cuda", persistent_workers=False,
        prefetch_factor=4 if config.data.num_workers > 0 else None,
        # a private generator: creating the iterator must not draw from the global RNG,
        # which the checkpoint restores (augmentations must match an uninterrupted run)
        generator=torch.Generator().manual_seed(config.seed),
    )



def _device_batches(loader, device) -> Iterator[SequenceBatch]:
    for batch in loader:
        yield batch.to(device)


def run_pretraining(config: PretrainConfig, registry: Registry, *, resume: bool = False, progress: bool = True) -> PretrainResult:
    """Pre-train ``config.tasks`` on ``config.data.path`` into ``config.out``.

    The run's life (run directory, lock, resume, ``config.json``, trackers, the loop, the
    export) is :class:`~ssmtl.training.lifecycle.TrainingRun`'s; this function says what it
    trains: the :class:`~ssmtl.pretraining.module.PretrainModule` on sampled sequences.
    """
    from accelerate.utils import set_seed

    if config.out is None:
        raise SsmtlError("no run directory: pass --out")
    if config.data.path is None:
        raise SsmtlError("no data: pass --data CACHE.h5")
    with TrainingRun(Path(config.out), "pretrain", "the pre-training run", config.train, resume=resume) as run:
        accelerator = run.accelerator
        # every process checks inputs; the network and the tasks (plugin code) are built before
        # the run directory exists, so a plugin that fails to build leaves nothing behind
        cache = open_caches(config.data.path)
        volumes = select_volumes(cache, config)
        flip_axes, data_notes = run_flip_axes(cache)
        set_seed(config.seed)
        trainer = Trainer(config, registry, accelerator, num_volumes=len(volumes),
                          num_slices=sum(cache.volumes[v].num_slices for v in volumes), flip_axes=flip_axes)
        record = config_to_dict(config)
        run.open(names=trainer.names, config=record, fingerprint={**record, "data_fingerprint": cache.fingerprint},
                 inputs=[("--data", config.data.path)], notes=data_notes + trainer.notes)
        k = trainer.sequence_length
        dataset = SequenceDataset(cache, k, config.data.stride, volumes)
        batches = run.resume(lambda start: _device_batches(make_loader(config, dataset, accelerator, start), accelerator.device))
        slices_per_step = config.train.batch_size * k * config.train.grad_accum * accelerator.num_processes
        result = run.train(trainer, batches, config.train.steps, slices_per_step=slices_per_step, label="pretrain",
                           progress=progress)
        unwrapped = trainer.unwrapped
        run.finish(lambda: write_export(run.out, unwrapped.network, {
            "config": record,
            "tasks": {n: config.tasks[n].model_dump(mode="json") for n in trainer.names},
            "steps": config.train.steps,
            "sequence_length": k,
            "data": {**data_record(cache, config.data.path), "volumes": [cache.volumes[v].subject for v in volumes],
                     "source_keys": sorted({cache.volumes[v].source_key for v in volumes}),  # by scan, not name
                     "flip_axes": list(flip_axes),
                     "slice_shape": list(cache.slice_shape)},  # the trained size, for exports once the cache is gone
            "trained": sorted({part for t in unwrapped.tasks.values() for part in t.trains}),
            "world_size": accelerator.num_processes,
            "mixed_precision": accelerator.mixed_precision,
        }))
    return PretrainResult(run_dir=run.out, steps=config.train.steps, seconds=result.seconds, final_losses=result.last)
