"""``ssmtl export`` and ``ssmtl report``: weights other code loads, pages people read."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ssmtl.cli.common import console, handle_errors, registry


def register(app: typer.Typer) -> None:
    app.command("export")(export)
    app.command("report")(report)


@handle_errors
def export(
    run: Path = typer.Argument(..., metavar="RUN", help="A pre-training or fine-tuning run directory."),
    fmt: str = typer.Option("safetensors", "--format", "-f", help="safetensors (weights), torchscript (model.pt, plain torch.jit.load), onnx (model.onnx; needs pip install 'ssmtl[onnx]') or monai-bundle (a fine-tuning run as a MONAI bundle that segments NIfTI scans)."),
    part: Optional[str] = typer.Option(None, "--part", help="encoder (features at every scale), network (encoder + decoder: decoder features) or finetuned (network + head: class logits; fine-tuning runs). Default: network for a pre-training run, finetuned for a fine-tuning run."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder (default: RUN/hub/PART-FORMAT)."),
    size: Optional[int] = typer.Option(None, "--size", help="Slice size the traced formats are built and checked at (default: the size the run was trained at; any multiple of 2**depth works afterwards)."),
    force: bool = typer.Option(False, "--force", help="Replace an earlier export folder (never anything else)."),
    license: Optional[str] = typer.Option(None, "--license", help="License of the weights, as a Hugging Face hub identifier (e.g. cc-by-nc-4.0). Default: not set; the folder's LICENSE says what to decide."),
    push_to_hub: Optional[str] = typer.Option(None, "--push-to-hub", help="Upload the folder to this Hugging Face hub repository (OWNER/NAME) afterwards; needs pip install 'ssmtl[hub]' and a token (hf auth login)."),
    private: bool = typer.Option(False, "--private", help="With --push-to-hub: create the repository private."),
    identify_subjects: bool = typer.Option(False, "--identify-subjects", help="Name subjects by their real ids (a DICOM PatientID, a file name) in the model card, for internal use only; default: pseudonyms (subject-007). Never with --push-to-hub."),
) -> None:
    """Export a run's weights as a model-hub folder: README.md (model card), config.json, and
    model.safetensors, model.pt or model.onnx, or a MONAI bundle.

    The written model is run against torch before the folder is published (largest difference
    in config.json); weights holding NaN or Inf are refused. Nothing in the folder names a
    subject (pseudonyms such as subject-007 instead) or an absolute local path.

    Example: ssmtl export runs/ft --format onnx --out hub/ft-onnx
    """
    from ssmtl.publish.hub import export_and_push

    result = export_and_push(run, fmt, part=part, out=out, size=size, force=force, license=license,
                             push_to_hub=push_to_hub, private=private, identify_subjects=identify_subjects,
                             registry=registry())
    parity = result.parity
    check = (f"max |difference| to torch {parity['max_abs_error']:.2g} ({parity['runtime']})" if parity.get("checked")
             else f"not checked: {parity.get('reason')}")
    sizes = ", ".join(f"{name} {n / 1024:.0f} KiB" for name, n in result.files.items())
    console.print(f"exported {result.part} as {result.format} to {result.path}: {sizes}; {check}", highlight=False)
    if result.pushed_to:
        console.print(f"pushed to {result.pushed_to}", highlight=False)


@handle_errors
def report(
    target: Path = typer.Argument(..., metavar="RUN", help="A run directory (pre-training or fine-tuning) or a benchmark directory."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="The HTML file (default: TARGET/report.html)."),
    identify_subjects: bool = typer.Option(False, "--identify-subjects", help="Name subjects and volumes by their real ids (a DICOM PatientID, a file name), for internal use only; default: pseudonyms (subject-007), so the page can be shared."),
) -> None:
    """Write one self-contained HTML page (images embedded) about a run or a benchmark.

    A run: its config, curves (curves.png is drawn again too), and for an evaluated fine-tuning
    run the per-structure table and predictions over held-out slices of the best, median and
    worst test volume. A benchmark: the Dice-vs-labels plot and the paired tables. Subjects and
    volumes are named by pseudonyms (subject-007) and paths by their names, so the page can be
    shared.

    Example: ssmtl report runs/ft --out ft-report.html
    """
    from ssmtl.publish.report import write_report

    path = write_report(target, out, registry=registry(), identify_subjects=identify_subjects)
    console.print(f"report: {path} ({path.stat().st_size / 1024:.0f} KiB)", highlight=False)
