"""The pre-training export: what downstream fine-tuning loads.

``export/`` holds

* ``model.safetensors``: the shared encoder *and* decoder (``encoder.*``, ``decoder.*``),
* ``encoder.safetensors``: the encoder alone (for encoder-only downstream use),
* ``manifest.json``: the resolved config, tasks, versions, steps and the data
  fingerprint of the cache it was trained on.

It is written to a temporary directory and renamed into place. Loading uses
safetensors only (no pickle) and ``strict=True``.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ssmtl import __version__
from ssmtl.api.errors import SsmtlError
from ssmtl.core.model import ModelConfig, UNet

EXPORT_DIR = "export"


def _versions() -> dict[str, str]:
    out = {"ssmtl": __version__, "python": platform.python_version()}
    for dist in ("torch", "accelerate", "h5py", "pydantic", "pluggy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def _tensors(module: torch.nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    return {f"{prefix}{k}": v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def write_export(run_dir: Path, network: UNet, manifest: dict[str, Any]) -> Path:
    run_dir = Path(run_dir)
    final = run_dir / EXPORT_DIR
    tmp = run_dir / f".tmp-{EXPORT_DIR}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(_tensors(network), tmp / "model.safetensors")
    save_file(_tensors(network.encoder, "encoder."), tmp / "encoder.safetensors")
    full = dict(manifest)
    full.update(
        format="ssmtl-export",
        format_version=1,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        versions=_versions(),
        model=network.config.model_dump(mode="json"),
    )
    (tmp / "manifest.json").write_text(json.dumps(full, indent=2, default=str))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def read_manifest(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / EXPORT_DIR / "manifest.json"
    if not path.is_file():
        raise SsmtlError(f"{Path(run_dir)}: no pre-training export found (expected {path}); did the run finish?")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SsmtlError(f"{path}: corrupt manifest ({exc})") from None


def load_pretrained_network(run_dir: Path) -> tuple[UNet, dict[str, Any]]:
    """Build the U-Net described by an export and load its weights with ``strict=True``."""
    manifest = read_manifest(run_dir)
    network = UNet(ModelConfig.model_validate(manifest["model"]))
    weights = Path(run_dir) / EXPORT_DIR / "model.safetensors"
    try:
        state = load_file(weights)
    except Exception as exc:
        raise SsmtlError(f"{weights}: cannot read weights ({exc})") from None
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise SsmtlError(f"{weights}: weights do not match the exported model config: {first}") from None
    return network, manifest
