"""3D evaluation of a fine-tuning run: slice-by-slice prediction, per-class Dice and HD95.

The model is rebuilt from the run's ``run.json`` and ``model.safetensors`` alone
(safetensors, ``strict=True``), the volumes of the run's ``split.json`` are
predicted slice by slice, stacked back into volumes and scored in 3D with the
volume's voxel spacing. Results go to ``eval.json`` (NaN written as ``null``).

**Data.** The cache must be the data the run was trained and split on: its fingerprint is
checked against the one ``run.json`` and ``split.json`` record
(:mod:`~ssmtl.downstream.run_data`), so scores on other data never reach ``eval.json``.

**Space.** By default (``space="auto"``) the scores are computed at native resolution,
against the original label files, on the scans' own voxel grids, with the whole scan
predicted (sliding windows where the cache cropped it) and mapped back exactly as
``ssmtl predict`` writes it (:mod:`~ssmtl.downstream.native_eval`); the cache-grid scores
(the model on the cached crop, as validation scores it) are kept beside them (``cache_grid``). When any evaluated volume
has no way back (a format 1 cache, moved files, a changed label file) every volume is
scored on the cache grid instead and ``space_reason`` says why: ``eval.json`` records
``"space": "native"`` or ``"cache"``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from ssmtl.api.datasets.arrays import from_slices
from ssmtl.data.cache import SliceCache
from ssmtl.data.cache_set import CacheSet, data_record
from ssmtl.api.errors import SsmtlError
from ssmtl.downstream.model import load_finetuned
from ssmtl.downstream.metrics import (
    count_failures,
    dice_per_class,
    FALSE_POSITIVE,
    hd95_per_class,
    MISSED,
    nanmean,
    presence_per_class,
    summarise,
)
from ssmtl.storage.files import json_safe, save_json
from ssmtl.data.splits import volumes_of
from ssmtl.downstream.predictor import allowed_flips, Predictor, resolve_device, Windows
from ssmtl.downstream.records import read_split_json
from ssmtl.downstream.native_eval import NativeReferences, NoWayBack, SPACES
from ssmtl.downstream.run_data import open_run_cache

EVAL_FILE = "eval.json"


def _open_cache(run_dir: Path, run: dict[str, Any], data, subjects: list[str]) -> SliceCache | CacheSet:
    cache = open_run_cache(run_dir, run, data)
    explicit = data is not None
    present = {v.subject for v in cache.volumes if v.has_label}
    missing = [s for s in subjects if s not in present]
    if missing:
        hint = "" if explicit else "; pass data= (--data) to evaluate on a copy of the cache at another path"
        raise SsmtlError(f"{cache.path}: the cache has no labeled volume for subject(s) {', '.join(missing)}{hint}")
    return cache


def evaluate_run(
    run_dir: Path,
    data: Path | None = None,
    *,
    split: str = "test",
    batch_size: int = 32,
    device: str | None = None,
    registry,
    space: str = "auto",
    resample: str = "auto",
    windows: Windows = Windows(),
    tta: bool = False,
    log=print,
) -> dict[str, Any]:
    """Score a fine-tuning run on the ``split`` subjects of its split.json; writes ``run_dir/eval.json``.

    ``data`` overrides the cache path recorded in run.json (same subjects, e.g. a
    copied cache); it must hold labeled volumes of every evaluated subject and
    the same class names. ``space``: ``auto`` (native resolution when every volume has a
    way back, else the cache grid), ``native`` (an error when not possible) or ``cache``.
    ``resample``: how predictions reach the native grid (as ``ssmtl predict --resample``);
    ``windows`` and ``tta``: the sliding windows and flips of whole-scan inference (as
    ``ssmtl predict --overlap --blend --tta``); ``log`` receives warning lines.
    """
    if space not in SPACES:
        raise SsmtlError(f"--space {space!r}: use {', '.join(SPACES)}")
    run_dir = Path(run_dir)
    model, run = load_finetuned(run_dir, registry)
    splits = read_split_json(run_dir)
    if split not in ("train", "val", "test"):
        raise SsmtlError(f"unknown split {split!r}; use train, val or test")
    subjects = list(splits.get(split) or [])
    if not subjects:
        raise SsmtlError(f"{run_dir / 'split.json'}: the {split!r} split has no subjects")
    data_path = data if data is not None else run["data"]["path"]
    cache = _open_cache(run_dir, run, data, subjects)
    class_names = {int(k): v for k, v in run["class_names"].items()}
    if cache.class_names and cache.class_names != class_names:
        raise SsmtlError(f"{cache.path}: classes {cache.class_names} differ from the run's {class_names}")

    windows = Windows(windows.overlap, windows.blend, allowed_flips(run, tta, log))
    predictor = Predictor(model, resolve_device(device), batch_size=batch_size, window=cache.slice_shape, windows=windows)
    num_classes = int(run["num_classes"])
    foreground = [class_names.get(c, f"class_{c}") for c in range(1, num_classes)]
    references = NativeReferences(cache, registry) if space != "cache" else None
    reason = "asked for the cache grid (space=cache)" if space == "cache" else None
    per_volume, on_cache = [], []
    for index in volumes_of(cache, subjects):
        meta = cache.volumes[index]
        image, label = cache.read_volume(index)
        reference = None
        if reason is None:
            try:
                reference = references.get(index)
            except NoWayBack as exc:
                if space == "native":
                    raise SsmtlError(f"{cache.path}: cannot evaluate at native resolution: {exc}") from None
                reason = str(exc)
        if reference is None:
            pred = predictor.cache_grid(image)
        elif reference.whole_image is None:  # the cache holds the whole scan: one prediction serves both grids
            predicted = predictor.native(image, reference.transform, resample=resample, cache_labels=True)
            pred = predicted.cache_labels
        else:  # the whole scan in sliding windows; the cache grid scores the cached crop, as validation does
            predicted = predictor.native(*reference.image_and_grid(image), resample=resample)
            pred = predictor.cache_grid(image)
        if reference is not None:
            native = np.ascontiguousarray(from_slices(predicted.labels))
            per_volume.append(_scores(meta, native, reference.label, num_classes, reference.transform.canonical_spacing, foreground))
        on_cache.append(_scores(meta, pred, label, num_classes, meta.spacing, foreground))
    native_space = reason is None
    per_volume = per_volume if native_space else on_cache
    summary, cache_summary = summarise(per_volume), summarise(on_cache)
    if native_space:  # after summarising: the cache-grid scores ride along, they are not a metric of this space
        for scores, cached in zip(per_volume, on_cache):
            scores["cache_grid"] = {k: cached[k] for k in ("dice", "hd95", "mean_dice")}
    failures = count_failures(per_volume, foreground)
    results = json_safe({
        "space": "native" if native_space else "cache",
        "space_reason": reason,
        "resample": resample if native_space else None,
        "inference": {"window": list(cache.slice_shape), **windows.record()},
        "cache_grid": {"mean_dice": cache_summary["mean_dice"], "mean_hd95": cache_summary["mean_hd95"]},
        "mean_dice": summary["mean_dice"],
        "mean_hd95": summary["mean_hd95"],
        "per_class": {name: {**summary["per_class"].get(name, {"dice": math.nan, "hd95": math.nan}), **failures[name]}
                      for name in foreground},
        "per_volume": per_volume,
        "class_names": foreground,
        "split": split,
        "test_subjects": subjects,
        "init": run.get("init"),
        "data": data_record(cache, data_path)["path"],
        "data_fingerprint": cache.fingerprint,
        "labeled_volumes": run.get("labeled_volumes"),
        "labeled_subjects": run.get("labeled_subjects"),
        "init_saw_test_subjects": run.get("init_saw_test_subjects", []),
    })
    save_json(run_dir / EVAL_FILE, results)
    return results


def _scores(meta, pred: np.ndarray, label: np.ndarray, num_classes: int, spacing, foreground: list[str]) -> dict[str, Any]:
    """Per-class 3D Dice and HD95 of one volume (on whichever grid ``pred`` and ``label`` share)."""
    dice = dice_per_class(pred, label, num_classes)
    hd95 = hd95_per_class(pred, label, num_classes, spacing)
    presence = presence_per_class(pred, label, num_classes)
    return {
        "subject": meta.subject,
        "volume": meta.name,
        "dice": {foreground[c - 1]: dice[c] for c in dice},
        "hd95": {foreground[c - 1]: hd95[c] for c in hd95},
        "mean_dice": nanmean(dice.values()),
        # structures scored 0 Dice / the diagonal as HD95 because one side has none of them
        MISSED: [foreground[c - 1] for c, case in presence.items() if case == MISSED],
        FALSE_POSITIVE: [foreground[c - 1] for c, case in presence.items() if case == FALSE_POSITIVE],
        "shape": list(pred.shape),
        "spacing_mm": [float(s) for s in spacing],
    }


# -- tables --------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def render_eval_table(results: dict[str, Any]) -> Table:
    """Per-class Dice, HD95 (mm) and missed / false-positive volume counts of one evaluation, then the mean."""
    n = len(results.get("test_subjects") or [])
    space = results.get("space", "cache")
    where = "native resolution" if space == "native" else "cache grid"
    table = Table(title=f"{results.get('split', 'test')} set: {n} subject(s), init={results.get('init')}, {where}")
    if space != "native" and results.get("space_reason"):
        table.caption = f"on the cache grid: {results['space_reason']}"
    elif space == "native":
        table.caption = f"cache grid: mean Dice {_fmt((results.get('cache_grid') or {}).get('mean_dice'), 3)}"
    table.add_column("class")
    table.add_column("Dice", justify="right")
    table.add_column("HD95 (mm)", justify="right")
    table.add_column("missed", justify="right")
    table.add_column("false pos.", justify="right")
    totals = {MISSED: 0, FALSE_POSITIVE: 0}
    for name in results["class_names"]:
        scores = results["per_class"].get(name, {})
        counts = [scores.get(MISSED), scores.get(FALSE_POSITIVE)]
        totals = {k: totals[k] + (v or 0) for k, v in zip(totals, counts)}
        table.add_row(name, _fmt(scores.get("dice"), 3), _fmt(scores.get("hd95"), 2), *("–" if v is None else str(v) for v in counts))
    table.add_section()
    table.add_row("[bold]mean (counts: sum)", f"[bold]{_fmt(results.get('mean_dice'), 3)}", f"[bold]{_fmt(results.get('mean_hd95'), 2)}",
                  f"[bold]{totals[MISSED]}", f"[bold]{totals[FALSE_POSITIVE]}")
    table.caption = "missed / false pos.: volumes where a structure was not predicted / predicted but absent (Dice 0, HD95 = the volume's diagonal)"
    return table


def render_comparison_table(runs: dict[str, dict[str, Any]], metric: str = "dice") -> Table:
    """Classes as rows, one column per run (``{label: eval results}``), and a mean row.

    The caption warns when the runs were not scored on the same subjects, since
    their numbers are then not comparable.
    """
    unit = " (mm)" if metric == "hd95" else ""
    digits = 2 if metric == "hd95" else 3
    table = Table(title=f"{'HD95' if metric == 'hd95' else 'Dice'}{unit} per class")
    table.add_column("class")
    for label in runs:
        table.add_column(label, justify="right")
    classes: list[str] = []
    for results in runs.values():
        classes.extend(c for c in results.get("class_names", []) if c not in classes)
    for name in classes:
        table.add_row(name, *(_fmt(r["per_class"].get(name, {}).get(metric), digits) for r in runs.values()))
    table.add_section()
    table.add_row("[bold]mean", *(f"[bold]{_fmt(r.get(f'mean_{metric}'), digits)}" for r in runs.values()))
    test_sets = {tuple(sorted(r.get("test_subjects") or [])) for r in runs.values()}
    spaces = {r.get("space", "cache") for r in runs.values()}
    if len(test_sets) > 1:
        table.caption = "warning: these runs were evaluated on different subjects; the columns are not comparable"
    elif len(spaces) > 1:
        table.caption = "warning: some runs were scored at native resolution, others on the cache grid; not comparable"
    else:
        table.caption = "native resolution" if spaces == {"native"} else "cache grid"
    return table
