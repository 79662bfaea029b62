"""``ssmtl evaluate --predictions DIR --references DIR``: any tool's predictions, scored like ``ssmtl evaluate``."""

from __future__ import annotations

import csv
import json
import math

import nibabel as nib
import numpy as np
import pytest
from ingest_helpers import invoke

from ssmtl.api.errors import InputFileError
from ssmtl.downstream.label_maps import dataset_json_labels
from ssmtl.downstream.metrics import hd95_per_class

SPACING = (1.5, 0.8, 3.0)
AFFINE = np.diag([*SPACING, 1.0])
SHAPE = (24, 30, 8)
#: the same voxels stored with x and y reversed (voxel 0 is the last one of the RAS-stored array)
LPS_AFFINE = np.diag([-SPACING[0], -SPACING[1], SPACING[2], 1.0]) + np.array(
    [[0, 0, 0, (SHAPE[0] - 1) * SPACING[0]], [0, 0, 0, (SHAPE[1] - 1) * SPACING[1]], [0, 0, 0, 0], [0, 0, 0, 0]])
MMWHS = {"background": 0, "myocardium": 205, "left atrium": 420}


def _maps(shift: int) -> tuple[np.ndarray, np.ndarray]:
    """(reference, prediction): a box of 205 and one of 420; the prediction's 205 box shifted by ``shift`` voxels."""
    reference = np.zeros(SHAPE, np.uint16)
    reference[4:12, 5:17, 2:6] = 205
    reference[15:20, 20:26, 3:7] = 420
    prediction = np.zeros_like(reference)
    prediction[4 + shift:12 + shift, 5:17, 2:6] = 205
    prediction[15:20, 20:26, 3:7] = 420
    return reference, prediction


def _save(path, data, affine=AFFINE):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.sum(a & b) / (np.sum(a) + np.sum(b))


def test_an_nnunet_prediction_folder_is_scored_per_structure_and_case(tmp_path):
    """nnU-Net's layout: predictions/case.nii.gz (with its json side files), labelsTr/case.nii.gz (more cases than
    were predicted), MM-WHS label values named in a v2 dataset.json; one reference stored LPS."""
    predictions, references = tmp_path / "nnunet_pred", tmp_path / "labelsTr"
    truth = {}
    for case, shift in (("whs_001", 0), ("whs_002", 2), ("whs_003", 3)):
        reference, prediction = _maps(shift)
        _save(predictions / f"{case}.nii.gz", prediction)
        truth[case] = (reference, prediction)
    _save(references / "whs_001.nii.gz", truth["whs_001"][0])
    _save(references / "whs_002.nii.gz", truth["whs_002"][0][::-1, ::-1].copy(), LPS_AFFINE)  # same voxels, LPS order
    _save(references / "whs_003.nii.gz", truth["whs_003"][0])
    _save(references / "whs_004.nii.gz", truth["whs_003"][0])  # a training case nobody predicted
    for side_file in ("dataset.json", "plans.json", "predict_from_raw_data_args.json"):
        (predictions / side_file).write_text("{}")
    labels = tmp_path / "dataset.json"
    labels.write_text(json.dumps({"labels": MMWHS, "channel_names": {"0": "CT"}, "file_ending": ".nii.gz"}))

    result = invoke("evaluate", "--predictions", str(predictions), "--references", str(references), "--labels", str(labels))
    assert result.exit_code == 0, result.output
    assert result.stderr.count("warning:") == 1 and "1 reference(s) without a prediction, not scored: whs_004.nii.gz" in result.stderr
    assert "myocardium" in result.stdout and "left atrium" in result.stdout and "mean" in result.stdout

    record = json.loads((predictions / "scores.json").read_text())
    assert record["scored"] == 3 and record["failed"] == 0 and record["class_names"] == ["myocardium", "left atrium"]
    assert record["unmatched"] == {"predictions": [], "references": ["whs_004.nii.gz"]}
    for case in record["per_case"]:
        reference, prediction = truth[case["case"]]
        expected = _dice(prediction == 205, reference == 205)
        assert case["dice"]["myocardium"] == pytest.approx(expected)
        assert case["dice"]["left atrium"] == pytest.approx(1.0)
        # HD95 at the reference's own spacing (the metric itself is checked against a reference in test_metrics)
        hd95 = hd95_per_class((prediction == 205).astype(np.uint8), (reference == 205).astype(np.uint8), 2, SPACING)[1]
        assert case["hd95"]["myocardium"] == pytest.approx(hd95) and case["spacing_mm"] == pytest.approx(list(SPACING))
    shifted = [_dice(truth[c][1] == 205, truth[c][0] == 205) for c in truth]
    assert record["per_class"]["myocardium"]["dice"] == pytest.approx(sum(shifted) / 3)
    assert record["mean_dice"] == pytest.approx((sum(shifted) / 3 + 1.0) / 2)
    assert record["per_case"][1]["hd95"]["myocardium"] == pytest.approx(2 * SPACING[0])  # shifted 2 voxels of 1.5 mm

    rows = list(csv.DictReader((predictions / "scores.csv").read_text().splitlines()))
    assert len(rows) == 6 and rows[0] == {"case": "whs_001", "structure": "myocardium", "value": "205",
                                          "dice": "1.000000", "hd95_mm": "0.0000", "presence": "found"}


