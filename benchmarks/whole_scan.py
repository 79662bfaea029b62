#!/usr/bin/env python3
"""Sliding windows over the whole scan against the old centre crop; prints one JSON object.

A phantom whose scans are **twice as wide as the cache's field of view**: every subject of
the low-variability cardiac phantom (``size`` voxels over 300 mm) is placed whole at a random
position on a canvas of ``2 x size`` voxels of air (a patient lying off-centre in a wide
field of view), written as NIfTI, cached as ``ssmtl cache build --size SIZE --spacing`` (the voxel
spacing) would (so the cache keeps the central half of each axis), and a tiny U-Net is
fine-tuned on the training subjects. Every held-out scan is then predicted twice, on its
own grid:

* ``centre_crop``: the way ``ssmtl predict`` worked before, the cache's centre crop
  predicted and mapped back, background outside it;
* ``sliding_windows``: the scan over its whole field of view at the cache spacing, in
  overlapping windows of the cache's slice size (overlap 0.5, Gaussian blend).

Reported: the mean 3D Dice over the structures present, on the whole scan, inside the
old crop and outside it (each structure's Dice on the voxels of that region), the share of
labelled voxels outside the old crop, the seconds per scan, and ``ssmtl evaluate``'s own
native-resolution Dice of the run (which predicts whole scans the same way).

Usage: ``python benchmarks/whole_scan.py [--size 48] [--subjects 10] [--steps 300] [--device auto]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from common import emit, hardware, log, registry, resolve_device, set_threads  # also puts src/ on the path

from ssmtl.api import RawVolume  # noqa: E402
from ssmtl.api.datasets.arrays import from_slices  # noqa: E402
from ssmtl.data.build import build_cache  # noqa: E402
from ssmtl.data.cache import SliceCache  # noqa: E402
from ssmtl.data.native import InPlaneMap  # noqa: E402
from ssmtl.data.preprocess import preprocess_volume, PreprocessConfig  # noqa: E402
from ssmtl.downstream.config import FinetuneConfig  # noqa: E402
from ssmtl.downstream.evaluate import evaluate_run  # noqa: E402
from ssmtl.downstream.finetune import run_finetune  # noqa: E402
from ssmtl.downstream.metrics import dice_per_class, nanmean  # noqa: E402
from ssmtl.downstream.model import load_finetuned  # noqa: E402
from ssmtl.downstream.predictor import Predictor  # noqa: E402
from ssmtl.plugins.datasets.phantom_anatomy import generate_subject  # noqa: E402

AIR_HU = -1000.0
CLASSES = 7  # background and the six MM-WHS structures of the phantom


def write_wide_phantom(folder: Path, subjects: int, size: int, slices: int, seed: int) -> tuple[Path, Path, float]:
    """Subjects on a (2 size)^2 canvas at random offsets; returns (images, labels, in-plane spacing)."""
    rng = np.random.default_rng(seed)
    images, labels = folder / "images", folder / "labels"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    spacing = None
    for index in range(subjects):
        image, label, spacing = generate_subject(index, seed=seed, domain="ct", size=size, num_slices=slices)
        canvas_image = np.full((2 * size, 2 * size, image.shape[2]), AIR_HU, dtype=np.float32)
        canvas_label = np.zeros(canvas_image.shape, dtype=np.uint8)
        # the whole subject on the canvas, anywhere: its heart lands from the centre of the canvas to well
        # off it, often partly outside the central half that the cache keeps
        ox, oy = rng.integers(0, size + 1, size=2)
        src = tuple(slice(max(0, -o), min(size, 2 * size - o)) for o in (ox, oy))
        dst = tuple(slice(max(0, o), min(2 * size, o + size)) for o in (ox, oy))
        canvas_image[dst[0], dst[1]] = image[src[0], src[1]]
        canvas_label[dst[0], dst[1]] = label[src[0], src[1]]
        affine = np.diag([*spacing, 1.0])
        nib.save(nib.Nifti1Image(canvas_image, affine), str(images / f"wide_{index:02d}.nii.gz"))
        nib.save(nib.Nifti1Image(canvas_label, affine), str(labels / f"wide_{index:02d}.nii.gz"))
    return images, labels, float(spacing[0])


def region_dice(pred: np.ndarray, truth: np.ndarray, region: np.ndarray | None) -> float:
    """Mean Dice over the structures present (in either map) on the voxels of ``region``."""
    if region is not None:
        pred, truth = np.where(region, pred, 0), np.where(region, truth, 0)
    return nanmean(dice_per_class(pred, truth, CLASSES).values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=48, help="phantom voxels per axis (the cache's slice size); scans are twice as wide")
    parser.add_argument("--subjects", type=int, default=10)
    parser.add_argument("--slices", type=int, default=12)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    set_threads(args.threads)
    device = resolve_device(args.device)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        images, labels, spacing = write_wide_phantom(root, args.subjects, args.size, args.slices, args.seed)
        config = PreprocessConfig(size=args.size, spacing=spacing)  # the cache field of view: half the scan's width
        cache = build_cache(dataset="nifti", dataset_options={"images": images, "labels": labels, "modality": "ct"},
                            preprocess=config, out=root / "wide.h5", registry=registry(), test_fraction=0.4,
                            split_seed=args.seed)
        train_subjects = sum(v.split == "train" for v in SliceCache(cache).volumes)
        log(f"cached {args.subjects} scans of {2 * args.size} px at {spacing:.2f} mm (cache {args.size} px); fine-tuning")
        finetune = FinetuneConfig.model_validate(dict(
            data=cache, out=root / "run", labeled_volumes=train_subjects, validation="none", seed=args.seed,
            model={"base_channels": 8, "depth": 3},
            train={"steps": args.steps, "batch_size": 16, "lr": 3e-3, "log_every": 50, "checkpoint_every": args.steps}),
            context={"registry": registry()})
        tuned = time.perf_counter()
        run_finetune(finetune, registry=registry(), progress=False)
        tuned = time.perf_counter() - tuned
        model, _ = load_finetuned(root / "run", registry())
        crop_predictor = Predictor(model, device, window=None)
        window_predictor = Predictor(model, device, window=args.size)
        test = json.loads((root / "run" / "split.json").read_text())["test"]
        import monai.inferers  # noqa: F401  (imported before the clock starts: a one-off cost, not per scan)

        rows = []
        for subject in test:
            image = np.asarray(nib.load(str(images / f"{subject}.nii.gz")).dataobj)
            truth = np.asarray(nib.load(str(labels / f"{subject}.nii.gz")).dataobj)
            raw = RawVolume(image=image, spacing=(spacing, spacing, 1.0), modality="ct", affine=np.diag([spacing, spacing, 1.0, 1.0]))
            crop = preprocess_volume(raw, config)
            plane = InPlaneMap(crop.transform)
            inside = from_slices(np.broadcast_to(plane.inside, (image.shape[2], *plane.native_shape)))
            row = {"subject": subject, "labelled_voxels_outside_crop": round(float(truth[~inside].astype(bool).sum() / max(1, (truth > 0).sum())), 4)}
            for name, predictor, field_of_view in (("centre_crop", crop_predictor, "crop"),
                                                   ("sliding_windows", window_predictor, "whole")):
                t0 = time.perf_counter()  # preprocessing and prediction, both ways
                processed = preprocess_volume(raw, config, field_of_view=field_of_view)
                labels_native = from_slices(predictor.native(processed.image, processed.transform).labels)
                seconds = time.perf_counter() - t0
                row[name] = {"dice": region_dice(labels_native, truth, None), "inside_crop": region_dice(labels_native, truth, inside),
                             "outside_crop": region_dice(labels_native, truth, ~inside), "seconds": round(seconds, 3)}
            rows.append(row)
            log(f"{subject}: crop {row['centre_crop']['dice']:.3f}, windows {row['sliding_windows']['dice']:.3f}")
        evaluation = evaluate_run(root / "run", registry=registry(), space="native", device=str(device))

    def mean(method: str, key: str) -> float:
        return round(nanmean(r[method][key] for r in rows), 4)

    result = {
        "benchmark": "whole_scan",
        "hardware": hardware(device),
        "setup": {"phantom_size_px": args.size, "scan_px": 2 * args.size, "spacing_mm": round(spacing, 4),
                  "cache_field_of_view_mm": round(args.size * spacing, 1), "scan_field_of_view_mm": round(2 * args.size * spacing, 1),
                  "subjects": args.subjects, "test_subjects": len(test), "slices": args.slices, "steps": args.steps,
                  "model": "ssmtl U-Net, base_channels 8, depth 3", "overlap": 0.5, "blend": "gaussian"},
        "labelled_voxels_outside_crop": round(float(np.mean([r["labelled_voxels_outside_crop"] for r in rows])), 4),
        **{method: {key: mean(method, key) for key in ("dice", "inside_crop", "outside_crop", "seconds")}
           for method in ("centre_crop", "sliding_windows")},
        "evaluate_native": {"mean_dice": evaluation["mean_dice"], "cache_grid_mean_dice": evaluation["cache_grid"]["mean_dice"],
                            "space": evaluation["space"]},
        "per_subject": rows,
        "finetune_seconds": round(tuned, 1),
        "seconds": round(time.perf_counter() - started, 1),
    }
    emit(result, args.out)


if __name__ == "__main__":
    main()
