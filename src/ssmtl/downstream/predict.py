"""``ssmtl predict``: segment new scans with a fine-tuned run, in each scan's own space.

For every scan (see :mod:`~ssmtl.downstream.predict_inputs` for what an input can be):

1. read it through a dataset plugin, reoriented to canonical RAS, and preprocess it
   exactly as the run's training cache was (the same :class:`~ssmtl.data.preprocess.PreprocessConfig`,
   recorded in ``run.json`` or read from the training cache), in ``workers`` processes;
2. predict its slices in batches (:class:`~ssmtl.downstream.predictor.Predictor`) and
   map the prediction back through the recorded transform: in-plane resampling and
   crop/pad undone, slice layout undone, reorientation undone;
3. write a uint8 label map with the input's exact shape and voxel-to-world geometry
   (:mod:`ssmtl.data.scan_writer`), and optionally the class probabilities.

A scan that cannot be read or written is reported (``log``) and recorded; the others are
still written. ``OUT/predictions.json`` records every scan: input, output, reader, shape,
spacing, affine, modality, the structures found (voxels and millilitres) and the time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ssmtl._version import __version__
from ssmtl.api.datasets.arrays import from_slices
from ssmtl.api.datasets.files import real_path
from ssmtl.api.errors import InputFileError, SsmtlError
from ssmtl.api.volumes import SourceGeometry
from ssmtl.storage.files import save_json
from ssmtl.storage.outputs import removed_on_failure
from ssmtl.data.cache import SliceCache
from ssmtl.data.ingest import Failure, iter_processed
from ssmtl.data.native import canonical_to_source
from ssmtl.data.preprocess import PreprocessConfig, ProcessedVolume
from ssmtl.data.scan_writer import FORMATS, NIFTI, output_format, SAME, write_label_map, write_probabilities
from ssmtl.downstream.predictor import Predictor, Resample, resolve_device, resolve_resampling
from ssmtl.downstream.predict_inputs import list_scans, ScanInput, scan_openers

RECORD = "predictions.json"


@dataclass
class PredictOptions:
    """How ``ssmtl predict`` runs (its flags)."""

    out: Path
    format: str = NIFTI
    probabilities: bool = False
    resample: Resample = "auto"
    device: str = "auto"
    mixed_precision: str = "no"
    workers: int = 0
    batch_size: int = 32
    modality: str | None = None
    dataset: str | None = None


def training_preprocess(run: dict[str, Any], run_dir: Path) -> tuple[PreprocessConfig, dict[str, Any]]:
    """The preprocessing the run was trained with, and what run.json says about its training data.

    ``run.json`` records it (runs since the way back exists); older runs are served from
    the training cache, when it is still where run.json says.
    """
    data = dict(run.get("data") or {})
    recorded = run.get("preprocess")
    if recorded is None:
        path = Path(data.get("path") or "")
        try:
            cache = SliceCache(path)
        except InputFileError as exc:
            raise SsmtlError(f"{run_dir / 'run.json'} does not record the preprocessing and its training cache is "
                             f"not readable ({exc}); re-run fine-tuning with this ssmtl version") from None
        recorded = cache.attrs.get("preprocess")
        data.setdefault("dataset", cache.attrs.get("dataset"))
        data.setdefault("modalities", sorted({v.modality for v in cache.volumes}))
    return PreprocessConfig.model_validate(recorded), data


def _output_stems(scans: list[ScanInput]) -> dict[int, str]:
    """Scan index -> a unique file stem for its outputs (named after the scan; ``_2``, ``_3`` for repeats)."""
    taken: set[str] = set()
    stems = {}
    for index, scan in enumerate(scans):
        if scan.item is None:
            continue
        stem = str(scan.item.subject).replace("/", "_").replace("\\", "_") or "scan"
        name, n = stem, 1
        while name.lower() in taken:
            n += 1
            name = f"{stem}_{n}"
        taken.add(name.lower())
        stems[index] = name
    return stems


def _output_path(stem: str, scan: ScanInput, source_format: str, options: PredictOptions,
                 inputs: set[Path]) -> tuple[Path, str]:
    """(label map path, format) once the scan's own format is known; never over an input."""
    fmt, extension = output_format(options.format, source_format, scan.path)
    path = options.out / f"{stem}{extension}"
    if real_path(path) in inputs:  # --out is an input folder
        path = options.out / f"{stem}_seg{extension}"
    return path, fmt


