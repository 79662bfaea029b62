"""The one way ssmtl writes and reads its own files: atomically, and strictly.

Writing: every file (JSON, safetensors, text) and every directory (an export, a
checkpoint) is written under a temporary name in the same directory, flushed to disk
(``fsync``), then renamed over its final name, and the directory entry is flushed too.
A reader therefore sees the old file or the new one, never half of one, even after
``kill -9`` or a power cut; a failed write removes its temporary and re-raises.

Reading: :func:`load_json` and :func:`load_tensors` turn a missing, truncated or
malformed file into one :class:`~ssmtl.api.SsmtlError` naming the file; ``load_tensors``
with ``expected`` keys is strict (missing and unexpected keys are both errors), which
is how every set of weights is loaded.

Running out of space: :func:`out_of_space` recognises a full disk, a file size limit or a
quota in any exception (an ``OSError``'s errno, or the text h5py, safetensors and torch
put in their own errors), and :func:`writing` turns such a failure into one
``SsmtlError`` naming the output. :func:`exclusive_lock` keeps two processes off one output.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from ssmtl.api.errors import SsmtlError


def temporary_name(path: Path, suffix: str = "") -> Path:
    """The hidden sibling a file is written to before it is renamed into place.

    ``suffix`` ends the temporary name, for writers that pick the format from the
    extension (``.nii.gz``, ``.nrrd``).
    """
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}{suffix}")


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_directory(directory: Path) -> None:
    """Flush a directory entry (a rename) to disk; a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[Path], None], suffix: str = "") -> Path:
    """Call ``write(tmp)`` to produce the file at a temporary name (ending in ``suffix``), then publish it as ``path``."""
    path = Path(path)
    tmp = temporary_name(path, suffix)
    try:
        write(tmp)
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        _raise_if_out_of_space(exc, path)
        raise
    fsync_directory(path.parent)
    return path


def _raise_if_out_of_space(exc: BaseException, path: Path, *, rename: bool = False) -> None:
    """A failed write for lack of space becomes one error naming the file (other failures pass);
    with ``rename``, also one already reported under a temporary name (a file of a folder)."""
    reason = None if isinstance(exc, SsmtlError) and not rename else out_of_space(exc)
    if reason is not None:
        raise space_error(path, Path(path).name, reason) from None


def save_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def save_json(path: Path, data: Any) -> Path:
    """``data`` as indented JSON (paths and other objects as strings)."""
    return save_text(path, json.dumps(data, indent=2, default=str) + "\n")


def save_tensors(path: Path, tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None) -> Path:
    """A safetensors file of CPU-contiguous copies of ``tensors``."""
    from safetensors.torch import save_file

    plain = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(plain, str(tmp), metadata=dict(metadata) if metadata else None))


