"""DICOM series: find them in a folder tree, check their geometry, read them as canonical volumes.

Scanning reads headers only (``stop_before_pixels``); pixel data are decoded in
:func:`read_series`, i.e. in the worker that loads the volume.

Rules:

* Files are grouped by ``SeriesInstanceUID``, wherever they sit under the root
  (files whose UID was anonymised away are grouped by folder, series number,
  description and modality).
  Files that are not DICOM (no ``DICM`` preamble) are ignored, as are DICOM
  objects without an image grid (DICOMDIR, structured reports, RT structure sets)
  and localizer/scout series (``ImageType`` contains ``LOCALIZER``), which are
  never volumes.
* Slices are sorted by their position along the slice normal
  ``n = row_direction x column_direction`` (``n . ImagePositionPatient``), never by
  file name or instance number.
* A series is refused, with a message naming it, when its slices have mixed sizes,
  inconsistent ``ImageOrientationPatient`` or ``PixelSpacing``, share a position
  (several echoes or time points in one series), are not evenly spaced (a missing
  slice shows as a gap of about twice the step), or are not stacked along their
  normal (gantry tilt). The check is recorded in :attr:`DicomSeries.problem` and
  raised when the series is loaded, so ``--skip-bad`` can skip just that series.
* Voxel values go through the modality LUT (``RescaleSlope`` / ``RescaleIntercept``,
  per slice), which gives Hounsfield units for CT.
* Geometry: voxel (i, j, k) = (column, row, slice) sits at
  ``IPP_0 + i * dc * row_dir + j * dr * col_dir + k * step * n`` in LPS, where
  ``PixelSpacing = (dr, dc)`` (row spacing first) and ``step`` is the regular
  distance between slice positions (the checks and the affine:
  :mod:`~ssmtl.plugins.datasets.dicom_geometry`). The LPS affine becomes RAS and the
  array is reoriented with nibabel (:func:`ssmtl.api.lps_to_canonical`), so the
  result matches what the ``nifti`` dataset gives for a NIfTI export of the series.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ssmtl.api import check_claimed_size, check_directory, InputFileError, LPS_TO_RAS, lps_to_canonical, SourceGeometry, walk_files

from ssmtl.plugins.datasets.dicom_geometry import series_geometry, SeriesRefused, SliceHeader

# Files without the DICM preamble are only tried (forced) when their suffix says DICOM.
_DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")


@dataclass
class DicomSeries:
    """One series: its files in slice order and its geometry (or why it cannot be a volume).

    Attributes:
        uid: SeriesInstanceUID ("" when the files have none).
        name: a readable id: the folder holding the files, relative to the scanned
            root, plus the series number when that folder holds several series.
        folder: the folder holding the files (their common parent).
        files: the image files, sorted along the slice normal when the geometry is valid.
        modality: the DICOM ``Modality`` tag, e.g. ``"CT"``, ``"MR"``.
        patient_id: ``PatientID`` ("" when absent or anonymised away).
        description: ``SeriesDescription``.
        affine_lps: 4x4 voxel (column, row, slice) -> LPS world matrix, or None.
        shape: (columns, rows, slices).
        problem: why the series cannot be read as a volume, or None.
    """

    uid: str
    name: str
    folder: Path
    files: tuple[Path, ...]
    modality: str
    patient_id: str = ""
    description: str = ""
    number: str = ""
    affine_lps: np.ndarray | None = None
    shape: tuple[int, int, int] = (0, 0, 0)
    problem: str | None = None

    def describe(self) -> str:
        """How error messages name the series."""
        desc = f", {self.description!r}" if self.description else ""
        uid = f"SeriesInstanceUID {self.uid}" if self.uid else "no SeriesInstanceUID"
        return f"series {self.name}{desc} ({uid})"


@dataclass
class DicomScan:
    """The series found under a root, and how many files were set aside."""

    series: list[DicomSeries]
    ignored_files: int = 0
    ignored_series: list[str] = field(default_factory=list)


# -- reading headers ------------------------------------------------------------------


def _floats(value, n: int) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        values = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return values if len(values) == n and all(np.isfinite(values)) else None


def _read_header(path: Path):
    """The header of a DICOM file, or None for a file that is not DICOM."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about every non-conformant value
        try:
            return pydicom.dcmread(str(path), stop_before_pixels=True)
        except InvalidDicomError:
            if path.suffix.lower() not in _DICOM_SUFFIXES:
                return None
            try:
                return pydicom.dcmread(str(path), stop_before_pixels=True, force=True)
            except Exception as exc:
                raise InputFileError(path, f"cannot read DICOM header ({type(exc).__name__}: {exc})") from exc
        except MemoryError:
            raise
        except Exception as exc:  # truncated headers raise assorted errors
            raise InputFileError(path, f"cannot read DICOM header ({type(exc).__name__}: {exc})") from exc


