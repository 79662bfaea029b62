"""The ``itk``, ``mmwhs``, ``acdc`` and ``manifest`` datasets on small synthetic files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from ingest_helpers import assert_clean_failure, cache_files, ct_phantom, invoke, save_itk, save_nifti, write_dicom_series

from ssmtl.data.build import build_cache
from ssmtl.data.cache import SliceCache
from ssmtl.api.errors import InputFileError
from ssmtl.data.preprocess import PreprocessConfig
from ssmtl.host.registry import build_registry
from ssmtl.api import pair_files
from ssmtl.plugins.datasets import itk_io, nifti_io
from ssmtl.plugins.datasets.mmwhs import CLASS_NAMES as MMWHS_NAMES

PRE = PreprocessConfig(size=16)


@pytest.fixture(scope="module")
def registry():
    return build_registry(external=False)


def build(registry, tmp_path, dataset, name="c.h5", **options):
    return SliceCache(build_cache(dataset=dataset, dataset_options=options, preprocess=PRE, out=tmp_path / name,
                                  registry=registry))


# -- itk ------------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", [".nrrd", ".nhdr", ".mha", ".mhd"])
def test_itk_reader_matches_nifti_export(tmp_path, ext):
    """A flipped, shifted LPS geometry read by SimpleITK equals the NIfTI SimpleITK writes of it."""
    import SimpleITK as sitk

    image, _ = ct_phantom((9, 7, 5))
    path = save_itk(tmp_path / f"a{ext}", image.astype(np.int16), spacing=(0.8, 0.6, 2.0), origin=(5, -3, 7),
                    direction=(-1, 0, 0, 0, 0, 1, 0, -1, 0))
    sitk.WriteImage(sitk.ReadImage(str(path)), str(tmp_path / "a.nii.gz"))
    array, spacing, affine, _ = itk_io.load_image(path)
    expected, expected_spacing, expected_affine, _ = nifti_io.load_image(tmp_path / "a.nii.gz")
    assert array.dtype == np.float32 and array.shape == expected.shape
    np.testing.assert_allclose(spacing, expected_spacing, rtol=1e-6)
    np.testing.assert_allclose(affine, expected_affine, atol=1e-4)
    np.testing.assert_array_equal(array, expected)


def test_itk_pairing_follows_the_nifti_rules(tmp_path):
    for name in ("brain1_image.nrrd", "brain1_label.nrrd", "case2.mha", "case2_seg.mha", "notes.txt", "x.raw"):
        (tmp_path / name).write_bytes(b"")
    pairs = pair_files(tmp_path, tmp_path, itk_io.ITK_FILES)
    assert [(i.name, l.name if l else None) for i, l in pairs] == [("brain1_image.nrrd", "brain1_label.nrrd"),
                                                                  ("case2.mha", "case2_seg.mha")]


def test_itk_dataset_builds(tmp_path, registry):
    image, label = ct_phantom((10, 8, 6))
    for case in ("a", "b"):
        save_itk(tmp_path / "img" / f"{case}_image.nrrd", image, spacing=(1.0, 1.0, 3.0))
        save_itk(tmp_path / "img" / f"{case}_label.nrrd", label * 7, spacing=(1.0, 1.0, 3.0))
    cache = build(registry, tmp_path, "itk", images=str(tmp_path / "img"), labels=str(tmp_path / "img"))
    assert [v.subject for v in cache.volumes] == ["a", "b"]
    assert cache.class_names == {0: "background", 1: "label_7"}
    assert all(v.has_label and v.modality == "ct" and v.num_slices == 6 for v in cache.volumes)


# -- mmwhs ----------------------------------------------------------------------------------

MMWHS_VALUES = (205, 420, 500, 550, 600, 820, 850)


def mmwhs_label(shape) -> np.ndarray:
    """Each MM-WHS value in its own band of x; band i holds value MMWHS_VALUES[i]."""
    label = np.zeros(shape, dtype=np.int16)
    for i, value in enumerate(MMWHS_VALUES):
        label[i + 1, 2:-2, :] = value
    return label


def test_mmwhs_maps_values_to_named_classes(tmp_path, registry):
    image, _ = ct_phantom((10, 8, 4))
    root = tmp_path / "whs"
    save_nifti(root / "ct_train" / "ct_train_1001_image.nii.gz", image)
    save_nifti(root / "ct_train" / "ct_train_1001_label.nii.gz", mmwhs_label(image.shape))
    save_nifti(root / "mr_train" / "mr_train_1001_image.nii.gz", np.abs(image) + 10)
    save_nifti(root / "mr_train" / "mr_train_1001_label.nii.gz", mmwhs_label(image.shape))
    save_nifti(root / "ct_test" / "ct_test_2001_image.nii.gz", image)
    (root / "readme.txt").write_text("ignored")
    cache = SliceCache(build_cache(dataset="mmwhs", dataset_options={"path": str(root)},
                                   preprocess=PreprocessConfig(size=16, spacing=1.0), out=tmp_path / "w.h5",
                                   registry=registry))
    assert cache.class_names == MMWHS_NAMES
    assert MMWHS_NAMES[1] == "lv_myocardium" and MMWHS_NAMES[7] == "pulmonary_artery"
    assert [(v.subject, v.modality, v.has_label) for v in cache.volumes] == [
        ("ct_test_2001", "ct", False), ("ct_train_1001", "ct", True), ("mr_train_1001", "mr", True)]
    _, label = cache.read_volume(1)
    # the radiological layout puts canonical x (band index i + 1) at column W-1-... : same class per band
    classes = [sorted(set(np.unique(label[:, :, c]).tolist()) - {0}) for c in range(16)]
    assert sorted(c[0] for c in classes if c) == [1, 2, 3, 4, 5, 6, 7]
    ct_only = build(registry, tmp_path, "mmwhs", name="ct.h5", path=str(root), modality="ct", labeled_only=True)
    assert [v.subject for v in ct_only.volumes] == ["ct_train_1001"]


def test_mmwhs_value_outside_the_mapping_names_the_file(tmp_path):
    image, _ = ct_phantom((10, 8, 4))
    save_nifti(tmp_path / "whs" / "ct_train_1001_image.nii.gz", image)
    label = mmwhs_label(image.shape)
    label[0, 0, 0] = 421
    bad = save_nifti(tmp_path / "whs" / "ct_train_1001_label.nii.gz", label)
    result = invoke("cache", "build", "--dataset", "mmwhs", "--path", str(tmp_path / "whs"),
                    "--out", str(tmp_path / "x.h5"), "--size", "16")
    assert_clean_failure(result, str(bad), "421")
    assert cache_files(tmp_path) == []


def test_mmwhs_label_without_image(tmp_path):
    save_nifti(tmp_path / "whs" / "ct_train_1001_label.nii.gz", np.zeros((4, 4, 4), np.int16))
    result = invoke("cache", "build", "--dataset", "mmwhs", "--path", str(tmp_path / "whs"), "--out", str(tmp_path / "x.h5"))
    assert_clean_failure(result, "ct_train_1001_label.nii.gz", "without its image")


# -- acdc -----------------------------------------------------------------------------------


def write_acdc_patient(root: Path, patient: str, ed: int = 1, es: int = 12, labeled: bool = True) -> None:
    folder = root / patient
    folder.mkdir(parents=True)
    (folder / "Info.cfg").write_text(f"ED: {ed}\nES: {es}\nGroup: NOR\nHeight: 180.0\nNbFrame: 30\nWeight: 80.0\n")
    rng = np.random.default_rng(len(patient))
    for frame in (ed, es):
        image = rng.uniform(0, 500, (10, 8, 4)).astype(np.float32)
        save_nifti(folder / f"{patient}_frame{frame:02d}.nii.gz", image)
        if labeled:
            label = np.zeros(image.shape, np.uint8)
            label[2:4], label[4:6], label[6:8] = 1, 2, 3
            save_nifti(folder / f"{patient}_frame{frame:02d}_gt.nii.gz", label)
    save_nifti(folder / f"{patient}_4d.nii.gz", np.zeros((10, 8, 4, 3), np.float32))  # ignored


def test_acdc_takes_ed_es_frames_from_info_cfg(tmp_path, registry):
    root = tmp_path / "acdc"
    for i in range(1, 5):
        write_acdc_patient(root / "training", f"patient{i:03d}", es=10 + i)
    write_acdc_patient(root / "testing", "patient101", labeled=False)
    cache = SliceCache(build_cache(dataset="acdc", dataset_options={"path": str(root)}, preprocess=PRE,
                                   out=tmp_path / "a.h5", registry=registry, test_fraction=0.5))
    names = [v.name for v in cache.volumes]
    assert names[:4] == ["patient001_ED", "patient001_ES", "patient002_ED", "patient002_ES"]
    assert cache.volumes[1].source.endswith("patient001_frame11.nii.gz")
    assert cache.class_names == {0: "background", 1: "right_ventricle", 2: "myocardium", 3: "left_ventricle"}
    assert {v.modality for v in cache.volumes} == {"mr"}
    assert [v.has_label for v in cache.volumes if v.subject == "patient101"] == [False, False]
    by_subject: dict[str, set[str]] = {}
    for v in cache.volumes:
        by_subject.setdefault(v.subject, set()).add(v.split)
    assert all(len(splits) == 1 for splits in by_subject.values())  # ED and ES never split apart
    assert cache.split_counts()["test"] == 2


def test_acdc_missing_frame_names_the_expected_file(tmp_path):
    write_acdc_patient(tmp_path / "acdc", "patient001", es=12)
    (tmp_path / "acdc" / "patient001" / "patient001_frame12.nii.gz").unlink()
    result = invoke("cache", "build", "--dataset", "acdc", "--path", str(tmp_path / "acdc"), "--out", str(tmp_path / "x.h5"))
    assert_clean_failure(result, "patient001_frame12.nii.gz", "ES frame 12")


# -- manifest -------------------------------------------------------------------------------


@pytest.fixture()
def mixed_files(tmp_path):
    """A DICOM CT series, a NIfTI CT with label, an NRRD MR with label, an unlabeled NIfTI MR."""
    ct, ct_label = ct_phantom((10, 8, 5))
    write_dicom_series(tmp_path / "data" / "dcm", ct)
    from ssmtl.plugins.datasets.dicom_series import read_series, scan_dicom_folder

    affine = read_series(scan_dicom_folder(tmp_path / "data" / "dcm").series[0])[2]
    save_nifti(tmp_path / "data" / "dcm_seg.nii.gz", ct_label * 2, affine=affine)
    save_nifti(tmp_path / "data" / "ct1.nii.gz", ct)
    save_nifti(tmp_path / "data" / "ct1_seg.nii.gz", ct_label)
    mr = (np.abs(ct) + 5).astype(np.float32)
    save_itk(tmp_path / "data" / "mr1.nrrd", mr)
    save_itk(tmp_path / "data" / "mr1_seg.nrrd", ct_label * 2)
    save_nifti(tmp_path / "data" / "mr2.nii.gz", mr)
    return tmp_path


def test_manifest_csv_mixes_formats_and_modalities(mixed_files, registry):
    manifest = mixed_files / "volumes.csv"
    manifest.write_text(
        "image,label,subject,modality,split\n"
        "data/dcm,data/dcm_seg.nii.gz,s1,,train\n"
        "data/ct1.nii.gz,data/ct1_seg.nii.gz,s2,CT,test\n"
        "data/mr1.nrrd,data/mr1_seg.nrrd,s2,mr,test\n"
        "data/mr2.nii.gz,,s3,mr,\n"
    )
    cache = build(registry, mixed_files, "manifest", path=str(manifest))
    assert [(v.name, v.subject, v.modality, v.has_label, v.split) for v in cache.volumes] == [
        ("s1", "s1", "ct", True, "train"), ("s2_ct1", "s2", "ct", True, "test"),
        ("s2_mr1", "s2", "mr", True, "test"), ("s3", "s3", "mr", False, "train")]
    assert cache.class_names == {0: "background", 1: "label_1", 2: "label_2"}
    summary = cache.summary()
    assert summary["split_info"]["source"] == "dataset"
    assert summary["split_by_modality"] == {"test": {"ct": 1, "mr": 1}, "train": {"ct": 1, "mr": 1}}
    voxels = summary["class_voxels"]
    assert voxels["2"]["by_modality"]["ct"] > 0 and voxels["2"]["by_modality"]["mr"] > 0
    assert voxels["1"]["by_modality"]["mr"] == 0  # label 1 only in the NIfTI CT


def test_manifest_json_and_random_split(mixed_files, registry):
    manifest = mixed_files / "m.json"
    manifest.write_text(json.dumps({"volumes": [
        {"image": "data/ct1.nii.gz", "label": "data/ct1_seg.nii.gz"},
        {"image": "data/mr1.nrrd", "label": "data/mr1_seg.nrrd", "modality": "mr"},
    ]}))
    cache = SliceCache(build_cache(dataset="manifest", dataset_options={"path": str(manifest)}, preprocess=PRE,
                                   out=mixed_files / "j.h5", registry=registry, test_fraction=0.5, split_seed=3))
    assert [v.subject for v in cache.volumes] == ["ct1", "mr1"]
    assert sorted(v.split for v in cache.volumes) == ["test", "train"]
    assert cache.attrs["split"]["source"] == "random"



def test_manifest_tells_apart_images_of_one_name_in_different_folders(tmp_path, registry):
    """p001/image.nii.gz and p002/image.nii.gz are two subjects (named after their folders), so a
    split can put them on different sides; a subject column still groups scans of one patient."""
    ct, label = ct_phantom((10, 8, 5))
    for folder in ("site_a/p001", "site_a/p002", "site_b/p001", "p003"):
        save_nifti(tmp_path / folder / "image.nii.gz", ct)
        save_nifti(tmp_path / folder / "label.nii.gz", label)
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "image,label,subject,split\n"
        "site_a/p001/image.nii.gz,site_a/p001/label.nii.gz,,train\n"
        "site_a/p002/image.nii.gz,site_a/p002/label.nii.gz,,test\n"
        "site_b/p001/image.nii.gz,site_b/p001/label.nii.gz,,train\n"
        "p003/image.nii.gz,p003/label.nii.gz,patient3,test\n"
    )
    cache = build(registry, tmp_path, "manifest", path=str(manifest))
    assert sorted((v.subject, v.split) for v in cache.volumes) == [
        ("patient3", "test"), ("site_a_p001_image", "train"), ("site_a_p002_image", "test"),
        ("site_b_p001_image", "train")]


@pytest.mark.parametrize(
    "rows, needle",
    [
        ("image,labels\ndata/ct1.nii.gz,x\n", "unknown column(s) labels"),
        ("image,split\ndata/ct1.nii.gz,holdout\n", "line 2: split 'holdout'"),
        ("image,modality\ndata/ct1.nii.gz,pet\n", "line 2: modality 'pet'"),
        ("image,label\n,data/ct1_seg.nii.gz\n", "line 2: the image column is empty"),
        ("image,split\ndata/mr2.nii.gz,test\n", "has no label"),
        ("image,subject,split,label\ndata/ct1.nii.gz,s,train,data/ct1_seg.nii.gz\n"
         "data/mr1.nrrd,s,test,data/mr1_seg.nrrd\n", "line 3: subject 's' is in split test"),
        ("image\ndata/ct1.nii.gz\ndata/ct1.nii.gz\n", "already listed"),
        ("", "the manifest is empty"),
    ],
)
def test_manifest_errors_name_the_manifest_and_row(mixed_files, rows, needle):
    manifest = mixed_files / "bad.csv"
    manifest.write_text(rows)
    result = invoke("cache", "build", "--dataset", "manifest", "--path", str(manifest), "--out", str(mixed_files / "x.h5"))
    assert_clean_failure(result, str(manifest), needle)
    assert cache_files(mixed_files) == []


def test_manifest_missing_image_is_reported_at_load(mixed_files, registry):
    manifest = mixed_files / "m.csv"
    manifest.write_text("image\ndata/ct1.nii.gz\ndata/missing.nii.gz\n")
    with pytest.raises(InputFileError) as info:
        build(registry, mixed_files, "manifest", path=str(manifest))
    assert info.value.path == str(mixed_files / "data" / "missing.nii.gz") and "not found" in info.value.reason


def test_manifest_split_is_stored_even_without_labeled_training_subjects(mixed_files, registry):
    """Pre-training only on unlabeled scans, every labeled subject held out: a valid cache to build."""
    manifest = mixed_files / "m.csv"
    manifest.write_text("image,label,split\ndata/ct1.nii.gz,data/ct1_seg.nii.gz,test\ndata/mr2.nii.gz,,train\n")
    cache = build(registry, mixed_files, "manifest", path=str(manifest))
    assert [(v.subject, v.split) for v in cache.volumes] == [("ct1", "test"), ("mr2", "train")]
    assert cache.attrs["split"] == {"source": "dataset", "held_out": 1}
