"""Image and label files in any supported format, behind one pair of readers.

=====================================  ==========================================
Path                                   Read by
=====================================  ==========================================
``*.nii``, ``*.nii.gz``                nibabel (:mod:`~ssmtl.plugins.datasets.nifti`)
``*.nrrd``, ``*.nhdr``, ``*.mha``,     SimpleITK (:mod:`~ssmtl.plugins.datasets.itk_io`)
``*.mhd``
a folder                               one DICOM series
                                       (:mod:`~ssmtl.plugins.datasets.dicom_series`)
=====================================  ==========================================

Every reader returns canonical RAS (x, y, z) arrays with their affine, so an
image and a label in different formats can still be checked for a common grid.
:class:`VolumeFileItem` is the generic lazily loaded item built on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from ssmtl.api import check_finite, InputFileError, Modality, RawVolume, VolumeItem

from ssmtl.plugins.datasets import itk_io, nifti
from ssmtl.plugins.datasets.dicom_series import read_series, scan_dicom_folder

Format = Literal["nifti", "itk", "dicom"]
SUPPORTED = ".nii, .nii.gz, .nrrd, .nhdr, .mha, .mhd, or a folder holding one DICOM series"
# DICOM Modality tag -> ssmtl modality
DICOM_MODALITIES: dict[str, Modality] = {"CT": "ct", "MR": "mr"}


def volume_format(path: Path) -> Format:
    """Which reader handles ``path`` (by extension; a folder is a DICOM series)."""
    path = Path(path)
    name = path.name.lower()
    kind: Format | None = None
    if name.endswith(nifti.NIFTI_EXTENSIONS):
        kind = "nifti"
    elif name.endswith(itk_io.ITK_EXTENSIONS):
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
    path = Path(path)
    name = path.name.lower()
    if name.endswith(nifti.NIFTI_EXTENSIONS):
        return nifti.nifti_stem(path)
    return itk_io.itk_stem(path)


def _existing(path: Path) -> Path:
    if not path.exists():
        raise InputFileError(path, "broken symbolic link" if path.is_symlink() else "file not found")
    return path


def read_dicom_image(folder: Path) -> tuple[np.ndarray, tuple[float, float, float], np.ndarray, Modality | None]:
    """The one image series in ``folder``: (array, spacing, affine, modality from the header)."""
    scan = scan_dicom_folder(folder)
    images = [s for s in scan.series if s.modality in DICOM_MODALITIES] or scan.series  # e.g. a SEG beside its CT
    if len(images) != 1:
        found = ", ".join(s.describe() for s in images) or "none"
        raise InputFileError(folder, f"expected one DICOM image series in the folder, found {len(images)}: {found}")
    series = images[0]  # a modality other than CT/MR gives None: the manifest's column, else detection
    array, spacing, affine = read_series(series)
    return array, spacing, affine, DICOM_MODALITIES.get(series.modality)


def read_image(path: Path) -> tuple[np.ndarray, tuple[float, float, float], np.ndarray, Modality | None]:
    """Canonical float32 image: (array, spacing, affine, modality if the file says so)."""
    path = Path(path)
    kind = volume_format(_existing(path))
    if kind == "dicom":
        return read_dicom_image(path)
    reader = nifti.load_image if kind == "nifti" else itk_io.load_image
    array, spacing, affine = reader(path)
    return array, spacing, affine, None


def read_label(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Canonical integer label map: (values, affine). Labels are NIfTI or ITK files."""
    path = Path(path)
    kind = volume_format(_existing(path))
    if kind == "dicom":
        raise InputFileError(path, "a label must be a label-map file (NIfTI, NRRD, MetaImage), not a DICOM folder")
    return (nifti.read_label_values if kind == "nifti" else itk_io.read_label_values)(path)


def collect_label_values(label_paths: list[Path]) -> tuple[int, ...]:
    """Sorted non-zero values over all label files, whatever their format (reads only the labels)."""
    return nifti.collect_label_values(label_paths, read=read_label)


def load_pair(
    image_path: Path,
    label_path: Path | None,
    modality: Modality | None,
    label_values: tuple[int, ...],
) -> RawVolume:
    """Read an image and its optional label, check they share a grid, map the labels."""
    image, spacing, affine, file_modality = read_image(image_path)
    check_finite(image, str(image_path))
    chosen = modality or file_modality or nifti.detect_modality(image)
    label = None
    if label_path is not None:
        values, label_affine = read_label(label_path)
        nifti._check_same_grid(image_path, label_path, image.shape, values.shape, affine, label_affine)
        label = nifti.map_labels(values, label_values, label_path)
    return RawVolume(image=image, spacing=spacing, modality=chosen, label=label, affine=affine)


@dataclass
class VolumeFileItem(VolumeItem):
    """An image (any supported format) with an optional label map; loads lazily.

    Attributes:
        image_path: image file or DICOM series folder.
        label_path: label map, or None.
        modality: "ct", "mr", or None: the DICOM header's, else detected from intensities.
        label_values: raw label values mapped to class ids 1..n in order.
        volume_id: names the volume's group in the cache (default: the subject).
    """

    image_path: Path
    label_path: Path | None = None
    modality: Modality | None = None
    label_values: tuple[int, ...] = ()
    volume_id: str | None = None

    def load(self) -> RawVolume:
        return load_pair(self.image_path, self.label_path, self.modality, self.label_values)
