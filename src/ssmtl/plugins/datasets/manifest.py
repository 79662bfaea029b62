"""The ``manifest`` dataset: volumes listed in a CSV or JSON file, any format, any mix.

Columns (CSV header, or keys of JSON objects)::

    image      required   a .nii/.nii.gz, .nrrd/.nhdr/.mha/.mhd file, or a folder holding one DICOM series
    label      optional   a label map (NIfTI, NRRD, MetaImage) on the image's grid; empty: unlabeled
    subject    optional   subject id; volumes of one subject always share a split (default: the image
                          name; images of the same name in different folders are different subjects,
                          named after their folders: p001/image.nii.gz -> p001_image)
    modality   optional   ct or mr (default: the DICOM header, else detected from the intensities)
    split      optional   train, val or test; stored in the cache as the subject-level split

Relative paths are relative to the manifest's folder. JSON is a list of such
objects, or ``{"volumes": [...]}``. CSV may be comma, semicolon or tab separated.

CT and MR volumes can share one cache: the modality is kept per volume, so
CT-only or MR-only subsets can be selected later. When any row has a split, the
split column becomes the cache's stored split (subjects without one go to train;
val and test subjects need a label, since only labeled subjects can be evaluated);
otherwise ``--split-seed`` draws one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from ssmtl.api import (
    ConfigError,
    DatasetSpec,
    file_kind,
    hookimpl,
    InputFileError,
    LabeledDatasetConfig,
    MANIFEST_LIMITS,
    Modality,
    parse_text,
    read_csv,
    read_text,
    SPLITS,
    subject_name,
    VolumeItem,
    VolumeSource,
)

from ssmtl.plugins.datasets.volume_files import read_label, volume_stem, VolumeFileItem

COLUMNS = ("image", "label", "subject", "modality", "split")
_MODALITIES: dict[str, Modality] = {"ct": "ct", "mr": "mr", "mri": "mr"}


class ManifestConfig(LabeledDatasetConfig):
    """Options of the ``manifest`` dataset."""

    name: Literal["manifest"] = Field("manifest", description="Dataset plugin name.")
    path: Path | None = Field(
        None, description="CSV or JSON manifest with columns image, label, subject, modality, split. Required."
    )


@dataclass
class ManifestRow:
    """One validated manifest entry; ``where`` names it in messages (``line 3``, ``entry 2``)."""

    where: str
    image: Path
    label: Path | None
    subject: str | None  # None until default_subjects names it (the subject column was empty)
    modality: Modality | None
    split: str | None


@dataclass
class ManifestSource(VolumeSource):
    """A :class:`VolumeSource` with the manifest's subject -> split column (empty: none given)."""

    split: dict[str, str] = field(default_factory=dict)


# -- reading --------------------------------------------------------------------------


def _read_csv(path: Path, text: str) -> list[tuple[str, dict[str, Any]]]:
    header, rows = read_csv(text, path)
    if header is None:
        raise InputFileError(path, "the manifest is empty (expected a header line: image,label,subject,modality,split)")
    return rows


def _read_json(path: Path, text: str) -> list[tuple[str, dict[str, Any]]]:
    data = parse_text(text, "json", path, MANIFEST_LIMITS)
    if isinstance(data, dict) and "volumes" in data:
        data = data["volumes"]
    if not isinstance(data, list) or not all(isinstance(entry, dict) for entry in data):
        raise InputFileError(path, 'expected a JSON list of objects, or {"volumes": [...]}')
    return [(f"entry {i}", entry) for i, entry in enumerate(data, start=1)]


def read_manifest(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(where, raw row) pairs from a CSV or JSON manifest (by extension; ``.json`` is JSON), read
    within the toolkit's bounds (:data:`~ssmtl.api.MANIFEST_LIMITS`: size, nesting, digits,
    duplicate keys; a NUL byte or an over-long CSV field is one line naming the row)."""
    kind = file_kind(path)
    if kind in ("missing", "broken link"):
        raise InputFileError(path, "manifest not found")
    if kind == "directory":
        raise InputFileError(path, "the manifest must be a CSV or JSON file")
    text = read_text(path, MANIFEST_LIMITS)  # a FIFO, device, socket or link loop: one line
    return _read_json(path, text) if path.suffix.lower() == ".json" else _read_csv(path, text)


# -- validation -----------------------------------------------------------------------


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def parse_row(manifest: Path, where: str, raw: dict[str, Any]) -> ManifestRow:
    """Validate one raw row; paths are resolved against the manifest's folder."""
    row = {(_text(k)).lower(): _text(v) for k, v in raw.items() if k is not None}
    unknown = sorted(k for k in row if k not in COLUMNS and k)
    if unknown:
        raise InputFileError(manifest, f"{where}: unknown column(s) {', '.join(unknown)}; expected {', '.join(COLUMNS)}")
    if not row.get("image"):
        raise InputFileError(manifest, f"{where}: the image column is empty")
    base = manifest.parent
    image = base / row["image"]
    label = base / row["label"] if row.get("label") else None
    modality_text = row.get("modality", "").lower()
    if modality_text and modality_text not in _MODALITIES:
        raise InputFileError(manifest, f"{where}: modality {row['modality']!r}; expected ct or mr (or empty)")
    split = row.get("split", "").lower() or None
    if split is not None and split not in SPLITS:
        raise InputFileError(manifest, f"{where}: split {row['split']!r}; expected {', '.join(SPLITS)} (or empty)")
    return ManifestRow(where, image, label, row.get("subject") or None, _MODALITIES.get(modality_text), split)


