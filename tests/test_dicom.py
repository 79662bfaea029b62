"""The ``dicom`` dataset: grouping, slice order, geometry, refusals and label pairing (synthetic series)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from ingest_helpers import assert_clean_failure, cache_files, ct_phantom, edit_dicom, invoke, save_nifti, write_dicom_series

from ssmtl.data.build import build_cache
from ssmtl.data.cache import SliceCache
from ssmtl.api.errors import ConfigError, InputFileError
from ssmtl.data.preprocess import PreprocessConfig
from ssmtl.host.registry import build_registry
from ssmtl.plugins.datasets import nifti_io
from ssmtl.plugins.datasets.dicom_series import read_series, scan_dicom_folder


@pytest.fixture(scope="module")
def registry():
    return build_registry(external=False)


def sitk_reference(folder: Path, tmp: Path):
    """The series read by SimpleITK/GDCM (an independent DICOM reader), exported to NIfTI, read by nifti."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    sitk.WriteImage(reader.Execute(), str(tmp / "reference.nii.gz"))
    return nifti_io.load_image(tmp / "reference.nii.gz")[:3]


ORIENTATIONS = {
    "axial": ((1, 0, 0), (0, 1, 0)),
    "axial-feet-first": ((-1, 0, 0), (0, 1, 0)),  # normal points to the feet: positions decrease
    "sagittal": ((0, 1, 0), (0, 0, -1)),
    "coronal": ((1, 0, 0), (0, 0, -1)),
}


@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
def test_series_matches_an_independent_reader(tmp_path, orientation):
    row_dir, col_dir = ORIENTATIONS[orientation]
    volume, _ = ct_phantom((9, 7, 5))
    write_dicom_series(tmp_path / "series", volume, row_dir=row_dir, col_dir=col_dir, step=2.5,
                       pixel_spacing=(0.8, 0.7))
    [series] = scan_dicom_folder(tmp_path / "series").series
    assert series.problem is None and series.shape == (9, 7, 5)
    array, spacing, affine, _ = read_series(series)
    expected, expected_spacing, expected_affine = sitk_reference(tmp_path / "series", tmp_path)
    assert nib.aff2axcodes(affine) == ("R", "A", "S")
    assert array.shape == expected.shape
    np.testing.assert_allclose(spacing, expected_spacing, rtol=1e-5)
    np.testing.assert_allclose(affine, expected_affine, atol=1e-3)
    np.testing.assert_allclose(array, expected, atol=0.5)


def test_slices_sorted_by_position_not_name_and_rescaled(tmp_path):
    volume = np.zeros((4, 3, 6), dtype=np.float32)
    for k in range(6):
        volume[:, :, k] = -1000 + 100 * k  # HU increases with the slice position
    names = [f"{n}.dcm" for n in ("f", "b", "e", "a", "d", "c")]
    write_dicom_series(tmp_path / "s", volume, names=names, slope=0.5, intercept=-1100.0)
    array, spacing, _, _ = read_series(scan_dicom_folder(tmp_path / "s").series[0])
    assert spacing == pytest.approx((0.7, 0.8, 2.5))  # (x: column spacing, y: row spacing, z: step)
    np.testing.assert_allclose(array[0, 0, :], -1000 + 100 * np.arange(6), atol=0.5)


def _series(tmp_path, shape=(6, 5, 6)) -> list[Path]:
    volume, _ = ct_phantom(shape)
    return sorted(write_dicom_series(tmp_path / "s", volume), key=lambda p: p.name)


def _refusal(tmp_path) -> str:
    [series] = scan_dicom_folder(tmp_path / "s").series
    with pytest.raises(InputFileError) as info:
        read_series(series)
    assert info.value.path == str(tmp_path / "s")
    return info.value.reason


def test_missing_slice_is_refused(tmp_path):
    files = _series(tmp_path)
    # delete the file holding the third slice along the normal (names are scrambled)
    by_position = sorted(files, key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))
    by_position[2].unlink()
    reason = _refusal(tmp_path)
    assert "missing slice" in reason and "gap of 5 mm" in reason


def test_inconsistent_orientation_is_refused(tmp_path):
    files = _series(tmp_path)
    edit_dicom(files[1], ImageOrientationPatient=["1", "0", "0", "0", "0.9", "0.43589"])
    assert "ImageOrientationPatient" in _refusal(tmp_path)


