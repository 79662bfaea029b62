"""The pre-training export: what downstream fine-tuning loads.

``export/`` holds

* ``model.safetensors``: the shared encoder *and* decoder (``encoder.*``, ``decoder.*``),
* ``encoder.safetensors``: the encoder alone (for encoder-only downstream use), under the
  network's own key names (``encoder.*`` for the U-Net; MONAI's ``conv_0.*``, ``down_*``),
* ``manifest.json``: the resolved config, tasks, versions, steps, the data
  fingerprint of the cache it was trained on, the network's config (``model``, whose
  ``name`` is its network plugin) and, when the network plugin names one, the class
  outside ssmtl that loads ``model.safetensors`` (``native_class``: import path and
  arguments; e.g. MONAI's ``BasicUNet``).

It is written to a temporary directory and renamed into place. Loading uses
safetensors only (no pickle) and ``strict=True``. A manifest whose ``model`` table
names no network predates network plugins: it is read as the default network (the
U-Net, the only network then).
"""

from __future__ import annotations

import dataclasses
import platform
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ssmtl._version import __version__
from ssmtl.api.errors import ConfigError, SsmtlError
from ssmtl.storage.files import atomic_directory, load_into, load_json_object, save_json, save_tensors
from ssmtl.host.networks import build_network, native_class, network_config

EXPORT_DIR = "export"
_NONE = type(None)
#: what the readers of manifest.json rely on (a hand-edited one is one error naming the field)
MANIFEST_FIELDS = {
    "model": dict, "model.name": (str, _NONE), "data": (dict, _NONE), "data.path": (str, list, _NONE),  # a list: several caches
    "data.fingerprint": (str, _NONE), "data.volumes": (list, _NONE), "data.slice_shape": (list, _NONE),
    "tasks": (dict, _NONE), "config": (dict, _NONE),
    "steps": (int, _NONE), "native_class": (dict, _NONE), "trained": (list, _NONE), "created": (str, _NONE),
}


def _versions() -> dict[str, str]:
    out = {"ssmtl": __version__, "python": platform.python_version()}
    for dist in ("torch", "accelerate", "h5py", "pydantic", "pluggy", "monai"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def _tensors(module: torch.nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    return {f"{prefix}{k}": v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def part_state(network: nn.Module, part: nn.Module) -> dict[str, torch.Tensor]:
    """The entries of ``network``'s state dict that belong to ``part`` (e.g. its encoder), under the
    network's own key names: ``encoder.*`` for the U-Net, ``conv_0.*`` and ``down_*`` for MONAI's
    BasicUNet, so the part loads into the network's class with ``strict=False``."""
    own = {id(t) for t in part.state_dict(keep_vars=True).values()}
    return {k: t.detach().cpu().contiguous() for k, t in network.state_dict(keep_vars=True).items() if id(t) in own}


def check_finite_weights(tensors: dict[str, torch.Tensor], what: str,
                         refusal: str = "refusing to write them (train with a lower learning rate or gradient clipping)") -> None:
    """Refuse weights that hold NaN or Inf: one clear error naming a few of them, then ``refusal``."""
    bad = [k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise SsmtlError(f"{what}: {len(bad)} weight tensor(s) hold NaN or Inf (e.g. {', '.join(bad[:3])}); {refusal}")


def write_export(run_dir: Path, network: nn.Module, manifest: dict[str, Any]) -> Path:
    """Write ``run_dir/export`` (weights and manifest) atomically: all of it, or nothing new."""
    full = dict(manifest)
    full.update(
        format="ssmtl-export",
        format_version=1,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        versions=_versions(),
        model=network.config.model_dump(mode="json"),
    )
    native = native_class(network)
    if native is not None:
        full["native_class"] = dataclasses.asdict(native)
    final = Path(run_dir) / EXPORT_DIR
    weights = _tensors(network)
    check_finite_weights(weights, f"{final}")
    with atomic_directory(final) as tmp:
        save_tensors(tmp / "model.safetensors", weights)
        save_tensors(tmp / "encoder.safetensors", part_state(network, network.encoder))
        save_json(tmp / "manifest.json", full)
    return final


def read_manifest(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / EXPORT_DIR / "manifest.json"
    if not path.is_file():
        raise SsmtlError(f"{Path(run_dir)}: no pre-training export found (expected {path}); did the run finish?")
    return load_json_object(path, "export manifest", MANIFEST_FIELDS, ("model",))


def load_pretrained_network(run_dir: Path, registry) -> tuple[nn.Module, dict[str, Any]]:
    """Build the network described by an export and load its weights with ``strict=True``."""
    manifest = read_manifest(run_dir)
    path = Path(run_dir) / EXPORT_DIR / "manifest.json"
    try:
        model = network_config(manifest["model"], registry, prefix="model")
    except ConfigError as exc:
        raise SsmtlError(f"{path}: {exc}") from None
    network = build_network(model, registry)
    weights = Path(run_dir) / EXPORT_DIR / "model.safetensors"
    load_into(network, weights, what="exported weights")
    bad = [k for k, t in network.state_dict().items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:  # named now, as the cause, rather than as a fine-tuning whose every step is skipped
        raise SsmtlError(f"{weights}: the weights of run {run_dir} hold NaN or Inf in {len(bad)} tensor(s) (e.g. {', '.join(bad[:3])}); "
                         "that pre-training diverged: start from another run, or from --init none")
    return network, manifest
