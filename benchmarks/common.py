"""Shared helpers of the performance benchmarks (step_overhead, multitask_cost, loader, gpu_bench).

Every benchmark prints ONE JSON object on stdout (progress goes to stderr), built
from the same pieces: the hardware it ran on, a phantom cache generated into a
temporary folder, a :class:`~ssmtl.pretraining.engine.Trainer` exactly as ``ssmtl
pretrain`` builds it, and interleaved timing blocks (A B B A A B ...) so that a
CPU shared with other processes slows every variant alike.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from functools import lru_cache
from pathlib import Path
from typing import Callable

import torch

# the benchmarks run from a checkout, installed or not
_SRC = Path(__file__).resolve().parents[1] / "src"
if _SRC.is_dir() and str(_SRC) not in sys.path:
    sys.path.insert(0, str(_SRC))


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def emit(result: dict, path: Path | None = None) -> None:
    """Print the result as one JSON object on stdout (and write it to ``path``)."""
    text = json.dumps(result, indent=2)
    print(text, flush=True)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    return device


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware(device: torch.device) -> dict:
    info = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
    }
    if device.type == "cuda":
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    return info


def set_threads(threads: int) -> None:
    """``threads`` > 0: intra-op threads of this process (0 keeps torch's default, one per core).

    On a CPU that other processes also use, one thread per *free* core avoids the
    large slow-downs of oversubscribed OpenMP barriers.
    """
    if threads > 0:
        torch.set_num_threads(threads)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@lru_cache(maxsize=1)
def registry():
    """Built-in plugins only: installed third-party plugins must not change what is measured."""
    from ssmtl.host.registry import build_registry

    return build_registry(external=False)


def phantom_cache(folder: Path, size: int, subjects: int = 8, num_slices: int = 32) -> Path:
    """Generate a phantom CT cache of ``subjects`` volumes of ``num_slices`` slices of ``size``² px."""
    from ssmtl.data.build import build_cache
    from ssmtl.data.preprocess import PreprocessConfig

    t0 = time.perf_counter()
    path = build_cache(
        dataset="phantom",
        dataset_options={"subjects": subjects, "size": size, "num_slices": num_slices},
        preprocess=PreprocessConfig(size=size),
        out=Path(folder) / f"phantom{size}.h5",
        registry=registry(),
        test_fraction=0.0,  # every volume is pre-training data
    )
    log(f"built {path.name}: {subjects} x {num_slices} slices of {size}px in {time.perf_counter() - t0:.1f}s")
    return path


def run_config(tasks: list[str], sets: list[str], data: Path | None = None, mixed_precision: str = "no"):
    """A PretrainConfig as ``ssmtl pretrain --task ... --set ... --mixed-precision ...`` resolves it.

    The environment is ignored. ``mixed_precision`` goes in as a flag, as the CLI
    passes it (``--set train.mixed_precision=no`` would read YAML's ``no`` as false).
    """
    from ssmtl.pretraining.config import resolve_pretrain_config

    flags = {"train.mixed_precision": mixed_precision, "data.path": str(data) if data is not None else None}
    return resolve_pretrain_config(flags=flags, tasks=tasks, sets=sets, environ={}, registry=registry())


def accelerator_for(config, device: torch.device):
    """The engine's Accelerator, or a CPU one when ``--device cpu`` is asked on a CUDA machine."""
    from ssmtl.training.accelerator import make_accelerator

    if device.type == "cpu" and torch.cuda.is_available():
        from accelerate import Accelerator

        return Accelerator(cpu=True, mixed_precision=config.train.mixed_precision)
    return make_accelerator(config.train.mixed_precision)


def make_trainer(config, accelerator, num_volumes: int, num_slices: int):
    from ssmtl.pretraining.engine import Trainer

    return Trainer(config, registry(), accelerator, num_volumes=num_volumes, num_slices=num_slices)


def cache_trainer(config, accelerator, cache_path: Path):
    """A Trainer sized for the cache's volumes (as ``run_pretraining`` sizes it), and the volumes."""
    from ssmtl.data.cache import SliceCache
    from ssmtl.pretraining.engine import select_volumes

    cache = SliceCache(cache_path)
    volumes = select_volumes(cache, config)
    slices = sum(cache.volumes[v].num_slices for v in volumes)
    return make_trainer(config, accelerator, len(volumes), slices), cache, volumes


def prefetch(cache, volumes, config, k: int, count: int, device: torch.device) -> list:
    """``count`` micro-batches read, sampled and collated as ``make_loader`` does, moved to ``device``."""
    from ssmtl.data.sampling import SequenceDataset, StepBatchSampler, collate_sequences

    dataset = SequenceDataset(cache, k, config.data.stride, volumes)
    sampler = StepBatchSampler(len(dataset), config.train.batch_size, seed=config.seed)
    return [collate_sequences([dataset[i] for i in sampler.batch(m)]).to(device) for m in range(count)]


class StepRunner:
    """``run(n)``: n training steps of one variant on a fixed cycle of pre-fetched batches."""

    def __init__(self, step: Callable[[list, int], object], batches: list):
        self.step_fn = step
        self.batches = batches
        self.step = 0

    def run(self, n: int) -> None:
        for _ in range(n):
            self.step_fn([self.batches[self.step % len(self.batches)]], self.step)
            self.step += 1


def interleaved(runners: dict[str, Callable[[int], None]], blocks: int, steps: int, device: torch.device,
                clock: str = "wall") -> dict[str, list[float]]:
    """Per-step seconds of every variant in each block.

    Block b runs every variant for ``steps`` steps, in the given order for even b and
    reversed for odd b (A B, B A, A B, ...), so that neither always goes first after
    the other warmed the caches.

    ``clock="cpu"`` counts this process's CPU seconds (``time.process_time``) instead of
    wall seconds: on a CPU shared with other jobs, time spent descheduled is left out
    (with one torch thread it is the step's own compute; on a GPU it misses the device).
    """
    now = time.process_time if clock == "cpu" else time.perf_counter
    names = list(runners)
    times: dict[str, list[float]] = {n: [] for n in names}
    for b in range(blocks):
        for name in names if b % 2 == 0 else reversed(names):
            synchronize(device)
            t0 = now()
            runners[name](steps)
            synchronize(device)
            times[name].append((now() - t0) / steps)
        log(f"block {b + 1}/{blocks}: " + "  ".join(f"{n}={times[n][-1] * 1e3:.1f}ms" for n in names))
    return times


def step_flops(step: Callable[[list, int], object], batch, step_index: int = 0) -> int:
    """FLOPs of one training step (forward, backward, optimizer), counted by torch's FlopCounterMode.

    Counts matrix products and convolutions (2 FLOPs per multiply-add), the work that
    dominates and that a GPU's tensor-core peak refers to; element-wise work is left out.
    """
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step([batch], step_index)
    return counter.get_total_flops()


def summary(seconds: list[float]) -> dict:
    """Median, min and max per-step milliseconds of a list of per-block timings."""
    ms = [s * 1e3 for s in seconds]
    return {"median_ms": round(statistics.median(ms), 3), "min_ms": round(min(ms), 3), "max_ms": round(max(ms), 3)}


def block_ratios(numerator: list[float], denominator: list[float]) -> dict:
    """The per-block ratios and their median (the headline number), plus the ratio of medians."""
    ratios = [a / b for a, b in zip(numerator, denominator)]
    return {
        "median": round(statistics.median(ratios), 4),
        "ratio_of_medians": round(statistics.median(numerator) / statistics.median(denominator), 4),
        "blocks": [round(r, 4) for r in ratios],
    }