def _structures(labels: np.ndarray, geometry: SourceGeometry, class_names: dict[int, str]) -> dict[str, Any]:
    voxel_ml = abs(float(np.linalg.det(np.asarray(geometry.affine)[:3, :3]))) / 1000.0
    counts = np.bincount(labels.ravel(), minlength=max(class_names) + 1)
    return {class_names.get(c, f"class_{c}"): {"voxels": int(counts[c]), "ml": round(float(counts[c]) * voxel_ml, 3)}
            for c in range(1, len(counts)) if counts[c]}


class _Bar:
    """Scans and slices on stderr (rich), or nothing."""

    def __init__(self, enabled: bool, scans: int):
        self.progress = None
        if not enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from rich.console import Console

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                 console=Console(stderr=True), transient=True)
        self.scans = self.progress.add_task("scans", total=scans)
        self.slices = self.progress.add_task("slices", total=0)
        self.progress.start()

    def scan(self, name: str, slices: int) -> None:
        if self.progress is not None:
            self.progress.reset(self.slices, total=slices, description=f"predicting {name}")

    def advance(self, slices: int = 0, scans: int = 0) -> None:
        if self.progress is not None:
            self.progress.advance(self.slices, slices)
            self.progress.advance(self.scans, scans)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def predict(run_dir: Path, inputs: list[Path], options: PredictOptions, *, registry, progress: bool = True,
            log: Callable[[str], None] = print) -> dict[str, Any]:
    """:func:`_predict`; an output folder it created is removed again if it fails (a full disk)."""
    with removed_on_failure(options.out):
        return _predict(run_dir, inputs, options, registry=registry, progress=progress, log=log)


