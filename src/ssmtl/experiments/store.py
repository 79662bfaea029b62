"""Where a benchmark keeps its runs, and how it knows one can be reused.

A run's folder is named by what defines it: a digest of its configuration (without the
paths, so a moved or copied folder stays usable), the data's fingerprint and, for a
fine-tuning cell, the weights it starts from. Two benchmarks that share a ``runs`` folder
therefore share exactly the runs that are identical, and never overwrite each other's. The
digest in the name is a convenience; the full key stored beside the run is what is checked
before a run is reused.

Several processes may work on the same runs (the same benchmark started twice to use two
cores, or two settings that share runs): the first *claims* a run (an exclusive lock on a
file next to its folder) and makes it; another finds it :class:`Busy`, does other work and
comes back to it later, when it is finished (:class:`ssmtl.experiments.benchmark.Benchmark`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Any, Iterator

from ssmtl.api.errors import SsmtlError
from ssmtl.storage.files import OutputInUse, exclusive_lock, held_here


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


def read_key(path: Path) -> dict[str, Any]:
    """A run's key file as a dict; empty when missing or unreadable (then the run is redone)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return record if isinstance(record, dict) else {}


class Busy(SsmtlError):
    """Another process holds the claim on a run: do other work and come back to it."""


@contextlib.contextmanager
def claimed(run_dir: Path) -> Iterator[None]:
    """Hold the claim on ``run_dir`` for the block; :class:`Busy` when another process holds it.

    The lock file sits beside the folder (``.NAME.claim``), so removing a stale run folder
    inside the block keeps the claim. Only taking the claim raises :class:`Busy`: an error
    inside the block propagates as it is.
    """
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    lock = run_dir.parent / f".{run_dir.name}.claim"
    if held_here(lock):  # a claim of this process is never busy: it is a bug
        raise SsmtlError(f"{run_dir}: claimed twice by this process")
    stack = contextlib.ExitStack()
    try:
        stack.enter_context(exclusive_lock(lock, run_dir))
    except OutputInUse as exc:
        raise Busy(str(exc).split(";")[0]) from None  # "RUN is in use by PID N"
    with stack:
        yield
