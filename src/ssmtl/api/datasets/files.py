"""Finding volume files: folders, hidden files, extensions and stems.

The rules every file-based dataset follows:

* a missing path, or a file where a folder is expected, is an
  :class:`~ssmtl.api.InputFileError` naming the path (:func:`check_directory`);
* hidden files and folders (a name starting with ``.``: macOS ``._name`` resource
  forks, ``.DS_Store``, editors' swap files) are never volumes (:func:`is_hidden`);
* a file's kind is decided by its extension, case-insensitively, and its *stem*
  is the name without that extension (``CASE01.NII.GZ`` -> ``CASE01``), see
  :class:`FileKind`;
* only regular files and folders are read. A FIFO (named pipe), a device or a socket is
  refused by its ``stat``, before anything opens it: opening a FIFO blocks until another
  process writes to it, which for ``ssmtl predict`` meant waiting forever. A symbolic link
  loop is one line too, not Python's ``RuntimeError`` (:func:`check_regular_file`,
  :func:`read_regular_file`, :func:`real_path`; :func:`walk_files` and
  :meth:`FileKind.list_in` apply the same rule to what they list).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ssmtl.api.errors import InputFileError


def is_hidden(path: Path) -> bool:
    """True for a name starting with ``.``: such files are never volumes (``._case.nii.gz``, ``.DS_Store``)."""
    return Path(path).name.startswith(".")


_SPECIAL = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
            (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
_ONLY_REGULAR = "ssmtl reads only regular files and folders"


def file_kind(path: Path | str) -> str:
    """What ``path`` is, from ``stat`` alone (nothing is opened): ``"file"``, ``"directory"``,
    ``"missing"``, ``"broken link"``, ``"link loop"``, or a description of a special file
    (``"a FIFO (named pipe)"``, ``"a character device"``, ``"a block device"``, ``"a socket"``)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "link loop"
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return "broken link" if os.path.islink(path) else "missing"
        raise InputFileError(path, f"cannot read ({exc.strerror or exc})") from None
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "directory"
    return next((name for test, name in _SPECIAL if test(mode)), "not a regular file")


def _refuse(path: Path | str, kind: str, expected: str) -> InputFileError:
    if kind == "link loop":
        return InputFileError(path, "is a symbolic link loop (the link points, through other links, back at itself)")
    if kind == "broken link":
        return InputFileError(path, "is a broken symbolic link")
    if kind == "missing":
        return InputFileError(path, f"{'directory' if expected == 'directory' else 'file'} not found")
    if kind in ("file", "directory"):
        return InputFileError(path, f"is a {kind}, not a {'folder' if expected == 'directory' else 'file'}")
    return InputFileError(path, f"is {kind}, not a regular file; {_ONLY_REGULAR}")


def check_regular_file(path: Path | str) -> Path:
    """``path`` if it is a regular file (through symbolic links); else one InputFileError saying
    what it is instead: missing, a broken link, a link loop, a folder, a FIFO, a device, a socket.
    Only ``stat`` is called: a FIFO is refused without being opened."""
    kind = file_kind(path)
    if kind != "file":
        raise _refuse(path, kind, "file")
    return Path(path)


