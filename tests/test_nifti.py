"""Tests for the ``nifti`` dataset plugin: pairing, reading, reorientation, bad input."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pydantic import ValidationError

from ssmtl.api.errors import ConfigError, InputFileError
from ssmtl.data.preprocess import PreprocessConfig, preprocess_volume
from ssmtl.api.specs import DatasetSpec
from ssmtl.plugins.datasets import nifti
from ssmtl.api import detect_modality
from ssmtl.plugins.datasets.nifti import NiftiConfig, NiftiItem, build_source

# Voxel axes point to patient left and posterior (LPS-like) with 2 mm slices, so
# canonical RAS reorientation has to flip the first two axes.
LPS_AFFINE = np.diag([-1.0, -1.0, 2.0, 1.0])
SHAPE = (40, 30, 8)


def save(path: Path, array: np.ndarray, affine: np.ndarray = LPS_AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def ct_array(shape=SHAPE) -> np.ndarray:
    """Air with a bright cube; the cube occupies voxels [12:28, 9:21, :]."""
    image = np.full(shape, -1000, dtype=np.int16)
    image[12:28, 9:21, :] = 400
    return image


def cube_label(shape=SHAPE, value=1) -> np.ndarray:
    label = np.zeros(shape, dtype=np.uint8)
    label[12:28, 9:21, :] = value
    return label


def build(**kwargs):
    return build_source(NiftiConfig(**kwargs))


def message(info: pytest.ExceptionInfo) -> str:
    return str(info.value)


# -- reading and reorientation -------------------------------------------------------


def test_reorientation_moves_marker_to_canonical_position(tmp_path):
    image = np.zeros(SHAPE, dtype=np.float32)
    image[1, 2, 3] = 1000.0
    path = save(tmp_path / "img" / "case01.nii.gz", image)
    raw = build(images=tmp_path / "img").items[0].load()
    assert raw.image.shape == SHAPE and raw.image.dtype == np.float32
    # x and y are flipped by the reorientation, z is kept.
    assert np.argwhere(raw.image == 1000.0).tolist() == [[38, 27, 3]]
    assert raw.spacing == (1.0, 1.0, 2.0)
    np.testing.assert_allclose(np.diag(raw.affine), [1.0, 1.0, 2.0, 1.0])
    # The canonical affine maps the marker to the same world point as the original.
    world = LPS_AFFINE @ [1, 2, 3, 1]
    np.testing.assert_allclose(raw.affine @ [38, 27, 3, 1], world)
    assert str(path) == build(images=tmp_path / "img").items[0].source


def test_scaled_integer_data_is_read_as_float32(tmp_path):
    img = nib.Nifti1Image(np.full(SHAPE, 10, dtype=np.int16), LPS_AFFINE)
    img.header.set_slope_inter(2.0, -1024.0)
    nib.save(img, str(tmp_path / "scaled.nii.gz"))
    raw = build(images=tmp_path).items[0].load()
    assert raw.image.dtype == np.float32 and np.all(raw.image == -1004.0)


def test_trailing_singleton_fourth_dimension_is_squeezed(tmp_path):
    save(tmp_path / "case.nii.gz", ct_array()[..., None])
    raw = build(images=tmp_path).items[0].load()
    assert raw.image.shape == SHAPE and raw.spacing == (1.0, 1.0, 2.0)


def test_modality_detection_and_override(tmp_path):
    save(tmp_path / "ct.nii.gz", ct_array())
    save(tmp_path / "mr.nii.gz", np.random.default_rng(0).uniform(0, 800, SHAPE).astype(np.float32))
    detected = {item.subject: item.load().modality for item in build(images=tmp_path).items}
    assert detected == {"ct": "ct", "mr": "mr"}
    forced = {item.subject: item.load().modality for item in build(images=tmp_path, modality="mr").items}
    assert forced == {"ct": "mr", "mr": "mr"}


def test_detect_modality_threshold():
    volume = np.zeros((20, 20, 20), dtype=np.float32)
    assert detect_modality(volume) == "mr"
    volume[:2] = -1000.0  # 10% air is well above the 0.5th percentile
    assert detect_modality(volume) == "ct"


def test_end_to_end_label_aligned_after_preprocessing(tmp_path):
    save(tmp_path / "images" / "case01.nii.gz", ct_array())
    save(tmp_path / "labels" / "case01.nii.gz", cube_label())
    source = build(images=tmp_path / "images", labels=tmp_path / "labels")
    item = source.items[0]
    raw = item.load()
    out = preprocess_volume(raw, PreprocessConfig(size=64, spacing=0.8), item.source)
    assert out.image.shape == (8, 64, 64) and out.spacing == pytest.approx((2.0, 0.8, 0.8))
    # The cube is 400 HU, i.e. 0.65 after the default (-250, 750) window.
    assert out.image[out.label == 1].mean() > 0.55
    assert out.image[out.label == 0].mean() < 0.05


def test_items_are_picklable(tmp_path):
    save(tmp_path / "case01.nii.gz", ct_array())
    item = build(images=tmp_path).items[0]
    clone = pickle.loads(pickle.dumps(item))
    assert isinstance(clone, NiftiItem) and clone == item
    assert np.array_equal(clone.load().image, item.load().image)


# -- label values ----------------------------------------------------------------------


def test_label_values_are_collected_and_mapped(tmp_path):
    label = cube_label(value=205)
    label = label.astype(np.int16)
    label[0:4] = 500
    save(tmp_path / "img" / "a.nii.gz", ct_array())
    save(tmp_path / "img" / "b.nii.gz", ct_array())
    save(tmp_path / "lab" / "a.nii.gz", label)
    save(tmp_path / "lab" / "b.nii.gz", np.where(label == 500, 0, label).astype(np.int16))
    source = build(images=tmp_path / "img", labels=tmp_path / "lab")
    assert source.class_names == {0: "background", 1: "label_205", 2: "label_500"}
    raw = source.items[0].load()
    assert raw.label.dtype == np.uint8
    # Canonical flips x, so raw rows 0:4 land at 36:40.
    assert set(np.unique(raw.label[36:])) == {2}
    assert set(np.unique(raw.label)) == {0, 1, 2}
    assert np.array_equal(raw.label == 1, np.flip(label == 205, (0, 1)))


def test_explicit_label_values_and_class_names(tmp_path):
    label = cube_label(value=205).astype(np.int16)
    label[0:4] = 500
    save(tmp_path / "img" / "a.nii.gz", ct_array())
    save(tmp_path / "lab" / "a.nii.gz", label)
    source = build(
        images=tmp_path / "img",
        labels=tmp_path / "lab",
        label_values=[500, 205],
        class_names=["myocardium", "left ventricle"],
    )
    assert source.class_names == {0: "background", 1: "myocardium", 2: "left ventricle"}
    raw = source.items[0].load()
    assert np.all(raw.label[36:] == 1) and raw.label[20, 15, 0] == 2


def test_float_labels_are_rounded(tmp_path):
    save(tmp_path / "img" / "a.nii.gz", ct_array())
    save(tmp_path / "lab" / "a.nii.gz", cube_label().astype(np.float32) * 2.0000001)
    raw = build(images=tmp_path / "img", labels=tmp_path / "lab").items[0].load()
    assert set(np.unique(raw.label)) == {0, 1}


def test_unknown_label_value_raises(tmp_path):
    label = cube_label(value=205).astype(np.int16)
    label[0, 0, 0] = 777
    save(tmp_path / "img" / "a.nii.gz", ct_array())
    label_path = save(tmp_path / "lab" / "a.nii.gz", label)
    item = build(images=tmp_path / "img", labels=tmp_path / "lab", label_values=[205]).items[0]
    with pytest.raises(InputFileError, match=r"\[777\]") as info:
        item.load()
    assert str(label_path) in message(info)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"label_values": [0, 1]},
        {"label_values": [1, 1]},
        {"label_values": []},
        {"label_values": [1, 2], "class_names": ["only one"]},
        {"unknown_option": True},
    ],
)
def test_config_validation(kwargs):
    with pytest.raises(ValidationError):
        NiftiConfig(**kwargs)


def test_class_names_must_match_collected_values(tmp_path):
    save(tmp_path / "img" / "a.nii.gz", ct_array())
    save(tmp_path / "lab" / "a.nii.gz", cube_label())
    with pytest.raises(ConfigError, match="class_names"):
        build(images=tmp_path / "img", labels=tmp_path / "lab", class_names=["a", "b"])


# -- pairing ---------------------------------------------------------------------------


def pairs(source) -> dict[str, str | None]:
    return {item.subject: item.label_path.name if item.label_path else None for item in source.items}


def test_pairing_by_same_name_and_label_suffix(tmp_path):
    for name in ("case01", "case02", "case03"):
        save(tmp_path / "img" / f"{name}.nii.gz", ct_array())
    save(tmp_path / "lab" / "case01.nii.gz", cube_label())
    save(tmp_path / "lab" / "case02_seg.nii.gz", cube_label())
    save(tmp_path / "lab" / "case03-label.nii", cube_label())
    source = build(images=tmp_path / "img", labels=tmp_path / "lab")
    assert pairs(source) == {
        "case01": "case01.nii.gz",
        "case02": "case02_seg.nii.gz",
        "case03": "case03-label.nii",
    }


def test_pairing_image_and_label_suffixes(tmp_path):
    """MM-WHS naming: ct_1001_image.nii.gz <-> ct_1001_label.nii.gz."""
    for case in ("ct_1001", "ct_1002"):
        save(tmp_path / "img" / f"{case}_image.nii.gz", ct_array())
        save(tmp_path / "lab" / f"{case}_label.nii.gz", cube_label())
    source = build(images=tmp_path / "img", labels=tmp_path / "lab")
    assert pairs(source) == {"ct_1001": "ct_1001_label.nii.gz", "ct_1002": "ct_1002_label.nii.gz"}


def test_labels_in_the_same_directory(tmp_path):
    for case in ("ct_1001", "ct_1002"):
        save(tmp_path / f"{case}_image.nii.gz", ct_array())
        save(tmp_path / f"{case}_label.nii.gz", cube_label())
    source = build(images=tmp_path, labels=tmp_path)
    assert pairs(source) == {"ct_1001": "ct_1001_label.nii.gz", "ct_1002": "ct_1002_label.nii.gz"}
    assert source.items[0].load().label is not None
    # Without --labels the label maps are still not mistaken for images.
    assert pairs(build(images=tmp_path)) == {"ct_1001": None, "ct_1002": None}


def test_unlabeled_volumes_are_allowed(tmp_path):
    save(tmp_path / "img" / "case01.nii.gz", ct_array())
    save(tmp_path / "img" / "case02.nii.gz", ct_array())
    save(tmp_path / "lab" / "case01_gt.nii.gz", cube_label())
    source = build(images=tmp_path / "img", labels=tmp_path / "lab")
    assert pairs(source) == {"case01": "case01_gt.nii.gz", "case02": None}
    assert source.items[1].load().label is None
    assert source.class_names == {0: "background", 1: "label_1"}


def test_no_labels_gives_unlabeled_source(tmp_path):
    save(tmp_path / "case01.nii", ct_array())
    source = build(images=tmp_path)
    assert pairs(source) == {"case01": None} and source.class_names == {}
    assert source.items[0].load().label is None


def test_no_image_pairs_with_any_label(tmp_path):
    save(tmp_path / "img" / "case01.nii.gz", ct_array())
    save(tmp_path / "lab" / "patient7_label.nii.gz", cube_label())
    with pytest.raises(InputFileError, match="no label file matches") as info:
        build(images=tmp_path / "img", labels=tmp_path / "lab")
    assert str(tmp_path / "lab") in message(info)


def test_ambiguous_labels_raise(tmp_path):
    save(tmp_path / "img" / "case01.nii.gz", ct_array())
    save(tmp_path / "lab" / "case01_seg.nii.gz", cube_label())
    save(tmp_path / "lab" / "case01_mask.nii.gz", cube_label())
    with pytest.raises(InputFileError, match="ambiguous"):
        build(images=tmp_path / "img", labels=tmp_path / "lab")


def test_non_nifti_and_hidden_files_are_ignored(tmp_path):
    save(tmp_path / "case01.nii.gz", ct_array())
    (tmp_path / "README.txt").write_text("not an image")
    (tmp_path / "case02.nii.gz.bak").write_bytes(b"junk")
    (tmp_path / "._case01.nii.gz").write_bytes(b"macOS resource fork")
    (tmp_path / "subdir.nii").mkdir()
    assert [item.subject for item in build(images=tmp_path).items] == ["case01"]


def test_upper_case_extension(tmp_path):
    save(tmp_path / "CASE01.NII.GZ", ct_array())
    assert [item.subject for item in build(images=tmp_path).items] == ["CASE01"]


# -- bad input ---------------------------------------------------------------------------


def test_images_directory_is_required():
    with pytest.raises(ConfigError, match="images"):
        build()


def test_missing_directory(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(InputFileError, match="directory not found") as info:
        build(images=missing)
    assert str(missing) in message(info)


def test_missing_labels_directory(tmp_path):
    save(tmp_path / "img" / "case01.nii.gz", ct_array())
    with pytest.raises(InputFileError, match="directory not found") as info:
        build(images=tmp_path / "img", labels=tmp_path / "lab")
    assert str(tmp_path / "lab") in message(info)


def test_empty_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here")
    with pytest.raises(InputFileError, match=r"no NIfTI files \(\.nii, \.nii\.gz\) found") as info:
        build(images=tmp_path)
    assert str(tmp_path) in message(info)


def load_single(tmp_path: Path, name: str, array: np.ndarray):
    path = save(tmp_path / name, array)
    return path, build(images=tmp_path).items[0]


def test_2d_nifti_raises(tmp_path):
    path, item = load_single(tmp_path, "slice.nii.gz", np.zeros((40, 30), dtype=np.float32))
    with pytest.raises(InputFileError, match=r"expected a 3D volume, got shape \(40, 30\)") as info:
        item.load()
    assert str(path) in message(info)


def test_real_4d_nifti_raises(tmp_path):
    path, item = load_single(tmp_path, "dynamic.nii.gz", np.zeros((40, 30, 8, 3), dtype=np.float32))
    with pytest.raises(InputFileError, match=r"4D.*\(40, 30, 8, 3\)") as info:
        item.load()
    assert str(path) in message(info)


def test_zero_length_axis_raises(tmp_path):
    path, item = load_single(tmp_path, "empty.nii", np.zeros((40, 0, 8), dtype=np.float32))
    with pytest.raises(InputFileError, match="zero-length") as info:
        item.load()
    assert str(path) in message(info)


def test_truncated_gz_raises(tmp_path):
    path = save(tmp_path / "case01.nii.gz", np.random.default_rng(0).normal(size=SHAPE).astype(np.float32))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    item = build(images=tmp_path).items[0]
    with pytest.raises(InputFileError, match="cannot read NIfTI") as info:
        item.load()
    assert str(path) in message(info)


def test_truncated_uncompressed_nii_raises(tmp_path):
    path = save(tmp_path / "case01.nii", np.zeros(SHAPE, dtype=np.float32))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    # the header's claim is checked against the file before any voxel is read
    with pytest.raises(InputFileError, match="truncated") as info:
        build(images=tmp_path).items[0].load()
    assert str(path) in message(info)


def test_garbage_file_raises(tmp_path):
    path = tmp_path / "case01.nii.gz"
    path.write_bytes(gzip.compress(b"this is not a NIfTI header" * 10))
    with pytest.raises(InputFileError, match="cannot read NIfTI") as info:
        build(images=tmp_path).items[0].load()
    assert str(path) in message(info)


def test_nan_voxels_raise(tmp_path):
    image = np.zeros(SHAPE, dtype=np.float32)
    image[5, 5, 5] = np.nan
    path, item = load_single(tmp_path, "case01.nii.gz", image)
    with pytest.raises(InputFileError, match="NaN") as info:
        item.load()
    assert str(path) in message(info)


def test_label_shape_mismatch_raises(tmp_path):
    save(tmp_path / "img" / "case01.nii.gz", ct_array())
    label_path = save(tmp_path / "lab" / "case01_label.nii.gz", np.zeros((40, 30, 7), dtype=np.uint8))
    item = build(images=tmp_path / "img", labels=tmp_path / "lab").items[0]
    with pytest.raises(InputFileError, match=r"\(40, 30, 7\).*\(40, 30, 8\)") as info:
        item.load()
    assert str(label_path) in message(info)


def test_label_affine_mismatch_raises(tmp_path):
    save(tmp_path / "img" / "case01.nii.gz", ct_array())
    shifted = LPS_AFFINE.copy()
    shifted[:3, 3] = [5.0, 0.0, 0.0]
    label_path = save(tmp_path / "lab" / "case01.nii.gz", cube_label(), affine=shifted)
    item = build(images=tmp_path / "img", labels=tmp_path / "lab").items[0]
    with pytest.raises(InputFileError, match="affine") as info:
        item.load()
    assert str(label_path) in message(info)


def test_label_in_other_orientation_is_accepted(tmp_path):
    """A label stored RAS next to an LPS image is the same grid after reorientation."""
    save(tmp_path / "img" / "case01.nii.gz", ct_array())
    ras = LPS_AFFINE @ np.array([[-1, 0, 0, 39], [0, -1, 0, 29], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=float)
    save(tmp_path / "lab" / "case01.nii.gz", np.flip(cube_label(), (0, 1)).copy(), affine=ras)
    raw = build(images=tmp_path / "img", labels=tmp_path / "lab").items[0].load()
    assert raw.image[raw.label == 1].min() == 400 and raw.image[raw.label == 0].max() == -1000


# -- registration ------------------------------------------------------------------------


def test_registers_nifti_dataset():
    (spec,) = nifti.ssmtl_register_datasets()
    assert isinstance(spec, DatasetSpec)
    assert spec.name == "nifti" and spec.config_model is NiftiConfig and spec.factory is build_source
    assert NiftiConfig().name == "nifti"
    assert all(f.description for f in NiftiConfig.model_fields.values())
