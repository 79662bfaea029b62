"""``ssmtl evaluate`` at native resolution, against the original label files, and its fallbacks."""

from __future__ import annotations

import json
import shutil

import h5py
import nibabel as nib
import numpy as np
import pytest
from ingest_helpers import invoke

from ssmtl.api.errors import SsmtlError
from ssmtl.host.registry import build_registry
from ssmtl.downstream.evaluate import evaluate_run
from ssmtl.downstream.metrics import dice_per_class


@pytest.fixture(scope="module")
def registry():
    return build_registry(external=False)


@pytest.fixture(scope="module")
def native(ball_run, registry):
    _, _, run = ball_run
    return evaluate_run(run, registry=registry)


def test_a_nifti_cache_is_scored_at_native_resolution(ball_run, native):
    root, _, _ = ball_run
    assert native["space"] == "native" and native["space_reason"] is None
    assert native["mean_dice"] > 0.8 and native["cache_grid"]["mean_dice"] > 0.8
    for volume in native["per_volume"]:
        source = nib.load(str(root / "images" / f"{volume['volume']}.nii.gz"))
        assert sorted(volume["shape"]) == sorted(source.shape)  # the scan's voxels, in canonical axis order
        assert sorted(volume["spacing_mm"]) == pytest.approx(sorted(source.header.get_zooms()))
        assert set(volume["cache_grid"]) == {"dice", "hd95", "mean_dice"}


def test_native_scores_are_those_of_the_written_prediction(ball_run, native, tmp_path):
    """What evaluate scores is what `ssmtl predict` writes, against the label file."""
    root, _, run = ball_run
    volume = native["per_volume"][0]
    scan = root / "images" / f"{volume['volume']}.nii.gz"
    assert invoke("predict", str(run), "--input", str(scan), "--out", str(tmp_path), "--modality", "ct").exit_code == 0
    predicted = np.asarray(nib.load(str(tmp_path / scan.name)).dataobj)
    truth = np.asarray(nib.load(str(root / "labels" / scan.name)).dataobj)
    assert dice_per_class(predicted, truth, 2)[1] == pytest.approx(volume["dice"]["label_1"], abs=1e-12)


def test_the_cache_grid_on_request(ball_run, registry, native):
    _, _, run = ball_run
    results = evaluate_run(run, registry=registry, space="cache")
    assert results["space"] == "cache" and "space=cache" in results["space_reason"]
    assert results["mean_dice"] == pytest.approx(native["cache_grid"]["mean_dice"])
    assert results["per_volume"][0]["shape"][1:] == [32, 32]


@pytest.fixture
def copied(ball_run, tmp_path):
    """The dataset and its cache copied, so files can be moved and changed; the cache's paths point at the copy."""
    root, cache, run = ball_run
    shutil.copytree(root / "images", tmp_path / "images")
    shutil.copytree(root / "labels", tmp_path / "labels")
    shutil.copy(cache, tmp_path / "balls.h5")
    with h5py.File(tmp_path / "balls.h5", "a") as f:
        config = json.loads(f.attrs["dataset_config"])
        config.update(images=str(tmp_path / "images"), labels=str(tmp_path / "labels"))
        f.attrs["dataset_config"] = json.dumps(config)
    return run, tmp_path


def test_unreachable_labels_fall_back_to_the_cache_grid_and_say_why(copied, registry):
    run, folder = copied
    assert evaluate_run(run, folder / "balls.h5", registry=registry)["space"] == "native"
    shutil.rmtree(folder / "labels")
    results = evaluate_run(run, folder / "balls.h5", registry=registry)
    assert results["space"] == "cache" and "cannot be read again" in results["space_reason"]
    assert json.loads((run / "eval.json").read_text())["space"] == "cache"
    with pytest.raises(SsmtlError, match="cannot evaluate at native resolution"):
        evaluate_run(run, folder / "balls.h5", registry=registry, space="native")
    table = invoke("evaluate", str(run), "--data", str(folder / "balls.h5"))
    assert table.exit_code == 0 and "cache grid" in table.output


def test_a_label_file_changed_after_the_build_is_not_scored(copied, registry):
    run, folder = copied
    subject = json.loads((run / "split.json").read_text())["test"][0]
    path = folder / "labels" / f"{subject}.nii.gz"
    image = nib.load(str(path))
    changed = np.asarray(image.dataobj).copy()
    changed[changed.shape[0] // 2] = 1  # a slab of the ball that the cache never saw
    nib.save(nib.Nifti1Image(changed, image.affine), str(path))
    results = evaluate_run(run, folder / "balls.h5", registry=registry)
    assert results["space"] == "cache" and "differs from the cached label" in results["space_reason"]


def test_a_format_1_cache_is_scored_on_its_grid(copied, registry):
    run, folder = copied
    with h5py.File(folder / "balls.h5", "a") as f:
        f.attrs["format_version"] = 1
        for group in f["volumes"].values():
            del group.attrs["transform"]
    results = evaluate_run(run, folder / "balls.h5", registry=registry)
    assert results["space"] == "cache" and "format 1" in results["space_reason"]
