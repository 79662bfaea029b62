"""Run directories: checked up front, so bad ``--out`` paths fail before any training."""

from __future__ import annotations

import shutil
from pathlib import Path

from ssmtl.api.errors import SsmtlError

MIN_FREE_BYTES = 64 * 1024 * 1024


def prepare_run_dir(out: Path, *, resume: bool, min_free: int = MIN_FREE_BYTES) -> Path:
    """Create/check a run directory: writable, enough free space, no accidental overwrite."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SsmtlError(f"{out}: exists and is not a directory")
    if out.is_dir() and not resume and any(out.iterdir()):
        raise SsmtlError(f"{out}: run directory is not empty; pass --resume to continue it, or choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SsmtlError(f"{out}: cannot create run directory ({exc.strerror})") from None
    probe = out / ".write-test"
    try:
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise SsmtlError(f"{out}: run directory is not writable ({exc.strerror})") from None
    free = shutil.disk_usage(out).free
    if free < min_free:
        raise SsmtlError(f"{out}: only {free // (1024 * 1024)} MiB free on this disk; need at least {min_free // (1024 * 1024)} MiB")
    return out
