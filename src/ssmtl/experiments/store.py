"""Where a benchmark keeps its runs, and how it knows one can be reused.

A run's folder is named by what defines it: a digest of its configuration (without the
paths, so a moved or copied folder stays usable), the data's fingerprint and, for a
fine-tuning cell, the weights it starts from. Two benchmarks that share a ``runs`` folder
therefore share exactly the runs that are identical, and never overwrite each other's. The
digest in the name is a convenience; the full key stored beside the run is what is checked
before a run is reused.

Two processes may reach the same run (two settings of the protocol side by side): the first
*claims* it (an exclusive lock on a file next to the folder) and makes it; the other waits
for the claim and then finds the run finished.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from ssmtl.api.errors import SsmtlError
from ssmtl.storage.files import OutputInUse, exclusive_lock, held_here

POLL_SECONDS = 5.0


def digest(obj: Any) -> str:
    """A stable hex digest of a JSON-able object (keys sorted)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def relocatable(config: dict[str, Any]) -> dict[str, Any]:
    """A pre-training config without its paths: the data is identified by its fingerprint,
    checked separately, and the run directory by where it is."""
    config = dict(config)
    config.pop("out", None)
    config["data"] = {k: v for k, v in (config.get("data") or {}).items() if k != "path"}
    return config


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes (the exported weights a cell starts from)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_key(path: Path) -> dict[str, Any]:
    """A run's key file as a dict; empty when missing or unreadable (then the run is redone)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return record if isinstance(record, dict) else {}


@contextlib.contextmanager
def claimed(run_dir: Path, log: Callable[[str], None] = print, poll: float = POLL_SECONDS) -> Iterator[None]:
    """Hold the claim on ``run_dir`` for the block, waiting while another process holds it.

    The lock file sits beside the folder (``.NAME.claim``), so removing a stale run folder
    inside the block keeps the claim. Only taking the claim waits: an error inside the block
    propagates as it is.
    """
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    lock = run_dir.parent / f".{run_dir.name}.claim"
    if held_here(lock):  # waiting for ourselves would never end
        raise SsmtlError(f"{run_dir}: claimed twice by this process")
    stack = contextlib.ExitStack()
    said = False
    while True:
        try:
            stack.enter_context(exclusive_lock(lock, run_dir))
            break
        except OutputInUse as exc:
            if not said:
                log(f"waiting: {exc}")
                said = True
            time.sleep(poll)
    with stack:
        yield