def test_ssmtl_predict_output_is_scored_against_label_files_with_a_suffix(tmp_path):
    """ssmtl predict's folder (predictions.json, case_probabilities.nii.gz) against case_seg.nii.gz references;
    no --labels: every value found, named label_<value>; scores written to --out."""
    predictions, references, out = tmp_path / "pred", tmp_path / "refs", tmp_path / "scores"
    boxes, _ = _maps(0)
    reference = ((boxes == 205) * 1 + (boxes == 420) * 2).astype(np.uint8)
    prediction = np.zeros_like(reference)
    prediction[4:12, 5:17, 2:6] = 1  # structure 2 missed
    prediction[0:2, 0:2, 0:2] = 3  # a structure the reference does not have
    _save(predictions / "p01.nii.gz", prediction)
    _save(predictions / "p01_probabilities.nii.gz", np.zeros((*prediction.shape, 3), np.uint8))
    (predictions / "predictions.json").write_text("{}")
    _save(references / "p01_seg.nii.gz", reference)

    result = invoke("evaluate", "--predictions", str(predictions), "--references", str(references), "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["class_names"] == ["label_1", "label_2", "label_3"] and record["scored"] == 1
    [case] = record["per_case"]
    assert case["reference"] == "p01_seg.nii.gz" and case["prediction"] == "p01.nii.gz"
    assert case["dice"] == {"label_1": 1.0, "label_2": 0.0, "label_3": 0.0}
    assert case["missed"] == ["label_2"] and case["false_positive"] == ["label_3"]
    diagonal = math.sqrt(sum((n * s) ** 2 for n, s in zip(reference.shape, SPACING)))
    assert case["hd95"]["label_2"] == pytest.approx(diagonal) and case["hd95"]["label_3"] == pytest.approx(diagonal)
    assert record["per_class"]["label_2"]["missed"] == 1 and record["per_class"]["label_3"]["false_positive"] == 1
    assert sorted(p.name for p in out.iterdir()) == ["scores.csv", "scores.json"]
    assert not (predictions / "scores.json").exists()


def test_what_cannot_be_scored_is_one_line_each(tmp_path):
    predictions, references = tmp_path / "pred", tmp_path / "refs"
    reference, prediction = _maps(0)
    _save(predictions / "good.nii.gz", prediction)
    _save(references / "good.nii.gz", reference)
    _save(predictions / "moved.nii.gz", prediction, np.diag([*SPACING, 1.0]) + np.array([[0, 0, 0, 5.0]] + [[0] * 4] * 3))
    _save(references / "moved.nii.gz", reference)
    _save(predictions / "cropped.nii.gz", prediction[2:])
    _save(references / "cropped.nii.gz", reference)
    strange = prediction.copy()
    strange[0, 0, 0] = 7
    _save(predictions / "strange.nii.gz", strange)
    _save(references / "strange.nii.gz", reference)
    _save(predictions / "orphan.nii.gz", prediction)
    (predictions / "broken.nii.gz").write_bytes(b"\x1f\x8b not a label map")
    _save(references / "broken.nii.gz", reference)
    labels = tmp_path / "dataset.json"
    labels.write_text(json.dumps({"labels": {"0": "background", "205": "myocardium", "420": "left atrium"}}))  # Decathlon's

    result = invoke("evaluate", "--predictions", str(predictions), "--references", str(references), "--labels", str(labels))
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 4 and "Traceback" not in result.output
    assert any("moved.nii.gz: its grid" in e and "not the reference moved.nii.gz's" in e for e in errors)
    assert any("cropped.nii.gz: its grid (22 x 30 x 8" in e for e in errors)
    assert any("strange.nii.gz: holds the label value 7, which --labels does not declare" in e for e in errors)
    assert any("broken.nii.gz: cannot read it as a label map" in e for e in errors)
    assert "1 prediction(s) without a reference, not scored: orphan.nii.gz" in result.stderr
    record = json.loads((predictions / "scores.json").read_text())
    assert record["scored"] == 1 and record["failed"] == 4 and record["per_case"][0]["case"] == "good"
    assert sorted(e["case"] for e in record["errors"]) == ["broken", "cropped", "moved", "strange"]

    nothing = invoke("evaluate", "--predictions", str(predictions), "--references", str(tmp_path / "dataset.json"))
    assert nothing.exit_code == 2 and nothing.stderr.count("error:") == 1 and "not a directory" in nothing.stderr
    (tmp_path / "other").mkdir()
    _save(tmp_path / "other" / "x.nii.gz", reference)
    unmatched = invoke("evaluate", "--predictions", str(predictions), "--references", str(tmp_path / "other"))
    assert unmatched.exit_code == 2 and unmatched.stderr.count("error:") == 1
    assert "no file matches a reference" in unmatched.stderr
    both = invoke("evaluate", str(tmp_path), "--predictions", str(predictions), "--references", str(references))
    assert both.exit_code == 2 and "pass one or the other" in both.stderr


def test_dataset_json_labels_in_both_spellings(tmp_path):
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"labels": {"background": 0, "LV": 1, "ignore": 3, "RV": 2}}))
    assert dataset_json_labels(path) == ({1: "LV", 2: "RV"}, 3)
    path.write_text(json.dumps({"labels": {"0": "background", "1": "edema", "2": "tumour"}}))
    assert dataset_json_labels(path) == ({1: "edema", 2: "tumour"}, None)
    for labels, message in (({"background": 0, "whole tumour": [1, 2, 3]}, "'whole tumour' is a region"),
                            ({"background": 0, "LV": -1}, "'LV' has the value -1"),
                            ({"background": 0, "LV": 1, "also LV": 1}, "the value 1 is named twice"),
                            ([], "labels: expected an object")):
        path.write_text(json.dumps({"labels": labels}))
        with pytest.raises(InputFileError, match=message):
            dataset_json_labels(path)


