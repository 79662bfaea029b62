"""``ssmtl export``: one part of a run, in one format, as a folder a model hub accepts.

The layout follows the Hugging Face convention::

    OUT/README.md           the model card (YAML front matter, then data, tasks, steps,
                            evaluation, intended use and limits, the config)
    OUT/config.json         what the file holds and how to feed it: part, format, network
                            (and the class outside ssmtl that loads it), inputs, outputs,
                            classes, data fingerprint, and the parity check's result
    OUT/model.safetensors   or model.pt (TorchScript) or model.onnx, or a MONAI bundle
                            (configs/, models/model.ts, scripts/, docs/: :mod:`ssmtl.publish.bundle`)
    OUT/LICENSE             when the exporter named no license (see :mod:`ssmtl.publish.model_card`)
    OUT/ssmtl-export.json   the marker: what wrote the folder and the files it holds

Where it goes follows the one output rule (:mod:`ssmtl.storage.outputs`): never onto, into or
around the run or its cache (``RUN/hub/`` is the run's place for its exports), never into
another run, never over anything but an earlier export (with ``--force``), and one process
at a time. The folder is written under a temporary name and renamed into place. Weights that
hold NaN or Inf are refused, and the written file is run against torch before the folder is
published (:func:`ssmtl.publish.formats.check_parity`).

Nothing in the folder names a subject or an absolute local path: the card names subjects by
their pseudonyms and paths by their last component (:mod:`ssmtl.data.shareable`); the weights
carry no metadata, TorchScript no debug records. ``identify_subjects`` (``--identify-subjects``)
names subjects by their real ids, for internal use: the card says so, the marker records it,
and such a folder is never pushed to a hub.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ssmtl._version import __version__
from ssmtl.api.errors import SsmtlError
from ssmtl.training.export import check_finite_weights
from ssmtl.storage.files import atomic_directory, save_json, save_text
from ssmtl.storage.outputs import check_output, claimed_output, OutputKind, write_marker
from ssmtl.host.networks import native_class
from ssmtl.publish.bundle import check_bundle_part, MODEL_FILE, write_bundle
from ssmtl.publish.formats import FORMATS, INPUT_NAME, WEIGHTS_FILE, check_parity, example_input, write_part
from ssmtl.data.shareable import shareable
from ssmtl.publish.model_card import check_license, LICENSE_FILE, license_text, render_model_card
from ssmtl.publish.parts import PartModule, default_part, select_part
from ssmtl.publish.runs import RunInfo, load_network, read_run

HUB_DIR = "hub"
DEFAULT_SIZE = 64  # the trace size when neither --size nor the run's records give one
BUNDLE = "monai-bundle"
EXPORT_FORMATS = (*FORMATS, BUNDLE)
#: an export folder: recognised by its marker, kept in RUN/hub/ when it lies inside the run
EXPORT = OutputKind("export folder", folder=True, marker="ssmtl-export.json", home=HUB_DIR)


@dataclass
class HubExport:
    path: Path
    part: str
    format: str
    files: dict[str, int]  # file path in the folder -> bytes
    parity: dict[str, Any]
    pushed_to: str | None = None  # the hub repository's address, after --push-to-hub


def _output_shapes(part: PartModule, images: torch.Tensor) -> dict[str, list[Any]]:
    """Each output's shape in terms of the input's: ``["batch", 16, "height/4", "width/4"]``."""
    with torch.no_grad():
        out = part.module(images)
    shapes = {}
    for name, tensor in zip(part.outputs, out if isinstance(out, tuple) else (out,)):
        factor = images.shape[-1] // tensor.shape[-1]
        scale = "" if factor == 1 else f"/{factor}"
        shapes[name] = ["batch", int(tensor.shape[1]), f"height{scale}", f"width{scale}"]
    return shapes


def hub_config(info: RunInfo, part: PartModule, fmt: str, network, size: int, outputs: dict[str, list[Any]],
               parity: dict[str, Any]) -> dict[str, Any]:
    """``config.json``: ``trained_size`` is the size the run was trained at (its records; None when they
    do not say), ``trace_size`` the size the file was traced and checked at (``--size``)."""
    native = native_class(network)
    trained = list(info.trained_size) if info.trained_size else None
    config: dict[str, Any] = {
        "library_name": "ssmtl",
        "ssmtl_version": __version__,
        "part": part.name,
        "part_description": part.description,
        "format": fmt,
        "file": MODEL_FILE if fmt == BUNDLE else WEIGHTS_FILE[fmt],
        "run": {"name": info.name, "kind": info.kind, "steps": info.steps},
        "network": info.network,
        "native_class": dataclasses.asdict(native) if native is not None else None,
        "inputs": {INPUT_NAME: {
            "shape": ["batch", network.info.in_channels, "height", "width"], "dtype": "float32",
            "trained_size": trained, "trace_size": [size, size], "size_multiple_of": 2 ** network.info.depth,
            "intensity": "as the ssmtl cache stores slices (see the model card)",
        }},
        "outputs": outputs,
        "data": {k: info.data.get(k) for k in ("fingerprint", "subjects", "modalities", "trained_on") if k in info.data},
        "parity": parity,
    }
    if part.name == "finetuned":
        config.update(head=info.head, num_classes=info.num_classes, class_names=info.class_names)
    return shareable(config)


def _trace_size(size: int | None, info: RunInfo, network) -> int:
    if size is not None and size < 1:
        raise SsmtlError(f"--size {size}: expected a positive slice size in pixels (leave it out for the size the run "
                         "was trained at)")
    size = size if size is not None else (info.trained_size[0] if info.trained_size else DEFAULT_SIZE)
    multiple = 2 ** network.info.depth
    if size < multiple or size % multiple:
        raise SsmtlError(f"--size {size}: the network needs a multiple of {multiple} (2**depth)")
    return size


def export_inputs(run_dir: Path, info: RunInfo) -> list[tuple[str, Any]]:
    """What an export reads: the run, and its cache(s)."""
    return [("run", run_dir), ("cache of the run", info.data.get("path"))]


def export_run(run_dir: Path, format: str = "safetensors", *, part: str | None = None, out: Path | None = None,
               size: int | None = None, force: bool = False, license: str | None = None,
               identify_subjects: bool = False, registry) -> HubExport:
    """Write ``part`` (default: ``network`` of a pre-training run, ``finetuned`` of a fine-tuning
    run) of ``run_dir`` in ``format`` to ``out`` (default ``RUN/hub/PART-FORMAT``).

    ``size`` is the slice size traced formats are built and checked at (default: the size the run
    was trained at); ``license`` a hub license identifier (default: unset, explained in LICENSE);
    ``identify_subjects``: the card names subjects by their real ids (default: pseudonyms)."""
    run_dir = Path(run_dir)
    fmt = format
    if fmt not in EXPORT_FORMATS:
        raise SsmtlError(f"--format {fmt}: unknown format; use one of {', '.join(EXPORT_FORMATS)}")
    license = check_license(license)
    info = read_run(run_dir, registry, identify_subjects)
    chosen = part or default_part(info.kind)
    out = Path(out) if out is not None else run_dir / HUB_DIR / f"{chosen}-{fmt}"
    inputs = export_inputs(run_dir, info)
    check_output(out, inputs, EXPORT, force)  # before any work: a refused output costs nothing
    model = load_network(run_dir, registry)
    selected = select_part(model, info.kind, chosen)
    check_finite_weights(selected.weights, str(run_dir))
    network = model.network if info.kind == "finetune" else model
    size = _trace_size(size, info, network)
    if fmt == BUNDLE:
        check_bundle_part(info, selected)
    trace = example_input(network.info.in_channels, size, batch=2, seed=0)
    probe = example_input(network.info.in_channels, size, batch=3, seed=1)  # another batch size: dynamic axes
    with claimed_output(out, inputs, EXPORT, force) as out, atomic_directory(out) as tmp:
        if fmt == BUNDLE:
            parity_fmt, config_file = "torchscript", MODEL_FILE
        else:
            parity_fmt, config_file = fmt, WEIGHTS_FILE[fmt]
        config = hub_config(info, selected, fmt, network, size, _output_shapes(selected, trace), {})
        if fmt == BUNDLE:
            write_bundle(tmp, info, selected, size, config, license or "not set: see LICENSE")
        else:
            write_part(selected, fmt, tmp / config_file, trace)
        parity = check_parity(selected, parity_fmt, tmp / config_file, probe)
        config["parity"] = parity
        save_json(tmp / "config.json", config)
        save_text(tmp / "README.md", render_model_card(info, config, license))
        if fmt == BUNDLE:  # MONAI's place for the bundle's description: the card without its hub metadata
            save_text(tmp / "docs" / "README.md", render_model_card(info, config, license, metadata=False))
        if license is None:
            save_text(tmp / LICENSE_FILE, license_text(info))
        write_marker(tmp, EXPORT, {"format": fmt, "part": selected.name, "run": info.name, "ssmtl_version": __version__,
                                   **({"identify_subjects": True} if identify_subjects else {})})
        files = {p.relative_to(tmp).as_posix(): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
    return HubExport(path=out, part=selected.name, format=fmt, files=files, parity=parity)


def export_and_push(run_dir: Path, format: str = "safetensors", *, push_to_hub: str | None = None, private: bool = False,
                    **options) -> HubExport:
    """:func:`export_run`, then (``push_to_hub``) the upload; what the push needs is checked first."""
    from ssmtl.publish.push import prepare_push, push_folder

    if push_to_hub and options.get("identify_subjects"):
        raise SsmtlError("--identify-subjects names subjects by their real ids, for internal use: such a folder is "
                         "never pushed to a hub; leave out --identify-subjects to push (subjects get pseudonyms)")
    target = prepare_push(push_to_hub, private) if push_to_hub else None
    result = export_run(run_dir, format, **options)
    if target is not None:
        result.pushed_to = push_folder(result.path, target, f"ssmtl export of {Path(run_dir).resolve().name} "
                                                            f"({result.part}, {result.format})")
    return result
