"""How ssmtl's cost grows with the work: cache builds, pre-training, processes, readers.

    python benchmarks/scaling.py                 # the full measurement (about 10 minutes on 2 cores)
    python benchmarks/scaling.py --quick         # a smoke run with tiny sizes (seconds, no targets)
    python benchmarks/scaling.py --plot docs/img/scaling.png

Prints ONE JSON object (hardware, settings, measurements, fits, targets). Every
measurement runs the real command line in a child process (``python -m ssmtl ...``,
``accelerate launch ...``), so its wall time and peak resident memory (``wait4``'s
``ru_maxrss``, the largest of the process and the children it waited for) are the
user's, start-up included:

* **cache build**: 4, 16 and 64 phantom volumes at 128 px. Time is fitted as
  ``a + b * volumes`` (least squares; the target is R² >= 0.95, linear), and peak RSS
  at 64 volumes must stay within 1.2x of 4 volumes (one volume in memory at a time).
* **pre-training**: steady-state slices/s (median over the logged steps after a
  warm-up) and peak RSS with caches of 4 and 64 volumes: both flat within 15 %
  (a larger cache must not be loaded into memory).
* **processes**: one process (torch's default threads, then 1 thread) against two
  processes under ``accelerate launch --multi_gpu --num_processes 2`` on the CPU (gloo,
  1 thread each): throughput and scaling efficiency.
* **reader**: the training data loader alone, slices/s with 0, 1, 2 and 4 workers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

PRETRAIN_SETS = ["model.base_channels=8", "train.log_every=1", "train.checkpoint_every=100000", "train.warmup_steps=0"]


def run_measured(cmd: list[str], env: dict[str, str | None] | None = None) -> dict:
    """Run ``cmd``; its wall seconds and peak RSS (MiB). Fails loudly on a non-zero exit."""
    t0 = time.perf_counter()
    # a None value removes the variable: "torch's default threads" must not inherit OMP_NUM_THREADS=1
    merged = {k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=merged)
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{stderr.decode()[-3000:]}")
    return {"seconds": round(seconds, 3), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}


def linear_fit(x: list[float], y: list[float]) -> dict:
    """Least-squares ``y = intercept + slope * x`` and its R²."""
    xs, ys = np.asarray(x, float), np.asarray(y, float)
    slope, intercept = np.polyfit(xs, ys, 1)
    residual = ys - (intercept + slope * xs)
    total = ys - ys.mean()
    r2 = 1.0 - float(residual @ residual) / float(total @ total) if float(total @ total) > 0 else 1.0
    return {"slope": round(float(slope), 5), "intercept": round(float(intercept), 4), "r2": round(r2, 5)}


def ssmtl(*args: str) -> list[str]:
    return [sys.executable, "-m", "ssmtl", "--no-plugins", *args]


def build(folder: Path, volumes: int, size: int, slices: int) -> tuple[Path, dict]:
    out = folder / f"phantom-{volumes}.h5"
    measured = run_measured(ssmtl("cache", "build", "--dataset", "phantom", "--subjects", str(volumes),
                                  "--num-slices", str(slices), "--size", str(size), "--test-fraction", "0",
                                  "--out", str(out)))
    return out, {"volumes": volumes, **measured, "bytes": out.stat().st_size}


def steady_slices_per_s(run_dir: Path, warmup: int) -> float:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["slices_per_s"] for r in records if "slices_per_s" in r and r["step"] >= warmup]
    return float(statistics.median(rates))


def pretrain(folder: Path, cache: Path, name: str, steps: int, batch: int, launcher: list[str] | None = None,
             threads: int | None = None) -> dict:
    out = folder / name
    args = ["pretrain", "--data", str(cache), "--task", "contrastive", "--task", "order", "--out", str(out),
            "--steps", str(steps), "--batch-size", str(batch), "--workers", "1"]
    for s in PRETRAIN_SETS:
        args += ["--set", s]
    cmd = (launcher + ["-m", "ssmtl", "--no-plugins", *args]) if launcher else ssmtl(*args)
    # threads=None: torch's default (one per core), whatever this process was started with
    env = {"OMP_NUM_THREADS": str(threads) if threads else None}
    measured = run_measured(cmd, env)
    return {**measured, "slices_per_s": round(steady_slices_per_s(out, warmup=max(2, steps // 4)), 2)}


def median_run(runs: list[dict]) -> dict:
    """The median of each measure over repeated runs, with every repeat's slices/s kept."""
    return {"seconds": round(statistics.median(r["seconds"] for r in runs), 3),
            "peak_rss_mib": round(statistics.median(r["peak_rss_mib"] for r in runs), 1),
            "slices_per_s": round(statistics.median(r["slices_per_s"] for r in runs), 2),
            "repeats_slices_per_s": [r["slices_per_s"] for r in runs]}


