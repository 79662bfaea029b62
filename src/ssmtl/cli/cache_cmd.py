"""``ssmtl cache``: build and inspect HDF5 slice caches."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from ssmtl.cli.common import console, err_console, handle_errors, registry

app = typer.Typer(help="Build and inspect HDF5 slice caches (the training input).", no_args_is_help=True)

# CLI flags forwarded to the dataset plugin when its config has a field of that name
_DATASET_FLAGS = ("images", "labels", "modality", "subjects", "domain", "seed", "size")


@app.command("build")
@handle_errors
def build(
    dataset: str = typer.Option(..., "--dataset", "-d", help="Dataset plugin: `nifti`, `phantom`, ... (see `ssmtl plugins`)."),
    out: Path = typer.Option(..., "--out", "-o", help="Cache file to write, e.g. data.h5. Written atomically."),
    images: Optional[Path] = typer.Option(None, help="[nifti] Folder of image volumes."),
    labels: Optional[Path] = typer.Option(None, help="[nifti] Folder of label maps (paired by file name)."),
    modality: Optional[str] = typer.Option(None, help="[nifti] ct or mr (default: detect per volume)."),
    subjects: Optional[int] = typer.Option(None, help="[phantom] Number of generated subjects (default 16)."),
    domain: Optional[str] = typer.Option(None, help="[phantom] ct or mr appearance (default ct)."),
    seed: Optional[int] = typer.Option(None, help="[phantom] Generator seed."),
    size: int = typer.Option(128, help="Output in-plane size in pixels (square)."),
    spacing: Optional[float] = typer.Option(None, help="Target in-plane spacing in mm (default: fit the field of view into --size)."),
    ct_window: Optional[str] = typer.Option(None, help="CT window in HU as LOW,HIGH (default -250,750)."),
    compression: str = typer.Option("gzip", help="HDF5 compression: gzip (portable), lzf (fast, h5py only) or none."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Extra dataset option KEY=VALUE (repeatable)."),
    split_seed: int = typer.Option(0, "--split-seed", help="Seed of the stored subject-level train/test split."),
    test_fraction: float = typer.Option(0.3, "--test-fraction", help="Fraction of labeled subjects held out for testing (0: none). Pre-training never reads them."),
    force: bool = typer.Option(False, "--force", help="Replace an existing cache at --out (the old one stays intact until the new one is complete)."),
) -> None:
    """Read volumes through a dataset plugin, reorient, resample, normalise and write one HDF5 cache.

    Examples:

      ssmtl cache build --dataset phantom --out demo.h5 --subjects 16 --domain ct --size 64

      ssmtl cache build --dataset nifti --images imgs/ --labels labels/ --out data.h5 --modality ct --size 128 --spacing 1.5
    """
    from ssmtl.core.build import build_cache
    from ssmtl.core.config import parse_set_flags
    from ssmtl.core.errors import SsmtlError
    from ssmtl.core.preprocess import PreprocessConfig
    from ssmtl.core.build import validate_model

    reg = registry()
    spec = reg.dataset(dataset)
    if compression not in ("gzip", "lzf", "none"):
        raise SsmtlError(f"--compression {compression!r}: use gzip, lzf or none")
    fields = spec.config_model.model_fields
    given = {"images": images, "labels": labels, "modality": modality, "subjects": subjects, "domain": domain, "seed": seed}
    options = {}
    for key, value in given.items():
        if value is None:
            continue
        if key not in fields:
            raise SsmtlError(f"--{key} is not an option of dataset {dataset!r} (its options: {', '.join(f for f in fields if f != 'name')})")
        options[key] = value
    if "size" in fields:
        options["size"] = size
    for key, value in parse_set_flags(set_ or []):
        options[key] = value
    pre = {"size": size, "spacing": spacing}
    if ct_window:
        try:
            lo, hi = (float(v) for v in ct_window.split(","))
        except ValueError:
            raise SsmtlError(f"--ct-window {ct_window!r}: expected LOW,HIGH in HU, e.g. -250,750") from None
        pre["ct_window"] = (lo, hi)
    preprocess = validate_model(PreprocessConfig, pre, prefix="preprocess")

    progress = _progress()
    state: dict = {}

    def on_volume(done: int, total: int, subject: str) -> None:
        # started lazily: errors found while listing inputs print no half-drawn bar
        if "task" not in state:
            progress.start()
            state["task"] = progress.add_task(f"caching {dataset}", total=total)
        progress.update(state["task"], completed=done, description=f"cached {subject}" if subject else f"caching {dataset}")

    try:
        build_cache(
            dataset=dataset, dataset_options=options, preprocess=preprocess, out=out, force=force,
            compression=compression, registry=reg, on_volume=on_volume,
            split_seed=split_seed, test_fraction=test_fraction,
        )
    finally:
        progress.stop()
    _print_info(out)


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err_console, transient=True)


def _print_info(path: Path) -> None:
    from rich.table import Table

    from ssmtl.core.cache import SliceCache

    s = SliceCache(path).summary()
    table = Table(title=f"{path}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("volumes", f"{s['volumes']} ({s['labeled_volumes']} labeled)")
    table.add_row("slices", str(s["slices"]))
    table.add_row("slice shape", " x ".join(map(str, s["slice_shape"])))
    table.add_row("modality", ", ".join(f"{m}: {n}" for m, n in s["modalities"].items()))
    table.add_row("classes", ", ".join(f"{k}={v}" for k, v in s["classes"].items()) or "none")
    sp = s["spacing_mm"]
    if sp["in_plane"] is not None:
        table.add_row("spacing (mm)", f"in-plane {sp['in_plane']:.3g}, slices {sp['z_min']:.3g}-{sp['z_max']:.3g}")
    split = s.get("split") or {}
    if split:
        table.add_row("split", ", ".join(f"{k}: {v}" for k, v in split.items()))
    table.add_row("dataset", str(s["dataset"]))
    table.add_row("fingerprint", s["fingerprint"][:16])
    console.print(table)


@app.command("info")
@handle_errors
def info(
    path: Path = typer.Argument(..., help="Cache file (.h5)."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Describe a cache: volumes, slices, slice shape, classes, modalities and spacing."""
    from ssmtl.core.cache import SliceCache

    if as_json:
        typer.echo(json.dumps(SliceCache(path).summary(), indent=2))
    else:
        _print_info(path)