def _int(value, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _slice_header(path: Path, ds) -> SliceHeader:
    return SliceHeader(
        path=path,
        position=_floats(ds.get("ImagePositionPatient"), 3),
        orientation=_floats(ds.get("ImageOrientationPatient"), 6),
        pixel_spacing=_floats(ds.get("PixelSpacing"), 2),
        rows=_int(ds.get("Rows"), 0),
        columns=_int(ds.get("Columns"), 0),
        frames=_int(ds.get("NumberOfFrames"), 1),
        samples=_int(ds.get("SamplesPerPixel"), 1),
    )


def _is_localizer(ds) -> bool:
    image_type = ds.get("ImageType") or []
    if isinstance(image_type, str):
        image_type = image_type.split("\\")
    return any(str(t).upper() == "LOCALIZER" for t in image_type)


# -- scanning -------------------------------------------------------------------------


@dataclass
class _Group:
    uid: str
    modality: str
    patient_id: str
    description: str
    number: str
    localizer: bool
    headers: list[SliceHeader] = field(default_factory=list)


def _anonymous_series_key(path: Path, ds) -> str:
    """Grouping key of a file whose SeriesInstanceUID was removed (over-eager anonymisation):
    its folder plus the series number, description and modality, as a viewer would group it."""
    parts = (str(path.parent), *(str(ds.get(tag, "") or "") for tag in ("SeriesNumber", "SeriesDescription", "Modality")))
    return "\0".join(parts)


def _series_name(root: Path, folder: Path) -> str:
    relative = folder.relative_to(root)
    return root.name if str(relative) == "." else relative.as_posix()


def scan_dicom_folder(root: Path) -> DicomScan:
    """Find and check every series under ``root`` (headers only).

    Raises:
        InputFileError: ``root`` is missing, or a DICOM file's header cannot be read.
    """
    root = check_directory(Path(root), expected="expected a folder of DICOM files")
    groups: dict[str, _Group] = {}
    ignored = 0
    for path in walk_files(root):
        ds = _read_header(path)
        if ds is None or not ds.get("Rows") or not ds.get("Columns"):
            ignored += 1  # not DICOM, or a DICOM object without an image grid
            continue
        uid = str(ds.get("SeriesInstanceUID", "") or "").strip()
        key = uid or _anonymous_series_key(path, ds)
        group = groups.get(key)
        if group is None:
            group = groups[key] = _Group(
                uid=uid,
                modality=str(ds.get("Modality", "")).strip().upper(),
                patient_id=str(ds.get("PatientID", "") or "").strip(),
                description=str(ds.get("SeriesDescription", "") or "").strip(),
                number=str(ds.get("SeriesNumber", "") or "").strip(),
                localizer=_is_localizer(ds),
            )
        group.headers.append(_slice_header(path, ds))
    return _to_series(root, list(groups.values()), ignored)


def _to_series(root: Path, groups: list[_Group], ignored: int) -> DicomScan:
    folders: dict[Path, int] = {}
    for group in groups:
        group_folder = Path(os.path.commonpath([h.path.parent for h in group.headers]))
        folders[group_folder] = folders.get(group_folder, 0) + 1
    scan = DicomScan(series=[], ignored_files=ignored)
    for group in groups:
        folder = Path(os.path.commonpath([h.path.parent for h in group.headers]))
        name = _series_name(root, folder)
        if folders[folder] > 1:
            name = f"{name}/{group.number or group.uid[-8:] or group.description}"
        if group.localizer or len(group.headers) < 2:
            why = "localizer" if group.localizer else "a single image"
            scan.ignored_series.append(f"{name} ({why})")
            continue
        series = DicomSeries(
            uid=group.uid, name=name, folder=folder, files=tuple(h.path for h in group.headers),
            modality=group.modality, patient_id=group.patient_id, description=group.description,
            number=group.number,
        )
        try:
            ordered, series.affine_lps, series.shape = series_geometry(group.headers)
            series.files = tuple(h.path for h in ordered)
        except SeriesRefused as why:
            series.problem = str(why)
        scan.series.append(series)
    scan.series.sort(key=lambda s: (s.name, s.uid))
    return scan


# -- reading pixels -------------------------------------------------------------------


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _read_slice(path: Path, rows: int, columns: int) -> np.ndarray:
    """One slice in modality units (e.g. HU), as float32 (rows, columns)."""
    import pydicom
    from pydicom.pixels import apply_modality_lut

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(str(path), force=path.suffix.lower() in _DICOM_SUFFIXES)
            pixels = ds.pixel_array
            values = apply_modality_lut(pixels, ds)
        except MemoryError:
            raise
        except Exception as exc:  # missing decoders, truncated pixel data, bad LUTs
            raise InputFileError(path, f"cannot decode DICOM pixel data ({_first_line(exc)})") from exc
    if values.shape != (rows, columns):
        raise InputFileError(path, f"pixel data has shape {values.shape}, the header says {rows}x{columns}")
    return np.asarray(values, dtype=np.float32)


def read_series(series: DicomSeries) -> tuple[np.ndarray, tuple[float, float, float], np.ndarray, SourceGeometry]:
    """Decode a checked series as canonical float32 (X, Y, Z); returns (array, spacing, RAS affine, the series' grid).

    The series' own grid is (columns, rows, slices in the order along the normal), in LPS.

    Raises:
        InputFileError: the series was refused at scan time, or a file cannot be decoded.
    """
    if series.problem is not None or series.affine_lps is None:
        raise InputFileError(series.folder, f"{series.describe()}: {series.problem}")
    columns, rows, depth = series.shape
    # the cap alone (before the allocation): each file's pixel data may be compressed; a slice
    # shorter than its Rows x Columns is refused by the decoder, file by file
    check_claimed_size(series.folder, series.shape, 4, compressed=True)
    volume = np.empty((columns, rows, depth), dtype=np.float32)
    for k, path in enumerate(series.files):
        volume[:, :, k] = _read_slice(path, rows, columns).T  # (row, column) -> (x=column, y=row)
    geometry = SourceGeometry(shape=series.shape, affine=LPS_TO_RAS @ series.affine_lps, format="dicom", convention="LPS")
    return (*lps_to_canonical(volume, series.affine_lps, series.folder), geometry)