def default_subjects(rows: list[ManifestRow]) -> None:
    """Name the subject of every row without one after its image; same names in different folders differ.

    Datasets often store every patient as ``p001/image.nii.gz``, ``p002/image.nii.gz``;
    the image name alone would make them one subject, and the subject-level split would
    put the whole dataset on one side. A default subject shared by several images gets
    as many parent folder names as it takes to tell them apart (``p001_image``). Rows
    with a subject column keep theirs: that column is how a patient's scans are grouped.
    """
    groups: dict[str, list[ManifestRow]] = {}
    for row in rows:
        if row.subject is None:
            groups.setdefault(subject_name(volume_stem(row.image)), []).append(row)
    for name, group in groups.items():
        folders = [row.image.parent.relative_to(row.image.anchor).parts for row in group]
        # the fewest trailing folders that tell the group apart (0 for one image; none do: one subject)
        depth = next((d for d in range(max(map(len, folders)) + 1)
                      if len({f[max(len(f) - d, 0):] for f in folders}) == len(folders)), 0)
        for row, folder in zip(group, folders):
            row.subject = "_".join((*folder[max(len(folder) - depth, 0):], name))


def subject_splits(manifest: Path, rows: list[ManifestRow]) -> dict[str, str]:
    """subject -> split from the split column; rows of one subject must agree, val/test need a label."""
    splits: dict[str, str] = {}
    for row in rows:
        if row.split is None:
            continue
        if splits.setdefault(row.subject, row.split) != row.split:
            raise InputFileError(
                manifest, f"{row.where}: subject {row.subject!r} is in split {row.split} here but "
                f"{splits[row.subject]} in an earlier row; the volumes of a subject share one split"
            )
    labeled = {row.subject for row in rows if row.label is not None}
    for subject, split in sorted(splits.items()):
        if split != "train" and subject not in labeled:
            raise InputFileError(
                manifest, f"subject {subject!r} is in split {split} but has no label; only labeled subjects can be evaluated"
            )
    return splits


def _volume_ids(rows: list[ManifestRow]) -> list[str]:
    """The subject for a one-volume subject, else subject_imagename."""
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.subject] = counts.get(row.subject, 0) + 1
    return [row.subject if counts[row.subject] == 1 else f"{row.subject}_{volume_stem(row.image)}" for row in rows]


def build_source(config: ManifestConfig) -> ManifestSource:
    """Read and validate the manifest. Volumes load lazily; only labels are read here (for label values)."""
    if config.path is None:
        raise ConfigError("the manifest dataset needs a CSV or JSON file (--path FILE)", rows=[("path", "required")])
    manifest = config.path
    rows = [parse_row(manifest, where, raw) for where, raw in read_manifest(manifest)]
    if not rows:
        raise InputFileError(manifest, "the manifest lists no volumes")
    seen: dict[Path, str] = {}
    for row in rows:
        if row.image in seen:
            raise InputFileError(manifest, f"{row.where}: image {row.image} is already listed ({seen[row.image]})")
        seen[row.image] = row.where
    default_subjects(rows)
    split = subject_splits(manifest, rows)
    label_paths = [row.label for row in rows if row.label is not None]
    label_values, class_names = config.label_mapping(label_paths, read_label)
    items: list[VolumeItem] = [
        VolumeFileItem(
            subject=row.subject,
            source=str(row.image),
            image_path=row.image,
            label_path=row.label,
            modality=row.modality,
            label_values=label_values,
            volume_id=volume_id,
        )
        for row, volume_id in zip(rows, _volume_ids(rows))
    ]
    modalities = sorted({row.modality or "auto" for row in rows})
    description = (f"{len(items)} volumes listed in {manifest} ({len(label_paths)} labeled; modality "
                   f"{', '.join(modalities)}{'; split from the manifest' if split else ''})")
    return ManifestSource(items=items, class_names=class_names, description=description, split=split)


@hookimpl
def ssmtl_register_datasets():
    return [
        DatasetSpec(
            name="manifest",
            config_model=ManifestConfig,
            factory=build_source,
            description="Volumes listed in a CSV/JSON manifest (image, label, subject, modality, split); any format, CT and MR mixed",
        )
    ]
