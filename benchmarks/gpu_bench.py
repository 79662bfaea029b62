#!/usr/bin/env python3
"""GPU throughput and model FLOP utilisation (MFU) of the pre-training step.

For the default model (``base_channels`` 16) and a wide one (64), at 128² and 256²,
with bf16 autocast, ``train.channels_last`` and ``train.compile`` each on and off,
``Trainer.step`` (the default tasks, contrastive + order, ``--task`` to change) runs
on a synthetic batch that already lies on the GPU (no loader), and the result has:

* slices/s = batch x k / step time;
* MFU = FLOPs per step (convolutions and matrix products of one training step,
  forward + backward, counted with ``torch.utils.flop_counter.FlopCounterMode``)
  x steps/s / the GPU's dense bf16 peak (H100 SXM and H200: 989 TFLOP/s, H100 NVL:
  835, H100 PCIe: 756; from ``torch.cuda.get_device_name``). fp32 runs are rated
  against the same bf16 peak.

Grid: every eager combination (2 models x 2 sizes x bf16 x channels_last = 16 runs)
comes first; then ``torch.compile`` runs with bf16 + channels_last, the wide 256²
model first, for as long as ``--deadline-s`` allows (compilation takes tens of
seconds per model): the JSON lists what ran and what was skipped. One run of the
real loader at 256² (``make_loader`` on a phantom cache) checks that it keeps up
with the fastest step (target >= 3x, as in ``benchmarks/loader.py``). On a GPU, one
extra run repeats the wide 256² bf16 + channels_last configuration with
``torch.backends.cudnn.benchmark`` (cuDNN autotuning, which the engine leaves off).
Target: the wide model at 256² reaches >= 25 % of peak.

``--smoke`` runs a tiny grid on any device (CPU included; no compile) to check the
script itself. Usage: ``python benchmarks/gpu_bench.py [--out gpu.json] [--smoke]``;
``bash benchmarks/gpu.sh`` installs what is missing and runs it.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

TARGET_MFU = 0.25
LOADER_TARGET = 3.0


def peak_bf16_flops(device_name: str) -> tuple[float | None, str | None]:
    """Dense (no sparsity) bf16 tensor-core peak of known GPUs, in FLOP/s."""
    name = device_name.upper()
    if "H200" in name:
        return 989e12, "H200 (989 TFLOP/s dense bf16)"
    if "H100" in name:
        if "PCIE" in name:
            return 756e12, "H100 PCIe (756 TFLOP/s dense bf16)"
        if "NVL" in name:
            return 835e12, "H100 NVL (835 TFLOP/s dense bf16)"
        return 989e12, "H100 SXM (989 TFLOP/s dense bf16)"
    return None, None


def reset_accelerate() -> None:
    """Forget Accelerate's process-wide state, so the next run may use another precision."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()


def synthetic_batch(batch_size: int, k: int, size: int, device: torch.device):
    from ssmtl.api.views import SequenceBatch

    start = torch.randint(0, 100, (batch_size, 1), device=device)
    index = start + torch.arange(k, device=device)
    return SequenceBatch(
        slices=torch.randn(batch_size, k, size, size, device=device),
        positions=index.float() / 110,
        volume=torch.randint(0, 64, (batch_size,), device=device),
        slice_index=index,
    )


def build(args, base: int, bf16: bool, channels_last: bool, compile_: bool, device: torch.device):
    reset_accelerate()
    if compile_:  # each configuration compiles afresh, as a new run would (and stays under dynamo's recompile limit)
        import torch._dynamo

        torch._dynamo.reset()
    sets = [f"model.base_channels={base}", f"train.batch_size={args.batch_size}", "train.steps=100000",
            f"train.channels_last={str(channels_last).lower()}", f"train.compile={str(compile_).lower()}"]
    config = common.run_config(args.task, sets, None, "bf16" if bf16 else "no")
    accelerator = common.accelerator_for(config, device)
    # sized like a large cache, so the MoCo queue keeps its configured size
    return common.make_trainer(config, accelerator, num_volumes=64, num_slices=100_000)


