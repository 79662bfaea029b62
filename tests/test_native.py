"""The way back: the transform a cache records, and label maps taken to the cache grid and back."""

from __future__ import annotations

import json

import h5py
import nibabel as nib
import numpy as np
import pytest
from ingest_helpers import invoke
from native_helpers import ball_scan, grid_affine, save
from scipy import ndimage

from ssmtl.api import RawVolume
from ssmtl.host.registry import build_registry
from ssmtl.data.build import build_cache
from ssmtl.data.cache import SliceCache
from ssmtl.data.native import canonical_to_source, labels_to_cache, labels_to_canonical, source_to_canonical
from ssmtl.data.preprocess import preprocess_volume, PreprocessConfig
from ssmtl.data.transform import VolumeTransform

#: An LPS-flipped, oblique (20 degrees about z), axis-permuted (voxel i runs along world y), non-square grid.
SHAPE = (20, 30, 6)
AFFINE = grid_affine((1.5, 2.0, 3.0), angle_deg=20.0, axes=(1, 0, 2), flips=(True, False, True), origin=(40.0, -25.0, 9.0))


@pytest.fixture(scope="module")
def registry():
    return build_registry(external=False)


def _scan(folder, rng):
    """A ball on the oblique grid, centred in its field of view."""
    center = AFFINE[:3, :3] @ (np.asarray(SHAPE) / 2 - 0.5) + AFFINE[:3, 3]
    image, label = ball_scan(SHAPE, AFFINE, center, 11.0, rng)
    save(folder / "images" / "scan.nii.gz", image, AFFINE)
    save(folder / "labels" / "scan.nii.gz", label, AFFINE)
    return label


def _cache(tmp_path, registry, spacing: float, size: int):
    label = _scan(tmp_path, np.random.default_rng(0))
    out = build_cache(dataset="nifti", dataset_options={"images": tmp_path / "images", "labels": tmp_path / "labels",
                                                         "modality": "ct"},
                      preprocess=PreprocessConfig(size=size, spacing=spacing), out=tmp_path / "c.h5", registry=registry,
                      test_fraction=0)
    cache = SliceCache(out)
    return label, cache, VolumeTransform.from_json(cache.volumes[0].transform)


def _back_to_source(cache, transform):
    return canonical_to_source(labels_to_canonical(cache.read_label(0), transform), transform)


def test_round_trip_is_exact_where_the_cache_is_at_least_as_fine(tmp_path, registry):
    # 1 mm in-plane from 1.5 x 2.0 mm voxels; 64 px hold the whole 45 x 40 mm field of view
    label, cache, transform = _cache(tmp_path, registry, spacing=1.0, size=64)
    assert transform.is_exact() and transform.source is not None
    assert {transform.rows.scale, transform.cols.scale} == {1.5, 2.0}
    back = _back_to_source(cache, transform)
    assert back.shape == SHAPE and back.dtype == np.uint8
    np.testing.assert_array_equal(back, label)
    assert label.sum() > 100


def test_round_trip_loss_where_the_cache_is_coarser_stays_at_the_boundary(tmp_path, registry):
    label, cache, transform = _cache(tmp_path, registry, spacing=3.0, size=32)
    assert not transform.is_exact()
    back = _back_to_source(cache, transform)
    wrong = back != label
    assert 0 < wrong.mean() < 0.1
    # every voxel that changed lies within one cache pixel (3 mm) of the ball's surface
    spacing = np.linalg.norm(AFFINE[:3, :3], axis=0)
    inside = ndimage.distance_transform_edt(label, sampling=spacing)
    outside = ndimage.distance_transform_edt(1 - label, sampling=spacing)
    assert np.maximum(inside, outside)[wrong].max() <= 3.0 + 1e-6


@pytest.mark.parametrize("shape, spacing, size, target", [
    ((40, 24, 3), (1.0, 1.5), 32, None),  # fit the field of view: downsample, pad the short axis
    ((13, 26, 2), (2.72, 1.77), 48, 1.2),  # upsample, pad, n * scale not an integer
    ((50, 44, 2), (0.8, 0.9), 16, 1.5),  # crop
])
def test_cache_labels_follow_the_builders_nearest_neighbour_rule(shape, spacing, size, target):
    rng = np.random.default_rng(1)
    label = rng.integers(0, 4, shape).astype(np.uint8)
    raw = RawVolume(image=rng.normal(size=shape).astype(np.float32), spacing=(*spacing, 2.0), modality="ct",
                    label=label, affine=np.diag([*spacing, 2.0, 1.0]))
    processed = preprocess_volume(raw, PreprocessConfig(size=size, spacing=target))
    np.testing.assert_array_equal(labels_to_cache(label, processed.transform), processed.label)
    # taken back, every voxel whose label reached the cache gets a label that was sampled near it
    back = labels_to_canonical(processed.label, processed.transform)
    assert back.shape == label.shape


