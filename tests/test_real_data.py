"""Ingestion on real scans: TotalSegmentator's reference CT/MR/DICOM and pyradiomics' NRRD volumes.

The data come from registry source distributions (``scripts/fetch_sample_data.py``),
downloaded once into ``.sample-data/`` and reused (the ``sample_data`` fixture of conftest.py). When they cannot be fetched the
tests FAIL: CI has the registries, and silently skipping would hide that the real
data paths are untested.

TotalSegmentator v2 label values used here (``totalsegmentator/map_to_binary.py``):
1 spleen, 2 right kidney, 3 left kidney, 5 liver, 6 stomach, 10-14 lung lobes,
26-50 vertebrae, 52 aorta, 63 inferior vena cava.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from ingest_helpers import assert_clean_failure, cache_files, invoke, save_nifti

from ssmtl.data.build import build_cache
from ssmtl.data.cache import SliceCache
from ssmtl.data.verify import verify_cache
from ssmtl.data.preprocess import PreprocessConfig
from ssmtl.host.registry import build_registry
from ssmtl.plugins.datasets import itk_io, nifti_io
from ssmtl.plugins.datasets.dicom_series import read_series, scan_dicom_folder
from ssmtl.plugins.datasets.mmwhs import CLASS_NAMES as MMWHS_NAMES

LIVER, SPLEEN, KIDNEY_R, KIDNEY_L, STOMACH, AORTA, IVC = 5, 1, 2, 3, 6, 52, 63
VERTEBRAE = range(26, 51)
CT_WINDOW = (-250.0, 750.0)  # the default window: cached CT value = (HU + 250) / 1000


def class_id(cache: SliceCache, value: int) -> int:
    """The class id of a raw label value (labels collected from the files are named label_<value>)."""
    return {name: k for k, name in cache.class_names.items()}[f"label_{value}"]


def hu(normalised):
    return np.asarray(normalised) * (CT_WINDOW[1] - CT_WINDOW[0]) + CT_WINDOW[0]


@pytest.fixture(scope="module")
def registry():
    return build_registry(external=False)


@pytest.fixture(scope="module")
def ts(sample_data) -> Path:
    return sample_data / "totalsegmentator"


@pytest.fixture(scope="module")
def dicom_volume(ts):
    """The 20-slice DICOM CT series, read by the dicom reader."""
    [series] = scan_dicom_folder(ts / "example_ct_dicom").series
    return read_series(series)[:3]


# -- DICOM ------------------------------------------------------------------------------------


def test_dicom_series_equals_its_nifti_export(ts, dicom_volume, tmp_path):
    """The series through the dicom reader == its NIfTI export (written by SimpleITK) through the nifti reader."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(ts / "example_ct_dicom")))
    sitk.WriteImage(reader.Execute(), str(tmp_path / "export.nii.gz"))
    exported, exported_spacing, exported_affine, _ = nifti_io.load_image(tmp_path / "export.nii.gz")
    array, spacing, affine = dicom_volume
    assert array.shape == exported.shape == (512, 512, 20)
    assert spacing == pytest.approx(exported_spacing) and spacing == pytest.approx((0.9765625, 0.9765625, 2.0))
    np.testing.assert_allclose(affine, exported_affine, atol=1e-3)
    np.testing.assert_allclose(array, exported, atol=0.5)
    assert array.min() == -1024  # RescaleIntercept applied: air is about -1000 HU


def test_dicom_grid_matches_the_shipped_segmentation(ts, dicom_volume):
    """TotalSegmentator's segmentation of the series (written by another tool, stored LAS) is on our grid."""
    array, _, affine = dicom_volume
    seg, seg_affine = nifti_io.read_label_values(ts / "example_seg_dicom.nii.gz")
    assert seg.shape == array.shape
    np.testing.assert_allclose(seg_affine, affine, atol=1e-3)
    # anatomy under the labels: contrast-enhanced liver and spleen, dense bone in the vertebrae
    assert 60 < array[seg == LIVER].mean() < 200
    assert 60 < array[seg == SPLEEN].mean() < 200
    assert array[np.isin(seg, list(VERTEBRAE))].mean() > 200


