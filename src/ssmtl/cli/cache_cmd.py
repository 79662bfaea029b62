"""``ssmtl cache``: build, describe and verify HDF5 slice caches."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List, Optional

import typer

from ssmtl.cli.common import console, err_console, handle_errors, registry
from ssmtl.cli.dataset_options import DatasetOptionsCommand, dataset_values

app = typer.Typer(help="Build, describe and verify HDF5 slice caches (the training input).", no_args_is_help=True)


@app.command("build", cls=DatasetOptionsCommand)
@handle_errors
def build(
    ctx: typer.Context,
    dataset: str = typer.Option(..., "--dataset", "-d", help="Dataset plugin: nifti, dicom, itk, mmwhs, acdc, manifest, phantom, ... (see `ssmtl plugins`). Its options follow: one per field of its config model (`--dataset NAME --help` lists them)."),
    out: Path = typer.Option(..., "--out", "-o", help="Cache file to write, e.g. data.h5. Written atomically."),
    size: int = typer.Option(128, help="Output in-plane size in pixels (square); also a dataset's own `size` field."),
    spacing: Optional[float] = typer.Option(None, help="Target in-plane spacing in mm (default: fit the field of view into --size)."),
    ct_window: Optional[str] = typer.Option(None, help="CT window in HU as LOW,HIGH (default -250,750)."),
    compression: str = typer.Option("gzip", help="HDF5 compression: gzip (portable), lzf (fast, h5py only) or none."),
    set_: Optional[List[str]] = typer.Option(None, "--set", metavar="PATH=VALUE", help="Any field of the build's config, as in every command: dataset.FIELD (the dataset plugin's options, e.g. dataset.label_values=[205,420]) or preprocess.FIELD (size, spacing, ct_window, mr_percentiles); repeatable, after the flags."),
    split_seed: int = typer.Option(0, "--split-seed", help="Seed of the stored subject-level train/test split (a manifest's split column takes precedence)."),
    test_fraction: float = typer.Option(0.3, "--test-fraction", help="Fraction of labeled subjects held out for testing (0: none). Pre-training never reads them."),
    val_fraction: float = typer.Option(0.0, "--val-fraction", help="Fraction of labeled subjects held out for validation (fine-tuning selects its best step and stops on them; 0: none)."),
    workers: int = typer.Option(0, "--workers", "-j", help="Processes that load and preprocess volumes (0: this process). Memory: about one volume per worker."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip inputs that fail to load and list them at the end (default: stop at the first)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing cache at --out (the old one stays intact until the new one is complete)."),
    shard: Optional[str] = typer.Option(None, "--shard", help="I/N: build only the I-th of N disjoint parts (round robin over the sorted subjects; the split is the full build's), e.g. --shard $SLURM_ARRAY_TASK_ID/8. Train on the parts together (--data shards/); `ssmtl cache verify shards/` checks they are complete."),
) -> None:
    """Read volumes through a dataset plugin, reorient, resample, normalise and write one HDF5 cache.

    Examples:

      ssmtl cache build --dataset phantom --out demo.h5 --subjects 16 --domain ct --size 64

      ssmtl cache build --dataset nifti --images imgs/ --labels labels/ --out data.h5 --modality ct --size 128 --spacing 1.5

      ssmtl cache build --dataset dicom --path export/ --labels seg.nii.gz --out ct.h5

      ssmtl cache build --dataset mmwhs --path MM-WHS/ --modality ct --out whs_ct.h5 --workers 2

      ssmtl cache build --dataset manifest --path volumes.csv --out mixed.h5 --skip-bad

      ssmtl cache build --dataset mmwhs --path MM-WHS/ --out shards/whs-2-of-4.h5 --shard 2/4
    """
    from ssmtl.data.build import build_cache
    from ssmtl.settings.sources import validate_model
    from ssmtl.settings.sources import parse_set_flags
    from ssmtl.api.errors import SsmtlError
    from ssmtl.data.preprocess import PreprocessConfig

    from ssmtl.data.shards import parse_shard

    part = parse_shard(shard) if shard is not None else None
    reg = registry()
    spec = reg.dataset(dataset)
    if compression not in ("gzip", "lzf", "none"):
        raise SsmtlError(f"--compression {compression!r}: use gzip, lzf or none")
    options: dict[str, Any] = dataset_values(ctx, spec)
    if "size" in spec.config_model.model_fields:
        options["size"] = size
    pre: dict[str, Any] = {"size": size, "spacing": spacing}
    if ct_window:
        try:
            lo, hi = (float(v) for v in ct_window.split(","))
        except ValueError:
            raise SsmtlError(f"--ct-window {ct_window!r}: expected LOW,HIGH in HU, e.g. -250,750") from None
        pre["ct_window"] = (lo, hi)
    sections = {"dataset": options, "preprocess": pre}
    for key, value in parse_set_flags(set_ or []):
        section, dot, field = key.partition(".")
        if section not in sections or not dot or not field or "." in field:
            raise SsmtlError(f"--set {key}: expected dataset.FIELD or preprocess.FIELD (e.g. --set dataset.label_values=[1,2] "
                             f"or --set preprocess.ct_window=[-250,750])")
        sections[section][field] = value
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
            split_seed=split_seed, test_fraction=test_fraction, val_fraction=val_fraction, workers=workers,
            skip_bad=skip_bad, shard=part,
        )
    finally:
        if "task" in state:  # stopping a bar never started prints an empty line before the error
            progress.stop()
    _print_info(out)
    _print_skipped(out)
    _print_crop_warning(out)


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    # off when stderr is a pipe or a log: there a transient bar draws nothing but leaves an
    # empty line, which would stand before an error and make it two lines
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=err_console, transient=True, disable=not err_console.is_terminal)


def _print_skipped(path: Path) -> None:
    """List the inputs ``--skip-bad`` left out (path: reason), after the summary."""
    from ssmtl.data.cache import SliceCache

    skipped = SliceCache(path).attrs.get("skipped") or []
    if skipped:
        err_console.print(f"[yellow]warning:[/] skipped {len(skipped)} bad input(s):", highlight=False)
        for entry in skipped:
            err_console.print(f"  {entry['path']}: {entry['reason']}", highlight=False, markup=False)


def _print_crop_warning(path: Path) -> None:
    """One line when the cache's centre crop cuts scans' in-plane field of view (data/transform.crop_warning)."""
    from ssmtl.data.cache import SliceCache
    from ssmtl.data.transform import crop_warning

    line = crop_warning([(v.name, v.transform) for v in SliceCache(path).volumes])
    if line:
        err_console.print(f"[yellow]warning:[/] {line}", highlight=False)


def _fmt_stats(stats: dict[str, Any]) -> str:
    if stats["min"] is None:
        return "-"
    low, mid, high = stats["min"], stats["median"], stats["max"]
    return f"{low:.3g}" if low == high else f"{low:.3g} / {mid:.3g} / {high:.3g}"


def _print_info(path: Path) -> None:
    from rich.table import Table

    from ssmtl.data.cache import SliceCache

    s = SliceCache(path).summary()
    table = Table(title=f"{path}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("volumes", f"{s['volumes']} ({s['labeled_volumes']} labeled)")
    table.add_row("slices", str(s["slices"]))
    table.add_row("slice shape", " x ".join(map(str, s["slice_shape"])))
    table.add_row("modality", ", ".join(f"{m}: {n}" for m, n in s["modalities"].items()))
    table.add_row("classes", ", ".join(f"{k}={v}" for k, v in s["classes"].items()) or "none")
    voxels = s.get("class_voxels") or {}
    if voxels:
        total = sum(c["total"] for c in voxels.values()) or 1
        table.add_row("class voxels", ", ".join(f"{c['name']}: {c['total']} ({100 * c['total'] / total:.3g}%)" for c in voxels.values()))
    stats = s["spacing_stats_mm"]
    cached = stats["cached"]
    if cached["slice"]["min"] is not None:
        table.add_row("spacing (mm)", f"slices {_fmt_stats(cached['slice'])}, in-plane {_fmt_stats(cached['row'])} (min / median / max)")
    original = stats["original"]
    if original["x"]["min"] is not None:
        table.add_row("source spacing (mm)", ", ".join(f"{axis} {_fmt_stats(original[axis])}" for axis in ("x", "y", "z")))
    split = s.get("split") or {}
    if split:
        by_modality = s.get("split_by_modality") or {}
        table.add_row("split (subjects)", ", ".join(
            f"{k}: {v}" + (f" ({', '.join(f'{m} {n}' for m, n in by_modality.get(k, {}).items())})" if len(s["modalities"]) > 1 else "")
            for k, v in split.items()
        ) + (" from the dataset" if (s.get("split_info") or {}).get("source") == "dataset" else ""))
    table.add_row("way back", _way_back(s))
    if s.get("skipped"):
        table.add_row("skipped inputs", str(len(s["skipped"])))
    table.add_row("dataset", str(s["dataset"]))
    table.add_row("fingerprint", s["fingerprint"][:16])
    console.print(table)


def _way_back(s: dict[str, Any]) -> str:
    """How the cache maps back to the scans: recorded transforms, source geometries, resampling factors."""
    way = s["way_back"]
    if not way["recorded"]:
        return (f"not recorded (cache format {s['format_version']}); predictions map back to the scans and "
                "evaluation runs at native resolution only for caches rebuilt with this version")
    scale = way["scale"]
    scales = f"x{scale['min']:.3g}" if scale["min"] == scale["max"] else f"x{scale['min']:.3g} to x{scale['max']:.3g}"
    return (f"{way['recorded']}/{way['volumes']} volumes ({way['source_geometry']} with source geometry); in-plane "
            f"resampling {scales}; {way['cropped']} cropped, {way['padded']} padded; exact round trip for "
            f"{way['exact_round_trip']} (a label map on their grid comes back unchanged; details: --volume NAME)")


def _print_volume(path: Path, name: str) -> None:
    from rich.table import Table

    from ssmtl.api.errors import SsmtlError
    from ssmtl.data.cache import SliceCache
    from rich.markup import escape

    from ssmtl.data.transform import describe_transform

    cache = SliceCache(path)
    volume = next((v for v in cache.volumes if name in (v.name, v.subject)), None)
    if volume is None:
        names = ", ".join(v.name for v in cache.volumes[:10]) + (", ..." if len(cache.volumes) > 10 else "")
        raise SsmtlError(f"{path}: no volume {name!r}; the volumes are {names}")
    table = Table(title=f"{path}: {volume.name} ({volume.source})", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("cache grid", f"{' x '.join(map(str, volume.shape))} (D, H, W), "
                                f"{' x '.join(f'{v:.4g}' for v in volume.spacing)} mm")
    if volume.transform is None:
        table.add_row("way back", "not recorded (format 1 cache): rebuild it to map predictions back")
    else:
        for key, value in describe_transform(volume.transform):
            table.add_row(key, escape(value))
    console.print(table)


@app.command("info")
@handle_errors
def info(
    paths: List[Path] = typer.Argument(..., metavar="CACHE...", help="Cache file(s) (.h5), or folders of caches: several show their union."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON (every volume's transform included)."),
    volume: Optional[str] = typer.Option(None, "--volume", help="Show one volume's way from its source file to the cache grid and back (by volume or subject name)."),
) -> None:
    """Describe a cache: volumes per modality, spacing statistics, class voxel counts, the stored split, the way back to the scans.

    Several caches (or a folder) show the union as training reads it: totals, the split over all
    subjects (named CACHE-STEM/SUBJECT), then one row per cache.
    """
    from ssmtl.data.cache_set import CacheSet, open_caches

    cache = open_caches(paths)
    if as_json:
        summary = cache.summary()
        if volume is not None:
            summary = next((v for v in summary["subjects"] if volume in (v["name"], v["subject"])), None) or {}
        typer.echo(json.dumps(summary, indent=2))
    elif isinstance(cache, CacheSet):
        if volume is not None:
            from ssmtl.api.errors import SsmtlError

            raise SsmtlError("--volume shows one cache's volume: pass that cache alone")
        _print_union(cache)
    elif volume is not None:
        _print_volume(cache.path, volume)
    else:
        _print_info(cache.path)


def _print_union(cache) -> None:
    from rich.table import Table

    from ssmtl.api.errors import SsmtlError

    s = cache.summary()
    table = Table(title=f"{s['caches']} caches read as one dataset", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("volumes", f"{s['volumes']} ({s['labeled_volumes']} labeled)")
    table.add_row("slices", str(s["slices"]))
    table.add_row("slice shape", "; ".join(" x ".join(map(str, shape)) for shape in s["slice_shapes"])
                  + (" (differ: they cannot train together)" if len(s["slice_shapes"]) > 1 else ""))
    table.add_row("modality", ", ".join(f"{m}: {n}" for m, n in s["modalities"].items()))
    try:
        table.add_row("classes", ", ".join(f"{k}={v}" for k, v in sorted(cache.class_names.items())) or "none")
    except SsmtlError as exc:
        table.add_row("classes", f"differ, labeled work stops: {exc}")
    table.add_row("split (subjects)", ", ".join(f"{k}: {v}" for k, v in s["split"].items()) or "none stored")
    table.add_row("fingerprint", s["fingerprint"][:16])
    console.print(table)
    rows = Table(show_header=True, title_justify="left")
    for column in ("cache", "volumes", "slices", "modality", "split", "shard", "fingerprint"):
        rows.add_column(column)
    for c in s["per_cache"]:
        rows.add_row(c["path"], str(c["volumes"]), str(c["slices"]), ", ".join(f"{m}: {n}" for m, n in c["modalities"].items()),
                     ", ".join(f"{k}: {v}" for k, v in c["split"].items()) or "-",
                     "/".join(map(str, c["shard"])) if c["shard"] else "-", c["fingerprint"][:12])
    console.print(rows)


@app.command("verify")
@handle_errors
def verify(paths: List[Path] = typer.Argument(..., metavar="CACHE...", help="Cache file(s) (.h5), or folders of caches (e.g. a set of shards).")) -> None:
    """Recompute every dataset's SHA-256 and the fingerprint; exit 2 naming the first volume that differs.

    Shards (`cache build --shard I/N`) are also checked for completeness: every shard 1..N present
    once, no subject of the full listing missing or in two files, every shard built with the same
    options (dataset, preprocessing, split); an incomplete set exits 2, and so does a cache given
    twice under two names (the same fingerprint).
    """
    from ssmtl.api.errors import InputFileError
    from ssmtl.data.cache import SliceCache
    from ssmtl.data.cache_set import cache_files, check_repeated, shard_of
    from ssmtl.data.shards import check_shards
    from ssmtl.data.verify import verify_cache

    files = cache_files(paths)
    for path in files:
        report = verify_cache(path)
        typer.echo(f"OK {report.path}: {report.datasets} datasets in {report.volumes} volumes match their "
                   f"build-time checksums (fingerprint {report.fingerprint[:16]})")
    problems = []
    caches = [SliceCache(p) for p in files]
    for check in check_shards(caches):
        if check.complete:
            typer.echo(f"complete: {len(check.present)}/{check.count} shards hold all {check.subjects} subjects once")
        else:
            problems.append(f"the shards are not one complete build ({len(check.present)} of {check.count} shards "
                            "present): " + "; ".join(check.problems()))
    try:  # a copy of a cache beside it: training would read every subject twice (shards: said above)
        check_repeated([c for c in caches if not shard_of(c)])
    except InputFileError as exc:
        problems.append(str(exc))
    if problems:
        from ssmtl.api.errors import SsmtlError

        raise SsmtlError(" | ".join(problems))
