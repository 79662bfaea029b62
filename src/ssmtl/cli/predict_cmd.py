"""``ssmtl predict``: label maps for new scans, in each scan's own space."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ssmtl.cli.common import console, err_console, handle_errors, registry

#: Exit codes: every scan written; some failed (the others are written); none written.
EXIT_OK, EXIT_PARTIAL, EXIT_NONE = 0, 1, 2


def register(app: typer.Typer) -> None:
    app.command("predict")(predict)


@handle_errors
def predict(
    run: Path = typer.Argument(..., metavar="RUN", help="Fine-tuning run directory.(run.json + model.safetensors)."),
    inputs: List[Path] = typer.Option(..., "--input", "-i", help="A scan (.nii/.nii.gz, .nrrd/.nhdr, .mha/.mhd), a DICOM series folder, a folder of scans, or a manifest (.csv/.json with an `image` column). Repeatable."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: one label map per scan, named after it, and predictions.json."),
    format_: str = typer.Option("nifti", "--format", help="nifti (.nii.gz) or same: the input's own format (NIfTI, NRRD, MetaImage; a DICOM series is written as NRRD, see the docs)."),
    probabilities: bool = typer.Option(False, "--probabilities", help="Also write NAME_probabilities.nii.gz: class probabilities (4D, uint8 with slope 1/255)."),
    resample: str = typer.Option("auto", "--resample", help="Back to the scan's grid: linear (probabilities interpolated, then arg-max), nearest (the cache-grid labels copied) or auto: nearest where the cache is at least as fine as the scan, linear where coarser."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Dataset plugin that reads the scans (default: the run's training dataset if it reads the file, else the first that does)."),
    modality: Optional[str] = typer.Option(None, "--modality", help="ct or mr for every scan (default: the file's own, else detected from the intensities)."),
    device: str = typer.Option("auto", "--device", help="auto (a GPU if there is one), cpu, cuda or cuda:N."),
    mixed_precision: str = typer.Option("no", "--mixed-precision", help="no, bf16 or fp16 autocast for the network."),
    workers: int = typer.Option(0, "--workers", "-j", help="Processes that read and preprocess scans while the network runs (0: this process)."),
    batch_size: int = typer.Option(32, "--batch-size", help="Slices (or windows) per forward pass."),
    overlap: float = typer.Option(0.5, "--overlap", help="Sliding windows over the whole scan: the fraction of a window shared with its neighbour, in [0, 1) (nnU-Net's step size 0.5 is overlap 0.5)."),
    blend: str = typer.Option("gaussian", "--blend", help="How overlapping windows are combined: gaussian (a window's centre counts most, as nnU-Net) or constant."),
    tta: bool = typer.Option(False, "--tta", help="Test-time augmentation: also predict each slice mirrored along the in-plane axes the run's data allows (run.json flip_axes; none for the heart) and average."),
    force: bool = typer.Option(False, "--force", help="Replace an --out folder that holds files predict did not write (the folder is replaced as a whole; inputs are never replaced)."),
) -> None:
    """Segment scans with a fine-tuned run and write label maps with each input's exact shape and geometry.

    Every scan is read by a dataset plugin, preprocessed as the run's training cache was but over
    its whole field of view, predicted slice by slice in overlapping sliding windows of the cache's
    slice size, and mapped back to its own voxel grid (orientation, spacing, origin, shape). A scan
    that cannot be read gets one `error:` line; the others are still written. --out is written as a
    whole (the earlier prediction stays until the new one is complete) and never over an input or
    a file predict did not write. Exit code: 0 all written, 1 some failed, 2 none written (or bad
    options).

    Example: ssmtl predict runs/ft --input scan.nii.gz --input dicom/series1/ --out pred/
    """
    from ssmtl.api.errors import SsmtlError
    from ssmtl.downstream.predict import predict as run_predict
    from ssmtl.downstream.predict import PredictOptions, RECORD

    if modality is not None and modality not in ("ct", "mr"):
        raise SsmtlError(f"--modality {modality!r}: use ct or mr")
    options = PredictOptions(out=out, format=format_, probabilities=probabilities, resample=resample, device=device,
                             mixed_precision=mixed_precision, workers=workers, batch_size=batch_size,
                             modality=modality, dataset=dataset, overlap=overlap, blend=blend, tta=tta, force=force)
    report = run_predict(run, inputs, options, registry=registry(),
                         log=lambda line: err_console.print(_styled(line), highlight=False))
    for item in report["predictions"]:
        if item["status"] == "ok":
            console.print(f"{item['input']} -> {item['output']}", highlight=False)
    written, total = report["written"], report["scans"]
    where = f"record: {out / RECORD}" if written else f"nothing written, {out} left as it was"
    err_console.print(f"predicted {written} of {total} scan(s) in {report['seconds']:.1f}s on {report['device']}; {where}",
                      highlight=False)
    if written < total:
        raise typer.Exit(EXIT_PARTIAL if written else EXIT_NONE)


def _styled(line: str) -> str:
    from rich.markup import escape

    for tag, style in (("error:", "bold red"), ("warning:", "yellow")):
        if line.startswith(tag):
            return f"[{style}]{tag}[/]{escape(line[len(tag):])}"
    return escape(line)
