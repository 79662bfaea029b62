"""``ssmtl predict``: segment new scans with a fine-tuned run, in each scan's own space.

For every scan (see :mod:`~ssmtl.downstream.predict_inputs` for what an input can be):

1. read it through a dataset plugin, reoriented to canonical RAS, and preprocess it
   as the run's training cache was (the same :class:`~ssmtl.data.preprocess.PreprocessConfig`,
   recorded in ``run.json`` or read from the training cache) but over its **whole** in-plane
   field of view (:mod:`~ssmtl.downstream.whole_scan`), in ``workers`` processes;
2. predict its slices in batches, in overlapping sliding windows of the cache's slice size
   (:class:`~ssmtl.downstream.predictor.Predictor`), and map the prediction back through the
   recorded transform: in-plane resampling and padding undone, slice layout undone,
   reorientation undone;
3. write a uint8 label map with the input's exact shape and voxel-to-world geometry
   (:mod:`ssmtl.data.scan_writer`), and optionally the class probabilities.

A scan that cannot be read, preprocessed or written is reported (``log``) and recorded; the
others are still written, whatever the number of workers. ``OUT/predictions.json`` records
every scan: input, output, reader, shape, spacing, affine, modality, the structures found
(voxels and millilitres) and the time. ``--out`` is written as a whole, never over an input
or a file predict did not write (:mod:`~ssmtl.downstream.prediction_folder`).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ssmtl._version import __version__
from ssmtl.api.datasets.arrays import from_slices
from ssmtl.api.errors import InputFileError, SsmtlError
from ssmtl.api.volumes import SourceGeometry
from ssmtl.host.plugin_calls import describe
from ssmtl.storage.files import out_of_space, save_json, space_error
from ssmtl.data.cache import SliceCache
from ssmtl.data.ingest import Failure, iter_processed
from ssmtl.data.native import canonical_to_source
from ssmtl.data.preprocess import PreprocessConfig, ProcessedVolume
from ssmtl.data.scan_writer import FORMATS, NIFTI, output_format, SAME, write_label_map, write_probabilities
from ssmtl.downstream.prediction_folder import PredictionFolder, RECORD
from ssmtl.downstream.predictor import (allowed_flips, DEFAULT_OVERLAP, Predictor, Resample, resolve_device,
                                        resolve_resampling, Windows)
from ssmtl.downstream.predict_inputs import list_scans, ScanInput, scan_openers
from ssmtl.downstream.whole_scan import load_whole_scan

PROBABILITIES = "_probabilities"


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
    overlap: float = DEFAULT_OVERLAP
    blend: str = "gaussian"
    tta: bool = False
    force: bool = False


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
        if not data.get("modalities"):
            data["modalities"] = cache.summary()["modalities"]
    return PreprocessConfig.model_validate(recorded), data


def _output_stems(scans: list[ScanInput], probabilities: bool) -> dict[int, str]:
    """Scan index -> a unique file stem for its outputs (named after the scan; ``_2``, ``_3`` for repeats).

    Raises:
        SsmtlError: with ``probabilities``, one scan's probability map would carry another
            scan's name (scans ``a`` and ``a_probabilities``).
    """
    taken: dict[str, int] = {}
    stems = {}
    for index, scan in enumerate(scans):
        if scan.item is None:
            continue
        stem = str(scan.item.subject).replace("/", "_").replace("\\", "_") or "scan"
        name, n = stem, 1
        while name.lower() in taken:
            n += 1
            name = f"{stem}_{n}"
        taken[name.lower()] = index
        stems[index] = name
    if probabilities:
        for index, stem in stems.items():
            other = taken.get(f"{stem}{PROBABILITIES}".lower())
            if other is not None:
                raise SsmtlError(f"--probabilities: the probabilities of {scans[index].path} ({stem}{PROBABILITIES}) would "
                                 f"carry the name of the scan {scans[other].path}; predict them into separate --out folders")
    return stems


def _output_path(folder: Path, stem: str, scan: ScanInput, source_format: str, options: PredictOptions) -> tuple[Path, str]:
    """(label map path in ``folder``, format) once the scan's own format is known."""
    fmt, extension = output_format(options.format, source_format, scan.path)
    return folder / f"{stem}{extension}", fmt


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
    """Segment ``inputs`` with the fine-tuned run ``run_dir``; returns (and writes) the ``predictions.json`` record.

    ``log`` receives one ``error: PATH: reason`` line per scan that failed and
    ``warning: ...`` lines; the record's ``failed`` counts them. ``options.out`` is replaced
    as a whole when at least one scan was written, and left as it was when none was.
    """
    from ssmtl.downstream.model import load_finetuned

    if options.format not in FORMATS:
        raise SsmtlError(f"--format {options.format!r}: use {' or '.join(FORMATS)}")
    if options.workers < 0:
        raise SsmtlError(f"--workers {options.workers}: expected 0 (this process) or more")
    run_dir = Path(run_dir)
    windows = Windows(overlap=options.overlap, blend=options.blend)  # checks the options before any work
    model, run = load_finetuned(run_dir, registry)
    preprocess, training = training_preprocess(run, run_dir)
    windows = dataclasses.replace(windows, flip_axes=allowed_flips(run, options.tta, log))
    engine = Predictor(model, resolve_device(options.device), batch_size=options.batch_size,
                       mixed_precision=options.mixed_precision, window=preprocess.size, windows=windows)
    openers = scan_openers(registry, explicit=options.dataset, preferred=training.get("dataset"))
    scans = list_scans(inputs, openers, options.modality)
    if not scans:
        raise SsmtlError("no inputs given")
    stems = _output_stems(scans, options.probabilities)
    read = [("--run", run_dir), *(("--input", Path(p)) for p in inputs), *(("--input", s.path) for s in scans)]
    with PredictionFolder(options.out, read, force=options.force) as folder:
        report = _predict(engine, scans, stems, folder.staging, options, run, run_dir, preprocess, training,
                          progress=progress, log=log)
        if report["written"]:
            folder.commit()
    return report