def read_regular_file(path: Path | str, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` bytes.

    :func:`check_regular_file` first; the file is then opened without blocking and checked again
    on the open descriptor, so a file swapped for a FIFO in between cannot block the reader.
    """
    check_regular_file(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise InputFileError(path, f"cannot read ({exc.strerror or exc})") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise InputFileError(path, f"is not a regular file; {_ONLY_REGULAR}")
        if info.st_size > max_bytes:
            raise InputFileError(path, f"{info.st_size:,} bytes, more than the limit of {max_bytes:,} bytes")
        try:
            data = f.read(max_bytes + 1)
        except OSError as exc:
            raise InputFileError(path, f"cannot read ({exc.strerror or exc})") from None
    if len(data) > max_bytes:
        raise InputFileError(path, f"more than the limit of {max_bytes:,} bytes")
    return data


def real_path(path: Path | str) -> Path:
    """The absolute path with every symbolic link followed, like ``Path.resolve()``, except that a
    link loop is left as it is instead of raising ``RuntimeError`` (Python 3.11, 3.12): comparing
    paths must not fail on a loop, whose own error is reported where it is read."""
    return Path(os.path.realpath(path))


def check_directory(path: Path, expected: str | None = None) -> Path:
    """``path`` if it is an existing folder; else InputFileError ``directory not found`` / ``not a directory``
    (or ``a symbolic link loop``).

    ``expected`` is appended to the second message in parentheses, e.g.
    ``not a directory (expected a folder of DICOM files)``.
    """
    path = Path(path)
    kind = file_kind(path)
    if kind in ("missing", "broken link"):
        raise InputFileError(path, "directory not found")
    if kind == "link loop":
        raise _refuse(path, kind, "directory")
    if kind != "directory":
        raise InputFileError(path, "not a directory" + (f" ({expected})" if expected else ""))
    return path


def walk_files(root: Path) -> Iterator[Path]:
    """Every non-hidden file under ``root``, folder by folder in sorted order; hidden folders are not entered.

    The order depends only on the names, so a dataset lists the same volumes in
    the same order on every machine. Symbolic links to folders are not followed.

    Raises:
        InputFileError: a non-hidden entry is a FIFO, a device, a socket or a symbolic link loop
            (see the module doc): refused when it is listed, before any reader opens it.
    """
    for directory, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                path = Path(directory) / name
                kind = file_kind(path)
                if kind not in ("file", "missing", "broken link"):  # a broken link: its reader says so
                    raise _refuse(path, kind, "file")
                yield path


@dataclass(frozen=True)
class FileKind:
    """A kind of volume file, recognised by the extension of its name (case-insensitive).

    Attributes:
        name: how messages call such files, e.g. ``"NIfTI files"``.
        extensions: the extensions, with their dot, in the order messages list
            them, e.g. ``(".nii", ".nii.gz")``. When several match a name the
            longest wins, so ``a.nii.gz`` has the stem ``a``.
    """

    name: str
    extensions: tuple[str, ...]

    def extension(self, path: Path) -> str | None:
        """The extension ``path`` ends with, as written in the name (``".NII.GZ"``), or None."""
        name = Path(path).name
        matches = [ext for ext in self.extensions if name.lower().endswith(ext.lower())]
        return name[len(name) - max(map(len, matches)):] if matches else None

    def has_extension(self, path: Path) -> bool:
        """True when the name ends with one of the extensions (the file need not exist)."""
        return self.extension(path) is not None

    def stem(self, path: Path) -> str:
        """The name without its extension; a name without one of ours is returned whole (a folder's name)."""
        name = Path(path).name
        extension = self.extension(path)
        return name[: -len(extension)] if extension else name

    def matches(self, path: Path) -> bool:
        """True for a regular, non-hidden file with one of the extensions."""
        path = Path(path)
        return not is_hidden(path) and self.has_extension(path) and path.is_file()

    def claims(self, path: Path) -> bool:
        """:meth:`matches` for a reader asked to open one path (``ssmtl predict``): True for a regular,
        non-hidden file with one of the extensions, False for other names and for folders.

        Raises:
            InputFileError: the name has one of the extensions but the path is a FIFO, a device, a
                socket, a symbolic link loop or a broken link (refused by ``stat``, never opened).
        """
        path = Path(path)
        if is_hidden(path) or not self.has_extension(path):
            return False
        kind = file_kind(path)
        if kind in ("file", "directory", "missing"):
            return kind == "file"
        raise _refuse(path, kind, "file")

    def list_in(self, directory: Path) -> list[Path]:
        """The files of this kind directly in ``directory``, sorted by name.

        Raises:
            InputFileError: the folder is missing, is not a folder, or holds no such file
                (``no NIfTI files (.nii, .nii.gz) found``); one of its names with the
                extension is a FIFO, device, socket or link loop.
        """
        directory = check_directory(directory)
        files = []
        for path in sorted(directory.iterdir()):
            if is_hidden(path) or not self.has_extension(path):
                continue
            kind = file_kind(path)
            if kind == "file":
                files.append(path)
            elif kind not in ("directory", "missing", "broken link"):
                raise _refuse(path, kind, "file")
        if not files:
            raise InputFileError(directory, f"no {self.describe()} found")
        return files

    def describe(self) -> str:
        """``name (ext, ext, ...)``, as messages show the kind."""
        return f"{self.name} ({', '.join(self.extensions)})"