def test_the_ignore_label_leaves_voxels_out_of_both_maps(tmp_path):
    predictions, references = tmp_path / "pred", tmp_path / "refs"
    reference = np.zeros((10, 10, 4), np.uint8)
    reference[2:6, 2:6, 1:3] = 1
    reference[6:9, 6:9, :] = 2  # unannotated
    prediction = np.zeros_like(reference)
    prediction[2:6, 2:6, 1:3] = 1
    prediction[6:9, 6:9, :] = 1  # predicted foreground where nobody annotated: not a false positive
    _save(predictions / "c.nii.gz", prediction)
    _save(references / "c.nii.gz", reference)
    labels = tmp_path / "dataset.json"
    labels.write_text(json.dumps({"labels": {"background": 0, "lesion": 1, "ignore": 2}}))
    result = invoke("evaluate", "--predictions", str(predictions), "--references", str(references), "--labels", str(labels))
    assert result.exit_code == 0, result.output
    record = json.loads((predictions / "scores.json").read_text())
    assert record["class_names"] == ["lesion"] and record["per_case"][0]["dice"]["lesion"] == 1.0

    import ssmtl  # the Python API runs the same code

    again = ssmtl.score_predictions(predictions, references, labels=labels, out=tmp_path / "api")
    assert again["per_case"] == record["per_case"] and (tmp_path / "api" / "scores.csv").is_file()


def test_scoring_predict_s_folder_gives_evaluate_s_native_scores(ball_run, tmp_path):
    """One prediction, three doors: evaluate's native per-volume Dice is what scoring predict's folder gives."""
    import shutil

    from ssmtl.data.cache import SliceCache

    root, cache, run = ball_run
    copy = shutil.copytree(run, tmp_path / "run", ignore=shutil.ignore_patterns("checkpoints"))
    evaluated = invoke("evaluate", str(copy), "--space", "native")
    assert evaluated.exit_code == 0, evaluated.output
    per_volume = json.loads((copy / "eval.json").read_text())["per_volume"]
    sources = {v.subject: v.source for v in SliceCache(cache).volumes}
    scans = [arg for v in per_volume for arg in ("--input", sources[v["subject"]])]
    predicted = invoke("predict", str(copy), *scans, "--out", str(tmp_path / "pred"), "--modality", "ct")
    assert predicted.exit_code == 0, predicted.output
    scored = invoke("evaluate", "--predictions", str(tmp_path / "pred"), "--references", str(root / "labels"))
    assert scored.exit_code == 0, scored.output
    cases = {c["case"]: c for c in json.loads((tmp_path / "pred" / "scores.json").read_text())["per_case"]}
    for volume in per_volume:
        assert cases[volume["subject"]]["dice"]["label_1"] == pytest.approx(volume["dice"]["label_1"], abs=1e-12)
        assert cases[volume["subject"]]["hd95"]["label_1"] == pytest.approx(volume["hd95"]["label_1"], abs=1e-9)
