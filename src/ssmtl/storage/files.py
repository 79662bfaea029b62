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
``SsmtlError`` naming the output. :func:`exclusive_lock` (:mod:`ssmtl.storage.locks`) keeps
two processes off one output, on every platform.

Modes: every file written here gets the mode a plain ``open()`` would give it (``0o666``
less the umask: ``0644`` under the usual umask 022), whatever the writer created its
temporary with (safetensors creates its files ``0600``).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from ssmtl.api.errors import SsmtlError
from ssmtl.storage.locks import exclusive_lock, held_here, OutputInUse  # noqa: F401  (the lock belongs to how ssmtl writes)


def temporary_name(path: Path, suffix: str = "") -> Path:
    """The hidden sibling a file is written to before it is renamed into place.

    ``suffix`` ends the temporary name, for writers that pick the format from the
    extension (``.nii.gz``, ``.nrrd``).
    """
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}{suffix}")


_UMASK: int | None = None


def file_mode() -> int:
    """The mode a new file gets from a plain ``open()``: ``0o666`` less the process umask (read once)."""
    global _UMASK
    if _UMASK is None:
        _UMASK = os.umask(0o022)  # there is no way to read the umask but to set it; set it back at once
        os.umask(_UMASK)
    return 0o666 & ~_UMASK


def fsync_file(path: Path) -> None:
    # Windows flushes only through a descriptor open for writing (_commit); POSIX takes any
    fd = os.open(path, os.O_RDWR if os.name == "nt" else os.O_RDONLY)
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
        os.chmod(tmp, file_mode())  # a writer's own temporary may be private (safetensors: 0600)
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

    On success the files are flushed and ``tmp`` replaces ``final``; on failure ``tmp`` is
    removed. An older ``final`` is first renamed aside and only deleted once the new folder
    is in place, so a failure at any point leaves the old folder or the new one.
    """
    final = Path(final)
    tmp = Path(tmp) if tmp is not None else final.with_name(f".tmp-{final.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    old = final.with_name(f".tmp-old-{final.name}-{os.getpid()}")
    try:
        yield tmp
        for p in tmp.rglob("*"):
            if p.is_file() and not p.is_symlink():
                os.chmod(p, file_mode())
                fsync_file(p)
        moved = final.exists()
        if moved:
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        try:
            os.replace(tmp, final)
        except BaseException:
            if moved:
                os.replace(old, final)
            raise
        if moved:
            shutil.rmtree(old, ignore_errors=True)
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


def json_safe(value: Any) -> Any:
    """NaN -> None recursively: JSON has no NaN, and ``null`` says "undefined" (a score of a
    structure absent from both the prediction and the reference)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def sha256_file(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
