"""Finding volume files: folders, hidden files, extensions and stems.

The rules every file-based dataset follows:

* a missing path, or a file where a folder is expected, is an
  :class:`~ssmtl.api.InputFileError` naming the path (:func:`check_directory`);
* hidden files and folders (a name starting with ``.``: macOS ``._name`` resource
  forks, ``.DS_Store``, editors' swap files) are never volumes (:func:`is_hidden`);
* a file's kind is decided by its extension, case-insensitively, and its *stem*
  is the name without that extension (``CASE01.NII.GZ`` -> ``CASE01``), see
  :class:`FileKind`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ssmtl.api.errors import InputFileError


def is_hidden(path: Path) -> bool:
    """True for a name starting with ``.``: such files are never volumes (``._case.nii.gz``, ``.DS_Store``)."""
    return Path(path).name.startswith(".")


def check_directory(path: Path, expected: str | None = None) -> Path:
    """``path`` if it is an existing folder; else InputFileError ``directory not found`` / ``not a directory``.

    ``expected`` is appended to the second message in parentheses, e.g.
    ``not a directory (expected a folder of DICOM files)``.
    """
    path = Path(path)
    if not path.exists():
        raise InputFileError(path, "directory not found")
    if not path.is_dir():
        raise InputFileError(path, "not a directory" + (f" ({expected})" if expected else ""))
    return path


def walk_files(root: Path) -> Iterator[Path]:
    """Every non-hidden file under ``root``, folder by folder in sorted order; hidden folders are not entered.

    The order depends only on the names, so a dataset lists the same volumes in
    the same order on every machine.
    """
    for directory, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                yield Path(directory) / name


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

    def list_in(self, directory: Path) -> list[Path]:
        """The files of this kind directly in ``directory``, sorted by name.

        Raises:
            InputFileError: the folder is missing, is not a folder, or holds no such file
                (``no NIfTI files (.nii, .nii.gz) found``).
        """
        directory = check_directory(directory)
        files = sorted(p for p in directory.iterdir() if self.matches(p))
        if not files:
            raise InputFileError(directory, f"no {self.describe()} found")
        return files

    def describe(self) -> str:
        """``name (ext, ext, ...)``, as messages show the kind."""
        return f"{self.name} ({', '.join(self.extensions)})"