def test_dicom_cache_keeps_labels_on_anatomy(ts, registry, tmp_path):
    out = build_cache(dataset="dicom",
                      dataset_options={"path": str(ts / "example_ct_dicom"), "labels": str(ts / "example_seg_dicom.nii.gz")},
                      preprocess=PreprocessConfig(size=96), out=tmp_path / "dcm.h5", registry=registry)
    cache = SliceCache(out)
    [meta] = cache.volumes
    assert meta.modality == "ct" and meta.shape == (20, 96, 96) and meta.spacing[0] == pytest.approx(2.0)
    image, label = cache.read_volume(0)
    liver, spleen = label == class_id(cache, LIVER), label == class_id(cache, SPLEEN)
    bone = np.isin(label, [class_id(cache, v) for v in VERTEBRAE if f"label_{v}" in cache.class_names.values()])
    # intensities under the resampled labels stay in each structure's range
    assert 60 < hu(image[liver]).mean() < 200 and 60 < hu(image[spleen]).mean() < 200
    assert hu(image[bone]).mean() > 200
    # the liver's centroid pixel lies inside the liver's intensity range, slice by slice
    for d in range(20):
        if liver[d].sum() > 50:
            r, c = (int(round(v)) for v in np.argwhere(liver[d]).mean(axis=0))
            assert liver[d, r, c] and 0 < hu(image[d, r, c]) < 250
    # radiological layout: the liver (patient right) on the image's left, the spleen on its right,
    # the spine posterior (bottom rows), below the liver's rows
    assert np.argwhere(liver)[:, 2].mean() < 48 < np.argwhere(spleen)[:, 2].mean()
    assert np.argwhere(bone)[:, 1].mean() > np.argwhere(liver)[:, 1].mean()
    verify_cache(out)


def test_dicom_series_with_a_missing_slice_is_refused(ts, tmp_path):
    series = tmp_path / "series"
    shutil.copytree(ts / "example_ct_dicom", series)
    ordered = scan_dicom_folder(series).series[0].files
    ordered[7].unlink()
    result = invoke("cache", "build", "--dataset", "dicom", "--path", str(series), "--out", str(tmp_path / "x.h5"))
    assert_clean_failure(result, str(series), "missing slice(s): a gap of 4 mm")
    assert cache_files(tmp_path) == []


# -- NIfTI: contrast CT and resampling ----------------------------------------------------------


def test_contrast_ct_heart_is_bright_after_resampling(ts, registry, tmp_path):
    """The arterial-phase CT with its heart mask: blood-filled heart well above soft tissue, before and after."""
    images, labels = tmp_path / "img", tmp_path / "lab"
    images.mkdir(), labels.mkdir()
    (images / "heart_ct.nii.gz").symlink_to(ts / "aorta_report" / "example_ct.nii.gz")
    (labels / "heart_ct.nii.gz").symlink_to(ts / "pulmonary_report" / "models" / "heart.nii.gz")
    raw, _, _, _ = nifti_io.load_image(ts / "aorta_report" / "example_ct.nii.gz")
    heart, _ = nifti_io.read_label_values(ts / "pulmonary_report" / "models" / "heart.nii.gz")
    assert raw[heart == 1].mean() > 250
    out = build_cache(dataset="nifti", dataset_options={"images": str(images), "labels": str(labels)},
                      preprocess=PreprocessConfig(size=64), out=tmp_path / "heart.h5", registry=registry)
    image, label = SliceCache(out).read_volume(0)
    assert hu(image[label == 1]).mean() > 250
    assert hu(image[label == 0]).mean() < 0


# -- MM-WHS folder built from real files ---------------------------------------------------------

