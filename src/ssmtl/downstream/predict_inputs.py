"""What ``ssmtl predict --input`` accepts, turned into one unloaded volume item per scan.

Scans are read by the dataset plugins that can open single scans (a
:class:`~ssmtl.api.DatasetSpec` with ``open_scan``; built-in: NIfTI files, NRRD and
MetaImage files, DICOM series folders). Which plugin reads a path:

* ``--dataset NAME``: that plugin, for every input;
* otherwise the plugin that built the run's training cache is asked first (a scan is
  read as the training volumes were), then every other plugin in registry order; the
  first that claims the path (by its extension, or a DICOM header in a folder) reads it.

An input is

* a scan file (``.nii``, ``.nii.gz``, ``.nrrd``, ``.mha``, ... whatever a plugin claims);
* a folder: the scans directly in it (files and series sub-folders a plugin claims; other
  files are ignored), or, when it holds none, the folder itself as one scan (a DICOM series);
* a manifest, ``.csv`` or ``.json`` (the ``manifest`` dataset's layout): the ``image``
  column lists scans, relative to the manifest's folder; a ``modality`` column sets the
  modality of its row; other columns are ignored.

A path that cannot be listed (missing, unsupported, an empty folder, a bad manifest row)
becomes a :class:`ScanInput` with an ``error`` instead of stopping the other scans.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ssmtl.api.datasets.files import file_kind
from ssmtl.api.errors import InputFileError, SsmtlError
from ssmtl.api.structured import MANIFEST_LIMITS, parse_text, read_csv, read_text
from ssmtl.api.volumes import VolumeItem

MANIFEST_SUFFIXES = (".csv", ".json")
_MODALITIES = {"ct": "ct", "mr": "mr", "mri": "mr"}

Opener = tuple[str, Callable[[Path], VolumeItem | None]]


@dataclass
class ScanInput:
    """One scan to predict: its path and the item that reads it, or why it cannot be read."""

    path: Path
    item: VolumeItem | None = None
    reader: str | None = None
    error: str | None = None


def scan_openers(registry, explicit: str | None = None, preferred: str | None = None) -> list[Opener]:
    """(dataset name, open_scan) in the order they are asked; ``explicit`` alone when given."""
    if explicit is not None:
        spec = registry.dataset(explicit)
        if spec.open_scan is None:
            readers = ", ".join(name for name, s in registry.datasets.items() if s.open_scan) or "none"
            raise SsmtlError(f"--dataset {explicit}: this dataset reads no single scans; datasets that do: {readers}")
        return [(explicit, spec.open_scan)]
    names = sorted(registry.datasets, key=lambda name: name != preferred)  # stable: registry order otherwise
    openers = [(name, registry.datasets[name].open_scan) for name in names if registry.datasets[name].open_scan]
    if not openers:
        raise SsmtlError("no installed dataset plugin reads single scans (none provides open_scan)")
    return openers


def _open(path: Path, openers: list[Opener]) -> ScanInput | None:
    for name, opener in openers:
        try:
            item = opener(path)
        except InputFileError as exc:
            return ScanInput(path, error=exc.reason, reader=name)
        if item is not None:
            return ScanInput(path, item=item, reader=name)
    return None


def _manifest_rows(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """The rows of a CSV or JSON manifest, read within :data:`~ssmtl.api.structured.MANIFEST_LIMITS`
    (size, nesting, digits, duplicate keys, NUL bytes, field length): one line naming the file."""
    text = read_text(path, MANIFEST_LIMITS)
    if path.suffix.lower() == ".json":
        data = parse_text(text, "json", path, MANIFEST_LIMITS)
        data = data.get("volumes") if isinstance(data, dict) else data
        if not isinstance(data, list):
            raise InputFileError(path, 'expected a JSON list of {"image": ...} objects, or {"volumes": [...]}')
        return [(f"entry {i}", row if isinstance(row, dict) else {"image": row}) for i, row in enumerate(data, 1)]
    header, rows = read_csv(text, path)
    if header is None or "image" not in [str(f).strip().lower() for f in header]:
        raise InputFileError(path, "the manifest needs an `image` column")
    return [(where, {str(k).strip().lower(): v for k, v in row.items() if k}) for where, row in rows]


def _with_modality(scan: ScanInput, modality: str | None) -> ScanInput:
    if scan.item is not None and modality is not None and hasattr(scan.item, "modality"):
        scan.item = dataclasses.replace(scan.item, modality=modality)
    return scan


def _from_manifest(path: Path, openers: list[Opener]) -> list[ScanInput]:
    scans = []
    for where, row in _manifest_rows(path):
        image = str(row.get("image") or "").strip()
        modality_text = str(row.get("modality") or "").strip().lower()
        if not image:
            scans.append(ScanInput(path, error=f"{where}: the image column is empty"))
        elif modality_text and modality_text not in _MODALITIES:
            scans.append(ScanInput(path, error=f"{where}: modality {modality_text!r}; expected ct or mr"))
        else:
            scans += [_with_modality(s, _MODALITIES.get(modality_text)) for s in _from_path(path.parent / image, openers)]
    return scans


def _from_path(path: Path, openers: list[Opener]) -> list[ScanInput]:
    kind = file_kind(path)  # stat only: a FIFO is never opened here
    if kind in ("missing", "broken link", "link loop"):
        errors = {"missing": "file or folder not found", "broken link": "broken symbolic link",
                  "link loop": "is a symbolic link loop (the link points, through other links, back at itself)"}
        return [ScanInput(path, error=errors[kind])]
    if path.is_dir():
        children = [s for child in sorted(path.iterdir()) if not child.name.startswith(".")
                    for s in [_open(child, openers)] if s is not None]
        if children:
            return children
        return [_open(path, openers) or ScanInput(path, error="no scans found in this folder")]
    return [_open(path, openers) or ScanInput(path, error="unsupported file type; the readers are: "
                                                           + ", ".join(name for name, _ in openers))]


def list_scans(inputs: list[Path], openers: list[Opener], modality: str | None = None) -> list[ScanInput]:
    """Every scan the inputs name, in order; ``modality`` (``--modality``) overrides every scan's."""
    scans: list[ScanInput] = []
    for path in map(Path, inputs):
        if path.is_file() and path.suffix.lower() in MANIFEST_SUFFIXES:
            try:
                scans += _from_manifest(path, openers)
            except InputFileError as exc:
                scans.append(ScanInput(path, error=exc.reason))
        else:
            scans += _from_path(path, openers)
    return [_with_modality(s, modality) for s in scans]
