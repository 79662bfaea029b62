"""Image and label files in any supported format, behind one pair of readers.

=====================================  ==========================================
Path                                   Read by
=====================================  ==========================================
``*.nii``, ``*.nii.gz``                nibabel (:mod:`~ssmtl.plugins.datasets.nifti_io`)
``*.nrrd``, ``*.nhdr``, ``*.mha``,     SimpleITK (:mod:`~ssmtl.plugins.datasets.itk_io`)
``*.mhd``
a folder                               one DICOM series
                                       (:mod:`~ssmtl.plugins.datasets.dicom_series`)
=====================================  ==========================================

Every reader returns canonical RAS (x, y, z) arrays with their affine, so an
image and a label in different formats can still be checked for a common grid.
:class:`VolumeFileItem` is the lazily loaded item built on them; the ``itk``,
``dicom`` and ``manifest`` datasets share this module through its public names.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from ssmtl.api import (
    channel_cases,
    check_regular_file,
    file_kind,
    FileKind,
    ImageLabelItem,
    InputFileError,
    is_hidden,
    Modality,
    SourceGeometry,
    split_channel,
    walk_files,
)

from ssmtl.plugins.datasets import itk_io, nifti_io
from ssmtl.plugins.datasets.dicom_series import read_series, scan_dicom_folder

Format = Literal["nifti", "itk", "dicom"]
SUPPORTED = ".nii, .nii.gz, .nrrd, .nhdr, .mha, .mhd, or a folder holding one DICOM series"
#: Files of every supported format (a DICOM series is a folder, not a file).
VOLUME_FILES = FileKind("volume files", nifti_io.NIFTI_FILES.extensions + itk_io.ITK_FILES.extensions)
#: The same files, named as messages about a folder of label maps name them.
LABEL_MAP_FILES = FileKind("label maps", VOLUME_FILES.extensions)
# DICOM Modality tag -> ssmtl modality
DICOM_MODALITIES: dict[str, Modality] = {"CT": "ct", "MR": "mr"}


def volume_format(path: Path) -> Format:
    """Which reader handles ``path`` (by extension; a folder is a DICOM series)."""
    path = Path(path)
    kind: Format | None = None
    if nifti_io.NIFTI_FILES.has_extension(path):
        kind = "nifti"
    elif itk_io.ITK_FILES.has_extension(path):
        kind = "itk"
    if path.is_dir():
        if kind is not None:
            raise InputFileError(path, f"is a directory, not a {kind.upper()} file")
        return "dicom"
    if kind is not None:
        return kind
    if not path.exists() and not path.is_symlink():
        raise InputFileError(path, "file not found")
    raise InputFileError(path, f"unsupported file type; expected {SUPPORTED}")


def volume_stem(path: Path) -> str:
    """File name without its volume extension (a folder's name for DICOM)."""
    return VOLUME_FILES.stem(path)


def _existing(path: Path) -> Path:
    """``path`` if it is a regular file or a folder; else one line saying what it is (missing, a
    broken link, a link loop, a FIFO, a device, a socket), from ``stat``: nothing is opened."""
    kind = file_kind(path)
    if kind == "missing":
        raise InputFileError(path, "file not found")
    if kind != "directory":
        check_regular_file(path)
    return path


Image = tuple[np.ndarray, tuple[float, float, float], np.ndarray, Modality | None, SourceGeometry]


def read_dicom_image(folder: Path) -> Image:
    """The one image series in ``folder``: (array, spacing, affine, modality from the header, the series' grid)."""
    scan = scan_dicom_folder(folder)
    images = [s for s in scan.series if s.modality in DICOM_MODALITIES] or scan.series  # e.g. a SEG beside its CT
    if len(images) != 1:
        found = ", ".join(s.describe() for s in images) or "none"
        raise InputFileError(folder, f"expected one DICOM image series in the folder, found {len(images)}: {found}")
    series = images[0]  # a modality other than CT/MR gives None: the manifest's column, else detection
    array, spacing, affine, geometry = read_series(series)
    return array, spacing, affine, DICOM_MODALITIES.get(series.modality), geometry


def read_image(path: Path) -> Image:
    """Canonical float32 image: (array, spacing, affine, modality if the file says so, the file's own grid)."""
    path = Path(path)
    kind = volume_format(_existing(path))
    if kind == "dicom":
        return read_dicom_image(path)
    reader = nifti_io.load_image if kind == "nifti" else itk_io.load_image
    array, spacing, affine, geometry = reader(path)
    return array, spacing, affine, None, geometry


def read_label(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Canonical integer label map: (values, affine). Labels are NIfTI or ITK files."""
    path = Path(path)
    kind = volume_format(_existing(path))
    if kind == "dicom":
        raise InputFileError(path, "a label must be a label-map file (NIfTI, NRRD, MetaImage), not a DICOM folder")
    return (nifti_io.read_label_values if kind == "nifti" else itk_io.read_label_values)(path)


def holds_dicom(folder: Path, peek: int = 3) -> bool:
    """True when one of the first ``peek`` files under ``folder`` is DICOM (the ``DICM`` preamble, or a .dcm name).

    A cheap test for ``ssmtl predict``, which must tell a DICOM series folder from a
    folder of other scans without reading every header.
    """
    for checked, path in enumerate(walk_files(folder)):
        if checked >= peek:
            break
        if path.suffix.lower() in (".dcm", ".dicom", ".ima"):
            return True
        try:
            with open(path, "rb") as f:
                if f.read(132)[128:] == b"DICM":
                    return True
        except OSError:
            continue
    return False


@functools.lru_cache(maxsize=16)
def _folder_stems(folder: str, modified_ns: int) -> tuple[str, ...]:
    """The stems of the volume files in ``folder`` (names only, nothing is opened); cached per folder
    version, so predicting a folder of N scans lists it once, not N times."""
    return tuple(volume_stem(p) for p in Path(folder).iterdir() if not is_hidden(p) and VOLUME_FILES.has_extension(p))


def scan_subject(path: Path) -> str:
    """The subject of one scan given to ``ssmtl predict``, which names its outputs: the file's stem,
    or its case when its folder follows nnU-Net's channel naming (``imagesTs/case000_0000.nii.gz`` ->
    ``case000``, as nnU-Net names its predictions; see :func:`ssmtl.api.channel_cases`).

    Raises:
        InputFileError: the file is another channel (``case000_0001``) of a case in such a folder.
    """
    path = Path(path)
    stem = volume_stem(path)
    if split_channel(stem) is None or path.is_dir():
        return stem
    cases = channel_cases(_folder_stems(str(path.parent), path.parent.stat().st_mtime_ns))
    if stem not in cases:
        return stem
    case, channel = cases[stem]
    if channel:
        raise InputFileError(path, f"channel {channel} of the nnU-Net case {case!r}; ssmtl's networks take one "
                                   f"channel per volume: predict the case from its channel 0 file, {case}_0000")
    return case


def scan_item(path: Path, item_class: type[ImageLabelItem] | None = None) -> ImageLabelItem:
    """An unloaded, unlabeled item for one scan given on the command line (``ssmtl predict``),
    named by :func:`scan_subject`."""
    path = Path(path)
    return (item_class or VolumeFileItem)(subject=scan_subject(path), source=str(path), image_path=path)


@dataclass
class VolumeFileItem(ImageLabelItem):
    """An image (any supported format) with an optional label map (NIfTI or ITK); loads lazily.

    ``modality`` None means the DICOM header's, else detected from the intensities
    (see :class:`ssmtl.api.ImageLabelItem` for the fields and the loading rules).
    """

    def read_image(self):
        return read_image(self.image_path)

    read_label = staticmethod(read_label)