# TotalSegmentator structure -> the MM-WHS code it stands in for (the anatomy does not matter here,
# the mapping of codes to class ids does)
REMAP = {LIVER: 205, SPLEEN: 420, KIDNEY_R: 500, KIDNEY_L: 550, STOMACH: 600, AORTA: 820, IVC: 850}


def _remapped(path: Path) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(str(path))
    values = np.asarray(img.dataobj)
    out = np.zeros(values.shape, np.int16)
    for source, code in REMAP.items():
        out[values == source] = code
    return out, img.affine


def test_mmwhs_folder_from_real_volumes_maps_codes_to_class_ids(ts, registry, tmp_path):
    root = tmp_path / "MM-WHS"
    pairs = {"ct_train_1001": ("example_ct_sm.nii.gz", "example_seg.nii.gz"),
             "mr_train_1001": ("example_mr_sm.nii.gz", "example_seg_mr.nii.gz")}
    for subject, (image, seg) in pairs.items():
        folder = root / f"{subject[:2]}_train"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(ts / image, folder / f"{subject}_image.nii.gz")
        label, affine = _remapped(ts / seg)
        save_nifti(folder / f"{subject}_label.nii.gz", label, affine)
    shutil.copy(ts / "example_ct_sm.nii.gz", root / "ct_test_2001_image.nii.gz")
    preprocess = PreprocessConfig(size=64)
    whs = SliceCache(build_cache(dataset="mmwhs", dataset_options={"path": str(root)}, preprocess=preprocess,
                                 out=tmp_path / "whs.h5", registry=registry))
    assert whs.class_names == MMWHS_NAMES
    assert [(v.subject, v.modality, v.has_label) for v in whs.volumes] == [
        ("ct_test_2001", "ct", False), ("ct_train_1001", "ct", True), ("mr_train_1001", "mr", True)]
    # the same labels as the original TotalSegmentator values mapped in MM-WHS code order
    _, whs_label = whs.read_volume(1)
    expected = _reference_labels(ts, tmp_path, registry, preprocess)
    np.testing.assert_array_equal(whs_label, expected)
    counts = whs.summary()["class_voxels"]
    assert counts["1"]["name"] == "lv_myocardium" and counts["1"]["by_modality"]["ct"] > 1000  # the liver's voxels
    assert all(counts[str(k)]["total"] > 0 for k in range(1, 8))


def _reference_labels(ts: Path, tmp_path: Path, registry, preprocess) -> np.ndarray:
    """The CT's TotalSegmentator labels cached by the nifti dataset with label_values in MM-WHS code order.

    Values outside REMAP are zeroed first (the MM-WHS file has only the seven codes).
    """
    folder = tmp_path / "reference"
    folder.mkdir()
    shutil.copy(ts / "example_ct_sm.nii.gz", folder / "ct.nii.gz")
    img = nib.load(str(ts / "example_seg.nii.gz"))
    values = np.asarray(img.dataobj)
    kept = np.where(np.isin(values, list(REMAP)), values, 0).astype(np.int16)
    save_nifti(folder / "ct_seg.nii.gz", kept, img.affine)
    ref = SliceCache(build_cache(
        dataset="nifti", dataset_options={"images": str(folder), "labels": str(folder), "label_values": list(REMAP),
                                          "modality": "ct"},
        preprocess=preprocess, out=tmp_path / "reference.h5", registry=registry))
    return ref.read_volume(0)[1]


# -- NRRD (pyradiomics) -----------------------------------------------------------------------------


def test_nrrd_reader_equals_its_nifti_export(sample_data, tmp_path):
    """brain1 is stored with a flipped y direction: the ITK reader must land on nibabel's canonical array."""
    import SimpleITK as sitk

    source = sample_data / "pyradiomics" / "brain1_image.nrrd"
    sitk.WriteImage(sitk.ReadImage(str(source)), str(tmp_path / "brain1.nii.gz"))
    array, spacing, affine, _ = itk_io.load_image(source)
    expected, expected_spacing, expected_affine, _ = nifti_io.load_image(tmp_path / "brain1.nii.gz")
    np.testing.assert_array_equal(array, expected)
    np.testing.assert_allclose(affine, expected_affine, atol=1e-4)
    assert spacing == pytest.approx(expected_spacing) and spacing == pytest.approx((0.78125, 0.78125, 6.5))


