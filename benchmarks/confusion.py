#!/usr/bin/env python3
"""Which structures a fine-tuned run takes for which: the voxel confusion matrix on a cache's test volumes.

Prints one JSON object: the class names, ``counts[true][predicted]`` (voxels) and ``share``
(each row divided by its total: the fraction of a true class's voxels given each label),
on the cache grid, over the volumes of the chosen split. ``--markdown`` prints the shares
as a table instead. docs/benchmarks.md uses it to show where the phantom's fully supervised
ceiling is lost.

Usage: ``python benchmarks/confusion.py RUN CACHE [--split test] [--markdown]``
(RUN: a fine-tuning run directory, e.g. a benchmark cell ``finetune/scratch/finetune/n11/seed0``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ssmtl.data.cache import SliceCache  # noqa: E402
from ssmtl.host.registry import get_registry  # noqa: E402
from ssmtl.downstream.model import load_finetuned  # noqa: E402
from ssmtl.downstream.predictor import Predictor  # noqa: E402


def confusion(run: Path, cache_path: Path, split: str) -> dict:
    model, _ = load_finetuned(run, get_registry())
    predictor = Predictor(model, torch.device("cpu"))
    cache = SliceCache(cache_path)
    k = cache.num_classes
    counts = np.zeros((k, k), dtype=np.int64)
    volumes = 0
    for index, volume in enumerate(cache.volumes):
        if volume.split != split or not volume.has_label:
            continue
        image, label = cache.read_volume(index)
        predicted = predictor.cache_grid(image).astype(np.int64)
        counts += np.bincount(label.astype(np.int64).ravel() * k + predicted.ravel(), minlength=k * k).reshape(k, k)
        volumes += 1
    if volumes == 0:
        raise SystemExit(f"error: {cache_path}: no labeled volumes in split {split!r}")
    totals = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    return {"run": str(run), "cache": str(cache_path), "split": split, "volumes": volumes,
            "classes": [cache.class_names[c] for c in range(k)], "counts": counts.tolist(),
            "share": np.round(share, 4).tolist()}


def markdown(result: dict) -> str:
    names = result["classes"]
    lines = ["| true \\ predicted | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for name, row in zip(names, result["share"]):
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in row) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("cache", type=Path)
    parser.add_argument("--split", default="test")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    result = confusion(args.run, args.cache, args.split)
    print(markdown(result) if args.markdown else json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
