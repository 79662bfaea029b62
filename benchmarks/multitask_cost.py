#!/usr/bin/env python3
"""Multi-task cost: contrastive + order + reconstruct + neighbor against contrastive alone.

Both runs use the same batch: ``data.sequence_length`` is fixed to 3 for both, so
each step sees the same B x 3 slices (contrastive alone would otherwise sample
single slices). The headline is the median over interleaved blocks of the per-step
time ratio multitask / contrastive. Target: <= 1.6x.

The headline uses the defaults: ``reconstruct`` masks the shared ``sequence`` view
(``tasks.reconstruct.view=shared``), so one encoder + decoder pass serves every
task, and the decoder runs on one slice per sequence (``train.decoder_slices=one``).
The same blocks also time, each against the same baseline:

* ``multitask_every_slice``: ``train.decoder_slices=all`` (the decoder on all k
  slices of each sequence);
* ``multitask_separate_view``: ``tasks.reconstruct.view=separate`` and
  ``train.decoder_slices=all``: reconstruct masks its own copy, one more encoder +
  decoder pass (the design before sharing);
* ``encoder_tasks_only``: contrastive + order, no decoder task (for reference).

Each variant's convolution/matmul FLOPs per step (``FlopCounterMode``) are reported
too: when the time ratio is close to the FLOP ratio, the cost is the tasks' own
compute. For the baseline and the multitask run the result also has a breakdown: the
forward pass (graph built, then dropped) and its parts (online encoder, decoder,
MoCo key encoder; module hooks), backward + optimizer = step - forward, the
encoder/decoder passes of a step (the same hooks) and the views they ran on (the step's
``StepContext``, kept by wrapping ``PretrainModule.context``).

Usage: ``python benchmarks/multitask_cost.py [--size 64] [--batch-size 16]
[--steps 2] [--blocks 8] [--mixed-precision no] [--set KEY=VALUE ...] [--threads N]
[--device auto]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

TARGET = 1.6
K = 3
MULTITASK = ["contrastive", "order", "reconstruct", "neighbor"]
VARIANTS = {  # name -> (tasks, extra --set overrides)
    "contrastive": (["contrastive"], []),
    "multitask": (MULTITASK, []),
    "multitask_every_slice": (MULTITASK, ["train.decoder_slices=all"]),
    "multitask_separate_view": (MULTITASK, ["train.decoder_slices=all", "tasks.reconstruct.view=separate"]),
    "encoder_tasks_only": (["contrastive", "order"], []),
}


class ModuleTimer:
    """Wall time and calls of some modules' forward passes, through forward hooks."""

    def __init__(self, modules: dict, device: torch.device):
        self.device = device
        self.seconds = {name: 0.0 for name in modules}
        self.calls = {name: 0 for name in modules}
        self._start: dict[str, float] = {}
        self.handles = []
        for name, module in modules.items():
            self.handles.append(module.register_forward_pre_hook(self._pre(name)))
            self.handles.append(module.register_forward_hook(self._post(name)))

    def _pre(self, name):
        def hook(module, args):
            common.synchronize(self.device)
            self._start[name] = time.perf_counter()
        return hook

    def _post(self, name):
        def hook(module, args, output):
            common.synchronize(self.device)
            self.seconds[name] += time.perf_counter() - self._start[name]
            self.calls[name] += 1
        return hook

    def reset(self) -> None:
        self.seconds = {n: 0.0 for n in self.seconds}
        self.calls = {n: 0 for n in self.calls}

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def breakdown(trainer, batches: list, steps: int, device: torch.device) -> dict:
    """Forward, its network parts, and backward + optimizer, in ms per step (medians)."""
    module = trainer.unwrapped
    parts = {"encoder": module.network.encoder, "decoder": module.network.decoder}
    contrastive = module.tasks["contrastive"] if "contrastive" in module.tasks else None
    if contrastive is not None:
        parts["key_encoder"] = contrastive.key_encoder
    timer = ModuleTimer(parts, device)
    forward, step_times, part_times = [], [], {n: [] for n in parts}
    calls: dict = {}
    views: dict = {}
    contexts: list = []
    make_context = module.context

    def observed(*args, **kwargs):  # keep the step's context: the views it encoded and decoded, once the tasks ran
        contexts.append(make_context(*args, **kwargs))
        return contexts[-1]

    module.context = observed  # an instance attribute shadowing the method until the end
    try:
        for s in range(steps):
            batch = batches[s % len(batches)]
            timer.reset()
            common.synchronize(device)
            t0 = time.perf_counter()
            with trainer.accelerator.autocast():
                total, *_ = trainer.model(batch, 10_000 + s)
            common.synchronize(device)
            forward.append(time.perf_counter() - t0)
            del total  # the graph is dropped: nothing is back-propagated
            views.update(encoded=list(contexts[-1].encoded_views), decoded=list(contexts[-1].decoded_views))
            for n in parts:
                part_times[n].append(timer.seconds[n])
            calls = dict(timer.calls)
            timer.reset()
            common.synchronize(device)
            t0 = time.perf_counter()
            trainer.step([batch], 10_000 + s)
            common.synchronize(device)
            step_times.append(time.perf_counter() - t0)
    finally:
        timer.remove()
        del module.context
    fwd, step = statistics.median(forward), statistics.median(step_times)
    net = {n: statistics.median(v) for n, v in part_times.items()}
    ms = lambda s: round(s * 1e3, 2)  # noqa: E731
    return {
        "step_ms": ms(step),
        "forward_ms": ms(fwd),
        "forward_parts_ms": {**{n: ms(v) for n, v in net.items()},
                             "augment_views_heads_losses": ms(fwd - sum(net.values()))},
        "backward_and_optimizer_ms": ms(step - fwd),
        "module_calls_per_step": calls,
        "views_per_step": views,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16, help="sequences per step (x 3 slices)")
    parser.add_argument("--base-channels", type=int, default=16)
    parser.add_argument("--steps", type=int, default=2, help="steps per timed block")
    parser.add_argument("--blocks", type=int, default=8, help="timed blocks per variant (interleaved)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--breakdown-steps", type=int, default=3)
    parser.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"], default="no")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="time blocks by wall seconds, or by this process's CPU seconds (a CPU shared with other jobs)")
    parser.add_argument("--only", nargs="*", choices=list(VARIANTS), help="variants to time (default: all)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every variant, e.g. train.channels_last=true (repeatable)")
    args = parser.parse_args(argv)

    device = common.resolve_device(args.device)
    common.set_threads(args.threads)
    names = args.only or list(VARIANTS)
    for required in ("contrastive", "multitask"):
        if required not in names:
            names.insert(0 if required == "contrastive" else 1, required)
    base = [f"train.batch_size={args.batch_size}", f"model.base_channels={args.base_channels}",
            f"data.sequence_length={K}", "train.steps=100000", "data.num_workers=0", *args.sets]
    with tempfile.TemporaryDirectory(prefix="ssmtl-bench-") as tmp:
        cache_path = common.phantom_cache(Path(tmp), args.size)
        trainers, batches, accelerator = {}, None, None
        for name in names:
            tasks, sets = VARIANTS[name]
            config = common.run_config(tasks, base + sets, cache_path, args.mixed_precision)
            accelerator = accelerator or common.accelerator_for(config, device)
            trainer, cache, volumes = common.cache_trainer(config, accelerator, cache_path)
            if trainer.sequence_length != K:
                raise SystemExit(f"{name}: sequence length {trainer.sequence_length}, expected {K}")
            if batches is None:  # one set of batches for every variant: the same slices each step
                batches = common.prefetch(cache, volumes, config, K, 8, accelerator.device)
            trainers[name] = trainer
            common.log(f"{name}: tasks {'+'.join(tasks)} {' '.join(sets)}")
        flops = {n: common.step_flops(t.step, batches[0]) for n, t in trainers.items()}
        runners = {n: common.StepRunner(t.step, batches).run for n, t in trainers.items()}
        for run in runners.values():
            run(args.warmup)
        t0 = time.perf_counter()
        load_before = [round(x, 2) for x in os.getloadavg()]
        times = common.interleaved(runners, args.blocks, args.steps, accelerator.device, clock=args.clock)
        load_after = [round(x, 2) for x in os.getloadavg()]
        timed = time.perf_counter() - t0
        parts = {n: breakdown(trainers[n], batches, args.breakdown_steps, accelerator.device) for n in ("contrastive", "multitask")}

    ratios = {n: common.block_ratios(times[n], times["contrastive"]) for n in names if n != "contrastive"}
    result = {
        "benchmark": "multitask_cost",
        "hardware": common.hardware(accelerator.device),
        "settings": {
            "size": args.size, "batch_size": args.batch_size, "sequence_length": K, "slices_per_step": args.batch_size * K,
            "base_channels": args.base_channels, "mixed_precision": args.mixed_precision,
            "steps_per_block": args.steps, "blocks": args.blocks, "timed_seconds": round(timed, 1), "sets": args.sets,
            "clock": args.clock, "threads": torch.get_num_threads(),
            "load_average": {"before": load_before, "after": load_after},
            "variants": {n: {"tasks": VARIANTS[n][0], "sets": VARIANTS[n][1]} for n in names},
        },
        "step_ms": {n: common.summary(times[n]) for n in names},
        "ratio_vs_contrastive": ratios,
        # convolution/matmul FLOPs of one step: a time ratio close to the FLOP ratio means
        # the cost is the tasks' own compute, not framework overhead
        "gflops_per_step": {n: round(f / 1e9, 2) for n, f in flops.items()},
        "flop_ratio_vs_contrastive": {n: round(flops[n] / flops["contrastive"], 3) for n in names if n != "contrastive"},
        "breakdown": parts,
        "target": TARGET,
        "ratio": ratios["multitask"]["median"],
        "target_met": ratios["multitask"]["median"] <= TARGET,
    }
    common.emit(result)
    return result


if __name__ == "__main__":
    main()
