"""``ssmtl predict --out``: a folder written as a whole, never over an input or a file predict did not write.

What the folder promises (docs/robustness.md):

* **Never over an input.** ``--out`` may not be, hold or lie inside an input (a scan, a
  folder of scans, a manifest, the run): the folder is replaced as a whole, which would
  remove them. ``--force`` does not change this.
* **Never over a file predict did not write.** An existing ``--out`` must be empty or an
  earlier prediction (every entry listed in its ``predictions.json``); anything else is
  refused, naming the file, unless ``--force`` (then the folder is replaced as a whole,
  those files included). A training run folder is refused even with ``--force``.
* **All or nothing.** Everything is written into a hidden sibling (``.NAME.partial-PID``)
  that replaces ``--out`` only when complete: an atomic exchange of the two folders where
  the filesystem offers one (Linux ``renameat2``), else two renames that a later predict
  completes if a ``kill -9`` fell between them. An interrupted predict leaves the earlier
  complete prediction, with the ``predictions.json`` that describes it.
* **One writer.** A lock next to the folder (``.NAME.ssmtl-lock``) is held from the first
  check to the last rename; a second predict into the same ``--out`` stops at once with
  "in use by PID N" instead of interleaving its files.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import shutil
from pathlib import Path
from typing import Iterable

from ssmtl.api.errors import SsmtlError
from ssmtl.downstream.score_folders import SCORES_CSV, SCORES_JSON
from ssmtl.storage.files import exclusive_lock, fsync_directory, fsync_file
from ssmtl.storage.outputs import refuse_overlap
from ssmtl.training.rundir import KINDS, run_kind

RECORD = "predictions.json"
STAGING = ".partial-"  # .NAME.partial-PID: the folder being written
DISPLACED = ".partial-old-"  # .NAME.partial-old-PID: the earlier folder, between the two renames
LOCK_SUFFIX = ".ssmtl-lock"


def recorded_files(folder: Path) -> set[str] | None:
    """The names an earlier predict wrote into ``folder`` (its record included); None when its
    ``predictions.json`` is missing or is not a prediction record."""
    try:
        record = json.loads((folder / RECORD).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("predictions"), list):
        return None
    names = record.get("files")
    if not isinstance(names, list):  # records written before the list existed: the outputs they name
        names = [Path(str(item[key])).name for item in record["predictions"] if isinstance(item, dict)
                 for key in ("output", "probabilities") if item.get(key)]
    # evaluate's scores of these predictions are ssmtl's too (and stale once they are replaced)
    return {str(n) for n in names} | {RECORD, SCORES_JSON, SCORES_CSV}


class PredictionFolder:
    """``with PredictionFolder(out, inputs, force) as folder:`` write into ``folder.staging``, then
    ``folder.commit()``; leaving the block without a commit removes what was staged."""

    def __init__(self, out: Path, inputs: Iterable[tuple[str, Path]], *, force: bool = False):
        self.out = Path(out)
        self.inputs = list(inputs)
        self.force = force
        self.staging = self.out.parent / f".{self.out.name}{STAGING}{os.getpid()}"
        self._created: Path | None = None  # the first folder above --out this predict created
        self._lock = None
        self.committed = False

    def __enter__(self) -> "PredictionFolder":
        out = self.out
        if out.exists() and not out.is_dir():
            raise SsmtlError(f"--out {out}: exists and is not a folder; predict writes a folder of label maps")
        refuse_overlap(out, self.inputs)
        self._make_parent()
        try:
            self._lock = exclusive_lock(out.parent / f".{out.name}{LOCK_SUFFIX}", out)
            self._lock.__enter__()
            self._recover()
            self._check_contents()
            try:
                self.staging.mkdir()
            except OSError as exc:
                raise SsmtlError(f"--out {out}: cannot write next to it in {out.parent} ({exc.strerror})") from None
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self._release()

    # -- checks -------------------------------------------------------------------------------

    def _make_parent(self) -> None:
        missing = [p for p in [self.out.parent, *self.out.parent.parents] if not p.exists()]
        if missing:
            self._created = missing[-1]
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SsmtlError(f"--out {self.out}: cannot create its folder ({exc.strerror})") from None

    def _recover(self) -> None:
        """Under the lock: finish a swap a kill interrupted, and drop folders left half-written."""
        parent, name = self.out.parent, self.out.name
        displaced = sorted(parent.glob(f".{name}{DISPLACED}*"))
        if displaced and not self.out.exists():
            os.rename(displaced[0], self.out)  # killed between the two renames: the earlier prediction is back
            displaced = displaced[1:]
        for stale in [*displaced, *parent.glob(f".{name}{STAGING}*")]:
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)

    def _check_contents(self) -> None:
        out = self.out
        if not out.is_dir():
            return
        kind = run_kind(out)
        if kind not in (None, "predict"):
            raise SsmtlError(f"--out {out} is {KINDS[kind]}; predict writes its own folder, choose another --out")
        entries = sorted(p.name for p in out.iterdir())
        if not entries or self.force:
            return
        ours = recorded_files(out) or set()
        foreign = [name for name in entries if name not in ours]
        if foreign:
            raise SsmtlError(f"--out {out}: holds {foreign[0]}" + (f" and {len(foreign) - 1} more file(s)" if len(foreign) > 1 else "")
                             + ", which predict did not write; choose another --out, or pass --force to replace the "
                             "folder as a whole")

    # -- writing ------------------------------------------------------------------------------

    def commit(self) -> None:
        """Make the staged folder ``--out``: flushed, then swapped in; the earlier one is removed."""
        for path in self.staging.rglob("*"):
            if path.is_file():
                fsync_file(path)
        fsync_directory(self.staging)
        if not self.out.exists():
            os.rename(self.staging, self.out)
        elif _exchange(self.staging, self.out):
            shutil.rmtree(self.staging, ignore_errors=True)  # now the earlier folder
        else:
            displaced = self.out.parent / f".{self.out.name}{DISPLACED}{os.getpid()}"
            os.rename(self.out, displaced)
            os.rename(self.staging, self.out)
            shutil.rmtree(displaced, ignore_errors=True)
        fsync_directory(self.out.parent)
        self.committed = True

    def _release(self) -> None:
        if not self.committed:
            shutil.rmtree(self.staging, ignore_errors=True)
        if self._lock is not None:
            lock, self._lock = self._lock, None
            lock.__exit__(None, None, None)
        if not self.committed and self._created is not None and self._created.is_dir() and not any(self._created.rglob("*")):
            shutil.rmtree(self._created, ignore_errors=True)  # folders made for an --out that was never written


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux ``renameat2(RENAME_EXCHANGE)``); False where unavailable."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0
