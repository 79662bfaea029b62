"""The ``dicom`` dataset: every CT and MR series under a folder, with optional label maps.

Layout: ``--path DIR`` is a folder, possibly nested, possibly holding several
series (a hospital export). Series are found, sorted and checked as described in
:mod:`~ssmtl.plugins.datasets.dicom_series`; ``cache build`` lists a refused series
(missing slices, inconsistent orientation...) by folder and SeriesInstanceUID.

Labels are segmentation maps (NIfTI, NRRD or MetaImage) on the series' grid,
paired in one of three ways:

* ``labels: FILE`` with a folder holding a single series;
* ``labels: DIR``: a label pairs with the series whose folder name, series name
  (``ssmtl`` prints it, e.g. ``patient7/CT_chest``) or SeriesInstanceUID equals its
  file name, with or without a label suffix (``_seg``, ``_label``, ...);
* ``label_map: {series name or SeriesInstanceUID: file}``.

"Same grid" is checked after both are reoriented to canonical RAS: a label
exported by dcm2niix (often flipped relative to the DICOM row order) pairs fine.

Subjects are the ``PatientID`` (series of one patient stay in one split) unless
``subject_from: series``. Neither enters the cache: DICOM items declare
``identifying_names``, so the cache stores the pseudonym of each subject (``subject-007``)
as its subject and names its volumes after it (``subject-007``, ``subject-007-v2``); the
PatientID and the series name stay only in the volume's local ``identity`` attribute
(:mod:`ssmtl.data.pseudonyms`, docs/datasets.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field

from ssmtl.api import (
    ConfigError,
    DatasetSpec,
    hookimpl,
    ImageLabelItem,
    InputFileError,
    label_key,
    LabeledDatasetConfig,
    VolumeItem,
    VolumeSource,
)

from ssmtl.plugins.datasets.dicom_series import DicomSeries, read_series, scan_dicom_folder
from ssmtl.plugins.datasets.volume_files import (
    DICOM_MODALITIES,
    holds_dicom,
    LABEL_MAP_FILES,
    read_label,
    scan_item,
    volume_stem,
)


class DicomConfig(LabeledDatasetConfig):
    """Options of the ``dicom`` dataset."""

    name: Literal["dicom"] = Field("dicom", description="Dataset plugin name.")
    path: Path | None = Field(
        None, description="Folder of DICOM files, possibly nested, possibly holding several series. Required."
    )
    labels: Path | None = Field(
        None,
        description=(
            "A label map (NIfTI, NRRD, MetaImage) for a folder holding one series, or a folder of label maps "
            "named after their series (folder name, series name or SeriesInstanceUID, with or without a "
            "label suffix such as _seg)."
        ),
    )
    label_map: dict[str, Path] | None = Field(
        None,
        description=(
            "Series -> label map, keyed by series name or SeriesInstanceUID; relative paths are relative "
            "to `path`."
        ),
    )
    modality: Literal["ct", "mr"] | None = Field(
        None, description="Keep only the series of this modality. None: every CT and MR series."
    )
    subject_from: Literal["patient_id", "series"] = Field(
        "patient_id",
        description=(
            "Subject of a series: its PatientID (falling back to the series name when empty), so that series "
            "of one patient share a split; or the series name. Either is pseudonymised as it enters the "
            "cache (subject-007); the real name is kept only in the volume's local identity attribute."
        ),
    )


@dataclass(kw_only=True)
class DicomItem(ImageLabelItem):
    """One DICOM series (``image_path`` is its folder), optionally with its label map; pixels load lazily."""

    series: DicomSeries
    identifying_names = True  # PatientIDs and the folder names of hospital exports: pseudonymised in the cache

    def read_image(self):
        array, spacing, affine, geometry = read_series(self.series)
        return array, spacing, affine, DICOM_MODALITIES[self.series.modality], geometry

    read_label = staticmethod(read_label)


# -- label pairing --------------------------------------------------------------------


def _series_keys(series: DicomSeries) -> set[str]:
    keys = {series.name.lower(), series.name.replace("/", "_").lower(), series.folder.name.lower()}
    return keys | ({series.uid.lower()} if series.uid else set())


def _label_keys(path: Path) -> set[str]:
    """The label's stem, with and without a label suffix (``p7_seg`` answers to ``p7_seg`` and ``p7``)."""
    stem = volume_stem(path)
    return {stem.lower(), label_key(stem) or stem.lower()}


