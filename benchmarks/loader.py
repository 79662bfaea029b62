#!/usr/bin/env python3
"""Data pipeline throughput against the training step's consumption, in slices/s.

The pipeline, at the default settings (``data.num_workers`` default, batch 16,
k = 3 for the default tasks contrastive + order, a 128 px phantom cache):

* ``loader``: HDF5 cache reads, sequence sampling (``StepBatchSampler``) and
  collation, through ``ssmtl.pretraining.engine.make_loader`` exactly as training builds
  it, timed alone with 0, 1 and 2 workers (the worker start-up is reported apart);
* ``augment``: ``ssmtl.training.augment.augment`` runs inside the step on the
  training device, once per augmented view the tasks use (counted on a real
  step); here it is timed on the CPU and counted as pipeline work;
* ``pipeline`` = loader + augment, added serially (conservative: the loader's
  workers overlap with the main process, augmentation does not).

The step is ``Trainer.step`` with the default tasks and model on pre-fetched
batches (it includes the augmentation, so that is counted on both sides).
Target: pipeline >= 3x the step's slices/s. A last run feeds the real loader to
the step, as ``ssmtl pretrain`` does, and reports the time spent waiting for data.

Usage: ``python benchmarks/loader.py [--size 128] [--batches 40] [--steps 3]
[--threads N] [--device auto]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from ssmtl.training.augment import augment  # noqa: E402
from ssmtl.pretraining.engine import make_loader  # noqa: E402
from ssmtl.data.sampling import SequenceDataset  # noqa: E402

TARGET = 3.0


def with_workers(config, workers: int):
    return config.model_copy(update={"data": config.data.model_copy(update={"num_workers": workers})})


def loader_throughput(config, cache, volumes, k: int, workers: int, batches: int, accelerator) -> dict:
    """Slices/s of ``make_loader`` with ``workers`` processes, after its first batch."""
    cfg = with_workers(config, workers)
    dataset = SequenceDataset(cache, k, cfg.data.stride, volumes)
    t0 = time.perf_counter()
    it = iter(make_loader(cfg, dataset, accelerator, start_step=0))
    first = next(it)
    startup = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(batches):
        batch = next(it)
    seconds = time.perf_counter() - t0
    del it  # shuts the workers down
    slices = batches * first.slices.shape[0] * first.slices.shape[1]
    assert batch.slices.shape == first.slices.shape
    return {"workers": workers, "startup_s": round(startup, 3), "batches": batches,
            "ms_per_batch": round(seconds / batches * 1e3, 3), "slices_per_s": round(slices / seconds, 1)}


def augment_calls_per_step(trainer, batch) -> int:
    """How many times one real step calls ``augment`` (one per augmented view)."""
    calls = 0
    module = trainer.unwrapped
    original = module.augmenter  # what every step context draws its random views with

    def counting(*args, **kwargs):
        nonlocal calls
        calls += 1
        return original(*args, **kwargs)

    module.augmenter = counting
    try:
        trainer.step([batch], 0)
    finally:
        module.augmenter = original
    return calls


def augment_seconds(batch, config, repeats: int) -> float:
    """Median seconds of one ``augment`` of a batch's slices (one view), on the CPU."""
    x = batch.slices.cpu().reshape(-1, 1, *batch.slices.shape[-2:])
    k = batch.slices.shape[1]
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        augment(x, config.augment, group=k)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def end_to_end(trainer, config, cache, volumes, steps: int, device: torch.device) -> dict:
    """The real loader feeding ``Trainer.step``: the share of the time spent waiting for data."""
    dataset = SequenceDataset(cache, trainer.sequence_length, config.data.stride, volumes)
    it = iter(make_loader(config, dataset, trainer.accelerator, start_step=0))
    trainer.step([next(it).to(device)], 0)  # warm-up (and worker start-up)
    wait = busy = 0.0
    for s in range(steps):
        t0 = time.perf_counter()
        batch = next(it).to(device)
        t1 = time.perf_counter()
        trainer.step([batch], s + 1)
        common.synchronize(device)
        t2 = time.perf_counter()
        wait, busy = wait + t1 - t0, busy + t2 - t1
    del it
    slices = steps * config.train.batch_size * trainer.sequence_length
    return {"workers": config.data.num_workers, "steps": steps, "data_wait_fraction": round(wait / (wait + busy), 4),
            "slices_per_s": round(slices / (wait + busy), 2)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=128, help="slice size of the phantom cache")
    parser.add_argument("--subjects", type=int, default=8)
    parser.add_argument("--num-slices", type=int, default=48, help="slices per phantom volume")
    parser.add_argument("--batches", type=int, default=40, help="batches timed per loader setting")
    parser.add_argument("--steps", type=int, default=3, help="training steps timed")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = parser.parse_args(argv)

    device = common.resolve_device(args.device)
    common.set_threads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="ssmtl-bench-") as tmp:
        cache_path = common.phantom_cache(Path(tmp), args.size, args.subjects, args.num_slices)
        config = common.run_config([], ["train.steps=100000"], cache_path)  # default tasks, model, batch, workers
        accelerator = common.accelerator_for(config, device)
        trainer, cache, volumes = common.cache_trainer(config, accelerator, cache_path)
        k, batch_size = trainer.sequence_length, config.train.batch_size
        slices_per_batch = batch_size * k

        loaders = {}
        for workers in sorted({0, 1, 2, config.data.num_workers}):
            loaders[workers] = loader_throughput(config, cache, volumes, k, workers, args.batches, accelerator)
            common.log(f"loader, {workers} workers: {loaders[workers]['slices_per_s']:.0f} slices/s")

        batches = common.prefetch(cache, volumes, config, k, 4, accelerator.device)
        views_per_step = augment_calls_per_step(trainer, batches[0])
        aug = augment_seconds(batches[0], config, repeats=10) * views_per_step
        common.log(f"augment: {views_per_step} views per step, {aug * 1e3:.1f} ms per step on the CPU")

        runner = common.StepRunner(trainer.step, batches)
        runner.run(1)
        step_times = common.interleaved({"step": runner.run}, args.steps, 1, accelerator.device)["step"]
        step_s = statistics.median(step_times)
        e2e = end_to_end(trainer, config, cache, volumes, args.steps, accelerator.device)
        common.log(f"end to end: {e2e}")

    def pipeline(loader: dict) -> dict:
        seconds = loader["ms_per_batch"] / 1e3 + aug
        rate = slices_per_batch / seconds
        return {"workers": loader["workers"], "slices_per_s": round(rate, 1), "vs_step": round(rate * step_s / slices_per_batch, 2)}

    pipelines = {w: pipeline(l) for w, l in loaders.items()}
    default = pipelines[config.data.num_workers]
    result = {
        "benchmark": "loader",
        "hardware": common.hardware(accelerator.device),
        "settings": {
            "size": args.size, "batch_size": batch_size, "sequence_length": k, "slices_per_batch": slices_per_batch,
            "num_workers_default": config.data.num_workers, "tasks": list(config.tasks),
            "model": config.model.model_dump(), "cache": {"subjects": args.subjects, "num_slices": args.num_slices},
            "mixed_precision": config.train.mixed_precision,
        },
        "loader": {str(w): v for w, v in loaders.items()},
        "augment": {"views_per_step": views_per_step, "ms_per_step_cpu": round(aug * 1e3, 2),
                    "slices_per_s": round(slices_per_batch / aug, 1)},
        "pipeline": {str(w): v for w, v in pipelines.items()},
        "step": {**common.summary(step_times), "slices_per_s": round(slices_per_batch / step_s, 2)},
        "end_to_end": e2e,
        "ratio": default["vs_step"],
        "target": TARGET,
        "target_met": default["vs_step"] >= TARGET,
    }
    common.emit(result)
    return result


if __name__ == "__main__":
    main()
