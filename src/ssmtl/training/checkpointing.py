"""Atomic, verifiable training checkpoints on top of ``accelerator.save_state``.

A checkpoint is written into a hidden temporary directory, then a
``checkpoint.json`` with the step counter and the SHA-256 of every file is added,
and only then is the directory renamed to ``step-NNNNNNNN``. At resume the newest
checkpoint whose files match their checksums is used; a truncated or partial one
is reported and skipped, so the previous good one takes over. The newest
``keep`` checkpoints are kept.

Nothing here unpickles arbitrary objects: Accelerate loads model weights from
safetensors and everything else with ``torch.load(weights_only=True)``, and the
step counter lives in JSON.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ssmtl.storage.files import fsync_directory, fsync_file, sha256_file

MANIFEST = "checkpoint.json"
PREFIX = "step-"


def checkpoint_dir(root: Path, step: int) -> Path:
    return Path(root) / f"{PREFIX}{step:08d}"


def temporary_dir(root: Path, step: int) -> Path:
    return Path(root) / f".tmp-{PREFIX}{step:08d}"


def finalize(tmp: Path, final: Path, state: dict) -> None:
    """Record checksums and the trainer state, then atomically publish ``tmp`` as ``final``."""
    files = {p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size} for p in sorted(tmp.iterdir()) if p.is_file()}
    (tmp / MANIFEST).write_text(json.dumps({"state": state, "files": files}, indent=2))
    for p in tmp.iterdir():
        if p.is_file():
            fsync_file(p)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_directory(final.parent)


@dataclass
class CheckpointInfo:
    path: Path
    step: int
    state: dict


def verify(path: Path) -> CheckpointInfo:
    """Raise ValueError if a checkpoint directory is incomplete or corrupt."""
    manifest = path / MANIFEST
    if not manifest.is_file():
        raise ValueError("no checkpoint.json (incomplete checkpoint)")
    try:
        meta = json.loads(manifest.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"unreadable checkpoint.json: {exc}") from None
    try:
        files, state = meta["files"], meta["state"]
        step = state["step"]
        if not isinstance(step, int) or isinstance(step, bool) or step < 0 or not isinstance(files, dict):
            raise TypeError
        for name, rec in files.items():
            f = path / name
            if not f.is_file() or "/" in name:
                raise ValueError(f"missing file {name}")
            if f.stat().st_size != rec["bytes"] or sha256_file(f) != rec["sha256"]:
                raise ValueError(f"file {name} does not match its checksum (truncated or modified)")
    except (KeyError, TypeError, AttributeError):
        raise ValueError("checkpoint.json is not a checkpoint manifest (edited or damaged)") from None
    return CheckpointInfo(path=path, step=step, state=state)


def check_rng_state(path: Path) -> None:
    """Check that a saved random-number state (Accelerate's ``random_states_N.pkl``) can be restored.

    Accelerate swallows a failure to restore it and goes on with fresh random numbers, so a resumed
    run would silently differ; a state that cannot be restored stops the resume here instead.
    """
    import random

    import numpy as np
    import torch
    from accelerate.utils import load

    try:
        states = load(path)
        random.Random().setstate(states["random_state"])
        np.random.RandomState().set_state(states["numpy_random_seed"])
        torch.Generator().set_state(states["torch_manual_seed"])
    except Exception as exc:
        raise ValueError(f"{path.name}: the random-number state cannot be restored ({scrub(exc)})") from None


_TORCH_ADVICE = ("weights_only", "weights only", "trusted source", "arbitrary code", "documentation of torch.load",
                 "WeightsUnpickler", "torch.serialization")


def scrub(exc: BaseException) -> str:
    """An exception's first meaningful line, without torch's advice to load with
    ``weights_only=False`` (which would run whatever code the file holds)."""
    import pickle

    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    keep = [line for line in lines if not any(a.lower() in line.lower() for a in _TORCH_ADVICE)]
    first = (keep or [type(exc).__name__])[0][:200]
    if isinstance(exc, pickle.UnpicklingError):
        return f"it holds objects other than tensors and plain data, which ssmtl never unpickles ({first})"
    return first


def list_checkpoints(root: Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX)), reverse=True)


def latest_valid(root: Path, warn=None) -> CheckpointInfo | None:
    """The newest checkpoint that verifies; ``warn(msg)`` is told about each one skipped."""
    for path in list_checkpoints(root):
        try:
            return verify(path)
        except ValueError as exc:
            if warn is not None:
                warn(f"skipping checkpoint {path}: {exc}")
    return None


def prune(root: Path, keep: int) -> None:
    for path in list_checkpoints(root)[keep:]:
        shutil.rmtree(path, ignore_errors=True)
    for path in Path(root).glob(f".tmp-{PREFIX}*"):
        shutil.rmtree(path, ignore_errors=True)


# -- what a resume may change --------------------------------------------------------------

#: config fields a resumed run may change: bookkeeping, speed and where things are, never what
#: is trained or how (the data is compared by its fingerprint, not by its path)
MAY_CHANGE = (
    "out", "data.path", "data.num_workers", "num_workers", "init",
    "train.log_every", "train.log_with", "train.keep_checkpoints", "train.checkpoint_every",
    "train.max_nonfinite_steps", "train.compile",
)


def _flatten(value, prefix: str = "") -> dict[str, object]:
    if isinstance(value, dict) and value:
        out: dict[str, object] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def changed_fields(saved: dict, current: dict, may_change=MAY_CHANGE) -> dict[str, str]:
    """The fields that differ between two resolved configs (except ``may_change``), each with
    how it changed; a task added or removed shows once, as ``tasks.NAME``."""
    old, new = _flatten(saved), _flatten(current)
    tasks_old, tasks_new = set(saved.get("tasks") or {}), set(current.get("tasks") or {})
    changes: dict[str, str] = {}
    for name in sorted(tasks_old ^ tasks_new):
        changes[f"tasks.{name}"] = "added" if name in tasks_new else "removed"
    for key in sorted(set(old) | set(new)):
        parts = key.split(".")
        if key in may_change or ".".join(parts[:2]) in may_change or (parts[0] == "tasks" and f"tasks.{parts[1]}" in changes):
            continue
        before, after = old.get(key, "<unset>"), new.get(key, "<unset>")
        if before != after:
            changes[key] = f"{_show(before)} -> {_show(after)}"
    return changes


def _show(value) -> str:
    text = "unset" if value == "<unset>" else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_resume(found: CheckpointInfo | None, current: dict, run_dir: Path) -> None:
    """Refuse to resume ``found`` with a config that changes what cannot change, naming the fields.
    Checkpoints written before configs were stored in them are not checked."""
    from ssmtl.api.errors import SsmtlError

    if found is None or not isinstance(found.state.get("config"), dict):
        return
    changes = changed_fields(found.state["config"], current)
    if changes:
        shown = ", ".join(f"{k} ({how})" for k, how in list(changes.items())[:6])
        more = f" and {len(changes) - 6} more" if len(changes) > 6 else ""
        raise SsmtlError(f"{run_dir}: --resume cannot change {shown}{more}; these are fixed by "
                         f"{found.path.name} (start a new run in another --out to change them)")