def release(*objects) -> None:
    del objects
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def time_steps(trainer, batch, warmup: int, steps: int, device: torch.device) -> tuple[float, float]:
    """(seconds of the warm-up steps, which include compilation; median seconds per timed step)."""
    common.synchronize(device)
    t0 = time.perf_counter()
    for s in range(warmup):
        trainer.step([batch], s)
    common.synchronize(device)
    warm = time.perf_counter() - t0
    # steps are timed in small groups (one sync each): a median per group is robust to a hiccup
    groups, per = [], max(1, steps // 3)
    s = warmup
    while s < warmup + steps:
        n = min(per, warmup + steps - s)
        t0 = time.perf_counter()
        for _ in range(n):
            trainer.step([batch], s)
            s += 1
        common.synchronize(device)
        groups.append((time.perf_counter() - t0) / n)
    return warm, statistics.median(groups)


def run_one(args, model: str, base: int, size: int, bf16: bool, channels_last: bool, compile_: bool,
            flops: dict, peak: float | None, device: torch.device) -> dict:
    t0 = time.perf_counter()
    trainer = build(args, base, bf16, channels_last, compile_, device)
    build_s = time.perf_counter() - t0  # includes the compile probe
    compiled = hasattr(trainer.unwrapped.network.encoder, "_orig_mod")  # False: fell back to eager
    k = trainer.sequence_length
    batch = synthetic_batch(args.batch_size, k, size, trainer.accelerator.device)
    key = (model, size)
    if key not in flops:  # the same work whatever the precision, layout or compilation
        flops[key] = common.step_flops(trainer.step, batch)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    warm, step_s = time_steps(trainer, batch, args.warmup, args.steps, device)
    slices = args.batch_size * k
    row = {
        "model": model, "base_channels": base, "size": size, "bf16": bf16, "channels_last": channels_last,
        "compile": compile_, "sequence_length": k, "step_ms": round(step_s * 1e3, 3), "slices_per_s": round(slices / step_s, 1),
        "gflop_per_step": round(flops[key] / 1e9, 2), "tflop_per_s": round(flops[key] / step_s / 1e12, 2),
        "mfu": round(flops[key] / step_s / peak, 4) if peak else None, "build_s": round(build_s, 2),
        "warmup_s": round(warm, 2),
    }
    if compile_:
        row["compiled"] = compiled
    if device.type == "cuda":
        row["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    common.log(f"{model:7s} {size}px bf16={bf16!s:5s} cl={channels_last!s:5s} compile={compile_!s:5s} "
               f"{row['step_ms']:8.2f} ms/step {row['slices_per_s']:8.0f} slices/s mfu={row['mfu']}")
    release(trainer, batch)
    return row


def loader_check(args, size: int, k: int, step_slices_per_s: float, device: torch.device) -> dict:
    """Slices/s of the real loader at ``size`` px (default workers, and more) against the step."""
    from ssmtl.data.cache import SliceCache
    from ssmtl.pretraining.engine import make_loader, select_volumes
    from ssmtl.data.sampling import SequenceDataset

    reset_accelerate()
    with tempfile.TemporaryDirectory(prefix="ssmtl-gpu-") as tmp:
        path = common.phantom_cache(Path(tmp), size, subjects=args.loader_subjects, num_slices=32)
        config = common.run_config(args.task, [f"train.batch_size={args.batch_size}", "train.steps=100000"], path)
        accelerator = common.accelerator_for(config, device)
        cache = SliceCache(path)
        volumes = select_volumes(cache, config)
        rows = []
        for workers in sorted({config.data.num_workers, *args.loader_workers}):
            cfg = config.model_copy(update={"data": config.data.model_copy(update={"num_workers": workers})})
            it = iter(make_loader(cfg, SequenceDataset(cache, k, cfg.data.stride, volumes), accelerator, 0))
            next(it).to(accelerator.device)
            t0 = time.perf_counter()
            for _ in range(args.loader_batches):
                batch = next(it).to(accelerator.device)
            common.synchronize(device)
            seconds = time.perf_counter() - t0
            del it
            rate = args.loader_batches * batch.slices.shape[0] * batch.slices.shape[1] / seconds
            rows.append({"workers": workers, "slices_per_s": round(rate, 1), "vs_step": round(rate / step_slices_per_s, 2),
                         "default": workers == config.data.num_workers})
            common.log(f"loader {size}px, {workers} workers: {rate:.0f} slices/s ({rate / step_slices_per_s:.2f}x the step)")
    default = next(r for r in rows if r["default"])
    return {"size": size, "step_slices_per_s": step_slices_per_s, "by_workers": rows, "target": LOADER_TARGET,
            "target_met_default_workers": default["vs_step"] >= LOADER_TARGET,
            "min_workers_meeting_target": min((r["workers"] for r in rows if r["vs_step"] >= LOADER_TARGET), default=None)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, 2 steps, no compile: checks the script on any device")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--task", action="append", default=None, help="pretext task (repeatable; default: the default tasks)")
    parser.add_argument("--batch-size", type=int, default=16, help="sequences per step (x k slices)")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--deadline-s", type=float, default=260,
                        help="start a compile run only if it should end within this many seconds of the start")
    parser.add_argument("--compile-estimate-s", type=float, default=90,
                        help="expected length of the first compile run (later ones: the last one's)")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--loader-workers", type=int, nargs="*", default=[4, 8])
    parser.add_argument("--loader-batches", type=int, default=20)
    parser.add_argument("--loader-subjects", type=int, default=8)
    args = parser.parse_args(argv)
    args.task = args.task or []
    t_start = time.perf_counter()

    device = common.resolve_device(args.device)
    models, sizes = {"default": 16, "wide": 64}, (128, 256)
    compile_allowed = not args.no_compile
    if args.smoke:
        models, sizes = {"default": 4, "wide": 8}, (32,)
        args.batch_size, args.steps, args.warmup, compile_allowed = 2, 2, 1, False
        args.loader_batches, args.loader_workers, args.loader_subjects = 3, [0], 2
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 runs: TF32 matmuls, as cuDNN convolutions already use
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else common.cpu_model()
    peak, peak_label = peak_bf16_flops(name) if device.type == "cuda" else (None, None)

    rows, flops, skipped = [], {}, []
    for model, base in models.items():
        for size in sizes:
            for bf16 in (False, True):
                for cl in (False, True):
                    rows.append(run_one(args, model, base, size, bf16, cl, False, flops, peak, device))
    eager_s = time.perf_counter() - t_start

    # the loader against the fastest step at the largest size (the most demanding consumer)
    largest = max(sizes)
    fastest = max((r for r in rows if r["size"] == largest), key=lambda r: r["slices_per_s"])
    loader = loader_check(args, largest, fastest["sequence_length"], fastest["slices_per_s"], device)

    extras = []
    if device.type == "cuda":  # cuDNN autotuning (off in the engine) on the target configuration
        torch.backends.cudnn.benchmark = True
        extras.append({**run_one(args, "wide", models["wide"], largest, True, True, False, flops, peak, device), "cudnn_benchmark": True})
        torch.backends.cudnn.benchmark = False

    if compile_allowed:
        order = sorted(((m, b, s) for m, b in models.items() for s in sizes), key=lambda x: (-x[2], -x[1]))
        estimate = args.compile_estimate_s
        for model, base, size in order:
            elapsed = time.perf_counter() - t_start
            if elapsed + estimate > args.deadline_s:
                skipped.append({"model": model, "size": size, "bf16": True, "channels_last": True, "compile": True,
                                "reason": f"time: {elapsed:.0f}s elapsed + ~{estimate:.0f}s > --deadline-s {args.deadline_s:.0f}"})
                continue
            rows.append(run_one(args, model, base, size, True, True, True, flops, peak, device))
            estimate = time.perf_counter() - t_start - elapsed

    wide = [r for r in rows if r["model"] == "wide" and r["size"] == max(sizes) and r["mfu"] is not None]
    best_wide = max(wide, key=lambda r: r["mfu"]) if wide else None
    result = {
        "benchmark": "gpu_bench",
        "hardware": common.hardware(device),
        "peak_bf16_flops": peak, "peak": peak_label,
        "settings": {
            "smoke": args.smoke, "tasks": args.task or "default (contrastive, order)", "batch_size": args.batch_size,
            "steps": args.steps, "warmup_steps": args.warmup, "models": models, "sizes": list(sizes),
            "grid": "eager: all bf16 x channels_last; compile: bf16 + channels_last only, within --deadline-s"
                    if compile_allowed else "eager only (no compile)",
            "tf32": device.type == "cuda", "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "eager_grid_seconds": round(eager_s, 1),
        },
        "runs": rows,
        "skipped": skipped,
        "extras": extras,
        "loader": loader,
        "target_mfu": TARGET_MFU,
        "best_wide_largest": best_wide,
        "target_met": (best_wide["mfu"] >= TARGET_MFU) if best_wide else None,
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    if peak is None:
        result["note"] = f"no known bf16 peak for {name!r}: MFU not computed"
    common.emit(result, args.out)
    return result


if __name__ == "__main__":
    main()
