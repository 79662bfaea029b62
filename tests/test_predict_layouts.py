"""``ssmtl predict`` on nnU-Net's imagesTs: outputs named by case id (``case100.nii.gz``), as nnU-Net names them."""

from __future__ import annotations

import json

import nibabel as nib
import pytest
from dataset_json_helpers import save, scan, SHAPE, write_nnunet
from ingest_helpers import invoke

from ssmtl.api import InputFileError
from ssmtl.cli.predict_cmd import EXIT_PARTIAL
from ssmtl.plugins.datasets.volume_files import scan_subject


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, ssmtl_tiny_cache):
    """Two fine-tuning steps of a width-4 U-Net from scratch: enough to predict with."""
    import ssmtl

    out = tmp_path_factory.mktemp("runs") / "ft"
    ssmtl.finetune(ssmtl_tiny_cache, out, labeled_volumes=1, steps=2, batch_size=2, progress=False,
                   settings={"model.base_channels": 4, "model.depth": 2, "validation": "none"})
    return out


def test_the_case_id_names_a_scan_in_an_nnunet_folder(tmp_path):
    single = write_nnunet(tmp_path / "one", cases=("a",), test=("case100", "case101"), dataset=None)
    assert [scan_subject(single / "imagesTs" / f"case10{n}_0000.nii.gz") for n in (0, 1)] == ["case100", "case101"]
    multi = write_nnunet(tmp_path / "two", cases=("a",), test=("case100", "case101"), channels=2, dataset=None)
    assert scan_subject(multi / "imagesTs" / "case101_0000.nii.gz") == "case101"
    with pytest.raises(InputFileError, match="channel 1 of the nnU-Net case 'case101'.*its channel 0 file, case101_0000"):
        scan_subject(multi / "imagesTs" / "case101_0001.nii.gz")
    for n in (0, 1, 2):  # a numbered series keeps its names
        save(tmp_path / "series" / f"scan_{n:04d}.nii.gz", scan(n))
    assert scan_subject(tmp_path / "series" / "scan_0001.nii.gz") == "scan_0001"
    assert scan_subject(tmp_path / "series" / "scan_0000.nii.gz") == "scan_0000"


def test_predict_writes_imagests_as_case_ids(tiny_run, tmp_path):
    root = write_nnunet(tmp_path / "D", cases=("a",), test=("case100", "case101"), channels=2, dataset=None)
    result = invoke("predict", str(tiny_run), "--input", str(root / "imagesTs"), "--out", str(tmp_path / "pred"),
                    "--modality", "ct")
    # the second channel's files are refused, one line each; the cases are predicted from channel 0
    assert result.exit_code == EXIT_PARTIAL, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and all("_0001.nii.gz" in e and "channel 1 of the nnU-Net case" in e for e in errors)
    written = sorted(p.name for p in (tmp_path / "pred").iterdir())
    assert written == ["case100.nii.gz", "case101.nii.gz", "predictions.json"]
    assert nib.load(str(tmp_path / "pred" / "case100.nii.gz")).shape == SHAPE
    record = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    ok = {p["input"]: p["output"] for p in record["predictions"] if p["status"] == "ok"}
    assert ok == {str(root / "imagesTs" / f"{c}_0000.nii.gz"): str(tmp_path / "pred" / f"{c}.nii.gz")
                  for c in ("case100", "case101")}