def test_inconsistent_pixel_spacing_is_refused(tmp_path):
    files = _series(tmp_path)
    edit_dicom(files[0], PixelSpacing=["0.9", "0.7"])
    assert "PixelSpacing" in _refusal(tmp_path)


def test_mixed_sizes_are_refused(tmp_path):
    files = _series(tmp_path)
    edit_dicom(files[3], Rows=4, PixelData=np.zeros((4, 6), np.uint16).tobytes())
    assert "mixed sizes" in _refusal(tmp_path)


def test_repeated_positions_are_refused(tmp_path):
    files = _series(tmp_path)
    position = pydicom.dcmread(files[0]).ImagePositionPatient
    edit_dicom(files[1], ImagePositionPatient=position)
    assert "share a position" in _refusal(tmp_path)


def test_gantry_tilt_is_refused(tmp_path):
    volume, _ = ct_phantom((6, 5, 6))
    files = write_dicom_series(tmp_path / "s", volume)
    for k, path in enumerate(files):  # files[k] holds slice k; shift each slice 1 mm further in y
        position = [float(v) for v in pydicom.dcmread(path).ImagePositionPatient]
        edit_dicom(path, ImagePositionPatient=[position[0], position[1] + k, position[2]])
    assert "gantry tilt" in _refusal(tmp_path)


def test_refused_series_fails_the_build_naming_its_folder(tmp_path):
    files = _series(tmp_path)
    edit_dicom(files[0], PixelSpacing=["0.9", "0.7"])
    result = invoke("cache", "build", "--dataset", "dicom", "--path", str(tmp_path / "s"),
                    "--out", str(tmp_path / "x.h5"), "--size", "16")
    assert_clean_failure(result, str(tmp_path / "s"), "series s")
    assert cache_files(tmp_path) == []


