"""``ssmtl.finetune(...)``, ``ssmtl.evaluate(...)`` and ``ssmtl.predict(...)``: the same code
``ssmtl finetune``, ``ssmtl evaluate`` and ``ssmtl predict`` run, from Python.

Fine-tuning resolves its config from the same sources as the command line, lowest to
highest: defaults, ``config`` (a file), ``SSMTL_FINETUNE__*`` environment variables, the
keyword arguments, then ``settings`` (any field).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ssmtl.core.settings import as_set_flags
from ssmtl.downstream.config import resolve_finetune_config
from ssmtl.downstream.evaluate import evaluate_run
from ssmtl.downstream.finetune import run_finetune


@dataclass
class FinetuneResult:
    run_dir: Path
    init: str  # the pre-training run it started from, or "none"
    steps: int
    seconds: float
    final_loss: float | None
    num_classes: int
    labeled_subjects: list[str]
    test_subjects: list[str]
    details: dict[str, Any] = field(default_factory=dict)  # everything the run reported


@dataclass
class Predictions:
    out: Path
    written: int  # scans whose label map was written
    failed: int  # scans that could not be read or segmented (each has its error in ``items``)
    items: list[dict[str, Any]]  # per scan: input, status, outputs, shape, structures (ml) or error
    record: dict[str, Any]  # the whole predictions.json


@dataclass
class Evaluation:
    mean_dice: float | None
    mean_hd95: float | None
    per_class: dict[str, dict[str, float | None]]  # structure -> {"dice", "hd95"}
    per_volume: list[dict[str, Any]]
    results: dict[str, Any]  # the whole eval.json


def finetune(
    data: str | Path | list[str | Path] | None = None,
    out: str | Path | None = None,
    *,
    init: str | Path | None = None,
    labeled_volumes: int | None = None,
    steps: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int | None = None,
    head: str | None = None,
    log_with: Sequence[str] | None = None,
    config: str | Path | None = None,
    settings: Mapping[str, Any] | Iterable[str] | None = None,
    resume: bool = False,
    progress: bool = True,
    registry=None,
) -> FinetuneResult:
    """Fine-tune segmentation on ``labeled_volumes`` labeled subjects of ``data``, from the
    pre-training run ``init`` (its ``export/``) or from scratch (``init=None`` or ``"none"``).

    ``settings`` reaches any field (``{"train.grad_clip": 1.0, "model.base_channels": 8}``).
    Raises :class:`~ssmtl.api.SsmtlError` on bad input, before any training.
    """
    flags = {"data": list(data) if isinstance(data, (list, tuple)) else data, "out": out, "init": None if init is None else str(init), "labeled_volumes": labeled_volumes,
             "train.steps": steps, "train.batch_size": batch_size, "train.lr": lr, "seed": seed, "head": head,
             "train.log_with": list(log_with) if log_with else None}
    run_config = resolve_finetune_config(file=config, flags=flags, sets=as_set_flags(settings))
    report = run_finetune(run_config, registry=registry, progress=progress, resume=resume)
    return FinetuneResult(
        run_dir=Path(report["run_dir"]), init=report["init"], steps=report["steps"], seconds=report["seconds"],
        final_loss=report["final_loss"], num_classes=report["num_classes"], labeled_subjects=list(report["labeled_subjects"]),
        test_subjects=list(report["test_subjects"]), details=report,
    )


def evaluate(run: str | Path, data: str | Path | None = None, *, split: str = "test", registry=None) -> Evaluation:
    """3D Dice and HD95 per structure of a fine-tuning run on its held-out ``split`` subjects;
    writes ``run/eval.json`` (:func:`~ssmtl.downstream.evaluate.evaluate_run`)."""
    results = evaluate_run(Path(run), None if data is None else Path(data), split=split, registry=registry)
    return Evaluation(mean_dice=results.get("mean_dice"), mean_hd95=results.get("mean_hd95"),
                      per_class=results.get("per_class") or {}, per_volume=results.get("per_volume") or [], results=results)


def predict(run: str | Path, inputs: str | Path | Sequence[str | Path], out: str | Path, *,
            format: str | None = None, probabilities: bool = False, resample: str = "auto", device: str = "auto",
            mixed_precision: str = "no", workers: int = 0, batch_size: int = 32, modality: str | None = None,
            dataset: str | None = None, progress: bool = False, registry=None) -> Predictions:
    """Segment ``inputs`` (scans, DICOM series folders, folders of scans or a manifest) with the
    fine-tuned ``run``; writes one label map per scan in its own space under ``out`` and
    ``out/predictions.json`` (:func:`~ssmtl.downstream.predict.predict`).

    A scan that cannot be read is counted in ``failed`` and the others are still written;
    raises :class:`~ssmtl.api.SsmtlError` when nothing could be written or the options are bad.
    """
    from ssmtl.api.errors import SsmtlError
    from ssmtl.downstream.predict import PredictOptions, predict as run_predict

    if format is None:
        format = PredictOptions.format  # the CLI's default: NIfTI
    paths = [Path(inputs)] if isinstance(inputs, (str, Path)) else [Path(p) for p in inputs]
    options = PredictOptions(out=Path(out), format=format, probabilities=probabilities, resample=resample,
                             device=device, mixed_precision=mixed_precision, workers=workers,
                             batch_size=batch_size, modality=modality, dataset=dataset)
    errors: list[str] = []

    def log(line: str) -> None:  # errors are counted in the result; warnings reach Python's warnings
        if line.startswith("error:"):
            errors.append(line)
        else:
            warnings.warn(line.removeprefix("warning: "), stacklevel=3)

    record = run_predict(Path(run), paths, options, registry=registry, progress=progress, log=log)
    if not record.get("written"):
        raise SsmtlError(errors[0].removeprefix("error: ") if errors else "no scan was written")
    return Predictions(out=Path(out), written=record["written"], failed=record["failed"],
                       items=list(record["predictions"]), record=record)
