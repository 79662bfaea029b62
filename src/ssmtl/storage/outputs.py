"""Where an output may go: the one rule every command that writes follows.

**No command writes or deletes anything that is, holds or lies inside one of its inputs, a
run, a cache, or a file it did not create.** In detail, :func:`check_output` refuses an
``--out`` that

1. is one of the command's inputs, holds one, or lies inside an input folder; except the
   place an input run keeps for outputs of this kind (its ``home``: ``RUN/hub/`` for
   exports, ``RUN/report.html`` for the report page), which holds nothing else;
2. lies inside a run folder that is not one of the inputs (another command's run is
   never written into);
3. exists as the wrong thing: a file where a folder is written, or a folder where a file is;
4. exists and is not an earlier output of the same kind: a folder that is neither empty nor
   an earlier output (recognised by the marker file every output folder holds, listing its
   files, and holding nothing else), or a file that is not an earlier output (recognised by
   the kind's own test). ``--force`` replaces an earlier output of the same kind (a kind may
   refresh its earlier outputs without ``--force``: a report page is drawn again) and never
   anything else.

:func:`claimed_output` wraps a whole write: the checks before anything is written, then an
exclusive lock on the output (a second process writing to the same place is told "in use by
PID N" instead of both succeeding and one output silently replacing the other), the checks
again under the lock, and the folders it created removed again if the block fails.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from ssmtl.api.datasets.files import real_path
from ssmtl.api.errors import SsmtlError
from ssmtl.storage.files import save_json
from ssmtl.storage.locks import exclusive_lock

#: files that make a folder a run: the run marker of training/rundir.py (ssmtl-run.json), and
#: the records of runs written before the marker existed
RUN_FILES = ("ssmtl-run.json", "run.json", "export/manifest.json")
LOCK_SUFFIX = ".ssmtl-lock"

Inputs = Iterable[tuple[str, Path | str | Sequence[Path | str] | None]]


@dataclass(frozen=True)
class OutputKind:
    """What a command writes, and how an earlier one of the same kind is recognised.

    Attributes:
        name: how messages name it ("export folder", "report page").
        folder: a folder (True) or one file (False).
        marker: folder kinds: the file every output folder of this kind holds (see :func:`write_marker`).
        recognise: file kinds: whether an existing file is an earlier output of this kind.
        home: the place inside an input run kept for outputs of this kind (a relative path), or None.
        refresh: an earlier output of this kind is replaced without ``--force``.
        example: a file name for "give a file path such as OUT/NAME" (file kinds).
    """

    name: str
    folder: bool
    marker: str | None = None
    recognise: Callable[[Path], bool] | None = None
    home: str | None = None
    refresh: bool = False
    example: str = "output"


def _flatten(inputs: Inputs) -> list[tuple[str, str, Path]]:
    flat = [(name, one) for name, path in inputs  # an input may be several paths (e.g. --data a.h5 --data b.h5)
            for one in (path if isinstance(path, (list, tuple)) else [path])]
    # real_path, not Path.resolve(): a symbolic link loop must not raise RuntimeError here
    return [(name, str(path), real_path(path)) for name, path in flat if path is not None and str(path) not in ("", "none")]


def refuse_overlap(out: Path, inputs: Inputs, flag: str = "--out", *, home: str | None = None) -> None:
    """Refuse an output that is one of the inputs, holds one, or lies inside an input folder:
    writing there would overwrite an input (or mix the output into the inputs). With ``home``,
    an output at or under ``INPUT/home`` of an input folder is allowed (the input's own place
    for outputs of that kind)."""
    target = real_path(out)
    given = _flatten(inputs)

    def inside(source: Path) -> bool:
        if source not in target.parents:
            return False
        kept = source / home if home else None
        return not (kept is not None and source.is_dir() and (target == kept or kept in target.parents))

    # the closest relation first: "is the input volume" says more than "is inside the input folder"
    for relation, test in (("is", lambda source: source == target), ("contains", lambda source: target in source.parents),
                           ("is inside", inside)):
        name, path = next(((name, path) for name, path, source in given if test(source)), (None, None))
        if name is None:
            continue
        raise SsmtlError(f"{flag} {out}: {relation} the input {name} {path}; choose another {flag} "
                         "(an output never overwrites or mixes with its inputs)")


def is_run(folder: Path) -> bool:
    """Whether ``folder`` is an ssmtl run (pre-training, fine-tuning, benchmark, prediction)."""
    return any((Path(folder) / name).is_file() for name in RUN_FILES)


def _marker_files(folder: Path, kind: OutputKind) -> set[str] | None:
    """The files an earlier output folder of ``kind`` says it holds, or None when it is not one."""
    marker = folder / kind.marker if kind.marker else None
    if marker is None or not marker.is_file():
        return None
    try:
        record = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("kind") != kind.name or not isinstance(record.get("files"), list):
        return None
    return {str(f) for f in record["files"]}


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir()}


def _earlier_output(out: Path, kind: OutputKind) -> tuple[bool, str | None]:
    """(whether ``out`` is an earlier output of ``kind``, an entry that shows it is not)."""
    if not kind.folder:
        return bool(kind.recognise and kind.recognise(out)), None
    listed = _marker_files(out, kind)
    if listed is None:
        return False, min((p.name for p in out.iterdir()), default=None)
    present = _files(out) - {kind.marker}
    foreign = sorted(present - listed)
    return not foreign, (foreign[0] if foreign else None)


def check_output(out: Path | str, inputs: Inputs, kind: OutputKind, force: bool = False, *, flag: str = "--out") -> None:
    """Refuse ``out`` unless writing ``kind`` there destroys nothing (see the module docstring)."""
    out = Path(out)
    refuse_overlap(out, inputs, flag, home=kind.home)
    target = real_path(out)
    # an input run that holds the output (in its home, which refuse_overlap has allowed), and the
    # folders around it (a benchmark folder holding the run), are the input's: not "another run"
    holders = [source for _, _, source in _flatten(inputs) if source == target or source in target.parents]
    run = next((p for p in target.parents
                if not any(p == source or p in source.parents for source in holders) and is_run(p)), None)
    if run is not None:
        raise SsmtlError(f"{flag} {out}: lies inside the run {run}, which is not this command's input; "
                         f"choose another {flag} (a run is never written into by another command)")
    if not out.exists() and not out.is_symlink():
        return
    if kind.folder and not out.is_dir():
        raise SsmtlError(f"{flag} {out}: is a file; the {kind.name} is a folder: give a folder path")
    if not kind.folder and out.is_dir():
        raise SsmtlError(f"{flag} {out}: is a folder; the {kind.name} is one file: give a file path such as {out / kind.example}")
    if kind.folder and not any(out.iterdir()):
        return
    earlier, foreign = _earlier_output(out, kind)
    if not earlier:
        what = f"holds {foreign!r}, which" if kind.folder and foreign else "exists and"
        raise SsmtlError(f"{flag} {out}: {what} is not part of an earlier {kind.name}; ssmtl never replaces it, "
                         f"even with --force: choose another {flag}")
    if not (force or kind.refresh):
        raise SsmtlError(f"{flag} {out}: holds an earlier {kind.name}; pass --force to replace it")


def write_marker(folder: Path, kind: OutputKind, extra: dict[str, Any] | None = None) -> Path:
    """Write ``kind``'s marker into an output folder, listing every file already in it (write it last)."""
    folder = Path(folder)
    record = {"kind": kind.name, **(extra or {}), "files": sorted(_files(folder) - {kind.marker})}
    return save_json(folder / kind.marker, record)


