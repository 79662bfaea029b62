"""``ssmtl predict``: label maps in each scan's own space, whatever its format, orientation and grid."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
from ingest_helpers import invoke
from native_helpers import ball_scan, grid_affine, save, world_centroid

from ssmtl.cli.predict_cmd import EXIT_NONE, EXIT_PARTIAL

#: A grid the model never saw: 25 degrees oblique, LPS-like flips, voxel i along world y, non-square.
NEW_SHAPE = (34, 44, 10)
NEW_AFFINE = grid_affine((1.7, 1.3, 4.5), angle_deg=25.0, axes=(1, 0, 2), flips=(True, False, False),
                         origin=(12.0, -40.0, -20.0))
FIELD_CENTER = NEW_AFFINE[:3, :3] @ (np.asarray(NEW_SHAPE) / 2 - 0.5) + NEW_AFFINE[:3, 3]
BALL_CENTER = FIELD_CENTER + np.array([-7.0, 6.0, 4.0])  # world mm, off the centre of the field of view


@pytest.fixture(scope="module")
def oblique_scan(tmp_path_factory):
    folder = tmp_path_factory.mktemp("new")
    image, label = ball_scan(NEW_SHAPE, NEW_AFFINE, BALL_CENTER, 11.0, np.random.default_rng(7))
    np.testing.assert_allclose(world_centroid(label == 1, NEW_AFFINE), BALL_CENTER, atol=0.6)  # the ball is in the scan
    return save(folder / "oblique.nii.gz", image, NEW_AFFINE), label


def _predict(run, *args):
    """``ssmtl predict``; the synthetic scans have no air, so their CT modality is stated, not detected."""
    return invoke("predict", str(run), *args, *(() if "--modality" in args else ("--modality", "ct")))


def test_the_label_map_has_the_input_grid_and_lines_up_in_world(ball_run, oblique_scan, tmp_path):
    _, _, run = ball_run
    scan, truth = oblique_scan
    result = _predict(run, "--input", str(scan), "--out", str(tmp_path / "pred"))
    assert result.exit_code == 0, result.output
    out = nib.load(str(tmp_path / "pred" / "oblique.nii.gz"))
    assert out.shape == NEW_SHAPE and out.get_data_dtype() == np.uint8
    np.testing.assert_allclose(out.affine, NEW_AFFINE, atol=1e-5)
    assert out.header.get_intent()[0] == "label"
    labels = np.asarray(out.dataobj)
    assert set(np.unique(labels)) <= {0, 1}
    # the ball is found where it is in the world, not where it would be on another grid
    np.testing.assert_allclose(world_centroid(labels == 1, out.affine), BALL_CENTER, atol=1.5)
    dice = 2 * np.sum((labels == 1) & (truth == 1)) / (np.sum(labels == 1) + np.sum(truth == 1))
    assert dice > 0.8
    record = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    [item] = record["predictions"]
    assert item["status"] == "ok" and item["shape"] == list(NEW_SHAPE) and item["layout"] == "source"
    assert item["structures"]["label_1"]["ml"] == pytest.approx(labels.sum() * 1.7 * 1.3 * 4.5 / 1000, rel=1e-3)
    assert record["preprocess"]["size"] == 32 and record["written"] == 1 and record["failed"] == 0
    assert record["classes"] == {"0": "background", "1": "label_1"}


def test_probabilities_and_nearest_resampling(ball_run, oblique_scan, tmp_path):
    _, _, run = ball_run
    scan, _ = oblique_scan
    result = _predict(run, "--input", str(scan), "--out", str(tmp_path), "--probabilities", "--resample", "nearest")
    assert result.exit_code == 0, result.output
    labels = np.asarray(nib.load(str(tmp_path / "oblique.nii.gz")).dataobj)
    probabilities = nib.load(str(tmp_path / "oblique_probabilities.nii.gz"))
    assert probabilities.shape == (*NEW_SHAPE, 2) and probabilities.get_data_dtype() == np.uint8
    np.testing.assert_allclose(probabilities.affine, NEW_AFFINE, atol=1e-5)
    values = probabilities.get_fdata()  # the NIfTI slope makes them probabilities again
    np.testing.assert_allclose(values.sum(axis=-1), 1.0, atol=2.5 / 255)
    # nearest copies the cache-grid labels, the probabilities are interpolated: they mostly agree
    assert np.mean(values.argmax(axis=-1) == labels) > 0.97


def test_a_bad_scan_among_good_ones_is_one_error_line(ball_run, oblique_scan, tmp_path):
    _, _, run = ball_run
    scan, _ = oblique_scan
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"\x1f\x8b not really gzip")
    missing = tmp_path / "missing.nii.gz"
    result = _predict(run, "--input", str(broken), "--input", str(scan), "--input", str(missing),
                      "--out", str(tmp_path / "pred"))
    assert result.exit_code == EXIT_PARTIAL, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and "broken.nii.gz" in errors[0] + errors[1] and "missing.nii.gz" in errors[0] + errors[1]
    assert "Traceback" not in result.output
    assert (tmp_path / "pred" / "oblique.nii.gz").is_file() and not (tmp_path / "pred" / "broken.nii.gz").exists()
    statuses = [p["status"] for p in json.loads((tmp_path / "pred" / "predictions.json").read_text())["predictions"]]
    assert sorted(statuses) == ["error", "error", "ok"]
    nothing = _predict(run, "--input", str(broken), "--out", str(tmp_path / "none"))
    assert nothing.exit_code == EXIT_NONE and nothing.stderr.startswith("error:")


def test_dicom_series_folder_and_manifest_with_format_same(ball_run, sample_data, tmp_path):
    import SimpleITK as sitk

    _, _, run = ball_run
    series = sample_data / "totalsegmentator" / "example_ct_dicom"
    nrrd = sample_data / "pyradiomics" / "breast1_image.nrrd"
    manifest = tmp_path / "scans.csv"
    manifest.write_text(f"image,modality\n{series},ct\n{nrrd},\n")
    result = _predict(run, "--input", str(manifest), "--out", str(tmp_path / "pred"), "--format", "same")
    assert result.exit_code == 0, result.output
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(series)))
    for reference, written in ((reader.Execute(), "example_ct_dicom.nrrd"), (sitk.ReadImage(str(nrrd)), "breast1_image.nrrd")):
        out = sitk.ReadImage(str(tmp_path / "pred" / written))
        assert out.GetSize() == reference.GetSize()
        np.testing.assert_allclose(out.GetOrigin(), reference.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(out.GetSpacing(), reference.GetSpacing(), atol=1e-6)
        np.testing.assert_allclose(out.GetDirection(), reference.GetDirection(), atol=1e-6)
        assert out.GetPixelIDValue() == sitk.sitkUInt8
    record = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    dicom = next(p for p in record["predictions"] if p["input"] == str(series))
    assert dicom["source_format"] == "dicom" and dicom["format"] == "nrrd" and "ssmtl does not write dicom" in dicom["note"]
    assert dicom["modality"] == "ct"


def test_a_real_nifti_keeps_its_header_geometry(ball_run, sample_data, tmp_path):
    """An LPS-stored MR from TotalSegmentator's reference files: same shape, qform and sform (codes included)."""
    _, _, run = ball_run
    source = sample_data / "totalsegmentator" / "example_mr_sm.nii.gz"
    folder = tmp_path / "scans"
    folder.mkdir()
    shutil.copy(source, folder / "mr.nii.gz")
    (folder / "notes.txt").write_text("not a scan")
    refused = _predict(run, "--input", str(folder), "--out", str(folder), "--modality", "mr")
    assert refused.exit_code == 2 and "is the input --input" in refused.stderr  # never into the input folder
    assert sorted(p.name for p in folder.iterdir()) == ["mr.nii.gz", "notes.txt"]
    result = _predict(run, "--input", str(folder), "--out", str(tmp_path / "pred"), "--modality", "mr")
    assert result.exit_code == 0, result.output
    original, out = nib.load(str(source)), nib.load(str(tmp_path / "pred" / "mr.nii.gz"))
    assert out.shape == original.shape and np.issubdtype(out.get_data_dtype(), np.integer)
    for form in ("qform", "sform"):
        a, code_a = getattr(original, f"get_{form}")(coded=True)
        b, code_b = getattr(out, f"get_{form}")(coded=True)
        assert code_a == code_b and (a is None or np.allclose(a, b))
    assert nib.aff2axcodes(out.affine) == ("L", "P", "S")
