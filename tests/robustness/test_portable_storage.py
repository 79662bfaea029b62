"""Issue 25 (platforms) and 27: locks that work where there is no ``fcntl`` (Windows) and no
``os.pread``, and files written with the mode a plain ``open()`` gives.

The portable paths are made to run here by taking away what Linux offers: ``fcntl`` (the
``exclusive-create`` backend runs), ``fcntl`` with a stand-in ``msvcrt`` (the ``windows``
backend's code runs: the PID read without ``pread``, the lock byte far past it, close before
unlink), and ``os.pread``/``os.pwrite``. Each holder is a second process under the same
simulation, so "in use by PID N" is checked across processes as on a real platform.
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Iterator

import pytest

from ssmtl.storage import files, locks
from ssmtl.storage.files import OutputInUse, exclusive_lock, save_json, save_tensors, save_text

#: a stand-in for Windows' msvcrt.locking, on POSIX byte-range locks: the same calls and the
#: same failure (OSError when another process holds the range), so the windows branch runs
FAKE_MSVCRT = textwrap.dedent("""
    import fcntl, os, types
    def _locking(fd, mode, nbytes):
        start = os.lseek(fd, 0, os.SEEK_CUR)
        if mode == fake.LK_UNLCK:
            fcntl.lockf(fd, fcntl.LOCK_UN, nbytes, start, os.SEEK_SET)
        else:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, nbytes, start, os.SEEK_SET)
    fake = types.SimpleNamespace(LK_NBLCK=2, LK_UNLCK=0, locking=_locking)
""")

SIMULATIONS = {
    # what each platform lacks, applied to ssmtl.storage.locks (and os) in this process or a helper
    "exclusive-create": "locks.fcntl = None; locks.msvcrt = None",
    "windows": FAKE_MSVCRT + "locks.fcntl = None; locks.msvcrt = fake",
}
NO_PREAD = "del os.pread, os.pwrite"


def _simulate(monkeypatch, backend: str) -> None:
    monkeypatch.setattr(locks, "fcntl", None)
    if backend == "windows":
        namespace: dict = {}
        exec(FAKE_MSVCRT, namespace)
        monkeypatch.setattr(locks, "msvcrt", namespace["fake"])
    else:
        monkeypatch.setattr(locks, "msvcrt", None)
    monkeypatch.delattr(os, "pread")
    monkeypatch.delattr(os, "pwrite")


@contextlib.contextmanager
def _held_elsewhere(lock: Path, backend: str) -> Iterator[int]:
    """A helper process, under the same simulation, holds ``lock`` for the block; yields its PID."""
    code = "\n".join([
        "import os, sys", "from ssmtl.storage import locks", SIMULATIONS[backend], NO_PREAD,
        f"assert locks.lock_backend() == {backend!r}",
        f"with locks.exclusive_lock({str(lock)!r}, 'the output'):",
        "    print('locked', flush=True)", "    sys.stdin.read()",
    ])
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield holder.pid
    finally:
        holder.stdin.close()
        assert holder.wait(timeout=60) == 0


@pytest.mark.parametrize("backend", ["exclusive-create", "windows"])
def test_a_lock_without_fcntl_or_pread_keeps_the_semantics(tmp_path, monkeypatch, backend):
    _simulate(monkeypatch, backend)
    assert locks.lock_backend() == backend and not hasattr(os, "pread")
    lock = tmp_path / ".out.lock"
    with _held_elsewhere(lock, backend) as holder:
        assert lock.read_text() == str(holder)
        with pytest.raises(OutputInUse, match=f"^the output is in use by PID {holder}; wait"):
            with exclusive_lock(lock, "the output"):
                pass
        assert not locks.remove_if_free(lock) and lock.exists()  # held: never removed
    assert not lock.exists()  # the holder removed it on release
    with exclusive_lock(lock, "the output"):
        assert lock.read_text() == str(os.getpid())
        with pytest.raises(OutputInUse, match="this process"):
            with exclusive_lock(lock, "the output"):
                pass
    assert not lock.exists()


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path, monkeypatch):
    _simulate(monkeypatch, "exclusive-create")
    lock = tmp_path / ".out.lock"
    lock.write_text("999999999")  # above any pid_max: its holder is gone
    assert not locks.process_alive(999999999) and locks.process_alive(os.getpid())
    with exclusive_lock(lock, "the output"):
        assert lock.read_text() == str(os.getpid())
    lock.write_text("999999999")
    assert locks.remove_if_free(lock) and not lock.exists()
    lock.write_text(str(os.getppid()))  # a live process: in use, whoever it is
    with pytest.raises(OutputInUse, match=f"in use by PID {os.getppid()}"):
        with exclusive_lock(lock, "the output"):
            pass


def test_the_backend_follows_the_platform(monkeypatch):
    assert locks.lock_backend() == ("posix" if os.name != "nt" else "windows")
    monkeypatch.setattr(locks, "fcntl", None)
    monkeypatch.setattr(locks, "msvcrt", None)
    assert locks.lock_backend() == "exclusive-create"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_every_atomic_write_gets_the_mode_of_a_plain_open(tmp_path, monkeypatch):
    import torch

    old = os.umask(0o022)
    try:
        monkeypatch.setattr(files, "_UMASK", None)
        written = [save_tensors(tmp_path / "w.safetensors", {"a": torch.zeros(2)}),  # safetensors makes 0600 files
                   save_json(tmp_path / "c.json", {}), save_text(tmp_path / "t.md", "x")]
        with files.atomic_directory(tmp_path / "folder") as tmp:
            (tmp / "inner.bin").write_bytes(b"x")
            os.chmod(tmp / "inner.bin", 0o600)  # whatever a writer did inside a folder
        written.append(tmp_path / "folder" / "inner.bin")
        assert [oct(_mode(p)) for p in written] == [oct(0o644)] * 4
        os.umask(0o077)  # a private umask is respected, not widened
        monkeypatch.setattr(files, "_UMASK", None)
        assert _mode(save_tensors(tmp_path / "p.safetensors", {"a": torch.zeros(2)})) == 0o600
    finally:
        os.umask(old)


def test_replacing_a_folder_keeps_the_old_one_until_the_new_one_is_in_place(tmp_path, monkeypatch):
    final = tmp_path / "out"
    final.mkdir()
    (final / "old.txt").write_text("old")
    real_replace = os.replace

    def failing_replace(src, dst):
        if Path(src).name.startswith(".tmp-out"):
            raise OSError(5, "simulated failure of the rename")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="simulated"):
        with files.atomic_directory(final) as tmp:
            (tmp / "new.txt").write_text("new")
    monkeypatch.setattr(os, "replace", real_replace)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and (final / "old.txt").read_text() == "old"
    with files.atomic_directory(final) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and [p.name for p in final.iterdir()] == ["new.txt"]
