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

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ssmtl.core.files import fsync_directory, fsync_file

MANIFEST = "checkpoint.json"
PREFIX = "step-"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def checkpoint_dir(root: Path, step: int) -> Path:
    return Path(root) / f"{PREFIX}{step:08d}"


def temporary_dir(root: Path, step: int) -> Path:
    return Path(root) / f".tmp-{PREFIX}{step:08d}"


def finalize(tmp: Path, final: Path, state: dict) -> None:
    """Record checksums and the trainer state, then atomically publish ``tmp`` as ``final``."""
    files = {p.name: {"sha256": _sha256(p), "bytes": p.stat().st_size} for p in sorted(tmp.iterdir()) if p.is_file()}
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
    except json.JSONDecodeError as exc:
        raise ValueError(f"unreadable checkpoint.json: {exc}") from None
    for name, rec in meta.get("files", {}).items():
        f = path / name
        if not f.is_file():
            raise ValueError(f"missing file {name}")
        if f.stat().st_size != rec["bytes"] or _sha256(f) != rec["sha256"]:
            raise ValueError(f"file {name} does not match its checksum (truncated or modified)")
    return CheckpointInfo(path=path, step=int(meta["state"]["step"]), state=meta["state"])


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