@contextlib.contextmanager
def atomic_directory(final: Path, tmp: Path | None = None) -> Iterator[Path]:
    """``with atomic_directory(out / "export") as tmp: ...write files into tmp...``

    On success the files are flushed and ``tmp`` replaces ``final`` (an older ``final``
    is removed first, so the rename is atomic on POSIX); on failure ``tmp`` is removed.
    """
    final = Path(final)
    tmp = Path(tmp) if tmp is not None else final.with_name(f".tmp-{final.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        for p in tmp.rglob("*"):
            if p.is_file():
                fsync_file(p)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        _raise_if_out_of_space(exc, final, rename=True)
        raise
    fsync_directory(final.parent)


def load_json(path: Path, what: str = "file") -> Any:
    """Read a JSON file ssmtl wrote; a missing or damaged one is one clear error."""
    path = Path(path)
    if not path.is_file():
        raise SsmtlError(f"{path}: {what} not found")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SsmtlError(f"{path}: {what} is not valid JSON ({exc})") from None
    except OSError as exc:
        raise SsmtlError(f"{path}: cannot read {what} ({exc.strerror})") from None


def load_tensors(path: Path, expected: Iterable[str] | None = None, what: str = "weights") -> dict[str, Any]:
    """Read a safetensors file (no pickle); with ``expected``, the keys must match exactly."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise SsmtlError(f"{path}: {what} not found")
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise SsmtlError(f"{path}: cannot read {what} ({type(exc).__name__}: {exc})") from None
    if expected is not None:
        expected = set(expected)
        missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        if missing or unexpected:
            parts = []
            if missing:
                parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
            if unexpected:
                parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
            raise SsmtlError(f"{path}: {what} do not match the model: {'; '.join(parts)} keys")
    return tensors


def load_into(module, path: Path, what: str = "weights") -> None:
    """Load a safetensors file into ``module`` with ``strict=True``: every key, every shape."""
    state = load_tensors(path, expected=module.state_dict().keys(), what=what)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # shape mismatches
        first = str(exc).splitlines()[-1].strip() or str(exc).splitlines()[0]
        raise SsmtlError(f"{path}: {what} do not match the model: {first}") from None


_NO_SPACE = "no space left on the device"
_TOO_LARGE = "the file size limit was reached"
_QUOTA = "the disk quota is exceeded"
_BY_ERRNO = {errno.ENOSPC: _NO_SPACE, errno.EFBIG: _TOO_LARGE, errno.EDQUOT: _QUOTA}
#: how libraries that do not raise OSError (h5py's HDF5 stack, safetensors, torch's zip writer) say it
_BY_TEXT = {
    "no space left on device": _NO_SPACE, "errno = 28": _NO_SPACE, "os error 28": _NO_SPACE,
    "file too large": _TOO_LARGE, "errno = 27": _TOO_LARGE, "os error 27": _TOO_LARGE,
    "disk quota exceeded": _QUOTA, "errno = 122": _QUOTA, "os error 122": _QUOTA,
    # torch's zip writer (torch.save) drops the errno: a short write shows as a position mismatch
    "file write failed": "a write failed (the disk is full or a file size limit was reached)",
    "unexpected pos": "a write failed (the disk is full or a file size limit was reached)",
}


def out_of_space(exc: BaseException | None) -> str | None:
    """Why ``exc`` (or an exception it was raised from) failed for lack of space, or None."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _BY_ERRNO:
            return _BY_ERRNO[exc.errno]
        text = str(exc).lower()
        for needle, reason in _BY_TEXT.items():
            if needle in text:
                return reason
        exc = exc.__cause__ or exc.__context__
    return None


def space_error(path: Path, what: str, reason: str) -> SsmtlError:
    return SsmtlError(f"{path}: {reason} while writing {what}; free some space (or raise the limit) and run again")


@contextlib.contextmanager
def writing(path: Path, what: str) -> Iterator[None]:
    """Inside, running out of space becomes one :class:`SsmtlError` naming ``path``; other errors pass."""
    try:
        yield
    except SsmtlError:
        raise
    except Exception as exc:
        reason = out_of_space(exc)
        if reason is None:
            raise
        raise space_error(path, what, reason) from None


class OutputInUse(SsmtlError):
    """Another process holds the lock on an output."""


#: the lock files this process holds (it must never open one otherwise: closing any descriptor
#: of a file releases this process's record locks on it)
_HELD: set[str] = set()


def held_here(lock: Path) -> bool:
    """Whether this process holds ``lock`` (then it must not open it: see :func:`exclusive_lock`)."""
    return str(Path(lock).absolute()) in _HELD


@contextlib.contextmanager
def exclusive_lock(lock: Path, output: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock`` (created, holding our PID) for the block; a second
    process gets "OUTPUT is in use by PID N". The lock file is removed on the way out.

    A POSIX record lock (``lockf``), not ``flock``: it belongs to this process alone, so data
    loader workers forked during the run do not inherit it and keep it after a ``kill -9``;
    the kernel releases it when the process dies. A waiter may have opened a lock file that
    its holder then removed; after taking the lock we check that the name still points at the
    file we locked, and start again if not.
    """
    import fcntl

    lock = Path(lock)
    key = str(lock.absolute())
    if key in _HELD:  # record locks do not conflict within one process: refuse here instead
        raise OutputInUse(f"{output} is in use by PID {os.getpid()} (this process); wait for it to finish or choose another output")
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise SsmtlError(f"{output}: cannot create the lock file {lock.name} ({exc.strerror})") from None
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise OutputInUse(f"{output} is in use by PID {holder}; wait for it to finish or choose another output") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
    except OSError:
        pass  # no room for a PID: the lock itself still holds
    _HELD.add(key)
    try:
        yield
    finally:
        _HELD.discard(key)
        with contextlib.suppress(OSError):
            lock.unlink()
        os.close(fd)


_JSON_NAMES = {dict: "an object", list: "a list", str: "a string", int: "an integer", float: "a number",
               bool: "true/false", type(None): "null"}


def _json_type(value: Any) -> str:
    return _JSON_NAMES.get(type(value), type(value).__name__)


def check_shape(data: Any, path: Path, what: str, fields: Mapping[str, type | tuple[type, ...]],
                required: Iterable[str] = ()) -> dict[str, Any]:
    """Check a JSON file ssmtl wrote still has the shape its readers rely on (a hand-edited or
    foreign file is one clear error naming the file and the field, not a KeyError later).

    ``fields`` maps dotted keys (``"head.name"``) to the allowed types (``None`` allowed when
    ``type(None)`` is listed); ``required`` keys must be present."""
    if not isinstance(data, dict):
        raise SsmtlError(f"{path}: {what} should be a JSON object, found {_json_type(data)} (edited or damaged?)")

    def lookup(key: str) -> tuple[bool, Any]:
        node: Any = data
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return False, None
            node = node[part]
        return True, node

    for key in required:
        if not lookup(key)[0]:
            raise SsmtlError(f"{path}: {what} has no {key!r} (edited or damaged?)")
    for key, types in fields.items():
        present, value = lookup(key)
        allowed = types if isinstance(types, tuple) else (types,)
        is_bool = isinstance(value, bool) and bool not in allowed
        if present and (is_bool or not isinstance(value, allowed)):
            expected = " or ".join(_JSON_NAMES.get(t, t.__name__) for t in allowed)
            raise SsmtlError(f"{path}: {what}: {key!r} should be {expected}, found {_json_type(value)} (edited or damaged?)")
    return data


def load_json_object(path: Path, what: str, fields: Mapping[str, type | tuple[type, ...]],
                     required: Iterable[str] = ()) -> dict[str, Any]:
    """:func:`load_json`, then :func:`check_shape`."""
    return check_shape(load_json(path, what), path, what, fields, required)