def _predict(run_dir: Path, inputs: list[Path], options: PredictOptions, *, registry, progress: bool = True,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Segment ``inputs`` with the fine-tuned run ``run_dir``; returns (and writes) the ``predictions.json`` record.

    ``log`` receives one ``error: PATH: reason`` line per scan that failed and
    ``warning: ...`` lines; the record's ``failed`` counts them.
    """
    from ssmtl.downstream.evaluate import load_finetuned

    if options.format not in FORMATS:
        raise SsmtlError(f"--format {options.format!r}: use {' or '.join(FORMATS)}")
    if options.workers < 0:
        raise SsmtlError(f"--workers {options.workers}: expected 0 (this process) or more")
    run_dir = Path(run_dir)
    model, run = load_finetuned(run_dir, registry)
    preprocess, training = training_preprocess(run, run_dir)
    engine = Predictor(model, resolve_device(options.device), batch_size=options.batch_size,
                            mixed_precision=options.mixed_precision)
    openers = scan_openers(registry, explicit=options.dataset, preferred=training.get("dataset"))
    scans = list_scans(inputs, openers, options.modality)
    if not scans:
        raise SsmtlError("no inputs given")
    options.out.mkdir(parents=True, exist_ok=True)
    stems = _output_stems(scans)
    inputs_resolved = {real_path(s.path) for s in scans}  # a link loop stays as given, not a RuntimeError
    class_names = {int(k): v for k, v in run["class_names"].items()}
    results: list[dict[str, Any]] = [{"input": str(s.path), "reader": s.reader, "status": "error", "error": s.error}
                                     for s in scans]
    for scan in scans:
        if scan.error is not None:
            log(f"error: {scan.path}: {scan.error}")
    started = time.perf_counter()
    readable = [i for i, s in enumerate(scans) if s.item is not None]
    bar = _Bar(progress, len(scans))
    bar.advance(scans=len(scans) - len(readable))
    try:
        processed = iter_processed([scans[i].item for i in readable], preprocess, options.workers)
        for index, (_, result) in zip(readable, processed):
            scan, record = scans[index], results[index]
            try:
                if isinstance(result, Failure):
                    raise InputFileError(result.path, result.reason)
                source = result.transform.source
                output = _output_path(stems[index], scan, source.format if source else "", options, inputs_resolved)
                record.update(_predict_one(engine, scan, result, output, options, class_names, training, log, bar))
            except (InputFileError, OSError) as exc:
                reason = exc.reason if isinstance(exc, InputFileError) else f"cannot write the prediction ({exc})"
                where = exc.path if isinstance(exc, InputFileError) else scan.path
                record.update(status="error", error=reason)
                log(f"error: {where}: {reason}")
            bar.advance(scans=1)
    finally:
        bar.close()
    failed = sum(r["status"] != "ok" for r in results)
    report = {
        "ssmtl_version": __version__, "run": str(run_dir), "device": str(engine.device),
        "mixed_precision": options.mixed_precision, "format": options.format, "resample": options.resample,
        "preprocess": preprocess.model_dump(mode="json"), "training_data": training,
        # what each written value means: the training cache's class ids, not the label files' raw values
        "classes": {str(k): v for k, v in sorted(class_names.items())},
        "scans": len(scans), "written": len(scans) - failed, "failed": failed,
        "seconds": round(time.perf_counter() - started, 3), "predictions": results,
    }
    save_json(options.out / RECORD, report)
    return report


def _predict_one(engine: Predictor, scan: ScanInput, volume: ProcessedVolume, output: tuple[Path, str],
                 options: PredictOptions, class_names: dict[int, str], training: dict[str, Any], log, bar: _Bar) -> dict[str, Any]:
    started = time.perf_counter()
    transform = volume.transform
    modalities = training.get("modalities") or []
    if modalities and volume.modality not in modalities:
        log(f"warning: {scan.path}: {'an' if volume.modality == 'mr' else 'a'} {volume.modality.upper()} scan, but the model was trained on "
            f"{'/'.join(m.upper() for m in modalities)} (pass --modality to override the detection)")
    if any(axis.kept < axis.resampled_length for axis in (transform.rows, transform.cols)):
        log(f"warning: {scan.path}: the field of view is larger than the training crop "
            f"({transform.rows.size} px of {transform.rows.spacing:.3g} mm); voxels outside it are labelled background")
    bar.scan(Path(scan.path).name, volume.image.shape[0])
    prediction = engine.native(volume.image, transform, resample=options.resample, probabilities=options.probabilities,
                               on_slices=lambda n: bar.advance(slices=n))
    canonical = np.ascontiguousarray(from_slices(prediction.labels))
    geometry = transform.source
    layout = "source"
    if geometry is None:  # a reader that does not report the file's grid: the canonical grid is still the scan's space
        geometry, layout = SourceGeometry(shape=transform.canonical_shape, affine=transform.canonical_affine), "canonical"
        labels = canonical
    else:
        labels = canonical_to_source(canonical, transform)
    path, fmt = output
    template = scan.path if geometry.format == NIFTI and scan.path.is_file() else None
    write_label_map(path, labels, geometry, fmt, template)
    record: dict[str, Any] = {
        "status": "ok", "error": None, "output": str(path), "format": fmt, "layout": layout,
        "source_format": geometry.format or None, "shape": list(labels.shape),
        "spacing_mm": [round(float(s), 6) for s in np.linalg.norm(np.asarray(geometry.affine)[:3, :3], axis=0)],
        "affine_ras": np.asarray(geometry.affine).round(6).tolist(), "modality": volume.modality,
        "slices": int(volume.image.shape[0]), "cache_grid_mm": [round(float(s), 4) for s in volume.spacing],
        "resample": resolve_resampling(options.resample, transform),
        "structures": _structures(labels, geometry, class_names),
    }
    if fmt != (geometry.format or NIFTI) and options.format == SAME:
        record["note"] = f"{geometry.format} input written as {fmt} (see the docs: ssmtl does not write {geometry.format})"
    if prediction.probabilities is not None:
        stack = prediction.probabilities  # (D, C, Y, X) -> canonical (X, Y, Z, C)
        canonical_probs = np.transpose(stack, (3, 2, 0, 1))[::-1, ::-1]
        probs = canonical_probs if layout == "canonical" else canonical_to_source(canonical_probs, transform)
        prob_path = path.with_name(path.name[: -len(_extension(path))] + "_probabilities.nii.gz")
        write_probabilities(prob_path, probs, geometry, template)
        record["probabilities"] = str(prob_path)
    record["seconds"] = round(time.perf_counter() - started, 3)
    return record


def _extension(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix
