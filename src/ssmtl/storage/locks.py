"""One process at a time on an output, on every platform: :func:`exclusive_lock`.

A lock is a file next to (or inside) the output that holds the PID of its holder, so a
second process is told "OUTPUT is in use by PID N". How the file is locked depends on what
the platform offers, chosen once per call by :func:`lock_backend`:

* ``posix`` (Linux, macOS: :mod:`fcntl`): a POSIX record lock (``lockf``) on the whole file.
  It belongs to this process alone, so data loader workers forked during a run do not
  inherit it and keep it after a ``kill -9``; the kernel releases it when the process dies.
* ``windows`` (:mod:`msvcrt`): ``msvcrt.locking`` on one byte far past the PID. Windows
  range locks are mandatory (a locked byte cannot even be read by another process), so
  the byte locked is not the one holding the PID; the system releases it when the process
  dies. Windows cannot delete an open file, so the lock is closed before it is removed.
* ``exclusive-create`` (anything else): the lock file is created with ``O_EXCL`` and
  removed on release; one whose holder is no longer running (:func:`process_alive`) is
  stale and taken over. It needs nothing but :mod:`os`, which is why it is the fallback.

Reading and writing the PID use ``os.pread``/``os.pwrite`` where they exist (POSIX) and a
seek then ``os.read``/``os.write`` elsewhere (Windows has neither).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from ssmtl.api.errors import SsmtlError

try:  # POSIX
    import fcntl
except ImportError:  # Windows and other platforms without it
    fcntl = None  # type: ignore[assignment]
try:  # Windows
    import msvcrt
except ImportError:
    msvcrt = None  # type: ignore[assignment]

#: where the ``windows`` backend locks its one byte: past the PID, which stays readable
WINDOWS_LOCK_OFFSET = 1 << 30
_PID_BYTES = 32


class OutputInUse(SsmtlError):
    """Another process holds the lock on an output."""


#: the lock files this process holds (it must never open one otherwise: closing any descriptor
#: of a file releases this process's POSIX record locks on it)
_HELD: set[str] = set()


def held_here(lock: Path) -> bool:
    """Whether this process holds ``lock`` (then it must not open it: see :func:`exclusive_lock`)."""
    return str(Path(lock).absolute()) in _HELD


def lock_backend() -> str:
    """``posix``, ``windows`` or ``exclusive-create``: how this platform locks (see the module docstring)."""
    if fcntl is not None and hasattr(fcntl, "lockf"):
        return "posix"
    if msvcrt is not None and hasattr(msvcrt, "locking"):
        return "windows"
    return "exclusive-create"


def read_at(fd: int, size: int, offset: int) -> bytes:
    """``os.pread`` where there is one, else a seek and a read (Windows)."""
    pread = getattr(os, "pread", None)
    if pread is not None:
        return pread(fd, size, offset)
    os.lseek(fd, offset, os.SEEK_SET)
    return os.read(fd, size)


def write_at(fd: int, data: bytes, offset: int) -> None:
    """``os.pwrite`` where there is one, else a seek and a write (Windows)."""
    pwrite = getattr(os, "pwrite", None)
    if pwrite is not None:
        pwrite(fd, data, offset)
        return
    os.lseek(fd, offset, os.SEEK_SET)
    os.write(fd, data)


def process_alive(pid: int) -> bool:
    """Whether a process with this PID is running (a PID of a dead holder marks a stale lock).

    POSIX asks with signal 0. Windows has no signal 0 (``os.kill`` there would end the
    process), so it asks the kernel for the process and its exit code instead.
    """
    if pid <= 0:
        return False
    if os.name == "nt":
        return _windows_process_alive(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    except OSError:
        return False
    return True


def _windows_process_alive(pid: int) -> bool:
    import ctypes

    kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
    query_limited_information, still_active = 0x1000, 259
    handle = kernel32.OpenProcess(query_limited_information, False, pid)
    if not handle:
        return ctypes.get_last_error() == 5  # access denied: it exists
    try:
        code = ctypes.c_ulong()
        return bool(kernel32.GetExitCodeProcess(handle, ctypes.byref(code))) and code.value == still_active
    finally:
        kernel32.CloseHandle(handle)


def _try_lock(fd: int, backend: str) -> bool:
    """Take the lock on an open lock file without waiting; False when another process holds it."""
    try:
        if backend == "posix":
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:
            os.lseek(fd, WINDOWS_LOCK_OFFSET, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError:
        return False
    return True


def _holder(fd: int) -> str:
    try:
        return read_at(fd, _PID_BYTES, 0).decode(errors="replace").strip() or "unknown"
    except OSError:
        return "unknown"


def _in_use(output: Path, holder: str) -> OutputInUse:
    return OutputInUse(f"{output} is in use by PID {holder}; wait for it to finish or choose another output")


def _open_locked(lock: Path, output: Path, backend: str) -> int:
    """A descriptor of ``lock``, locked by this process (``posix`` and ``windows`` backends).

    A waiter may have opened a lock file that its holder then removed; after taking the lock
    we check that the name still points at the file we locked, and start again if not.
    """
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise SsmtlError(f"{output}: cannot create the lock file {lock.name} ({exc.strerror})") from None
        if not _try_lock(fd, backend):
            holder = _holder(fd)
            os.close(fd)
            raise _in_use(output, holder)
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def _create_exclusive(lock: Path, output: Path) -> int:
    """A new lock file, created by this process (``exclusive-create`` backend); a stale one is removed first."""
    for _ in range(100):
        try:
            return os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            pass
        except OSError as exc:
            raise SsmtlError(f"{output}: cannot create the lock file {lock.name} ({exc.strerror})") from None
        try:
            holder = lock.read_text(errors="replace").strip()
        except FileNotFoundError:
            continue  # released meanwhile: try again
        except OSError:
            holder = ""
        if not (holder.isdigit() and not process_alive(int(holder))):
            raise _in_use(output, holder or "unknown")  # alive, or still writing its PID
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()  # its holder died without releasing it
    raise _in_use(output, "unknown")


@contextlib.contextmanager
def exclusive_lock(lock: Path, output: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock`` (created, holding our PID) for the block; a second
    process gets "OUTPUT is in use by PID N". The lock file is removed on the way out."""
    lock = Path(lock)
    key = str(lock.absolute())
    if key in _HELD:  # record locks do not conflict within one process: refuse here instead
        raise OutputInUse(f"{output} is in use by PID {os.getpid()} (this process); wait for it to finish or choose another output")
    backend = lock_backend()
    fd = _create_exclusive(lock, output) if backend == "exclusive-create" else _open_locked(lock, output, backend)
    try:
        os.ftruncate(fd, 0)
        write_at(fd, str(os.getpid()).encode(), 0)
    except OSError:
        pass  # no room for a PID: the lock itself still holds
    _HELD.add(key)
    try:
        yield
    finally:
        _HELD.discard(key)
        _release(lock, fd, backend)


def _release(lock: Path, fd: int, backend: str) -> None:
    if backend == "windows":  # an open file cannot be deleted there: unlock and close first
        with contextlib.suppress(OSError):
            os.lseek(fd, WINDOWS_LOCK_OFFSET, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        os.close(fd)
        with contextlib.suppress(OSError):  # another process may already hold it again
            lock.unlink()
        return
    with contextlib.suppress(OSError):
        lock.unlink()
    os.close(fd)


def remove_if_free(lock: Path) -> bool:
    """Delete a lock file nobody holds (left by a killed process); True when it was removed."""
    lock = Path(lock)
    if held_here(lock):
        return False
    backend = lock_backend()
    if backend == "exclusive-create":
        try:
            holder = lock.read_text(errors="replace").strip()
        except OSError:
            return False
        if not holder.isdigit() or process_alive(int(holder)):
            return False
        with contextlib.suppress(OSError):
            lock.unlink()
            return True
        return False
    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        return False
    if not _try_lock(fd, backend):
        os.close(fd)
        return False
    if backend == "windows":
        _release(lock, fd, backend)
        return not lock.exists()
    try:
        lock.unlink()
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
