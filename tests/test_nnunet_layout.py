"""The ``nnunet`` dataset on tiny nnU-Net raw folders, and nnU-Net's file naming in the ``nifti`` dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest
from dataset_json_helpers import build, error_line, label_map, nnunet_json, save, scan, write_nnunet
from ingest_helpers import cache_files, save_itk

from ssmtl.api import channel_cases, InputFileError
from ssmtl.data.cache import SliceCache


def volumes(path) -> dict[str, tuple[str, bool, set[int]]]:
    """subject -> (modality, labeled, class ids in its label map)."""
    cache = SliceCache(path)
    found = {}
    for v in cache.volumes:
        label = cache.read_label(v.index)
        found[v.subject] = (v.modality, v.has_label, set() if label is None else set(np.unique(label).tolist()))
    return found


def test_a_v2_dataset_builds_with_its_names_and_the_modality_of_its_channel(tmp_path):
    # channel "MRI" on CT-like intensities: the modality comes from dataset.json, not from detection
    root = write_nnunet(tmp_path / "Dataset001_Tiny", dataset=nnunet_json())
    result = build("nnunet", tmp_path / "c.h5", "--path", str(root))
    assert result.exit_code == 0, result.output
    cache = SliceCache(tmp_path / "c.h5")
    assert cache.class_names == {0: "background", 1: "left atrium", 2: "aorta"}
    assert volumes(tmp_path / "c.h5") == {
        "case000": ("mr", True, {0, 1, 2}), "case001": ("mr", True, {0, 1, 2}),
        "case002": ("mr", True, {0, 1, 2}), "case100": ("mr", False, set())}
    assert [v.num_slices for v in cache.volumes] == [8, 8, 8, 8] and cache.attrs["dataset"] == "nnunet"


def test_labeled_test_cases_are_the_test_split_and_can_be_left_out(tmp_path):
    root = write_nnunet(tmp_path / "D", test=("case100", "case101"), labeled_test=("case101",),
                        dataset=nnunet_json(channels={"0": "CT"}))
    assert build("nnunet", tmp_path / "c.h5", "--path", str(root)).exit_code == 0
    assert volumes(tmp_path / "c.h5") == {
        "case000": ("ct", True, {0, 1, 2}), "case001": ("ct", True, {0, 1, 2}),
        "case002": ("ct", True, {0, 1, 2}), "case100": ("ct", False, set()),
        "case101": ("ct", True, {0, 1, 2})}
    assert {v.subject: v.split for v in SliceCache(tmp_path / "c.h5").volumes} == {
        "case000": "train", "case001": "train", "case002": "train", "case100": "train", "case101": "test"}
    assert build("nnunet", tmp_path / "tr.h5", "--path", str(root), "--no-include-test").exit_code == 0
    assert sorted(volumes(tmp_path / "tr.h5")) == ["case000", "case001", "case002"]


def test_v1_labels_and_nrrd_files(tmp_path):
    root = tmp_path / "D"
    for n, case in enumerate(("a", "b")):
        save_itk(root / "imagesTr" / f"{case}_0000.nrrd", scan(n), spacing=(1.25, 1.25, 3.0))
        save_itk(root / "labelsTr" / f"{case}.nrrd", label_map((1, 2)), spacing=(1.25, 1.25, 3.0))
    save(root / "imagesTr" / "stray_0000.nii.gz", scan(9))  # another file ending: not part of the dataset
    labels = {"0": "background", "1": "myocardium", "2": "blood pool"}  # nnU-Net v1 spelling
    (root / "dataset.json").write_text(json.dumps(nnunet_json(labels, {"0": "CT"}, training=2, ending=".nrrd")))
    assert build("nnunet", tmp_path / "c.h5", "--path", str(root)).exit_code == 0
    assert SliceCache(tmp_path / "c.h5").class_names == {0: "background", 1: "myocardium", 2: "blood pool"}
    assert volumes(tmp_path / "c.h5") == {"a": ("ct", True, {0, 1, 2}), "b": ("ct", True, {0, 1, 2})}


def test_without_dataset_json_labels_come_from_the_values_and_modality_is_detected(tmp_path):
    root = write_nnunet(tmp_path / "D", dataset=None)
    assert build("nnunet", tmp_path / "c.h5", "--path", str(root)).exit_code == 0
    assert SliceCache(tmp_path / "c.h5").class_names == {0: "background", 1: "label_1", 2: "label_2"}
    assert {v[0] for v in volumes(tmp_path / "c.h5").values()} == {"ct"}  # air at -1000 HU


def test_a_multi_channel_dataset_needs_channel(tmp_path):
    root = write_nnunet(tmp_path / "D", channels=2, dataset=nnunet_json(channels={"0": "CT", "1": "T2"}))
    line = error_line(build("nnunet", tmp_path / "c.h5", "--path", str(root)))
    assert line == (f"error: {root / 'dataset.json'}: channel_names declares 2 channels (0 CT, 1 T2); ssmtl's "
                    "networks take one channel per volume: choose one with --channel N")
    assert cache_files(tmp_path) == []
    # channel 1 (T2, MR-like intensities): its files are read and its name gives the modality
    assert build("nnunet", tmp_path / "c.h5", "--path", str(root), "--channel", "1").exit_code == 0
    cache = SliceCache(tmp_path / "c.h5")
    assert [(v.subject, v.modality) for v in cache.volumes] == [(c, "mr") for c in ("case000", "case001", "case002", "case100")]
    assert all(v.source.endswith(f"{v.subject}_0001.nii.gz") for v in cache.volumes)
    # without dataset.json the second channel's file is the error
    (root / "dataset.json").unlink()
    line = error_line(build("nnunet", tmp_path / "d.h5", "--path", str(root)))
    assert line.startswith(f"error: {root / 'imagesTr' / 'case000_0001.nii.gz'}: channel 1 of case 'case000'")


@pytest.mark.parametrize("problem", ["second channel", "undeclared value", "missing label", "region", "ignore",
                                     "numTraining", "file_ending", "orphan label", "decathlon json"])
def test_bad_input_is_one_line_naming_the_file(tmp_path, problem):
    root = tmp_path / "D"
    dataset = nnunet_json()
    if problem == "region":
        dataset["labels"] = {"background": 0, "whole heart": [1, 2], "aorta": 2}
    elif problem == "ignore":
        dataset["labels"] = {"background": 0, "left atrium": 1, "aorta": 2, "ignore": 3}
    elif problem == "numTraining":
        dataset["numTraining"] = 4
    elif problem == "file_ending":
        dataset["file_ending"] = ".png"
    elif problem == "decathlon json":
        dataset["modality"] = dataset.pop("channel_names")
    write_nnunet(root, dataset=dataset)
    named, words = root / "dataset.json", {"region": "is a region of values [1, 2]", "ignore": "no ignore label",
                                           "numTraining": "numTraining is 4 but imagesTr holds 3",
                                           "file_ending": "file_ending: '.png' is not a volume format",
                                           "decathlon json": "read it with --dataset msd"}.get(problem)
    if problem == "second channel":
        named = save(root / "imagesTr" / "case001_0001.nii.gz", scan(1))
        words = "channel 1 of case 'case001', but dataset.json declares channel_names 0 MRI"
    elif problem == "undeclared value":
        named = save(root / "labelsTr" / "case001.nii.gz", label_map((1, 7)))
        words = "label values [7] are not in the label mapping [1, 2]"
    elif problem == "missing label":
        (root / "labelsTr" / "case001.nii.gz").unlink()
        named, words = root / "labelsTr" / "case001.nii.gz", "file not found: the label of training case 'case001'"
    elif problem == "orphan label":
        named = save(root / "labelsTr" / "case009.nii.gz", label_map())
        words = "has no image in imagesTr (expected case009_0000.nii.gz)"
    line = error_line(build("nnunet", tmp_path / "c.h5", "--path", str(root)))
    assert line.startswith(f"error: {named}: ") and words in line, line
    assert cache_files(tmp_path) == []


# -- nnU-Net's naming in the nifti dataset ----------------------------------------------------


def test_nifti_pairs_channel_0000_images_with_their_case_label(tmp_path):
    root = write_nnunet(tmp_path / "D", dataset=None)
    result = build("nifti", tmp_path / "c.h5", "--images", str(root / "imagesTr"), "--labels", str(root / "labelsTr"))
    assert result.exit_code == 0, result.output
    assert volumes(tmp_path / "c.h5") == {c: ("ct", True, {0, 1, 2}) for c in ("case000", "case001", "case002")}
    assert build("nifti", tmp_path / "ts.h5", "--images", str(root / "imagesTs")).exit_code == 0
    assert [v.subject for v in SliceCache(tmp_path / "ts.h5").volumes] == ["case100"]


def test_nifti_refuses_a_second_channel(tmp_path):
    root = write_nnunet(tmp_path / "D", channels=2, dataset=None)
    line = error_line(build("nifti", tmp_path / "c.h5", "--images", str(root / "imagesTr"), "--labels", str(root / "labelsTr")))
    assert line == (f"error: {root / 'imagesTr' / 'case000_0001.nii.gz'}: channel 1 of the nnU-Net case 'case000' (its "
                    "channel 0 is case000_0000.nii.gz); ssmtl's networks take one channel per volume: keep one "
                    "channel's files (_0000) in the folder")


@pytest.mark.parametrize("stems, labels, cases", [
    (["case000_0000", "case001_0000"], [], {"case000_0000": ("case000", 0), "case001_0000": ("case001", 0)}),
    (["amos_0001", "amos_0004"], [], {}),                       # AMOS' own case numbers: no channel 0
    (["scan_0000", "scan_0001", "scan_0002"], [], {}),          # a numbered series of one name
    (["a_0000", "a_0001", "b_0000", "b_0001"], [], {"a_0000": ("a", 0), "a_0001": ("a", 1), "b_0000": ("b", 0),
                                                    "b_0001": ("b", 1)}),
    (["c_0000", "c_0001"], ["c"], {"c_0000": ("c", 0), "c_0001": ("c", 1)}),  # one two-channel case, its label named
    (["c_0000", "c_0001"], ["c", "c_0001"], {}),                # labels named after the files: not channels
    (["case000_0000", "notes"], [], {}),                        # not every file carries a channel
])
def test_when_names_are_nnunet_channels(stems, labels, cases):
    assert channel_cases(stems, labels) == cases


def test_numbered_files_stay_subjects_in_the_nifti_dataset(tmp_path):
    for n in range(3):
        save(tmp_path / "img" / f"scan_{n:04d}.nii.gz", scan(n))
        save(tmp_path / "lab" / f"scan_{n:04d}.nii.gz", label_map((1,)))
    assert build("nifti", tmp_path / "c.h5", "--images", str(tmp_path / "img"), "--labels", str(tmp_path / "lab")).exit_code == 0
    assert [v.subject for v in SliceCache(tmp_path / "c.h5").volumes] == ["scan_0000", "scan_0001", "scan_0002"]


def test_the_toolkit_error_names_the_second_channel():
    from pathlib import Path

    from ssmtl.api import FileKind, image_cases

    kind = FileKind("NIfTI files", (".nii.gz",))
    images = [Path("d/a_0000.nii.gz"), Path("d/a_0001.nii.gz"), Path("d/b_0000.nii.gz"), Path("d/b_0001.nii.gz")]
    with pytest.raises(InputFileError) as info:
        image_cases(images, kind)
    assert info.value.path == str(Path("d/a_0001.nii.gz"))
    assert image_cases(images[::2], kind) == {images[0]: "a", images[2]: "b"}
