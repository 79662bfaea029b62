#!/usr/bin/env python3
"""How much of a label map survives the cache grid: real labels to the cache and back; prints one JSON object.

For every real label map of ``.sample-data/`` (``scripts/fetch_sample_data.py``) and every
cache size, the label is taken to the cache grid exactly as ``ssmtl cache build`` samples
labels (nearest neighbour; the default spacing fits the field of view into SIZE x SIZE), then
back to the scan's own grid the two ways ``ssmtl predict --resample`` offers:

* ``nearest``: every native voxel copies the cache pixel covering its centre;
* ``linear``: one-hot class maps interpolated bilinearly, then the arg-max.

It reports the mean Dice over the structures present (each scored in 3D against the
original) and the fraction of voxels that changed. A perfect prediction on the cache grid
can score no higher at native resolution: this is the ceiling the cache grid sets.

Usage: ``python benchmarks/native_roundtrip.py [--sizes 64,128,256] [--data .sample-data]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ssmtl.api import RawVolume  # noqa: E402
from ssmtl.api.datasets.arrays import from_slices  # noqa: E402
from ssmtl.data.native import InPlaneMap, labels_to_canonical  # noqa: E402
from ssmtl.data.preprocess import preprocess_volume, PreprocessConfig  # noqa: E402
from ssmtl.downstream.metrics import dice_per_class  # noqa: E402
from ssmtl.plugins.datasets.volume_files import read_label  # noqa: E402

LABELS = {
    "totalsegmentator/example_seg.nii.gz": "CT 3 mm, 41 structures (TotalSegmentator)",
    "totalsegmentator/pulmonary_report/models/heart.nii.gz": "CT 1.5 mm, heart",
    "totalsegmentator/example_seg_dicom.nii.gz": "CT 0.98 mm, 512 x 512, multi-organ",
    "pyradiomics/lung1_label.nrrd": "CT 0.57 mm, 512 x 512, lung lesion",
    "pyradiomics/brain1_label.nrrd": "MR 0.78 mm, 256 x 256, brain lesion",
}


def _mean_dice(a: np.ndarray, b: np.ndarray, num_classes: int) -> float:
    scores = [v for v in dice_per_class(a, b, num_classes).values() if not np.isnan(v)]
    return float(np.mean(scores))


def _linear_back(cache_label: np.ndarray, transform, num_classes: int) -> np.ndarray:
    plane = InPlaneMap(transform)
    out = np.zeros((cache_label.shape[0], *plane.native_shape), dtype=np.uint8)
    for d in range(cache_label.shape[0]):
        one_hot = torch.nn.functional.one_hot(torch.from_numpy(cache_label[d:d + 1]).long(), num_classes)
        out[d:d + 1] = plane.linear(one_hot.permute(0, 3, 1, 2).float()).argmax(dim=1).numpy()
    return np.ascontiguousarray(from_slices(out))


def measure(path: Path, size: int) -> dict:
    values, affine = read_label(path)
    present = np.unique(values)
    label = np.searchsorted(present, values).astype(np.uint8)  # contiguous ids, 0 stays background
    num_classes = int(label.max()) + 1
    spacing = tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))
    raw = RawVolume(image=np.zeros(label.shape, np.float32), spacing=spacing, modality="ct", label=label, affine=affine)
    processed = preprocess_volume(raw, PreprocessConfig(size=size), source=str(path))
    t = processed.transform
    nearest = labels_to_canonical(processed.label, t)
    linear = _linear_back(processed.label, t, num_classes)
    return {
        "size": size,
        "cache_mm": round(t.rows.spacing, 3),
        "scale": round(min(t.rows.scale, t.cols.scale), 4),
        "exact": t.is_exact(),
        "nearest_dice": round(_mean_dice(nearest, label, num_classes), 4),
        "linear_dice": round(_mean_dice(linear, label, num_classes), 4),
        "nearest_changed": round(float(np.mean(nearest != label)), 6),
        "linear_changed": round(float(np.mean(linear != label)), 6),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="64,128,256")
    parser.add_argument("--data", type=Path, default=ROOT / ".sample-data")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    results, started = [], time.perf_counter()
    for relative, what in LABELS.items():
        path = args.data / relative
        if not path.exists():
            print(f"missing {path}; run scripts/fetch_sample_data.py", file=sys.stderr)
            continue
        for size in sizes:
            row = {"label": relative, "what": what, **measure(path, size)}
            print(json.dumps(row), file=sys.stderr, flush=True)
            results.append(row)
    print(json.dumps({"seconds": round(time.perf_counter() - started, 1), "results": results}, indent=2))


if __name__ == "__main__":
    main()
