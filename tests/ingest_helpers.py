"""Writers of small synthetic inputs for the ingestion tests: DICOM series, NIfTI and ITK files."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np
from typer.testing import CliRunner

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"

runner = CliRunner()


def invoke(*args: str):
    from ssmtl.cli.app import app

    return runner.invoke(app, ["--no-plugins", *args])


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def cache_files(directory: Path) -> list[Path]:
    """Caches and temporaries in ``directory`` (what a failed build must not leave)."""
    return sorted(p for p in Path(directory).iterdir() if p.suffix == ".h5" or p.name.startswith(".ssmtl-tmp-"))


def assert_clean_failure(result, *needles: str) -> str:
    """Exit 2, an `error:` first line naming what is wrong, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    text = result.stderr if result.stderr else result.output
    assert "Traceback" not in result.output and "Traceback" not in text
    first = [line for line in text.splitlines() if line.strip()][0]
    assert first.startswith("error:"), text
    joined = " ".join(text.split())
    for needle in needles:
        assert needle in joined, (needle, text)
    return joined


def save_nifti(path: Path, data: np.ndarray, affine=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


def save_itk(path: Path, data_xyz: np.ndarray, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
             direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)) -> Path:
    """Write an (x, y, z) array with SimpleITK (LPS geometry), e.g. as .nrrd / .mha / .mhd."""
    import SimpleITK as sitk

    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(data_xyz, (2, 1, 0))))
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in origin])
    image.SetDirection([float(d) for d in direction])
    sitk.WriteImage(image, str(path))
    return path


def ct_phantom(shape=(12, 10, 6), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(image HU, label) in (x, y, z): air, a soft-tissue body and a bright labelled block."""
    rng = np.random.default_rng(seed)
    image = np.full(shape, -1000.0, dtype=np.float32)
    x, y, z = shape
    image[1:x - 1, 1:y - 1, :] = 40.0
    label = np.zeros(shape, dtype=np.uint8)
    block = (slice(2, x // 2), slice(2, y // 2 + 1), slice(1, z - 1))
    image[block] = 400.0
    label[block] = 1
    image += rng.normal(0, 5, shape).astype(np.float32)
    return np.rint(image).astype(np.float32), label


def write_dicom_series(
    folder: Path,
    volume: np.ndarray,
    *,
    row_dir=(1.0, 0.0, 0.0),
    col_dir=(0.0, 1.0, 0.0),
    pixel_spacing=(0.8, 0.7),
    step: float = 2.5,
    origin=(-10.0, -20.0, 30.0),
    slope: float = 1.0,
    intercept: float = -1024.0,
    modality: str = "CT",
    series_uid: str | None = None,
    patient_id: str = "P1",
    description: str = "test series",
    names: Sequence[str] | None = None,
    series_number: int = 1,
) -> list[Path]:
    """Write ``volume`` (columns, rows, slices) in modality units as single-frame DICOM files.

    Slice k sits at ``origin + k * step * (row_dir x col_dir)``. Files are named in a
    scrambled order (``names``), so readers cannot rely on file names.
    """
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    row_dir, col_dir = np.asarray(row_dir, float), np.asarray(col_dir, float)
    normal = np.cross(row_dir, col_dir)
    columns, rows, depth = volume.shape
    series_uid = series_uid or generate_uid()
    study_uid = generate_uid()
    order = list(names) if names is not None else [f"img{(7 * k) % depth:04d}_{k}.dcm" for k in range(depth)]
    paths = []
    for k in range(depth):
        stored = np.rint((volume[:, :, k].T - intercept) / slope).astype(np.uint16)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE if modality == "CT" else MR_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / order[k]), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = series_number
        ds.SeriesDescription = description
        ds.PatientID = patient_id
        ds.Modality = modality
        ds.InstanceNumber = depth - k  # deliberately unrelated to the slice order
        ds.ImagePositionPatient = [f"{v:.6f}" for v in np.asarray(origin, float) + k * step * normal]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*row_dir, *col_dir)]
        ds.PixelSpacing = [f"{pixel_spacing[0]:.6f}", f"{pixel_spacing[1]:.6f}"]
        ds.SliceThickness = f"{step:.6f}"
        ds.Rows, ds.Columns = rows, columns
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope = f"{slope:g}"
        ds.RescaleIntercept = f"{intercept:g}"
        ds.PixelData = stored.tobytes()
        path = folder / order[k]
        pydicom.dcmwrite(str(path), ds, enforce_file_format=True)
        paths.append(path)
    return paths


def edit_dicom(path: Path, **changes) -> None:
    """Rewrite header elements of one DICOM file (e.g. ImageOrientationPatient=[...])."""
    import pydicom

    ds = pydicom.dcmread(str(path))
    for key, value in changes.items():
        setattr(ds, key, value)
    ds.save_as(str(path), enforce_file_format=True)