def test_nested_folder_with_several_series(tmp_path, registry):
    """Two CT series of one patient (one nested deeper), an MR series, a localizer and clutter."""
    ct, label = ct_phantom((8, 6, 5))
    write_dicom_series(tmp_path / "export" / "patA" / "chest", ct, patient_id="A", series_number=2)
    write_dicom_series(tmp_path / "export" / "patA" / "chest" / "recon", ct + 10, patient_id="A", series_number=3)
    write_dicom_series(tmp_path / "export" / "patB", ct - 10, patient_id="B", series_number=4, step=3.0)
    write_dicom_series(tmp_path / "export" / "patB" / "mr", np.full((8, 6, 4), 300.0, np.float32), modality="MR",
                       patient_id="B", intercept=0.0)
    scout = write_dicom_series(tmp_path / "export" / "patB" / "scout", ct[:, :, :2], patient_id="B")
    for path in scout:
        edit_dicom(path, ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    (tmp_path / "export" / "README.txt").write_text("not a DICOM file")
    (tmp_path / "export" / "patA" / "DICOMDIR").write_bytes(b"\0" * 64)

    scan = scan_dicom_folder(tmp_path / "export")
    assert [s.name for s in scan.series] == ["patA/chest", "patA/chest/recon", "patB", "patB/mr"]
    assert scan.ignored_series == ["patB/scout (localizer)"] and scan.ignored_files == 2

    labels = tmp_path / "labels"
    save_nifti(labels / "patA_chest_seg.nii.gz", label, affine=_canonical_affine(tmp_path / "export" / "patA" / "chest"))
    out = build_cache(dataset="dicom", dataset_options={"path": str(tmp_path / "export"), "labels": str(labels),
                                                        "modality": "ct"},
                      preprocess=PreprocessConfig(size=16), out=tmp_path / "ct.h5", registry=registry,
                      test_fraction=0.5)
    cache = SliceCache(out)
    # PatientIDs and series names enter the cache as pseudonyms; the real names stay as the local identity
    assert [v.identity for v in cache.volumes] == [{"subject": "A", "volume": "patA/chest"},
                                                   {"subject": "A", "volume": "patA/chest/recon"},
                                                   {"subject": "B", "volume": "patB"}]
    a, b = cache.volumes[0].subject, cache.volumes[2].subject
    assert {a, b} == {"subject-001", "subject-002"} and [v.subject for v in cache.volumes] == [a, a, b]
    assert [v.name for v in cache.volumes] == [f"{a}-v1", f"{a}-v2", b]
    assert [v.pseudonym for v in cache.volumes] == [a, a, b]
    assert [v.has_label for v in cache.volumes] == [True, False, False]
    assert {v.modality for v in cache.volumes} == {"ct"}
    # the two series of patient A are one subject, hence in one split
    assert cache.volumes[0].split == cache.volumes[1].split


def _canonical_affine(series_folder: Path) -> np.ndarray:
    return read_series(scan_dicom_folder(series_folder).series[0])[2]


def test_label_file_exported_with_flipped_rows_pairs(tmp_path, registry):
    """dcm2niix-style labels store rows bottom-up (LAS); after canonical reorientation they match."""
    volume, label = ct_phantom((8, 6, 5))
    write_dicom_series(tmp_path / "s", volume)
    _, _, affine, _ = read_series(scan_dicom_folder(tmp_path / "s").series[0])
    flip = np.diag([1.0, -1.0, 1.0, 1.0])
    flip[1, 3] = label.shape[1] - 1  # index j -> (rows - 1 - j)
    save_nifti(tmp_path / "seg.nii.gz", label[:, ::-1, :].copy(), affine=affine @ flip)
    out = build_cache(dataset="dicom", dataset_options={"path": str(tmp_path / "s"), "labels": str(tmp_path / "seg.nii.gz")},
                      preprocess=PreprocessConfig(size=16, spacing=0.7), out=tmp_path / "c.h5", registry=registry)
    image, cached_label = SliceCache(out).read_volume(0)
    assert cached_label.sum() > 0
    assert image[cached_label == 1].mean() > image[cached_label == 0].mean() + 0.2  # label on the bright block


def test_label_on_another_grid_is_refused(tmp_path):
    volume, label = ct_phantom((8, 6, 5))
    write_dicom_series(tmp_path / "s", volume)
    affine = _canonical_affine(tmp_path / "s").copy()
    affine[0, 3] += 5.0
    seg = save_nifti(tmp_path / "seg.nii.gz", label, affine=affine)
    result = invoke("cache", "build", "--dataset", "dicom", "--path", str(tmp_path / "s"), "--labels", str(seg),
                    "--out", str(tmp_path / "x.h5"), "--size", "16")
    assert_clean_failure(result, str(seg), "not on the image's voxel grid")
    assert cache_files(tmp_path) == []


def test_single_label_file_needs_a_single_series(tmp_path, registry):
    volume, label = ct_phantom((8, 6, 5))
    write_dicom_series(tmp_path / "d" / "a", volume)
    write_dicom_series(tmp_path / "d" / "b", volume)
    seg = save_nifti(tmp_path / "seg.nii.gz", label)
    with pytest.raises(InputFileError, match="holds 2"):
        build_cache(dataset="dicom", dataset_options={"path": str(tmp_path / "d"), "labels": str(seg)},
                    preprocess=PreprocessConfig(size=16), out=tmp_path / "c.h5", registry=registry)


def test_label_map_by_uid_and_unknown_key(tmp_path, registry):
    volume, label = ct_phantom((8, 6, 5))
    write_dicom_series(tmp_path / "d" / "a", volume, series_uid="1.2.3.4")
    write_dicom_series(tmp_path / "d" / "b", volume)
    seg = save_nifti(tmp_path / "seg.nii.gz", label, affine=_canonical_affine(tmp_path / "d" / "a"))
    out = build_cache(dataset="dicom", dataset_options={"path": str(tmp_path / "d"), "label_map": {"1.2.3.4": str(seg)}},
                      preprocess=PreprocessConfig(size=16), out=tmp_path / "c.h5", registry=registry)
    assert [v.has_label for v in SliceCache(out).volumes] == [True, False]
    with pytest.raises(ConfigError, match="matches no series"):
        build_cache(dataset="dicom", dataset_options={"path": str(tmp_path / "d"), "label_map": {"nope": str(seg)}},
                    preprocess=PreprocessConfig(size=16), out=tmp_path / "d.h5", registry=registry)


def test_series_without_uid_are_grouped_by_folder(tmp_path):
    volume, _ = ct_phantom((6, 5, 4))
    files = write_dicom_series(tmp_path / "anon", volume)
    for path in files:
        edit_dicom(path, SeriesInstanceUID="")
    [series] = scan_dicom_folder(tmp_path / "anon").series
    assert series.uid == "" and series.problem is None and len(series.files) == 4
    assert "no SeriesInstanceUID" in series.describe()


def test_no_image_series_is_a_clear_error(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("hello")
    result = invoke("cache", "build", "--dataset", "dicom", "--path", str(tmp_path / "d"), "--out", str(tmp_path / "x.h5"))
    assert_clean_failure(result, str(tmp_path / "d"), "no CT or MR DICOM series")
