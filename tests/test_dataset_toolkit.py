"""The public dataset toolkit (``ssmtl.api``), tested through its public names only.

The last part builds a tiny third-party folder dataset (NumPy files) from these
names, the way docs/plugins.md shows it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
from pydantic import ValidationError

from ssmtl.api import (
    AFFINE_TOLERANCE_MM,
    affine_from_geometry,
    check_affine,
    check_directory,
    check_label_values,
    check_same_grid,
    class_name_table,
    collect_label_values,
    ConfigError,
    detect_modality,
    FileKind,
    folder_source,
    FolderDatasetConfig,
    image_key,
    ImageLabelItem,
    InputFileError,
    integer_labels,
    is_hidden,
    label_key,
    LabeledDatasetConfig,
    LabelIndex,
    lps_to_canonical,
    map_labels,
    MAX_CLASSES,
    pair_files,
    spatial_shape,
    split_same_folder,
    subject_name,
    unique_subjects,
    walk_files,
)

NIFTI = FileKind("NIfTI files", (".nii", ".nii.gz"))


def touch(folder: Path, *names: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")
    return [folder / name for name in names]


def names(pairs) -> list[tuple[str, str | None]]:
    return [(image.name, label.name if label else None) for image, label in pairs]


# -- files ------------------------------------------------------------------------------


def test_file_kind_stems_and_extensions():
    assert NIFTI.stem(Path("a.nii.gz")) == "a" and NIFTI.stem(Path("CASE01.NII.GZ")) == "CASE01"
    assert NIFTI.extension(Path("CASE01.NII.GZ")) == ".NII.GZ" and NIFTI.extension(Path("a.nii")) == ".nii"
    assert NIFTI.stem(Path("series_folder")) == "series_folder"  # no extension: the whole name
    assert not NIFTI.has_extension(Path("a.nii.gz.bak"))
    assert NIFTI.describe() == "NIfTI files (.nii, .nii.gz)"


def test_listing_skips_hidden_files_folders_and_other_extensions(tmp_path):
    touch(tmp_path, "b.nii.gz", "A.NII", "._b.nii.gz", ".hidden.nii", "notes.txt", "b.nii.gz.bak")
    (tmp_path / "dir.nii").mkdir()
    assert [p.name for p in NIFTI.list_in(tmp_path)] == ["A.NII", "b.nii.gz"]
    assert is_hidden(Path("._b.nii.gz")) and not is_hidden(Path("b.nii.gz"))


def test_listing_errors_name_the_folder(tmp_path):
    with pytest.raises(InputFileError, match="directory not found") as missing:
        NIFTI.list_in(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(missing.value)
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputFileError, match=r"not a directory \(expected a folder of scans\)"):
        check_directory(tmp_path / "file", expected="expected a folder of scans")
    touch(tmp_path / "empty", "readme.txt")
    with pytest.raises(InputFileError, match=r"no NIfTI files \(\.nii, \.nii\.gz\) found"):
        NIFTI.list_in(tmp_path / "empty")


def test_walk_files_is_sorted_and_skips_hidden(tmp_path):
    touch(tmp_path / "b", "2", "1", ".DS_Store")
    touch(tmp_path / ".git", "config")
    touch(tmp_path, "top")
    found = [p.relative_to(tmp_path).as_posix() for p in walk_files(tmp_path)]
    assert found == ["top", "b/1", "b/2"]


# -- pairing ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "stem, subject, image, label",
    [
        ("ct_1001_image", "ct_1001", "ct_1001", None),
        ("Case-IMG", "Case", "case", None),
        ("ct_1001_label", "ct_1001_label", "ct_1001_label", "ct_1001"),
        ("p7-Seg", "p7-Seg", "p7-seg", "p7"),
        ("liver_mask", "liver_mask", "liver_mask", "liver"),
        ("segment", "segment", "segment", None),  # "seg" is a suffix only after _ or -
    ],
)
def test_keys_and_subject_names(stem, subject, image, label):
    assert (subject_name(stem), image_key(stem), label_key(stem)) == (subject, image, label)


def test_pairing_by_same_name_suffix_and_image_suffix(tmp_path):
    touch(tmp_path / "img", "case01.nii.gz", "case02.nii.gz", "ct_3_image.nii", "unlabeled.nii.gz")
    touch(tmp_path / "lab", "case01.nii.gz", "case02-SEG.nii.gz", "ct_3_label.nii", "stray_gt.nii.gz")
    pairs = pair_files(tmp_path / "img", tmp_path / "lab", NIFTI)
    assert names(pairs) == [
        ("case01.nii.gz", "case01.nii.gz"),
        ("case02.nii.gz", "case02-SEG.nii.gz"),
        ("ct_3_image.nii", "ct_3_label.nii"),
        ("unlabeled.nii.gz", None),
    ]


def test_the_same_name_wins_over_a_suffixed_label(tmp_path):
    labels = touch(tmp_path, "a_seg.nii", "a.nii")
    index = LabelIndex.build(labels, NIFTI, tmp_path)
    assert index.find(Path("a.nii.gz")).name == "a.nii"
    assert index.find(Path("a_image.nii")).name == "a_seg.nii"
    assert index.find(Path("b.nii")) is None


def test_two_labels_for_one_image_are_ambiguous(tmp_path):
    touch(tmp_path / "img", "case01.nii.gz")
    touch(tmp_path / "lab", "case01_seg.nii.gz", "case01_mask.nii.gz")
    with pytest.raises(InputFileError, match="ambiguous label files for 'case01'") as info:
        pair_files(tmp_path / "img", tmp_path / "lab", NIFTI)
    assert "case01_mask.nii.gz" in str(info.value) and "case01_seg.nii.gz" in str(info.value)


def test_same_folder_layout(tmp_path):
    files = touch(tmp_path, "a_image.nii.gz", "a_label.nii.gz", "b.nii", "b_gt.nii", "lonely_seg.nii")
    images, labels = split_same_folder(files, NIFTI)
    assert [p.name for p in images] == ["a_image.nii.gz", "b.nii", "lonely_seg.nii"]  # no "lonely" image
    assert [p.name for p in labels] == ["a_label.nii.gz", "b_gt.nii"]
    assert names(pair_files(tmp_path, tmp_path, NIFTI)) == [
        ("a_image.nii.gz", "a_label.nii.gz"), ("b.nii", "b_gt.nii"), ("lonely_seg.nii", None)]
    # without a labels folder the label maps are still not taken for images
    assert names(pair_files(tmp_path, None, NIFTI)) == [("a_image.nii.gz", None), ("b.nii", None),
                                                         ("lonely_seg.nii", None)]


def test_no_image_with_a_label_is_an_error_with_an_example(tmp_path):
    touch(tmp_path / "img", "case01.nii")
    touch(tmp_path / "lab", "patient7_label.nii")
    with pytest.raises(InputFileError, match="no label file matches any of the 1 images") as info:
        pair_files(tmp_path / "img", tmp_path / "lab", NIFTI)
    assert "case01_label.nii for image case01.nii" in str(info.value) and str(tmp_path / "lab") in str(info.value)


def test_two_images_of_one_subject_are_an_error(tmp_path):
    images = touch(tmp_path, "a.nii", "a_image.nii.gz", "b_img.nii")
    assert unique_subjects(images[2:], NIFTI, tmp_path) == ["b"]
    with pytest.raises(InputFileError, match="two images for subject 'a': a.nii and a_image.nii.gz") as info:
        unique_subjects(images, NIFTI, tmp_path)
    assert str(tmp_path) in str(info.value)


# -- labels -----------------------------------------------------------------------------


def test_map_labels_matches_a_hand_written_mapping():
    raw = np.array([[0, 205, 500], [820, 205, 0]], dtype=np.int16)
    expected = np.array([[0, 1, 2], [3, 1, 0]], dtype=np.uint8)  # 205 -> 1, 500 -> 2, 820 -> 3
    mapped = map_labels(raw, (205, 500, 820, 850), "lab.nii")
    assert mapped.dtype == np.uint8
    np.testing.assert_array_equal(mapped, expected)


def test_an_unknown_label_value_names_the_file_and_the_value():
    with pytest.raises(InputFileError, match=r"label values \[421\] are not in the label mapping \[205, 500\]") as info:
        map_labels(np.array([0, 205, 421]), (205, 500), Path("/data/lab7.nii"))
    assert info.value.path == "/data/lab7.nii"


def test_collect_label_values_reads_every_file():
    stored = {Path("a"): np.array([0, 3, 1]), Path("b"): np.array([[7, 0], [3, 3]])}
    assert collect_label_values(list(stored), lambda path: (stored[path], np.eye(4))) == (1, 3, 7)
    too_many = {Path("/x/c"): np.arange(MAX_CLASSES + 2)}
    with pytest.raises(InputFileError, match="256 distinct label values found; at most 255"):
        collect_label_values(list(too_many), lambda path: (too_many[path], np.eye(4)))


def test_class_name_table():
    assert class_name_table((205, 500)) == {0: "background", 1: "label_205", 2: "label_500"}
    assert class_name_table((205, 500), ["lv", "rv"]) == {0: "background", 1: "lv", 2: "rv"}
    with pytest.raises(ConfigError, match="class_names has 1 names but there are 2 label values") as info:
        class_name_table((205, 500), ["lv"])
    assert info.value.rows[0][0] == "class_names"


def test_integer_labels_rounds_floats_and_refuses_nan():
    np.testing.assert_array_equal(integer_labels(np.array([0.0, 0.9999, 2.0001]), "l"), [0, 1, 2])
    as_ints = np.array([1, 2], dtype=np.uint8)
    assert integer_labels(as_ints, "l") is as_ints
    with pytest.raises(InputFileError, match="NaN, infinite or complex"):
        integer_labels(np.array([0.0, np.nan]), "l")


@pytest.mark.parametrize(
    "values, message",
    [([], "must not be empty"), ([0, 1], "must not contain 0"), ([1, 2, 1], "duplicates"),
     (list(range(1, 257)), "at most 255")],
)
def test_check_label_values(values, message):
    with pytest.raises(ValueError, match=message):
        check_label_values(values)


# -- grids ------------------------------------------------------------------------------


def test_spatial_shape():
    assert spatial_shape((4, 5, 6, 1, 1), "v") == (4, 5, 6)
    for shape, message in [((4, 5), r"got shape \(4, 5\)"), ((4, 5, 6, 2), "4D image"), ((4, 0, 6), "zero-length")]:
        with pytest.raises(InputFileError, match=message):
            spatial_shape(shape, "v.nii")


def test_check_same_grid():
    affine = np.diag([0.8, 0.8, 2.0, 1.0])
    check_same_grid("img", (4, 5, 6), affine, "lab", (4, 5, 6), affine + 0.9 * AFFINE_TOLERANCE_MM)
    with pytest.raises(InputFileError, match=r"label shape \(4, 5, 7\) does not match image shape \(4, 5, 6\) of img"):
        check_same_grid("img", (4, 5, 6), affine, "lab", (4, 5, 7), affine)
    shifted = affine.copy()
    shifted[0, 3] = 0.5
    with pytest.raises(InputFileError, match="differs from the affine of img by up to 0.5 mm") as info:
        check_same_grid("img", (4, 5, 6), affine, Path("lab.nii"), (4, 5, 6), shifted)
    assert info.value.path == "lab.nii"


# -- orientation and modality -------------------------------------------------------------


def test_affine_from_geometry_and_lps_reorientation():
    direction = np.eye(3)  # voxel axes along L, P, S
    affine = affine_from_geometry(direction, (2.0, 3.0, 4.0), (10.0, 20.0, 30.0))
    np.testing.assert_array_equal(affine, [[2, 0, 0, 10], [0, 3, 0, 20], [0, 0, 4, 30], [0, 0, 0, 1]])
    data = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    array, spacing, ras = lps_to_canonical(data, affine, "series")
    # LPS axes point left and posterior: canonical RAS flips x and y, keeps z
    np.testing.assert_array_equal(array, data[::-1, ::-1, :])
    assert spacing == (2.0, 3.0, 4.0)
    np.testing.assert_allclose(ras[:3, 3], [-10 - 2.0, -20 - 6.0, 30])  # the old last voxel is the new origin
    with pytest.raises(InputFileError, match="singular"):
        check_affine(np.diag([1.0, 0.0, 1.0, 1.0]), "bad")


def test_detect_modality():
    ct = np.full((8, 8, 8), 40.0, dtype=np.float32)
    ct[0] = -1000.0  # air in HU
    assert detect_modality(ct) == "ct"
    assert detect_modality(np.abs(ct)) == "mr"


# -- configs ----------------------------------------------------------------------------


class ToyConfig(LabeledDatasetConfig):
    name: Literal["toy"] = "toy"


@pytest.mark.parametrize(
    "options, message",
    [({"label_values": [0, 1]}, "must not contain 0"), ({"label_values": [2, 2]}, "duplicates"),
     ({"label_values": []}, "must not be empty"),
     ({"label_values": [1, 2], "class_names": ["one"]}, "class_names has 1 names but there are 2")],
)
def test_labeled_config_validation(options, message):
    with pytest.raises(ValidationError, match=message):
        ToyConfig(**options)


def test_label_mapping_configured_collected_or_none():
    read = {Path("a"): np.array([0, 9, 4])}.__getitem__

    def reader(path):
        return read(path), np.eye(4)

    assert ToyConfig(label_values=[9, 4, 5]).label_mapping([Path("a")], reader) == (
        (9, 4, 5), {0: "background", 1: "label_9", 2: "label_4", 3: "label_5"})
    assert ToyConfig(class_names=["x", "y"]).label_mapping([Path("a")], reader) == (
        (4, 9), {0: "background", 1: "x", 2: "y"})
    assert ToyConfig().label_mapping([], reader) == ((), {})
    with pytest.raises(ConfigError, match="class_names has 3 names but there are 2"):
        ToyConfig(class_names=["x", "y", "z"]).label_mapping([Path("a")], reader)


# -- a third-party folder dataset built from the toolkit ----------------------------------

NPY_FILES = FileKind("NumPy files", (".npy",))


class NpyFolderConfig(FolderDatasetConfig):
    name: Literal["npy-folder"] = "npy-folder"


@dataclass
class NpyItem(ImageLabelItem):
    """One .npy volume (x, y, z), already in RAS order with 1 mm voxels."""

    def read_image(self):
        image = np.load(self.image_path).astype(np.float32)
        spatial_shape(image.shape, self.image_path)
        return image, (1.0, 1.0, 1.0), np.eye(4), None

    @staticmethod
    def read_label(path):
        return integer_labels(np.load(path), path), np.eye(4)


def build_source(config: NpyFolderConfig):
    return folder_source(config, NPY_FILES, NpyItem, "NumPy")


def test_a_folder_dataset_from_the_toolkit(tmp_path):
    image = np.full((4, 5, 3), -1000.0)
    label = np.zeros((4, 5, 3), dtype=np.int16)
    label[1:3, 1:3, :] = 7
    label[0, 0, 0] = 3
    np.save(tmp_path / "p1_image.npy", image)
    np.save(tmp_path / "p1_label.npy", label.astype(np.float32))  # float labels are rounded to integers
    np.save(tmp_path / "p2.npy", image + 1200)  # unlabeled, MR-like
    source = build_source(NpyFolderConfig(images=tmp_path, labels=tmp_path))
    assert [(i.subject, i.label_path.name if i.label_path else None) for i in source.items] == [
        ("p1", "p1_label.npy"), ("p2", None)]
    assert source.class_names == {0: "background", 1: "label_3", 2: "label_7"}
    assert source.description == f"2 NumPy volumes from {tmp_path} (1 labeled)"
    first, second = (item.load() for item in source.items)
    assert (first.modality, second.modality) == ("ct", "mr") and second.label is None
    assert first.label[0, 0, 0] == 1 and first.label[1, 1, 0] == 2 and first.label.sum() == 1 + 2 * 12


def test_folder_source_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"the npy-folder dataset needs an images directory \(--images DIR\)"):
        build_source(NpyFolderConfig())
    np.save(tmp_path / "a.npy", np.zeros((4, 5, 3)))
    np.save(tmp_path / "a_seg.npy", np.zeros((9, 5, 3), dtype=np.int8))
    [item] = build_source(NpyFolderConfig(images=tmp_path, labels=tmp_path)).items
    with pytest.raises(InputFileError, match=r"label shape \(9, 5, 3\) does not match") as info:
        item.load()
    assert info.value.path == str(tmp_path / "a_seg.npy")


# -- the facade -------------------------------------------------------------------------


def test_every_toolkit_name_is_exported_and_documented():
    import ast
    import inspect

    import ssmtl.api as api

    from ssmtl.api._lazy import stub_names

    facade = Path(api.__file__)
    where = stub_names(facade.with_suffix(".pyi"))  # the one list of public names: name -> module:name
    missing, undocumented, seen = [], [], 0
    for path in sorted((facade.parent / "datasets").glob("[!_]*.py")):
        for node in ast.parse(path.read_text()).body:  # what the module itself defines at top level
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names = [node.name]
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names = [t.id for t in targets if isinstance(t, ast.Name)]
            else:
                continue
            for name in (n for n in names if not n.startswith("_")):
                seen += 1
                if where.get(name) != f"ssmtl.api.datasets.{path.stem}:{name}":
                    missing.append(f"{path.stem}.{name}")
                value = getattr(api, name, None)
                if (inspect.isfunction(value) or inspect.isclass(value)) and not inspect.getdoc(value):
                    undocumented.append(f"{path.stem}.{name}")
    assert missing == [] and undocumented == []
    assert seen == sum(target.startswith("ssmtl.api.datasets.") for target in where.values())  # no stale entries