def _labels_from_folder(folder: Path, series: list[DicomSeries]) -> dict[str, Path]:
    files = LABEL_MAP_FILES.list_in(folder)
    paired: dict[str, Path] = {}
    for s in series:
        matches = [f for f in files if _label_keys(f) & _series_keys(s)]
        if len(matches) > 1:
            raise InputFileError(folder, f"ambiguous label maps for {s.describe()}: {', '.join(m.name for m in matches)}")
        if matches:
            paired[s.name] = matches[0]
    if not paired:
        raise InputFileError(
            folder,
            f"no label map matches any of the {len(series)} series; name label files after the series, "
            f"e.g. {series[0].name.replace('/', '_')}_seg.nii.gz, or use label_map",
        )
    return paired


def _labels_from_map(config: DicomConfig, series: list[DicomSeries]) -> dict[str, Path]:
    by_key = {}
    for s in series:
        by_key[s.name] = s
        if s.uid:
            by_key[s.uid] = s
    paired: dict[str, Path] = {}
    for key, path in (config.label_map or {}).items():
        if key not in by_key:
            names = ", ".join(s.name for s in series)
            raise ConfigError(f"label_map key {key!r} matches no series; the series are: {names}",
                              rows=[(f"label_map.{key}", "no such series")])
        paired[by_key[key].name] = path if path.is_absolute() else config.path / path
    return paired


def pair_labels(config: DicomConfig, series: list[DicomSeries]) -> dict[str, Path]:
    """Series name -> label map, by ``label_map``, a single ``labels`` file, or a ``labels`` folder."""
    paired = _labels_from_map(config, series)
    if config.labels is None:
        return paired
    if config.labels.is_dir():
        return {**_labels_from_folder(config.labels, series), **paired}
    if not config.labels.exists():
        raise InputFileError(config.labels, "label file or folder not found")
    if len(series) != 1:
        names = ", ".join(s.name for s in series)
        raise InputFileError(
            config.labels,
            f"a single label file pairs with a folder holding one series, but {config.path} holds "
            f"{len(series)}: {names}; use a labels folder or label_map",
        )
    return {series[0].name: config.labels, **paired}


# -- source ---------------------------------------------------------------------------


def _subject(series: DicomSeries, subject_from: str) -> str:
    if subject_from == "patient_id" and series.patient_id:
        return series.patient_id
    return series.name


def build_source(config: DicomConfig) -> VolumeSource:
    """Scan headers, pick the CT/MR series, pair labels. Pixel data load lazily."""
    if config.path is None:
        raise ConfigError("the dicom dataset needs a folder of DICOM files (--path DIR)", rows=[("path", "required")])
    scan = scan_dicom_folder(config.path)
    wanted = {config.modality} if config.modality else {"ct", "mr"}
    series = [s for s in scan.series if DICOM_MODALITIES.get(s.modality) in wanted]
    others = sorted({s.modality or "?" for s in scan.series} - {m for m, v in DICOM_MODALITIES.items() if v in wanted})
    if not series:
        # say what was found instead: set-aside series first (a one-slice series is no volume)
        why = [f"set aside: {', '.join(scan.ignored_series)}; a volume needs a series of 2 or more slices"] if scan.ignored_series else []
        why += [f"series of other modalities: {', '.join(others)}"] if others else []
        why += [f"{scan.ignored_files} file(s) are not DICOM images"] if scan.ignored_files or not why else []
        raise InputFileError(
            config.path,
            f"no {' or '.join(sorted(m.upper() for m in wanted))} DICOM series found ({'; '.join(why)})",
        )
    labels = pair_labels(config, series)
    label_values, class_names = config.label_mapping(list(labels.values()), read_label)
    items: list[VolumeItem] = [
        DicomItem(
            subject=_subject(s, config.subject_from),
            source=str(s.folder),
            image_path=s.folder,
            series=s,
            label_path=labels.get(s.name),
            label_values=label_values,
            volume_id=s.name,
        )
        for s in series
    ]
    notes = []
    if others:
        notes.append(f"ignored modalities: {', '.join(others)}")
    if scan.ignored_series:
        notes.append(f"ignored series: {', '.join(scan.ignored_series)}")
    refused = sum(s.problem is not None for s in series)
    if refused:
        notes.append(f"{refused} series with geometry problems")
    description = f"{len(items)} DICOM series from {config.path} ({len(labels)} labeled)"
    return VolumeSource(items=items, class_names=class_names,
                        description=description + (f"; {'; '.join(notes)}" if notes else ""))


def open_scan(path: Path) -> ImageLabelItem | None:
    """A folder holding one DICOM series, for ``ssmtl predict``; None for anything else.

    The folder is read as one series when its pixels load: a folder with several
    series is refused then, naming them.
    """
    return scan_item(path) if Path(path).is_dir() and holds_dicom(Path(path)) else None


@hookimpl
def ssmtl_register_datasets():
    return [
        DatasetSpec(
            name="dicom",
            config_model=DicomConfig,
            factory=build_source,
            description="DICOM CT/MR series from a (nested) folder, sorted along the slice normal, with optional label maps",
            open_scan=open_scan,
        )
    ]
