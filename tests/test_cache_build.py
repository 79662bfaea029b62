"""The cache made solid: verify, parallel build, skip-bad, class histograms, info, no-force races."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from ingest_helpers import assert_clean_failure, cache_files, ct_phantom, invoke, save_nifti, sha

from ssmtl.data.build import build_cache
from ssmtl.data.cache import SliceCache
from ssmtl.data.verify import verify_cache
from ssmtl.api.errors import InputFileError, SsmtlError
from ssmtl.data.preprocess import PreprocessConfig
from ssmtl.host.registry import build_registry

PHANTOM = {"subjects": 3, "size": 32, "num_slices": 8}


@pytest.fixture(scope="module")
def registry():
    return build_registry(external=False)


@pytest.fixture()
def phantom_cache(tmp_path, registry) -> Path:
    return build_cache(dataset="phantom", dataset_options=PHANTOM, preprocess=PreprocessConfig(size=32),
                       out=tmp_path / "ph.h5", registry=registry)


# -- verify -----------------------------------------------------------------------------------


def test_verify_accepts_an_intact_cache(phantom_cache):
    report = verify_cache(phantom_cache)
    assert report.volumes == 3 and report.datasets == 6
    result = invoke("cache", "verify", str(phantom_cache))
    assert result.exit_code == 0 and result.output.startswith("OK ") and "6 datasets in 3 volumes" in result.output


@pytest.mark.parametrize("key", ["image", "label"])
def test_verify_detects_flipped_bytes(phantom_cache, key):
    with h5py.File(phantom_cache, "r+") as f:
        name = sorted(f["volumes"])[1]
        dataset = f["volumes"][name][key]
        value = dataset[3, 10, 10]
        dataset[3, 10, 10] = value + 1 if key == "label" else np.nextafter(value, np.float32(2))
    result = invoke("cache", "verify", str(phantom_cache))
    assert_clean_failure(result, str(phantom_cache), f"volume {name}", f"{key} data do not match")


def test_verify_detects_an_edited_checksum(phantom_cache):
    with h5py.File(phantom_cache, "r+") as f:
        group = f["volumes"][sorted(f["volumes"])[0]]
        group.attrs["sha256_image"] = "0" * 64
    with pytest.raises(InputFileError, match="do not match the checksum"):
        verify_cache(phantom_cache)


def test_verify_detects_a_removed_volume(phantom_cache):
    with h5py.File(phantom_cache, "r+") as f:
        f.attrs["fingerprint"] = "f" * 64
    with pytest.raises(InputFileError, match="fingerprint"):
        verify_cache(phantom_cache)


def test_verify_missing_file(tmp_path):
    assert_clean_failure(invoke("cache", "verify", str(tmp_path / "none.h5")), "none.h5", "not found")


# -- build: workers, histograms, info -----------------------------------------------------------------


def test_parallel_build_writes_the_same_cache(tmp_path, registry, phantom_cache):
    parallel = build_cache(dataset="phantom", dataset_options=PHANTOM, preprocess=PreprocessConfig(size=32),
                           out=tmp_path / "par.h5", registry=registry, workers=2)
    serial, par = SliceCache(phantom_cache), SliceCache(parallel)
    assert par.fingerprint == serial.fingerprint  # same data, same order
    assert [v.name for v in par.volumes] == [v.name for v in serial.volumes]
    verify_cache(parallel)


def test_class_voxels_are_recorded_at_build_time(phantom_cache):
    cache = SliceCache(phantom_cache)
    expected = np.zeros(cache.num_classes, np.int64)
    for v in range(len(cache.volumes)):
        _, label = cache.read_volume(v)
        expected += np.bincount(label.ravel(), minlength=cache.num_classes)
    voxels = cache.summary()["class_voxels"]
    assert [voxels[str(k)]["total"] for k in range(cache.num_classes)] == expected.tolist()
    assert voxels["3"]["name"] == cache.class_names[3] and voxels["3"]["by_modality"] == {"ct": int(expected[3])}
    cache.close()
    with h5py.File(phantom_cache, "r") as f:  # per volume too
        per_volume = sum(f["volumes"][n].attrs["class_voxels"] for n in f["volumes"])
    np.testing.assert_array_equal(per_volume, expected)


def test_info_json_reports_spacing_statistics_and_split(phantom_cache):
    result = invoke("cache", "info", str(phantom_cache), "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    stats = info["spacing_stats_mm"]
    assert set(stats["cached"]) == {"slice", "row", "col"} and set(stats["original"]) == {"x", "y", "z"}
    assert stats["cached"]["slice"]["min"] <= stats["cached"]["slice"]["median"] <= stats["cached"]["slice"]["max"]
    assert info["split"] == {"test": 1, "train": 2}
    assert info["split_by_modality"] == {"test": {"ct": 1}, "train": {"ct": 2}}
    assert info["modalities"] == {"ct": 3} and info["skipped"] == []
    table = invoke("cache", "info", str(phantom_cache))
    assert table.exit_code == 0 and "class voxels" in table.output and "min / median / max" in table.output


# -- skip-bad ------------------------------------------------------------------------------------


@pytest.fixture()
def folder_with_a_bad_file(tmp_path) -> tuple[Path, Path]:
    image, _ = ct_phantom((10, 8, 4))
    save_nifti(tmp_path / "imgs" / "a.nii.gz", image)
    bad = save_nifti(tmp_path / "imgs" / "b.nii.gz", image)
    bad.write_bytes(bad.read_bytes()[:60])
    save_nifti(tmp_path / "imgs" / "c.nii.gz", image + 1)
    return tmp_path / "imgs", bad


def test_bad_input_stops_the_build_by_default(tmp_path, folder_with_a_bad_file):
    images, bad = folder_with_a_bad_file
    result = invoke("cache", "build", "--dataset", "nifti", "--images", str(images), "--out", str(tmp_path / "x.h5"),
                    "--size", "16")
    assert_clean_failure(result, str(bad))
    assert cache_files(tmp_path) == []


@pytest.mark.parametrize("workers", ["0", "2"])
def test_skip_bad_skips_and_lists_the_file(tmp_path, folder_with_a_bad_file, workers):
    images, bad = folder_with_a_bad_file
    out = tmp_path / "x.h5"
    result = invoke("cache", "build", "--dataset", "nifti", "--images", str(images), "--out", str(out), "--size", "16",
                    "--skip-bad", "--workers", workers)
    assert result.exit_code == 0, result.output
    assert "skipped 1 bad input(s)" in result.output and str(bad) in result.output
    cache = SliceCache(out)
    assert [v.subject for v in cache.volumes] == ["a", "c"]
    [skipped] = cache.attrs["skipped"]
    assert skipped["path"] == str(bad) and "NIfTI" in skipped["reason"]
    verify_cache(out)


def test_skip_bad_with_every_input_bad_writes_nothing(tmp_path, registry):
    save_nifti(tmp_path / "imgs" / "a.nii.gz", np.zeros((8, 8), np.float32))
    with pytest.raises(InputFileError, match="all 1 inputs were bad"):
        build_cache(dataset="nifti", dataset_options={"images": str(tmp_path / "imgs")},
                    preprocess=PreprocessConfig(size=16), out=tmp_path / "x.h5", registry=registry, skip_bad=True)
    assert cache_files(tmp_path) == []


# -- --force is the only way to replace ---------------------------------------------------------------


def test_a_file_appearing_during_the_build_is_not_replaced(tmp_path, registry):
    out = tmp_path / "race.h5"

    def on_volume(done, total, subject):
        if done == total:
            out.write_bytes(b"someone else's file")

    with pytest.raises(SsmtlError, match="appeared there during the build"):
        build_cache(dataset="phantom", dataset_options=PHANTOM, preprocess=PreprocessConfig(size=32), out=out,
                    registry=registry, on_volume=on_volume)
    assert out.read_bytes() == b"someone else's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["race.h5"]


def test_force_replaces_and_old_is_intact_on_failure(tmp_path, registry, phantom_cache, folder_with_a_bad_file):
    images, _ = folder_with_a_bad_file
    before = sha(phantom_cache)
    with pytest.raises(InputFileError):
        build_cache(dataset="nifti", dataset_options={"images": str(images)}, preprocess=PreprocessConfig(size=16),
                    out=phantom_cache, force=True, registry=registry)
    assert sha(phantom_cache) == before
    assert [p for p in phantom_cache.parent.iterdir() if p.name.startswith(".ssmtl-tmp-")] == []


def test_negative_workers_is_a_user_error(tmp_path):
    result = invoke("cache", "build", "--dataset", "phantom", "--out", str(tmp_path / "x.h5"), "--workers", "-1")
    assert_clean_failure(result, "--workers -1")
