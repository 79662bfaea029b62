"""Run directories: checked up front, so bad ``--out`` paths fail before any training.

What a run directory promises (docs/robustness.md):

* **Nothing is written before every check has passed.** :func:`prepare_run_dir` is the
  first write of a run; it refuses an ``--out`` that is, or holds, one of the run's inputs.
* **It says what it is.** The first file written is ``ssmtl-run.json`` (``{"kind": ...}``);
  a run of another kind refuses the folder instead of overwriting it. Folders written
  before the marker existed are recognised by their files.
* **One process at a time.** An exclusive lock (``.ssmtl.lock`` inside, holding the PID)
  is held for the run's life; a second run on it stops with "in use by PID N".
* **A failed run leaves nothing it cannot use.** :func:`run_directory` wraps a whole run: a
  full disk becomes one error line; when the run fails, a folder it created is removed again
  if it holds no finished checkpoint and either the disk is full or training never logged a
  step (a failed check). A folder with a checkpoint, with the metrics of steps that ran (a run
  stopped by non-finite losses: the metrics say why), or that existed before (``--resume``),
  keeps everything it had.
"""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from ssmtl.api.errors import SsmtlError
from ssmtl.storage.files import exclusive_lock, load_json, out_of_space, save_json, writing
from ssmtl.storage.outputs import refuse_overlap

MIN_FREE_BYTES = 64 * 1024 * 1024
MARKER = "ssmtl-run.json"
LOCK = ".ssmtl.lock"
METRICS = "metrics.jsonl"  # a run that trained keeps its metrics for diagnosis
#: a run kind -> how a message names a folder of that kind
KINDS = {
    "pretrain": "a pre-training run",
    "finetune": "a fine-tuning run",
    "benchmark": "a benchmark folder",
    "predict": "a prediction folder",
}


def run_kind(out: Path) -> str | None:
    """The kind of run ``out`` holds (None: no run, or an unknown folder)."""
    out = Path(out)
    marker = out / MARKER
    if marker.is_file():
        data = load_json(marker, "run marker")
        kind = data.get("kind") if isinstance(data, dict) else None
        if kind not in KINDS:
            raise SsmtlError(f"{marker}: not an ssmtl run marker (kind {kind!r}; expected one of {', '.join(KINDS)})")
        return kind
    # folders written before the marker existed
    if (out / "export" / "manifest.json").is_file():
        return "pretrain"
    if (out / "run.json").is_file() or (out / "split.json").is_file():
        return "finetune"
    return None


@dataclass
class _Guard:
    out: Path
    fresh: bool  # the folder was missing or empty when the run began
    existed: bool
    locks: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    prepared: bool = False


_ACTIVE: list[_Guard] = []


def _has_checkpoint(out: Path) -> bool:
    root = out / "checkpoints"
    return root.is_dir() and any(p.is_dir() and p.name.startswith("step-") for p in root.iterdir())


@contextlib.contextmanager
def run_directory(out: Path, what: str) -> Iterator[None]:
    """Around a whole run (``what``: "the pre-training run"): a full disk becomes one error
    naming ``out``; on failure a folder this run created with nothing to resume from is removed;
    the lock :func:`prepare_run_dir` took is released at the end."""
    out = Path(out)
    existed = out.exists()
    guard = _Guard(out, fresh=not existed or (out.is_dir() and not _entries(out)), existed=existed)
    _ACTIVE.append(guard)
    try:
        with writing(out, what):
            yield
    except BaseException as exc:
        if guard.prepared and guard.fresh and not _has_checkpoint(out) and (out_of_space(exc) or not (out / METRICS).exists()):
            _remove_fresh(out, keep_folder=existed)
        raise
    finally:
        _ACTIVE.remove(guard)
        guard.locks.close()


def _remove_fresh(out: Path, keep_folder: bool) -> None:
    """Remove what a failed run wrote into a folder that was empty (or missing) before it."""
    if not keep_folder:
        shutil.rmtree(out, ignore_errors=True)
        return
    for p in out.iterdir():
        if p.name == LOCK:
            continue  # released (and removed) by the guard
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def _entries(out: Path) -> list[Path]:
    return [p for p in out.iterdir() if p.name != LOCK]


def _lock(out: Path) -> None:
    """Lock ``out`` for the rest of the run (released by the enclosing :func:`run_directory`)."""
    guard = next((g for g in reversed(_ACTIVE) if g.out.resolve() == out.resolve()), None)
    stack = guard.locks if guard is not None else _UNGUARDED
    stack.enter_context(exclusive_lock(out / LOCK, out))
    if guard is not None:
        guard.prepared = True  # from here on, a failure may clean up what this run wrote


_UNGUARDED = contextlib.ExitStack()  # a caller without run_directory: held until the process exits


def prepare_run_dir(out: Path, *, resume: bool, kind: str = "pretrain",
                    inputs: Iterable[tuple[str, Path | str | None]] = (), min_free: int = MIN_FREE_BYTES) -> Path:
    """Create/check a run directory after every other check has passed: not an input, of the
    right kind, not in use, writable, enough free space, no accidental overwrite; then mark its kind."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SsmtlError(f"{out}: exists and is not a directory")
    refuse_overlap(out, inputs)
    locked = out.is_dir()
    if locked:
        _lock(out)  # first: a second run on a busy folder hears "in use", not "not empty"
    found = run_kind(out) if out.is_dir() else None
    if found is not None and found != kind:
        raise SsmtlError(f"{out} is {KINDS[found]}; {kind} needs an empty folder, or {KINDS[kind]} to --resume")
    if out.is_dir() and not resume and _entries(out):
        raise SsmtlError(f"{out}: run directory is not empty; pass --resume to continue it, or choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SsmtlError(f"{out}: cannot create run directory ({exc.strerror})") from None
    if not locked:
        _lock(out)
    probe = out / ".write-test"
    try:
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise SsmtlError(f"{out}: run directory is not writable ({exc.strerror})") from None
    free = shutil.disk_usage(out).free
    if free < min_free:
        raise SsmtlError(f"{out}: only {free // (1024 * 1024)} MiB free on this disk; need at least {min_free // (1024 * 1024)} MiB")
    if not (out / MARKER).is_file():
        save_json(out / MARKER, {"kind": kind})
    return out
