"""The HDF5 slice cache: layout, atomic writes, readers, and the NIfTI -> cache pipeline."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest

from ssmtl.data.build import build_cache
from ssmtl.data.cache import FORMAT, FORMAT_VERSION, SliceCache
from ssmtl.data.cache_writer import TMP_PREFIX, CacheWriter, check_output_path
from ssmtl.api.errors import ConfigError, InputFileError, SsmtlError
from ssmtl.data.preprocess import PreprocessConfig
from ssmtl.host.registry import build_registry

# cache_factory (conftest) fills slice d of volume v with 100 * v + d, labels d % 3,
# spacing (2 + v, 1.5, 1.5), modality ct for even v and mr for odd v.


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def temporaries(directory: Path) -> list[Path]:
    return sorted(Path(directory).glob(f"{TMP_PREFIX}*"))


@pytest.fixture(scope="module")
def registry():
    return build_registry(external=False)


# -- layout round trip --------------------------------------------------------------------


def test_round_trip_layout_and_attrs(cache_factory, tmp_path):
    depths = [4, 1, 6]
    path = cache_factory(depths)
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == FORMAT and f.attrs["format_version"] == FORMAT_VERSION
        assert f.attrs["num_volumes"] == 3 and f.attrs["num_slices"] == sum(depths)
        assert json.loads(f.attrs["class_names"]) == {"0": "background", "1": "a", "2": "b"}
        names = [n.decode() if isinstance(n, bytes) else n for n in f["index/names"][()]]
        assert names == ["subject_00", "subject_01", "subject_02"]  # '/' made HDF5-safe
        for v, (name, depth) in enumerate(zip(names, depths)):
            group = f[f"volumes/{name}"]
            image, label = group["image"], group["label"]
            assert image.shape == label.shape == (depth, 8, 8)
            assert image.dtype == np.float32 and label.dtype == np.uint8
            assert image.chunks == (1, 8, 8) and label.chunks == (1, 8, 8)
            assert group.attrs["subject"] == f"subject/{v:02d}"
            assert group.attrs["source"] == f"synthetic://{v}"
            assert group.attrs["modality"] == ("ct" if v % 2 == 0 else "mr")
            np.testing.assert_array_equal(group.attrs["spacing"], [2.0 + v, 1.5, 1.5])
            assert group.attrs["sha256_image"] == hashlib.sha256(image[()].tobytes()).hexdigest()
        # the side index has one row per slice
        volume, slice_, position = (f[f"index/{k}"][()] for k in ("volume", "slice", "position"))
        assert len(volume) == len(slice_) == len(position) == sum(depths)
        assert volume.tolist() == [0] * 4 + [1] + [2] * 6
        assert slice_.tolist() == [0, 1, 2, 3, 0, 0, 1, 2, 3, 4, 5]
        np.testing.assert_allclose(position[:4], [0, 1 / 3, 2 / 3, 1], rtol=1e-6)
        assert position[4] == 0.0
    assert temporaries(tmp_path) == []


def test_slice_cache_reads_what_was_written(cache_factory):
    cache = SliceCache(cache_factory([4, 1, 6]))
    assert [v.num_slices for v in cache.volumes] == [4, 1, 6]
    assert [v.subject for v in cache.volumes] == ["subject/00", "subject/01", "subject/02"]
    assert [v.modality for v in cache.volumes] == ["ct", "mr", "ct"]
    assert [v.source for v in cache.volumes] == ["synthetic://0", "synthetic://1", "synthetic://2"]
    assert cache.volumes[2].spacing == (4.0, 1.5, 1.5)
    assert all(v.has_label for v in cache.volumes)
    assert cache.slice_shape == (8, 8)
    assert cache.class_names == {0: "background", 1: "a", 2: "b"} and cache.num_classes == 3
    image, label = cache.read_volume(2)
    for d in range(6):  # image and label aligned slice by slice
        assert np.all(image[d] == 200 + d) and np.all(label[d] == d % 3)
    contiguous = cache.read_slices(2, np.array([1, 2, 3]))
    strided = cache.read_slices(2, np.array([0, 2, 5]))
    assert [float(s[0, 0]) for s in contiguous] == [201, 202, 203]
    assert [float(s[0, 0]) for s in strided] == [200, 202, 205]
    summary = cache.summary()
    assert summary["volumes"] == 3 and summary["slices"] == 11 and summary["labeled_volumes"] == 3
    assert summary["modalities"] == {"ct": 2, "mr": 1}
    cache.close()


def test_unlabeled_volumes_have_no_label_dataset(cache_factory):
    path = cache_factory([3], labeled=False)
    with h5py.File(path, "r") as f:
        assert "label" not in f["volumes/subject_00"]
    cache = SliceCache(path)
    assert not cache.volumes[0].has_label
    assert cache.read_volume(0)[1] is None


def test_duplicate_subjects_get_unique_groups(tmp_path):
    with CacheWriter(tmp_path / "c.h5", force=False, attrs={}) as writer:
        a = writer.add_volume("case 1", np.zeros((2, 4, 4)), None, {"spacing": np.ones(3)})
        b = writer.add_volume("case 1", np.ones((2, 4, 4)), None, {"spacing": np.ones(3)})
    assert (a, b) == ("case_1", "case_1_2")
    cache = SliceCache(tmp_path / "c.h5")
    assert [v.subject for v in cache.volumes] == ["case 1", "case 1"]
    assert cache.read_volume(1)[0].max() == 1.0


# -- pickling -----------------------------------------------------------------------------------


def test_slice_cache_pickles_without_handle(cache_factory):
    cache = SliceCache(cache_factory([3, 5]))
    first = cache.read_slices(1, np.array([1, 2]))
    assert cache._handle is not None  # a handle is open now
    state = cache.__getstate__()
    assert state["_handle"] is None and state["_pid"] is None
    clone = pickle.loads(pickle.dumps(cache))
    assert clone._handle is None
    np.testing.assert_array_equal(clone.read_slices(1, np.array([1, 2])), first)
    assert clone.volumes == cache.volumes
    assert cache._handle is not None  # pickling did not close the original's handle


# -- safety ---------------------------------------------------------------------------------------


def test_existing_file_is_refused_without_force(cache_factory, tmp_path):
    path = cache_factory([3])
    before = sha(path)
    with pytest.raises(SsmtlError, match="--force"):
        check_output_path(path, force=False)
    with pytest.raises(SsmtlError, match="--force"):
        CacheWriter(path, force=False, attrs={})
    assert sha(path) == before
    assert temporaries(tmp_path) == []


def test_force_replaces_existing_file(cache_factory):
    path = cache_factory([3])
    cache_factory([2, 2], force=True)
    assert [v.num_slices for v in SliceCache(path).volumes] == [2, 2]


def test_check_output_path_other_errors(tmp_path):
    with pytest.raises(SsmtlError, match="directory"):
        check_output_path(tmp_path, force=True)
    (tmp_path / "a-file").write_text("")
    with pytest.raises(SsmtlError, match="a-file/sub: cannot create the output directory"):
        check_output_path(tmp_path / "a-file" / "sub" / "c.h5", force=False)
    check_output_path(tmp_path / "new.h5", force=False)  # fine


def test_the_parent_folders_of_a_new_cache_are_created(tmp_path):
    out = tmp_path / "demo" / "nested" / "c.h5"
    with CacheWriter(out, force=False, attrs={}) as writer:
        writer.add_volume("a", np.zeros((2, 4, 4)), None, {"spacing": np.ones(3)})
    assert [v.num_slices for v in SliceCache(out).volumes] == [2]


def test_exception_inside_writer_leaves_nothing(tmp_path):
    out = tmp_path / "c.h5"
    with pytest.raises(RuntimeError, match="interrupted"):
        with CacheWriter(out, force=False, attrs={}) as writer:
            writer.add_volume("a", np.zeros((2, 4, 4)), None, {"spacing": np.ones(3)})
            assert len(temporaries(tmp_path)) == 1  # writing goes to a temporary
            raise RuntimeError("interrupted")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_exception_with_force_keeps_the_old_cache_intact(cache_factory, tmp_path):
    path = cache_factory([3])
    before = sha(path)
    with pytest.raises(KeyboardInterrupt):
        with CacheWriter(path, force=True, attrs={}) as writer:
            writer.add_volume("a", np.zeros((2, 4, 4)), None, {"spacing": np.ones(3)})
            raise KeyboardInterrupt
    assert sha(path) == before
    assert temporaries(tmp_path) == []


def test_empty_writer_is_an_error_and_leaves_nothing(tmp_path):
    with pytest.raises(SsmtlError, match="no volumes"):
        with CacheWriter(tmp_path / "c.h5", force=False, attrs={}):
            pass
    assert list(tmp_path.iterdir()) == []


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path):
    stale = tmp_path / f"{TMP_PREFIX}999999999-abcd1234-c.h5"  # pid above any pid_max
    live = tmp_path / f"{TMP_PREFIX}{os.getpid()}-abcd1234-other.h5"
    stale.write_bytes(b"x")
    live.write_bytes(b"y")
    with CacheWriter(tmp_path / "c.h5", force=False, attrs={}) as writer:
        writer.add_volume("a", np.zeros((2, 4, 4)), None, {"spacing": np.ones(3)})
    assert not stale.exists() and live.exists()


def test_reader_rejects_missing_and_foreign_files(tmp_path):
    with pytest.raises(InputFileError, match="not found"):
        SliceCache(tmp_path / "missing.h5")
    with h5py.File(tmp_path / "foreign.h5", "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    with pytest.raises(InputFileError, match="not an ssmtl slice cache"):
        SliceCache(tmp_path / "foreign.h5")
    (tmp_path / "garbage.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(InputFileError, match="garbage.h5"):
        SliceCache(tmp_path / "garbage.h5")


# -- build_cache ------------------------------------------------------------------------------------


def test_phantom_cache(tiny_cache):
    cache = SliceCache(tiny_cache)
    assert len(cache.volumes) == 4
    assert all(v.shape == (8, 32, 32) and v.has_label for v in cache.volumes)
    assert cache.attrs["dataset"] == "phantom"
    assert cache.attrs["preprocess"]["size"] == 32
    with h5py.File(tiny_cache, "r") as f:
        assert f["volumes"][cache.volumes[0].name]["image"].chunks == (1, 32, 32)
        assert len(f["index/volume"]) == 32


def test_build_cache_refuses_existing_output_before_work(cache_factory, registry):
    path = cache_factory([2])
    before = sha(path)
    with pytest.raises(SsmtlError, match="--force"):
        build_cache(dataset="phantom", dataset_options={"subjects": 1}, preprocess=PreprocessConfig(size=32),
                    out=path, registry=registry)
    assert sha(path) == before


def test_build_cache_bad_dataset_option_names_field(tmp_path, registry):
    with pytest.raises(ConfigError, match="subjects"):
        build_cache(dataset="phantom", dataset_options={"subjects": 0}, preprocess=PreprocessConfig(size=32),
                    out=tmp_path / "c.h5", registry=registry)
    assert not (tmp_path / "c.h5").exists()


# Cube position in patient terms, in voxels of the 1.5 mm grid: columns counted from the
# patient's right edge, rows from the anterior edge, slices from the inferior end. Edges at
# even voxel counts fall between output pixel centres (3 mm, 6 mm, 9 mm, 12 mm at 1 mm
# spacing), so nearest-neighbour label resampling has no ties.
SHAPE = (20, 16, 6)  # voxel grid (i, j, k)
FROM_RIGHT, FROM_ANTERIOR, FROM_INFERIOR = (2, 6), (4, 8), (1, 3)


def voxel_range(extent: tuple[int, int], n: int, index_grows_towards_start: bool) -> slice:
    """Voxel indices of ``extent``, counted from one edge of the volume.

    If the voxel index grows towards the edge the extent is counted from (e.g. +x is patient
    right and the extent is counted from the right), that edge is index n - 1.
    """
    lo, hi = extent
    return slice(n - hi, n - lo) if index_grows_towards_start else slice(lo, hi)


@pytest.mark.parametrize(
    "diag",
    [(-1.5, -1.5, 3.0), (1.5, 1.5, 3.0), (-1.5, 1.5, -3.0)],
    ids=["LPS-like", "RAS", "LAI-like"],
)
def test_nifti_to_cache_orientation_and_alignment(tmp_path, registry, diag):
    affine = np.diag([*diag, 1.0])
    affine[:3, 3] = [10.0, -20.0, 5.0]  # an origin shift must not matter
    # RAS world: +x right, +y anterior, +z superior
    i = voxel_range(FROM_RIGHT, SHAPE[0], index_grows_towards_start=diag[0] > 0)
    j = voxel_range(FROM_ANTERIOR, SHAPE[1], index_grows_towards_start=diag[1] > 0)
    k = voxel_range(FROM_INFERIOR, SHAPE[2], index_grows_towards_start=diag[2] < 0)
    image = np.full(SHAPE, -1000, dtype=np.int16)  # air
    image[1:19, 1:15, :] = 40  # soft tissue around the cube
    image[i, j, k] = 600
    label = np.zeros(SHAPE, dtype=np.uint8)
    label[i, j, k] = 1
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    nib.save(nib.Nifti1Image(image, affine), str(tmp_path / "images" / "case01.nii.gz"))
    nib.save(nib.Nifti1Image(label, affine), str(tmp_path / "labels" / "case01.nii.gz"))

    out = build_cache(
        dataset="nifti",
        dataset_options={"images": str(tmp_path / "images"), "labels": str(tmp_path / "labels")},
        preprocess=PreprocessConfig(size=32, spacing=1.0),
        out=tmp_path / "nifti.h5",
        registry=registry,
    )
    cache = SliceCache(out)
    [meta] = cache.volumes
    assert meta.shape == (6, 32, 32) and meta.modality == "ct" and meta.has_label
    assert meta.spacing == pytest.approx((3.0, 1.0, 1.0))  # (z, rows, cols): target in-plane spacing
    assert cache.class_names == {0: "background", 1: "label_1"}
    cached_image, cached_label = cache.read_volume(0)
    assert cached_label.dtype == np.uint8 and set(np.unique(cached_label).tolist()) == {0, 1}

    # label and bright region coincide (600 HU -> 0.85, tissue 40 HU -> 0.29, air -> 0)
    inside, outside = cached_image[cached_label == 1], cached_image[cached_label == 0]
    assert inside.mean() > 0.7 and outside.mean() < 0.3
    assert inside.min() > outside.max()

    # slices run inferior -> superior: the cube is in slices 1 and 2
    assert [d for d in range(6) if cached_label[d].any()] == [1, 2]
    assert cached_image[[0, 3, 4, 5]].max() < 0.3

    # rows anterior -> posterior, columns patient right -> left (radiological view). The
    # 30 mm (x) by 24 mm (y) field at 1 mm is 30 columns by 24 rows, centred in 32x32:
    # 1 column of padding on the left, 4 rows on top. Pixel p (centre p + 0.5 mm) is in the
    # cube when its centre is: cols 3..8 (+1), rows 6..11 (+4).
    rows, cols = np.nonzero(cached_label[1])
    assert sorted(set(rows.tolist())) == list(range(10, 16))
    assert sorted(set(cols.tolist())) == list(range(4, 10))
    assert len(rows) == 36
    np.testing.assert_array_equal(cached_label[2], cached_label[1])
    # the bright excess over tissue is centred on the label
    excess = np.clip(cached_image[1] - 0.29, 0, None)
    r, c = np.indices(excess.shape)
    assert (excess * r).sum() / excess.sum() == pytest.approx(rows.mean(), abs=0.25)
    assert (excess * c).sum() / excess.sum() == pytest.approx(cols.mean(), abs=0.25)


def test_phantom_cache_follows_the_radiological_convention(tiny_cache):
    cache = SliceCache(tiny_cache)
    for v in range(len(cache.volumes)):
        _, label = cache.read_volume(v)
        lv_col = np.nonzero(label == 3)[2].mean()  # left ventricle
        rv_col = np.nonzero(label == 5)[2].mean()  # right ventricle
        # column 0 is the patient's right: the RV (patient right) has the smaller column
        assert rv_col < lv_col
