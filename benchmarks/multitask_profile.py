#!/usr/bin/env python3
"""Where the multi-task step's extra time goes: torch.profiler over contrastive and multitask steps.

    python benchmarks/multitask_profile.py --mixed-precision bf16 [--set train.channels_last=true]

The same setting as ``multitask_cost.py`` (64 px, batch 16 x 3 slices, base 16), a few
profiled steps of each variant after a warm-up. Prints one JSON object: per variant,
the self CPU time per step of the top operators, and grouped into convolutions (forward
and backward), matrix products, dtype casts (``aten::to``/``_to_copy``/``copy_``), the
row selection of the decoded slices and its backward (``index_select``/``index_add``),
and everything else (element-wise work, reductions, the optimizer). ``extra_ms`` is the
multitask step minus the contrastive step per group: what the extra tasks cost, and in
what kind of work.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from multitask_cost import K, VARIANTS  # noqa: E402

GROUPS = {
    "convolution": ("convolution", "conv2d", "mkldnn_convolution", "convolution_backward", "_convolution"),
    "matmul": ("mm", "addmm", "bmm", "matmul", "linear"),
    "dtype_cast": ("to", "_to_copy", "copy_"),
    "decoded_rows": ("index_select", "index_add", "index_add_", "index_select_backward"),
}


def group_of(name: str) -> str:
    op = name.removeprefix("aten::")
    for group, ops in GROUPS.items():
        if op in ops:
            return group
    return "other"


def profile_variant(trainer, batches: list, steps: int) -> dict:
    runner = common.StepRunner(trainer.step, batches)
    runner.run(2)  # warm-up (first-call allocations, oneDNN primitive caches)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        runner.run(steps)
    ops = {}
    for event in prof.key_averages():
        ops[event.key] = ops.get(event.key, 0.0) + event.self_cpu_time_total / 1e3 / steps
    groups: dict[str, float] = {}
    for name, ms in ops.items():
        groups[group_of(name)] = groups.get(group_of(name), 0.0) + ms
    top = sorted(ops.items(), key=lambda kv: -kv[1])[:15]
    return {"step_ms": round(sum(ops.values()), 1), "groups_ms": {k: round(v, 1) for k, v in sorted(groups.items())},
            "top_ops_ms": {k: round(v, 1) for k, v in top}}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--base-channels", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3, help="profiled steps per variant")
    parser.add_argument("--mixed-precision", choices=["no", "bf16"], default="bf16")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    device = torch.device("cpu")
    common.set_threads(args.threads)
    base = [f"train.batch_size={args.batch_size}", f"model.base_channels={args.base_channels}",
            f"data.sequence_length={K}", "train.steps=100000", "data.num_workers=0", *args.sets]
    results = {}
    with tempfile.TemporaryDirectory(prefix="ssmtl-profile-") as tmp:
        cache_path = common.phantom_cache(Path(tmp), args.size)
        batches, accelerator = None, None
        for name in ("contrastive", "multitask"):
            tasks, sets = VARIANTS[name]
            config = common.run_config(tasks, base + sets, cache_path, args.mixed_precision)
            accelerator = accelerator or common.accelerator_for(config, device)
            trainer, cache, volumes = common.cache_trainer(config, accelerator, cache_path)
            if batches is None:
                batches = common.prefetch(cache, volumes, config, K, 4, accelerator.device)
            common.log(f"profiling {name}")
            results[name] = profile_variant(trainer, batches, args.steps)
    extra = {g: round(results["multitask"]["groups_ms"].get(g, 0.0) - results["contrastive"]["groups_ms"].get(g, 0.0), 1)
             for g in sorted(set(results["multitask"]["groups_ms"]) | set(results["contrastive"]["groups_ms"]))}
    out = {"benchmark": "multitask_profile", "hardware": common.hardware(device),
           "settings": {"size": args.size, "batch_size": args.batch_size, "base_channels": args.base_channels,
                        "mixed_precision": args.mixed_precision, "sets": args.sets, "steps": args.steps,
                        "threads": torch.get_num_threads()},
           "variants": results, "extra_ms": extra,
           "ratio": round(results["multitask"]["step_ms"] / results["contrastive"]["step_ms"], 3)}
    common.emit(out)
    return out


if __name__ == "__main__":
    main()