def _predict(engine: Predictor, scans: list[ScanInput], stems: dict[int, str], staging: Path, options: PredictOptions,
             run: dict[str, Any], run_dir: Path, preprocess: PreprocessConfig, training: dict[str, Any], *,
             progress: bool, log: Callable[[str], None]) -> dict[str, Any]:
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
        for index, result in _prepared(scans, readable, preprocess, options.workers):
            scan, record = scans[index], results[index]
            try:
                if isinstance(result, Failure):
                    raise InputFileError(result.path, result.reason)
                source = result.transform.source
                output = _output_path(staging, stems[index], scan, source.format if source else "", options)
                record.update(_predict_one(engine, scan, result, output, options, class_names, training, log, bar))
            except (MemoryError, KeyboardInterrupt):
                raise
            except InputFileError as exc:
                record.update(status="error", error=exc.reason)
                log(f"error: {exc.path}: {exc.reason}")
            except SsmtlError:
                raise  # a full disk, a failing plugin: not this scan's fault, and the next scan would fail alike
            except Exception as exc:
                if out_of_space(exc):
                    raise space_error(options.out, "the predictions", out_of_space(exc)) from None
                reason = f"cannot write the prediction ({exc})" if isinstance(exc, OSError) else f"cannot predict it ({describe(exc)})"
                record.update(status="error", error=reason)
                log(f"error: {scan.path}: {reason}")
            bar.advance(scans=1)
    finally:
        bar.close()
    failed = sum(r["status"] != "ok" for r in results)
    files = sorted(Path(r[key]).name for r in results if r["status"] == "ok" for key in ("output", "probabilities") if r.get(key))
    report = {
        "ssmtl_version": __version__, "run": str(run_dir), "device": str(engine.device),
        "mixed_precision": options.mixed_precision, "format": options.format, "resample": options.resample,
        "inference": {"window": preprocess.size, **engine.windows.record()},
        "preprocess": preprocess.model_dump(mode="json"), "training_data": training,
        # what each written value means: the training cache's class ids, not the label files' raw values
        "classes": {str(k): v for k, v in sorted(class_names.items())},
        "scans": len(scans), "written": len(scans) - failed, "failed": failed,
        "seconds": round(time.perf_counter() - started, 3), "files": [RECORD, *files], "predictions": results,
    }
    if report["written"]:
        save_json(staging / RECORD, report)
    return report


def _prepared(scans: list[ScanInput], readable: list[int], preprocess: PreprocessConfig, workers: int):
    """(scan index, ProcessedVolume or Failure) for the readable scans, in order; a worker pool that
    dies (out of memory) fails the scan it was loading and every scan after it, never the record."""
    results = iter_processed([scans[i].item for i in readable], preprocess, workers, prepare=load_whole_scan)
    for position, index in enumerate(readable):
        try:
            _, result = next(results)
        except InputFileError as exc:
            yield index, Failure(exc.path, exc.reason)
            for later in readable[position + 1:]:
                yield later, Failure(str(scans[later].path), "not predicted: the worker processes stopped (see above)")
            return
        yield index, result


def _predict_one(engine: Predictor, scan: ScanInput, volume: ProcessedVolume, output: tuple[Path, str],
                 options: PredictOptions, class_names: dict[int, str], training: dict[str, Any], log, bar: _Bar) -> dict[str, Any]:
    started = time.perf_counter()
    transform = volume.transform
    modalities = training.get("modalities") or []
    if modalities and volume.modality not in modalities:
        log(f"warning: {scan.path}: {'an' if volume.modality == 'mr' else 'a'} {volume.modality.upper()} scan, but the model was trained on "
            f"{'/'.join(m.upper() for m in modalities)} (pass --modality to override the detection)")
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
        "status": "ok", "error": None, "output": str(options.out / path.name), "format": fmt, "layout": layout,
        "source_format": geometry.format or None, "shape": list(labels.shape),
        "spacing_mm": [round(float(s), 6) for s in np.linalg.norm(np.asarray(geometry.affine)[:3, :3], axis=0)],
        "affine_ras": np.asarray(geometry.affine).round(6).tolist(), "modality": volume.modality,
        "slices": int(volume.image.shape[0]), "cache_grid_mm": [round(float(s), 4) for s in volume.spacing],
        # the grid the sliding windows covered: the scan's whole field of view at the cache spacing
        "inference_grid": [int(n) for n in volume.image.shape[1:]],
        "resample": resolve_resampling(options.resample, transform),
        "structures": _structures(labels, geometry, class_names),
    }
    if fmt != (geometry.format or NIFTI) and options.format == SAME:
        record["note"] = f"{geometry.format} input written as {fmt} (see the docs: ssmtl does not write {geometry.format})"
    if prediction.probabilities is not None:
        stack = prediction.probabilities  # (D, C, Y, X) -> canonical (X, Y, Z, C)
        canonical_probs = np.transpose(stack, (3, 2, 0, 1))[::-1, ::-1]
        probs = canonical_probs if layout == "canonical" else canonical_to_source(canonical_probs, transform)
        prob_path = path.with_name(path.name[: -len(_extension(path))] + f"{PROBABILITIES}.nii.gz")
        write_probabilities(prob_path, probs, geometry, template)
        record["probabilities"] = str(options.out / prob_path.name)
    record["seconds"] = round(time.perf_counter() - started, 3)
    return record


def _extension(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix
