"""``ssmtl.finetune(...)``, ``ssmtl.evaluate(...)``, ``ssmtl.predict(...)`` and
``ssmtl.score_predictions(...)``: the same code ``ssmtl finetune``, ``ssmtl evaluate``,
``ssmtl predict`` and ``ssmtl evaluate --predictions`` run, from Python.

Fine-tuning resolves its config from the same sources as the command line, lowest to
highest: defaults, ``config`` (a file), ``SSMTL_FINETUNE__*`` environment variables, the
keyword arguments, then ``settings`` (any field).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ssmtl.downstream.config import resolve_finetune_config
from ssmtl.downstream.evaluate import evaluate_run
from ssmtl.downstream.finetune import run_finetune
from ssmtl.downstream.predictor import DEFAULT_OVERLAP, Windows
from ssmtl.host import registry as plugin_registry
from ssmtl.host.registry import Registry
from ssmtl.settings.sources import as_set_flags


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
    steps: int | str | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int | None = None,
    head: str | None = None,
    log_with: Sequence[str] | None = None,
    config: str | Path | None = None,
    settings: Mapping[str, Any] | Iterable[str] | None = None,
    resume: bool = False,
    progress: bool = True,
    registry: Registry | None = None,
) -> FinetuneResult:
    """Fine-tune segmentation on a few labeled subjects, as ``ssmtl finetune`` does.

    Args:
        data: a labeled slice cache, a folder of caches, or a list of them (one dataset).
        out: the run directory (new or empty, unless ``resume``).
        init: a pre-training run directory (its ``export/``), or ``None`` / ``"none"``: from scratch.
        labeled_volumes: the label budget, in subjects (``labeled_volumes``).
        steps: optimizer steps, or ``"auto"``: stop on a validation plateau (``train.steps``).
        batch_size, lr, seed, head: ``train.batch_size``, ``train.lr``, ``seed``, ``head``.
        log_with: experiment trackers (``["tensorboard"]``), see ``train.log_with``.
        config: a TOML, YAML or JSON config file.
        settings: any other field, ``{"train.grad_clip": 1.0, "model.base_channels": 8}``
            (or ``--set``-style ``["train.grad_clip=1"]``).
        resume: continue ``out`` from its last valid checkpoint.
        progress: show the progress bar.
        registry: the plugins (networks, heads) to resolve and build with (default: the
            installed ones, as the command line loads them).

    Returns:
        a :class:`FinetuneResult`: the run directory, the steps run and the step kept, the
        labeled and test subjects, and everything the run reported (``details``).

    Raises:
        ConfigError: a bad setting (one row per problem), before any training.
        SsmtlError: a bad input (cache, ``init`` run, run directory), before any training; a
            run stopped by non-finite losses.
    """
    registry = registry or plugin_registry.get_registry()
    flags = {"data": list(data) if isinstance(data, (list, tuple)) else data, "out": out,
             "init": None if init is None else str(init), "labeled_volumes": labeled_volumes,
             "train.steps": steps, "train.batch_size": batch_size, "train.lr": lr, "seed": seed, "head": head,
             "train.log_with": list(log_with) if log_with else None}
    run_config = resolve_finetune_config(file=config, flags=flags, sets=as_set_flags(settings), registry=registry)
    report = run_finetune(run_config, registry, progress=progress, resume=resume)
    return FinetuneResult(
        run_dir=Path(report["run_dir"]), init=report["init"], steps=report["steps"], seconds=report["seconds"],
        final_loss=report["final_loss"], num_classes=report["num_classes"], labeled_subjects=list(report["labeled_subjects"]),
        test_subjects=list(report["test_subjects"]), details=report,
    )


def evaluate(run: str | Path, data: str | Path | Sequence[str | Path] | None = None, *, split: str = "test",
             space: str = "auto", resample: str = "auto", overlap: float = DEFAULT_OVERLAP, tta: bool = False,
             registry: Registry | None = None) -> Evaluation:
    """3D Dice and HD95 per structure of a fine-tuning run, as ``ssmtl evaluate RUN`` does; writes
    ``run/eval.json``.

    Args:
        run: a fine-tuning run directory.
        data: the cache(s) holding the evaluated volumes (default: the run's own).
        split: which subjects of the run's split: ``test`` (default), ``val`` or ``train``.
        space: ``auto`` (native resolution when every volume has a way back, else the cache
            grid), ``native`` (an error when not possible) or ``cache``.
        resample: how predictions reach the native grid: ``auto``, ``linear`` or ``nearest``.
        overlap: sliding windows over scans wider than the cache, as ``predict``.
        tta: mirrored test-time augmentation along the axes the run's data allows, as ``predict``.
        registry: the plugins to rebuild the network with (default: the installed ones).

    Returns:
        an :class:`Evaluation` (mean and per-class Dice and HD95, per volume, the whole ``eval.json``).

    Raises:
        SsmtlError: not a finished fine-tuning run, a missing or foreign cache, a bad option.
    """
    if data is not None and not isinstance(data, (str, Path)):
        data = [Path(p) for p in data]
    elif data is not None:
        data = Path(data)
    results = evaluate_run(Path(run), data, split=split, space=space, resample=resample, windows=Windows(overlap=overlap),
                           tta=tta, registry=registry or plugin_registry.get_registry(),
                           log=lambda line: warnings.warn(line.removeprefix("warning: "), stacklevel=3))
    return Evaluation(mean_dice=results.get("mean_dice"), mean_hd95=results.get("mean_hd95"),
                      per_class=results.get("per_class") or {}, per_volume=results.get("per_volume") or [], results=results)


def predict(run: str | Path, inputs: str | Path | Sequence[str | Path], out: str | Path, *,
            format: str | None = None, probabilities: bool = False, resample: str = "auto", device: str = "auto",
            mixed_precision: str = "no", workers: int = 0, batch_size: int = 32, modality: str | None = None,
            dataset: str | None = None, overlap: float = DEFAULT_OVERLAP, blend: str = "gaussian", tta: bool = False,
            force: bool = False, progress: bool = False, registry: Registry | None = None) -> Predictions:
    """Segment scans with a fine-tuned run, as ``ssmtl predict RUN`` does: one label map per scan in
    its own space under ``out``, and ``out/predictions.json``.

    Args:
        run: a fine-tuning run directory.
        inputs: scans, DICOM series folders, folders of scans or a manifest (one or a list).
        out: the output folder.
        format: ``nifti`` (default) or ``same`` (each input's own format).
        probabilities: also write the class probabilities.
        resample: how predictions reach each scan's grid: ``auto``, ``linear`` or ``nearest``.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        mixed_precision: ``no``, ``bf16`` or ``fp16``.
        workers: processes that read and preprocess scans (0: this process).
        batch_size: slices per forward pass.
        modality: ``ct`` or ``mr`` for every scan (default: each file's own, else detected).
        dataset: the dataset plugin that reads the scans (default: the run's, else the first that does).
        overlap: the share of a sliding window its neighbour overlaps, in [0, 1) (whole scans wider than the cache).
        blend: ``gaussian`` or ``constant`` weights of overlapping windows.
        tta: also predict mirrored slices along the in-plane axes the run's data allows (run.json ``flip_axes``).
        force: replace an ``out`` folder that holds files predict did not write (never an input).
        progress: show a progress bar.
        registry: the plugins to read scans and rebuild the network with (default: the installed ones).

    Returns:
        :class:`Predictions`: how many scans were written and failed, per scan what happened.
        A scan that cannot be read is counted in ``failed``; the others are still written.

    Raises:
        SsmtlError: bad options, or no scan could be written.
    """
    from ssmtl.api.errors import SsmtlError
    from ssmtl.downstream.predict import PredictOptions, predict as run_predict

    if format is None:
        format = PredictOptions.format  # the CLI's default: NIfTI
    paths = [Path(inputs)] if isinstance(inputs, (str, Path)) else [Path(p) for p in inputs]
    options = PredictOptions(out=Path(out), format=format, probabilities=probabilities, resample=resample,
                             device=device, mixed_precision=mixed_precision, workers=workers,
                             batch_size=batch_size, modality=modality, dataset=dataset, overlap=overlap, blend=blend,
                             tta=tta, force=force)
    errors: list[str] = []

    def log(line: str) -> None:  # errors are counted in the result; warnings reach Python's warnings
        if line.startswith("error:"):
            errors.append(line)
        else:
            warnings.warn(line.removeprefix("warning: "), stacklevel=3)

    record = run_predict(Path(run), paths, options, registry=registry or plugin_registry.get_registry(), progress=progress, log=log)
    if not record.get("written"):
        raise SsmtlError(errors[0].removeprefix("error: ") if errors else "no scan was written")
    return Predictions(out=Path(out), written=record["written"], failed=record["failed"],
                       items=list(record["predictions"]), record=record)


def score_predictions(predictions: str | Path, references: str | Path, *, labels: str | Path | None = None,
                      out: str | Path | None = None) -> dict[str, Any]:
    """Score a folder of predicted label maps (any tool's) against reference label maps, as
    ``ssmtl evaluate --predictions DIR --references DIR`` does; writes ``scores.json`` and ``scores.csv``.

    Args:
        predictions: the folder of predictions (``case.nii.gz``; nnU-Net's or ``ssmtl predict``'s).
        references: the folder of reference label maps (``case.nii.gz``, or ``case_seg.nii.gz`` ...).
        labels: a ``dataset.json`` (nnU-Net v2 or Decathlon) naming the structures; default:
            every value found, as ``label_<value>``.
        out: the folder for the two files (default: ``predictions``).

    Returns:
        ``scores.json`` as a dict: ``mean_dice``, ``per_class``, ``per_case``, ``errors`` (cases
        that could not be scored; their reasons also reach Python's warnings) and ``unmatched``.

    Raises:
        SsmtlError: a missing folder, a bad ``dataset.json``, no case matched, or none scored.
    """
    from ssmtl.downstream.score_folders import FolderScoreOptions, score_folders

    options = FolderScoreOptions(Path(predictions), Path(references), None if labels is None else Path(labels),
                                 None if out is None else Path(out))
    return score_folders(options, log=lambda line: warnings.warn(line.removeprefix("warning: "), stacklevel=3))
