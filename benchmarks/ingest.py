#!/usr/bin/env python3
"""Ingestion benchmarks; prints one JSON object.

1. ``sequence_reads``: random k=3 slice windows read from the HDF5 cache
   (``SequenceDataset``) versus decoding the source ``.nii.gz`` for every sample
   (nibabel's array proxy, the cheapest way to get three slices out of a gzip
   NIfTI; it still has to inflate the file up to them, and it skips the resampling
   the cache has already done, so the ratio is a lower bound), for small
   (256 x 256 x 96) and clinical-size (512 x 512 x 120) sources. Target: >= 20x.
2. ``loader_throughput``: slices/s of ``SequenceDataset`` + ``StepBatchSampler`` +
   ``collate_sequences`` through a ``DataLoader`` with 0, 1 and 2 workers, each
   batch then augmented with ``ssmtl.training.augment.augment`` (as the training step
   does), on this machine's CPU.
3. ``build_peak_rss``: peak resident memory of ``cache build`` for 1 and for 20
   volumes, each build in a fresh process (its VmHWM; with workers, the largest
   worker's too). Target: the 20-volume peak <= 1.5x the 1-volume peak.

Usage: ``python benchmarks/ingest.py [--quick]``. Volumes are synthetic CT-like
scans (512 x 512 x 120 int16 for the memory runs, the size of a clinical CT);
nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

SEQUENCE = 3


def synthetic_ct(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """A CT-like int16 volume in HU: air, an elliptic body with noise, a few dense and dark blobs."""
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    body = (x / 0.8) ** 2 + (y / 0.6) ** 2 < 1
    volume = np.full(shape, -1000, dtype=np.int16)
    for z in range(shape[2]):
        plane = np.where(body, 40 + rng.normal(0, 20, body.shape), -1000 + rng.normal(0, 10, body.shape))
        cx, cy = 0.3 * np.sin(z / 9 + seed), 0.2 * np.cos(z / 7)
        plane[(x - cx) ** 2 + (y - cy) ** 2 < 0.02] = 700  # bone
        plane[(x + cx) ** 2 + (y + 0.1) ** 2 < 0.05] = -850  # lung
        volume[:, :, z] = plane.astype(np.int16)
    return volume


def write_volumes(folder: Path, count: int, shape: tuple[int, int, int]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    affine = np.diag([0.8, 0.8, 2.0, 1.0])
    paths = []
    for i in range(count):
        path = folder / f"case{i:03d}.nii.gz"
        nib.save(nib.Nifti1Image(synthetic_ct(shape, i), affine), str(path))
        paths.append(path)
    return paths


def build(images: Path, out: Path, workers: int = 0, size: int = 128) -> Path:
    from ssmtl.data.build import build_cache
    from ssmtl.data.preprocess import PreprocessConfig
    from ssmtl.host.registry import build_registry

    return build_cache(dataset="nifti", dataset_options={"images": str(images), "modality": "ct"},
                       preprocess=PreprocessConfig(size=size), out=out, registry=build_registry(external=False),
                       workers=workers, force=True)


# -- 1. random sequence reads ------------------------------------------------------------------


def bench_reads(tmp: Path, volumes: int, samples: int, shape: tuple[int, int, int]) -> dict:
    from ssmtl.data.cache import SliceCache
    from ssmtl.data.sampling import SequenceDataset

    name = "reads-{}x{}x{}".format(*shape)
    paths = write_volumes(tmp / name, volumes, shape)
    cache_path = build(tmp / name, tmp / f"{name}.h5")
    dataset = SequenceDataset(SliceCache(cache_path), length=SEQUENCE)
    rng = np.random.default_rng(0)
    windows = rng.integers(0, len(dataset), samples)

    dataset[int(windows[0])]  # open the handle once, as a loader worker does
    start = time.perf_counter()
    for i in windows:
        item = dataset[int(i)]
    cache_s = (time.perf_counter() - start) / samples
    assert item["slices"].shape[0] == SEQUENCE

    start = time.perf_counter()
    for i in windows:
        volume, first = (int(v) for v in dataset.windows[int(i)])
        image = nib.load(str(paths[volume]))
        block = np.asarray(image.dataobj[:, :, first:first + SEQUENCE], dtype=np.float32)
    nifti_s = (time.perf_counter() - start) / samples
    assert block.shape[2] == SEQUENCE
    return {
        "volumes": volumes, "volume_shape": list(shape), "cache_slice_shape": list(dataset.cache.slice_shape),
        "samples": samples, "k": SEQUENCE,
        "cache_ms_per_sample": round(cache_s * 1e3, 3),
        "nifti_decode_ms_per_sample": round(nifti_s * 1e3, 3),
        "speedup": round(nifti_s / cache_s, 1),
        "target_speedup": 20,
        "cache_path": str(cache_path),
    }


# -- 2. loader + augmentation throughput ----------------------------------------------------------


def _loader_slices_per_s(cache_path: Path, workers: int, steps: int, batch_size: int) -> float:
    import torch

    from ssmtl.training.augment import AugmentConfig, augment
    from ssmtl.data.sampling import SequenceDataset, StepBatchSampler, collate_sequences

    config = AugmentConfig()
    dataset = SequenceDataset(cache_path, length=SEQUENCE)  # fresh: no handle open before workers start
    warmup = 3
    sampler = StepBatchSampler(len(dataset), batch_size, seed=0, stop=steps + warmup)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=workers,
                                         collate_fn=collate_sequences, persistent_workers=False,
                                         prefetch_factor=4 if workers else None)
    batches = iter(loader)
    for _ in range(warmup):  # worker start-up is not throughput
        next(batches)
    slices = 0
    start = time.perf_counter()
    for batch in batches:
        b, k, h, w = batch.slices.shape
        view, _ = augment(batch.slices.reshape(b * k, 1, h, w), config, group=k)
        slices += view.shape[0]
    return round(slices / (time.perf_counter() - start), 1)


def bench_loader(cache_path: Path, steps: int, batch_size: int = 16) -> dict:
    """Loader + augmentation, with torch's default intra-op threads and with one.

    Augmentation runs in the main process; on a small or shared CPU its thread pool
    can oversubscribe the cores (measured here: 8x slower with 2 threads than with
    1 while other jobs ran), so both settings are reported.
    """
    import torch

    torch.manual_seed(0)
    default_threads = torch.get_num_threads()
    results = {}
    for threads in dict.fromkeys((default_threads, 1)):
        torch.set_num_threads(threads)
        results[f"torch_threads_{threads}"] = {
            f"workers_{workers}": _loader_slices_per_s(cache_path, workers, steps, batch_size) for workers in (0, 1, 2)
        }
    torch.set_num_threads(default_threads)
    return {"slices_per_s": results, "batch_size": batch_size, "k": SEQUENCE, "steps": steps}


# -- 3. build peak memory -------------------------------------------------------------------------


def _child_build(images: str, out: str, workers: int) -> None:
    """Runs in a fresh process: build, then report this process's peak RSS.

    VmHWM, not ``ru_maxrss``: Linux carries ``ru_maxrss`` over ``execve`` from the
    forked parent, so a child of a large benchmark process would report the parent's
    size; VmHWM belongs to the new address space only.
    """
    build(Path(images), Path(out), workers=workers)
    print(json.dumps({"self_kb": _peak_kb(os.getpid())}))


def _descendants(pid: int) -> set[int]:
    """Process ids below ``pid`` (from /proc; workers of a forkserver pool are grandchildren)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _peak_kb(pid: int) -> int:
    """VmHWM (the process's own peak RSS so far), or 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def measure_build(images: Path, out: Path, workers: int) -> dict:
    """Peak RSS of a build in a fresh process; worker peaks are sampled from /proc while it runs.

    Pool workers are not the builder's children under forkserver, so the builder's
    ``RUSAGE_CHILDREN`` cannot see them; their VmHWM (monotonic) is read every 20 ms.
    """
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, __file__, "--child-build", str(images), str(out), str(workers)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    worker_peaks: dict[int, int] = {}
    while process.poll() is None:
        for pid in _descendants(process.pid):
            worker_peaks[pid] = max(worker_peaks.get(pid, 0), _peak_kb(pid))
        time.sleep(0.02)
    stdout, stderr = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"build failed:\n{stderr}")
    report = json.loads(stdout.strip().splitlines()[-1])
    largest_worker = max(worker_peaks.values(), default=0)
    return {"seconds": round(time.perf_counter() - start, 1),
            "builder_peak_mb": round(report["self_kb"] / 1024, 1),
            "largest_worker_peak_mb": round(largest_worker / 1024, 1) if workers else None}


def bench_memory(tmp: Path, shape: tuple[int, int, int], many: int) -> dict:
    source = write_volumes(tmp / "rss-source", 1, shape)[0]
    folders = {}
    for count in (1, many):
        folder = tmp / f"rss-{count}"
        folder.mkdir()
        for i in range(count):  # the same scan under many names: each is read and processed on its own
            (folder / f"case{i:03d}.nii.gz").symlink_to(source)
        folders[count] = folder
    runs = {}
    for count in (1, many):
        runs[f"volumes_{count}"] = measure_build(folders[count], tmp / f"rss-{count}.h5", workers=0)
    runs[f"volumes_{many}_workers_2"] = measure_build(folders[many], tmp / f"rss-{many}-w2.h5", workers=2)
    one, lots = runs["volumes_1"]["builder_peak_mb"], runs[f"volumes_{many}"]["builder_peak_mb"]
    raw_mb = np.prod(shape) * 4 / 2**20
    return {"volume_shape": list(shape), "float32_volume_mb": round(float(raw_mb), 1), "runs": runs,
            "ratio_many_over_one": round(lots / one, 3), "target_ratio": 1.5}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples and steps")
    parser.add_argument("--child-build", nargs=3, metavar=("IMAGES", "OUT", "WORKERS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_build:
        images, out, workers = args.child_build
        _child_build(images, out, int(workers))
        return
    with tempfile.TemporaryDirectory(prefix="ssmtl-bench-") as tmp:
        tmp = Path(tmp)
        shapes = [(256, 256, 96)] if args.quick else [(256, 256, 96), (512, 512, 120)]
        reads = [bench_reads(tmp, volumes=4 if args.quick else 8, samples=60 if args.quick else 300, shape=shape)
                 for shape in shapes]
        loader = bench_loader(Path(reads[0]["cache_path"]), steps=10 if args.quick else 40)
        for entry in reads:
            del entry["cache_path"]
        memory = bench_memory(tmp, (256, 256, 60) if args.quick else (512, 512, 120), many=20)
    report = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "sequence_reads": reads,
        "loader_throughput": loader,
        "build_peak_rss": memory,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