def test_nrrd_pairs_cache_and_info_describes_them(sample_data, tmp_path):
    data = sample_data / "pyradiomics"
    out = tmp_path / "nrrd.h5"
    result = invoke("cache", "build", "--dataset", "itk", "--images", str(data), "--labels", str(data),
                    "--out", str(out), "--size", "64", "--workers", "2")
    assert result.exit_code == 0, result.output
    info = json.loads(invoke("cache", "info", str(out), "--json").output)
    volumes = {v["subject"]: v for v in info["subjects"]}
    assert set(volumes) == {"brain1", "brain2", "breast1", "lung1", "lung2"}
    assert info["volumes"] == info["labeled_volumes"] == 5
    assert info["slices"] == 25 + 23 + 21 + 48 + 61
    assert info["modalities"] == {"ct": 2, "mr": 3}
    assert {s: v["modality"] for s, v in volumes.items()} == {
        "brain1": "mr", "brain2": "mr", "breast1": "mr", "lung1": "ct", "lung2": "ct"}
    assert info["classes"] == {"0": "background", "1": "label_1"}
    assert info["class_voxels"]["1"]["by_modality"]["ct"] > 0 and info["class_voxels"]["1"]["by_modality"]["mr"] > 0
    original = info["spacing_stats_mm"]["original"]
    assert original["z"] == {"min": pytest.approx(2.1), "median": pytest.approx(5.0), "max": pytest.approx(6.5)}
    assert volumes["lung1"]["original_spacing"] == pytest.approx([0.5703125, 0.5703125, 5.0], rel=1e-4)
    assert sum(info["split"].values()) == 5
    # the lung lesion is soft tissue inside aerated lung: bright under its label after resampling
    cache = SliceCache(out)
    lung1 = next(v.index for v in cache.volumes if v.subject == "lung1")
    image, label = cache.read_volume(lung1)
    assert hu(image[label == 1]).mean() > -300
    assert verify_cache(out).datasets == 10


# -- manifest mixing real CT and MR -------------------------------------------------------------------


def test_manifest_mixing_real_ct_mr_dicom_and_nrrd(sample_data, registry, tmp_path):
    ts = sample_data / "totalsegmentator"
    manifest = tmp_path / "volumes.csv"
    manifest.write_text(
        "image,label,subject,modality,split\n"
        f"{ts / 'example_ct_dicom'},{ts / 'example_seg_dicom.nii.gz'},dicom_ct,,train\n"
        f"{ts / 'example_ct_sm.nii.gz'},{ts / 'example_seg.nii.gz'},small_ct,ct,test\n"
        f"{ts / 'example_mr_sm.nii.gz'},{ts / 'example_seg_mr.nii.gz'},small_mr,mr,test\n"
        f"{sample_data / 'pyradiomics' / 'brain1_image.nrrd'},,brain,,\n"
    )
    out = build_cache(dataset="manifest", dataset_options={"path": str(manifest)},
                      preprocess=PreprocessConfig(size=64), out=tmp_path / "mixed.h5", registry=registry)
    cache = SliceCache(out)
    assert [(v.subject, v.modality, v.split, v.has_label) for v in cache.volumes] == [
        ("dicom_ct", "ct", "train", True), ("small_ct", "ct", "test", True),
        ("small_mr", "mr", "test", True), ("brain", "mr", "train", False)]
    info = cache.summary()
    assert info["split_by_modality"] == {"test": {"ct": 1, "mr": 1}, "train": {"ct": 1, "mr": 1}}
    # every volume's liver keeps its place under the label: mean HU of liver in CT in range
    image, label = cache.read_volume(1)
    assert 0 < hu(image[label == class_id(cache, LIVER)]).mean() < 150
