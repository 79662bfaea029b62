"""Writing a slice cache atomically (the format is described in :mod:`ssmtl.data.cache`).

Writes go to a hidden temporary file next to ``out`` (``.ssmtl-tmp-<pid>-...``) and
are renamed over it only when complete (``os.replace`` is atomic on POSIX), so an
interrupted build, even one killed with ``kill -9``, never leaves a file at ``out``
and never damages an older cache there. Without ``force`` the new file is hard-linked
into place, which fails if ``out`` appeared meanwhile: only ``force`` replaces a cache.
Temporaries of dead writers are deleted by the next build in that directory.

A full disk (or a file size limit) stops the build with one error naming ``out``, and
the temporary is removed. HDF5 does not write through a plain file here: it writes
through :class:`_SpaceAwareFile`, which remembers a failed write and drops the rest,
because HDF5's own error paths after a failed write crash the process (a segfault in
h5py 3.16 / HDF5 2.0 when the file is flushed after a failed chunk write). An exclusive
lock next to ``out`` (``.NAME.ssmtl-lock``) keeps a second build off the same output.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import secrets
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ssmtl.api.errors import SsmtlError
from ssmtl.storage.files import exclusive_lock, fsync_directory, fsync_file, out_of_space, space_error
from ssmtl.storage.locks import process_alive, remove_if_free
from ssmtl.data.cache import FORMAT, FORMAT_VERSION, _json, group_name, sha256_array

TMP_PREFIX = ".ssmtl-tmp-"
LOCK_SUFFIX = ".ssmtl-lock"  # .NAME.ssmtl-lock next to the cache NAME


def remove_stale_temporaries(directory: Path) -> list[Path]:
    """Delete temporaries and lock files left by killed builds (their writer process is gone)."""
    removed = [lock for lock in Path(directory).glob(f".*{LOCK_SUFFIX}") if remove_if_free(lock)]
    for path in Path(directory).glob(f"{TMP_PREFIX}*"):
        match = re.match(rf"{re.escape(TMP_PREFIX)}(\d+)-", path.name)
        if match and not process_alive(int(match.group(1))):
            try:
                path.unlink()
                removed.append(path)
            except OSError:
                pass
    return removed


def check_output_path(out: Path, force: bool) -> None:
    """Refuse to overwrite without --force, create the directory (as runs create theirs) and
    check it is writable, before any work."""
    out = Path(out)
    if out.is_dir():  # first: --force replaces a cache file, never a directory
        raise SsmtlError(f"{out}: is a directory; give a file path such as {out / 'data.h5'}")
    if out.exists() and not force:
        raise SsmtlError(f"{out}: a file already exists; pass --force to replace it")
    parent = out.parent if str(out.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SsmtlError(f"{parent}: cannot create the output directory ({exc.strerror or exc})") from None
    if not os.access(parent, os.W_OK):
        raise SsmtlError(f"{parent}: output directory is not writable")


class _SpaceAwareFile(io.RawIOBase):
    """The temporary file HDF5 writes through: the first failed write is kept in ``error`` and
    every later write is dropped (reported as done), so HDF5 never enters its error paths."""

    def __init__(self, path: Path):
        super().__init__()
        self.file = open(path, "w+b", buffering=0)
        self.error: OSError | None = None

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = 0) -> int:
        return self.file.seek(pos, whence)

    def tell(self) -> int:
        return self.file.tell()

    def readinto(self, buffer) -> int:
        return self.file.readinto(buffer)

    def write(self, data) -> int:
        size = len(memoryview(data))
        if self.error is None:
            try:
                written = self.file.write(data)
                if written == size:
                    return written
                raise OSError(27, "short write (file size limit)")
            except OSError as exc:
                self.error = exc
        self.file.seek(size, 1)
        return size

    def truncate(self, size: int | None = None) -> int:
        try:
            return self.file.truncate(size)
        except OSError as exc:
            self.error = self.error or exc
            return self.tell() if size is None else size

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.file.close()
        super().close()


class CacheWriter:
    """Writes a cache atomically. Use as a context manager; ``commit`` happens on success."""

    def __init__(self, out: Path, *, force: bool, attrs: dict[str, Any], compression: str = "gzip"):
        self.out = Path(out)
        check_output_path(self.out, force)
        remove_stale_temporaries(self.out.parent)
        self.tmp = self.out.parent / f"{TMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-{self.out.name}"
        self.attrs = attrs
        self.force = force
        self.compression = compression
        self.names: list[str] = []
        self.checksums: list[str] = []
        self._file: h5py.File | None = None
        self._raw: _SpaceAwareFile | None = None
        self._lock = contextlib.ExitStack()

    def __enter__(self) -> "CacheWriter":
        self._lock.enter_context(exclusive_lock(self.out.with_name(f".{self.out.name}{LOCK_SUFFIX}"), self.out))
        try:
            self._raw = _SpaceAwareFile(self.tmp)
            self._file = h5py.File(self._raw, "w", libver="latest")
            self._file.create_group("volumes")
            self._check_space()
        except BaseException:
            self._abandon(self._file)
            raise
        return self

    def _check_space(self) -> None:
        """Stop with one clear error once a write has failed (full disk, file size limit)."""
        if self._raw is not None and self._raw.error is not None:
            raise space_error(self.out, "the cache", out_of_space(self._raw.error) or str(self._raw.error))

    def _abandon(self, f) -> None:
        """Close everything (dropped writes cannot fail), delete the temporary, release the lock."""
        _close_quietly(f)
        _close_quietly(self._raw)
        self.tmp.unlink(missing_ok=True)
        self._lock.close()

    def _compression_kwargs(self) -> dict[str, Any]:
        if self.compression == "gzip":
            return {"compression": "gzip", "compression_opts": 1, "shuffle": True}
        if self.compression == "lzf":
            return {"compression": "lzf", "shuffle": True}
        return {}

    def add_volume(
        self,
        subject: str,
        image: np.ndarray,
        label: np.ndarray | None,
        attrs: dict[str, Any],
        name: str | None = None,
    ) -> str:
        """Write one preprocessed (D, H, W) volume; returns its group name.

        ``name`` proposes the group name (default: the subject, e.g. ``patient001_ED``
        for one of several volumes of ``patient001``); it is made HDF5-safe and unique.
        """
        assert self._file is not None, "use CacheWriter as a context manager"
        name = group_name(name or subject, set(self.names))
        group = self._file["volumes"].create_group(name)
        d, h, w = image.shape
        kw = self._compression_kwargs()
        group.create_dataset("image", data=image.astype(np.float32, copy=False), chunks=(1, h, w), **kw)
        image_sha = sha256_array(image.astype(np.float32, copy=False))
        group.attrs["sha256_image"] = image_sha
        if label is not None:
            group.create_dataset("label", data=label.astype(np.uint8, copy=False), chunks=(1, h, w), **kw)
            group.attrs["sha256_label"] = sha256_array(label.astype(np.uint8, copy=False))
        group.attrs["subject"] = subject
        for key, value in attrs.items():
            group.attrs[key] = value if isinstance(value, (str, int, float, np.ndarray)) else _json(value)
        self.names.append(name)
        self.checksums.append(image_sha + group.attrs.get("sha256_label", ""))
        del group
        self._check_space()
        return name

    def set_split(self, split_of: dict[str, str], attrs: dict[str, Any]) -> None:
        """Record each volume's subject-level split (``train``/``val``/``test``) before commit."""
        assert self._file is not None
        for name in self.names:
            group = self._file["volumes"][name]
            group.attrs["split"] = split_of.get(str(group.attrs["subject"]), "train")
        self.attrs["split"] = attrs

    def _write_index(self, f: h5py.File) -> int:
        vol, sl, pos = [], [], []
        for i, name in enumerate(self.names):
            d = f["volumes"][name]["image"].shape[0]
            vol.append(np.full(d, i, np.int32))
            sl.append(np.arange(d, dtype=np.int32))
            pos.append(np.linspace(0.0, 1.0, d, dtype=np.float32) if d > 1 else np.zeros(1, np.float32))
        index = f.create_group("index")
        cat = (lambda xs, dt: np.concatenate(xs) if xs else np.zeros(0, dt))
        index.create_dataset("volume", data=cat(vol, np.int32))
        index.create_dataset("slice", data=cat(sl, np.int32))
        index.create_dataset("position", data=cat(pos, np.float32))
        index.create_dataset("names", data=np.array(self.names, dtype=h5py.string_dtype()))
        return int(sum(len(v) for v in vol))

    def __exit__(self, exc_type, exc, tb) -> None:
        f, self._file = self._file, None
        try:
            if exc_type is None:
                if not self.names:
                    raise SsmtlError("no volumes were written; nothing to cache")
                num_slices = self._write_index(f)
                attrs = dict(self.attrs)
                attrs.update(
                    format=FORMAT,
                    format_version=FORMAT_VERSION,
                    created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    num_volumes=len(self.names),
                    num_slices=num_slices,
                    fingerprint=hashlib.sha256("".join(self.checksums).encode()).hexdigest(),
                )
                for key, value in attrs.items():
                    f.attrs[key] = value if isinstance(value, (str, int, float)) else _json(value)
                f.close()
                self._check_space()
                self._raw.close()
                fsync_file(self.tmp)
                self._commit()
                self._lock.close()
                return
        except BaseException as failure:
            self._abandon(f)
            reason = out_of_space(failure)
            if reason is not None and not isinstance(failure, SsmtlError):
                raise space_error(self.out, "the cache", reason) from None
            raise
        self._abandon(f)

    def _commit(self) -> None:
        """Put the finished temporary at ``out`` atomically; without ``force``, never over a file."""
        if self.force:
            os.replace(self.tmp, self.out)
        else:
            try:
                os.link(self.tmp, self.out)  # fails if out exists: no check-then-replace race
            except FileExistsError:
                raise SsmtlError(f"{self.out}: a file appeared there during the build; pass --force to replace it") from None
            except OSError:
                check_output_path(self.out, force=False)  # filesystem without hard links
                os.replace(self.tmp, self.out)
            else:
                self.tmp.unlink()
        fsync_directory(self.out.parent)


def _close_quietly(f) -> None:
    try:
        if f is not None:
            f.close()
    except Exception:
        pass