def accelerate_launch(processes: int) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]


def reader(cache: Path, workers_list: list[int], batches: int, batch: int) -> list[dict]:
    """The pre-training loader alone (as training builds it), slices/s per worker count."""
    import loader as loader_bench  # benchmarks/loader.py

    from ssmtl.training.accelerator import make_accelerator
    from ssmtl.data.cache import SliceCache

    config = common.run_config(["contrastive", "order"], [f"train.batch_size={batch}"], cache)
    accelerator = make_accelerator("no")
    sliced = SliceCache(cache)
    volumes = list(range(len(sliced.volumes)))
    return [loader_bench.loader_throughput(config, sliced, volumes, 3, w, batches, accelerator) for w in workers_list]


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6), dpi=110)
    builds = result["cache_build"]["runs"]
    x = [r["volumes"] for r in builds]
    fit = result["cache_build"]["time_fit"]
    axes[0].plot(x, [r["seconds"] for r in builds], "o", label="measured")
    axes[0].plot(x, [fit["intercept"] + fit["slope"] * v for v in x], "-", label=f"fit, R²={fit['r2']:.3f}")
    axes[0].set(xlabel="volumes", ylabel="cache build (s)", title="cache build time")
    ax2 = axes[0].twinx()
    ax2.plot(x, [r["peak_rss_mib"] for r in builds], "s--", color="tab:red", label="peak RSS")
    ax2.set_ylabel("peak RSS (MiB)")
    ax2.set_ylim(0, 1.3 * max(r["peak_rss_mib"] for r in builds))  # from 0: flat looks flat
    axes[0].legend(fontsize=7, loc="upper left")
    pre = result["pretrain"]["runs"]
    axes[1].bar([f"{r['volumes']} vol" for r in pre], [r["slices_per_s"] for r in pre])
    axes[1].set(ylabel="slices/s", title="pre-training throughput by cache size")
    procs = result["processes"]
    runs = [("1 proc\ndefault thr.", procs["one_process_default_threads"]), ("1 proc\n1 thread", procs["one_process_one_thread"]),
            ("2 procs\n1 thread each", procs["two_processes_one_thread_each"])]
    axes[3].bar([name for name, _ in runs], [r["slices_per_s"] for _, r in runs], color=["tab:gray", "tab:blue", "tab:green"])
    axes[3].axhline(2 * procs["one_process_one_thread"]["slices_per_s"], color="k", ls=":", label="2x one thread (ideal)")
    axes[3].set(ylabel="slices/s", title=f"processes: efficiency {procs['efficiency_vs_one_thread']:.2f}")
    axes[3].legend(fontsize=7)
    rd = result["reader"]
    axes[2].plot([r["workers"] for r in rd], [r["slices_per_s"] for r in rd], "o-")
    axes[2].set(xlabel="loader workers", ylabel="slices/s", title="reader throughput")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run, targets not judged")
    parser.add_argument("--plot", type=Path, help="write the curves as a PNG here")
    parser.add_argument("--json", type=Path, help="also write the JSON here")
    parser.add_argument("--steps", type=int, help="pre-training steps per run (default 40; 6 with --quick)")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of the pre-training runs, each variant's median reported (a shared machine: 3)")
    args = parser.parse_args(argv)
    # the machine may be shared: the load around the run says how far to trust the timings
    load_before = [round(x, 2) for x in os.getloadavg()]
    size, slices = (32, 8) if args.quick else (128, 32)
    counts = [2, 3, 4] if args.quick else [4, 16, 64]
    steps, batch = (6, 2) if args.quick else (40, 8)
    steps = args.steps or steps
    with tempfile.TemporaryDirectory(prefix="ssmtl-scaling-") as tmp:
        folder = Path(tmp)
        caches, builds = {}, []
        for n in counts:
            common.log(f"cache build: {n} volumes")
            caches[n], record = build(folder, n, size, slices)
            builds.append(record)
        time_fit = linear_fit([r["volumes"] for r in builds], [r["seconds"] for r in builds])
        rss_ratio = builds[-1]["peak_rss_mib"] / builds[0]["peak_rss_mib"]

        small, large = counts[0], counts[-1]
        middle = counts[1]
        # The pre-training runs are repeated in turns (A B C D, A B C D, ...) and each reports
        # the median: on a shared machine a neighbour's burst then hits one repeat, not one
        # variant. One thread each where not stated: fewer threads are disturbed less.
        variants = {
            "small": lambda r: pretrain(folder, caches[small], f"pre-{small}-{r}", steps, batch, threads=1),
            "large": lambda r: pretrain(folder, caches[large], f"pre-{large}-{r}", steps, batch, threads=1),
            "one_default": lambda r: pretrain(folder, caches[middle], f"p1-{r}", steps, batch),
            "one_thread": lambda r: pretrain(folder, caches[middle], f"p1t-{r}", steps, batch, threads=1),
            "two": lambda r: pretrain(folder, caches[middle], f"p2-{r}", steps, batch, launcher=accelerate_launch(2), threads=1),
        }
        repeats: dict[str, list[dict]] = {name: [] for name in variants}
        for r in range(args.repeats):
            common.log(f"pre-training runs, round {r + 1}/{args.repeats}")
            for name, run in variants.items():
                repeats[name].append(run(r))
        med = {name: median_run(runs) for name, runs in repeats.items()}
        pre = [{"volumes": small, **med["small"]}, {"volumes": large, **med["large"]}]
        throughput_ratio = pre[1]["slices_per_s"] / pre[0]["slices_per_s"]
        pre_rss_ratio = pre[1]["peak_rss_mib"] / pre[0]["peak_rss_mib"]
        one_default, one_thread, two = med["one_default"], med["one_thread"], med["two"]

        common.log("reader")
        readers = reader(caches[large], [0, 1, 2, 4], batches=4 if args.quick else 30, batch=batch)

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    result = {
        "benchmark": "scaling",
        "hardware": common.hardware(common.resolve_device("cpu")),
        "load_average": {"before": load_before, "after": [round(x, 2) for x in os.getloadavg()],
                         "note": "1, 5 and 15 minute load averages (os.getloadavg) before and after the run"},
        "settings": {"quick": args.quick, "slice_size": size, "slices_per_volume": slices, "volumes": counts,
                     "pretrain": {"tasks": ["contrastive", "order"], "steps": steps, "batch_size": batch,
                                  "sets": PRETRAIN_SETS, "num_workers": 1, "threads": 1},
                     "repeats": args.repeats},
        "cache_build": {"runs": builds, "time_fit": time_fit, "peak_rss_ratio": round(rss_ratio, 3),
                        "seconds_per_volume": time_fit["slope"]},
        "pretrain": {"runs": pre, "throughput_ratio": round(throughput_ratio, 3), "peak_rss_ratio": round(pre_rss_ratio, 3)},
        "processes": {
            "one_process_default_threads": one_default, "one_process_one_thread": one_thread, "two_processes_one_thread_each": two,
            "speedup_vs_one_thread": round(two["slices_per_s"] / one_thread["slices_per_s"], 3),
            "efficiency_vs_one_thread": round(two["slices_per_s"] / (2 * one_thread["slices_per_s"]), 3),
            "speedup_vs_default_threads": round(two["slices_per_s"] / one_default["slices_per_s"], 3),
            "cores": cores,
        },
        "reader": readers,
        "targets": {
            "cache_build_time_linear_r2_min": 0.95, "cache_build_rss_ratio_max": 1.2,
            "pretrain_flat_within": 0.15,
        },
    }
    if not args.quick:
        result["targets_met"] = {
            "cache_build_time_linear": time_fit["r2"] >= 0.95,
            "cache_build_rss_flat": rss_ratio <= 1.2,
            "pretrain_throughput_flat": abs(throughput_ratio - 1) <= 0.15,
            "pretrain_rss_flat": abs(pre_rss_ratio - 1) <= 0.15,
        }
    if args.plot:
        plot(result, args.plot)
    common.emit(result, args.json)
    return result


if __name__ == "__main__":
    main()
