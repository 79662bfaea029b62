"""Where the voxels of a NRRD or MetaImage file live, read from its header before SimpleITK reads them.

A MetaImage header (``.mhd``) or a detached NRRD header (``.nhdr``) names the file(s) that
hold its voxels (``ElementDataFile = a.raw``, ``data file: a.raw``); ``.mha`` and ``.nrrd``
usually hold them after the header. SimpleITK opens those files as they are named, so a
data file that is a FIFO made ``ssmtl predict`` wait forever, and a missing one was reported
as "No such file or directory" even when the header claimed a gigabyte. :func:`data_files`
tells the reader which files to check (regular files only) and, for one uncompressed data
file, where the voxels start, so the claimed size is checked against that file.

Only the fields that locate the data are read; everything else is left to SimpleITK. A
header this module does not understand gives the header itself with an unknown offset
(only the voxel cap then applies).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ssmtl.api import InputFileError

#: bytes of header read to find the data fields (headers are a few hundred bytes)
HEADER_BYTES = 1 << 16
#: data files one header may name (LIST or a %d pattern); more is refused
MAX_DATA_FILES = 100_000
_PATTERN = re.compile(r"^(?P<pattern>\S*%\S*)\s+(?P<first>-?\d+)\s+(?P<last>-?\d+)\s+(?P<step>-?\d+)(\s+\d+)?$")


@dataclass(frozen=True)
class DataFiles:
    """The files holding a header's voxels, and where they start in a single raw one.

    Attributes:
        files: the data files (the header file itself when the voxels follow its header).
        offset: bytes before the voxels when there is one uncompressed file; None when unknown
            (compressed or text encodings, several files, a header size counted from the end).
    """

    files: tuple[Path, ...]
    offset: int | None


def _head(path: Path) -> bytes:
    with open(path, "rb") as f:  # the caller checked that path is a regular file
        return f.read(HEADER_BYTES)


def _pattern_files(folder: Path, value: str, where: Path) -> tuple[Path, ...] | None:
    match = _PATTERN.match(value)
    if match is None:
        return None
    first, last, step = (int(match.group(k)) for k in ("first", "last", "step"))
    if step == 0 or (last - first) // step + 1 > MAX_DATA_FILES:
        raise InputFileError(where, f"the data file pattern {value!r} names more than {MAX_DATA_FILES:,} files")
    try:
        return tuple(folder / (match.group("pattern") % i) for i in range(first, last + (1 if step > 0 else -1), step))
    except (TypeError, ValueError):
        raise InputFileError(where, f"the data file pattern {value!r} is not a %d pattern") from None


def _listed(folder: Path, lines: list[str], where: Path) -> tuple[Path, ...]:
    names = [line.strip() for line in lines if line.strip()]
    if len(names) > MAX_DATA_FILES:
        raise InputFileError(where, f"the header lists more than {MAX_DATA_FILES:,} data files")
    return tuple(folder / name for name in names)


def _metaimage(path: Path, head: bytes) -> DataFiles:
    lines = head.split(b"\n")
    fields: dict[str, str] = {}
    consumed = 0
    for number, raw in enumerate(lines):
        consumed += len(raw) + 1
        key, sep, value = raw.decode("latin-1").partition("=")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        fields[key] = value
        if key != "ElementDataFile":
            continue
        compressed = fields.get("CompressedData", "False").lower() == "true"
        size_field = fields.get("HeaderSize", "0")
        header_size = int(size_field) if re.fullmatch(r"-?\d{1,18}", size_field) else None
        if value.upper() == "LOCAL":
            return DataFiles((path,), None if compressed or consumed > len(head) else consumed)
        if value.upper().startswith("LIST"):
            rest = [line.decode("latin-1") for line in lines[number + 1:]]
            return DataFiles(_listed(path.parent, rest, path), None)
        pattern = _pattern_files(path.parent, value, path)
        if pattern is not None:
            return DataFiles(pattern, None)
        offset = None if compressed or header_size is None or header_size < 0 else header_size
        return DataFiles((path.parent / value,), offset)
    return DataFiles((path,), None)


def _nrrd(path: Path, head: bytes) -> DataFiles:
    if not head.startswith(b"NRRD"):
        return DataFiles((path,), None)
    text = head.decode("latin-1")
    end = text.find("\n\n")
    header = text[: end if end >= 0 else len(text)].split("\n")
    fields: dict[str, str] = {}
    listed: list[str] | None = None
    for line in header[1:]:
        if listed is not None:
            listed.append(line)
            continue
        if line.startswith("#") or ":" not in line:
            continue
        key, _, value = line.partition(":")
        key, value = key.strip().lower(), value.lstrip("=").strip()
        fields[key] = value
        if key in ("data file", "datafile") and value.upper().startswith("LIST"):
            listed = []
    raw = fields.get("encoding", "raw").lower() == "raw" and fields.get("line skip", "0").strip() in ("", "0")
    skip = fields.get("byte skip", "0").strip()
    skip_bytes = int(skip) if re.fullmatch(r"\d+", skip) else None
    data = fields.get("data file") or fields.get("datafile")
    if listed is not None:
        return DataFiles(_listed(path.parent, listed, path), None)
    if data is None:  # attached: the voxels follow the blank line that ends the header
        start = end + 2 if end >= 0 else None
        return DataFiles((path,), start + skip_bytes if raw and start is not None and skip_bytes is not None else None)
    pattern = _pattern_files(path.parent, data, path)
    if pattern is not None:
        return DataFiles(pattern, None)
    return DataFiles((path.parent / data,), skip_bytes if raw else None)


def data_files(path: Path, nrrd: bool) -> DataFiles:
    """The files holding the voxels of the NRRD (``nrrd=True``) or MetaImage header at ``path``."""
    head = _head(path)
    return _nrrd(path, head) if nrrd else _metaimage(path, head)