def test_cache_pixels_sit_inside_the_source_voxels_they_copy():
    """cache_affine places every cache pixel centre inside the source voxel its label came from."""
    affine = grid_affine((2.0, 2.5, 3.0), angle_deg=15.0, origin=(5.0, -7.0, 11.0))
    raw = RawVolume(image=np.zeros((20, 16, 4), np.float32), spacing=(2.0, 2.5, 3.0), modality="ct", affine=affine)
    transform = preprocess_volume(raw, PreprocessConfig(size=64, spacing=1.0)).transform
    rows, cols = transform.rows.sampled_source_index(), transform.cols.sampled_source_index()
    d, r, c = np.meshgrid(np.arange(4), np.nonzero(rows >= 0)[0], np.nonzero(cols >= 0)[0], indexing="ij")
    world = np.stack([d, r, c, np.ones_like(d)], -1).reshape(-1, 4) @ transform.cache_affine().T
    canonical = world @ np.linalg.inv(affine).T  # continuous canonical (x, y, z) voxel coordinates
    X, Y, _ = transform.canonical_shape
    expected_x = X - 1 - cols[c.ravel()]  # stack column c copies canonical x = X - 1 - sampled column
    expected_y = Y - 1 - rows[r.ravel()]
    assert np.abs(canonical[:, 0] - expected_x).max() <= 0.5 + 1e-9
    assert np.abs(canonical[:, 1] - expected_y).max() <= 0.5 + 1e-9
    np.testing.assert_allclose(canonical[:, 2], d.ravel(), atol=1e-9)


def test_reorientation_matches_nibabel_and_inverts(tmp_path):
    data = np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE)
    image = nib.Nifti1Image(data, AFFINE)
    canonical = nib.as_closest_canonical(image)
    from ssmtl.api import SourceGeometry
    from ssmtl.data.transform import plan_axis

    plan = plan_axis(1, 1.0, 1.0, 1)
    transform = VolumeTransform(canonical_shape=canonical.shape, canonical_affine=canonical.affine, rows=plan, cols=plan,
                                source=SourceGeometry(shape=SHAPE, affine=AFFINE, format="nifti"))
    assert transform.source_axes() == ((1, False), (0, True), (2, True))  # x = +j, y = -i, z = -k
    np.testing.assert_array_equal(source_to_canonical(data, transform), np.asarray(canonical.dataobj))
    np.testing.assert_array_equal(canonical_to_source(np.asarray(canonical.dataobj), transform), data)
    extra = np.stack([data, -data], axis=-1)  # trailing axes (classes) ride along
    np.testing.assert_array_equal(canonical_to_source(source_to_canonical(extra, transform), transform), extra)


def test_a_source_geometry_that_is_not_a_reorientation_is_refused():
    from ssmtl.api import InputFileError, SourceGeometry

    raw = RawVolume(image=np.zeros((8, 8, 2), np.float32), spacing=(1.0, 1.0, 1.0), modality="ct",
                    source_geometry=SourceGeometry(shape=(8, 8, 2), affine=np.diag([2.0, 1.0, 1.0, 1.0])))
    with pytest.raises(InputFileError, match="source geometry"):
        preprocess_volume(raw, PreprocessConfig(size=16), source="bad.nii")


def test_cache_info_shows_the_way_back(tmp_path, registry, cache_factory):
    _cache(tmp_path, registry, spacing=1.0, size=64)
    summary = json.loads(invoke("cache", "info", str(tmp_path / "c.h5"), "--json").output)
    assert summary["format_version"] == 2
    assert summary["way_back"] == {"volumes": 1, "recorded": 1, "source_geometry": 1, "exact_round_trip": 1,
                                   "cropped": 0, "padded": 1, "scale": {"min": 1.5, "max": 2.0}}
    record = summary["subjects"][0]["transform"]
    assert record["source"]["shape"] == list(SHAPE) and record["source"]["format"] == "nifti"
    np.testing.assert_allclose(record["source"]["affine"], AFFINE)
    detail = " ".join(invoke("cache", "info", str(tmp_path / "c.h5"), "--volume", "scan").output.split())
    assert "x = +j, y = -i, z = -k" in detail and "stack[d, r, c]" in detail and "exact" in detail
    old = cache_factory([2])  # written without transforms, like a format 1 cache
    with h5py.File(old, "a") as f:
        f.attrs["format_version"] = 1
    assert "not recorded (cache format 1)" in " ".join(invoke("cache", "info", str(old)).output.split())


def test_a_cache_from_a_newer_format_is_refused(cache_factory):
    path = cache_factory([2])
    with h5py.File(path, "a") as f:
        f.attrs["format_version"] = 99
    result = invoke("cache", "info", str(path))
    assert result.exit_code == 2 and "newer than this ssmtl reads" in result.output
