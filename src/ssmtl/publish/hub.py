"""``ssmtl export``: one part of a run, in one format, as a folder a model hub accepts.

The layout follows the Hugging Face convention::

    OUT/README.md           the model card (YAML front matter, then data, tasks, steps,
                            evaluation, intended use and limits, the config)
    OUT/config.json         what the file holds and how to feed it: part, format, network
                            (and the class outside ssmtl that loads it), inputs, outputs,
                            classes, data fingerprint, and the parity check's result
    OUT/model.safetensors   or model.pt (TorchScript) or model.onnx

The folder is written under a temporary name and renamed into place. Weights that hold
NaN or Inf are refused, and the written file is run against torch before the folder is
published (:func:`ssmtl.publish.formats.check_parity`).
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
from ssmtl.host.networks import native_class
from ssmtl.publish.formats import FORMATS, INPUT_NAME, WEIGHTS_FILE, check_parity, example_input, write_part
from ssmtl.publish.model_card import render_model_card
from ssmtl.publish.parts import PartModule, default_part, select_part
from ssmtl.publish.runs import RunInfo, load_network, read_run

HUB_DIR = "hub"
DEFAULT_SIZE = 64  # the trace size when the run's cache is gone


@dataclass
class HubExport:
    path: Path
    part: str
    format: str
    files: dict[str, int]  # file name -> bytes
    parity: dict[str, Any]


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
    native = native_class(network)
    config: dict[str, Any] = {
        "library_name": "ssmtl",
        "ssmtl_version": __version__,
        "part": part.name,
        "part_description": part.description,
        "format": fmt,
        "file": WEIGHTS_FILE[fmt],
        "run": {"name": info.name, "kind": info.kind, "steps": info.steps},
        "network": info.network,
        "native_class": dataclasses.asdict(native) if native is not None else None,
        "inputs": {INPUT_NAME: {
            "shape": ["batch", network.info.in_channels, "height", "width"], "dtype": "float32",
            "trained_size": [size, size], "size_multiple_of": 2 ** network.info.depth,
            "intensity": "as the ssmtl cache stores slices (see the model card)",
        }},
        "outputs": outputs,
        "data": {k: info.data.get(k) for k in ("fingerprint", "subjects", "modalities", "trained_on") if k in info.data},
        "parity": parity,
    }
    if part.name == "finetuned":
        config.update(head=info.head, num_classes=info.num_classes, class_names=info.class_names)
    return config


def export_run(run_dir: Path, format: str = "safetensors", *, part: str | None = None, out: Path | None = None,
               size: int | None = None, force: bool = False, registry) -> HubExport:
    """Write ``part`` (default: ``network`` of a pre-training run, ``finetuned`` of a fine-tuning
    run) of ``run_dir`` in ``format`` to ``out`` (default ``RUN/hub/PART-FORMAT``)."""
    run_dir = Path(run_dir)
    fmt = format
    if fmt not in FORMATS:
        raise SsmtlError(f"--format {fmt}: unknown format; use one of {', '.join(FORMATS)}")
    info = read_run(run_dir, registry)
    model = load_network(run_dir, registry)
    selected = select_part(model, info.kind, part or default_part(info.kind))
    check_finite_weights(selected.weights, str(run_dir))
    network = model.network if info.kind == "finetune" else model
    size = size or int((info.data.get("slice_shape") or [DEFAULT_SIZE])[0])
    multiple = 2 ** network.info.depth
    if size < multiple or size % multiple:
        raise SsmtlError(f"--size {size}: the network needs a multiple of {multiple} (2**depth)")
    out = Path(out) if out is not None else run_dir / HUB_DIR / f"{selected.name}-{fmt}"
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise SsmtlError(f"{out}: exists and is not empty; pass --force to replace it")
    trace = example_input(network.info.in_channels, size, batch=2, seed=0)
    probe = example_input(network.info.in_channels, size, batch=3, seed=1)  # another batch size: dynamic axes
    with atomic_directory(out) as tmp:
        weights = tmp / WEIGHTS_FILE[fmt]
        write_part(selected, fmt, weights, trace)
        parity = check_parity(selected, fmt, weights, probe)
        config = hub_config(info, selected, fmt, network, size, _output_shapes(selected, trace), parity)
        save_json(tmp / "config.json", config)
        save_text(tmp / "README.md", render_model_card(info, config))
        files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir())}
    return HubExport(path=out, part=selected.name, format=fmt, files=files, parity=parity)