def lock_path(out: Path) -> Path:
    """The lock file of an output: ``.NAME.ssmtl-lock`` beside it."""
    out = Path(out)
    return out.with_name(f".{out.name}{LOCK_SUFFIX}")


def _missing_ancestors(path: Path) -> list[Path]:
    missing = []
    for parent in Path(path).absolute().parents:
        if parent.exists():
            break
        missing.append(parent)
    return missing


@contextlib.contextmanager
def claimed_output(out: Path | str, inputs: Inputs, kind: OutputKind, force: bool = False, *,
                   flag: str = "--out") -> Iterator[Path]:
    """``with claimed_output(out, inputs, kind, force) as out: ...write out atomically...``

    Checks ``out`` (:func:`check_output`), creates its parent folder, holds the output's lock for
    the block and checks again under it; folders it created are removed again if the block fails.
    """
    out = Path(out)
    check_output(out, inputs, kind, force, flag=flag)
    created = _missing_ancestors(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SsmtlError(f"{flag} {out}: cannot create its folder {out.parent} ({exc.strerror or exc})") from None
    try:
        with exclusive_lock(lock_path(out), out):
            check_output(out, inputs, kind, force, flag=flag)  # another process may have written it meanwhile
            yield out
    except BaseException:
        for folder in created:  # innermost first; only folders still empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


@contextlib.contextmanager
def removed_on_failure(out: Path) -> Iterator[None]:
    """An output folder the block creates is removed again if the block fails (a folder that
    existed before is left as it is)."""
    out = Path(out)
    existed = out.exists()
    try:
        yield
    except BaseException:
        if not existed:
            shutil.rmtree(out, ignore_errors=True)
        raise
