"""The Python API: ``from ssmtl import pretrain, finetune, evaluate, predict, load_network``.

Typed functions that return results, raise ``SsmtlError`` on bad input, and run the same
code as the command line (a run through the API equals the same run through the CLI).
``predict``'s geometry is tested in depth by ``tests/test_predict.py``; here, its result
and its errors.
"""

from __future__ import annotations

import importlib
import inspect
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import ssmtl
from ssmtl.api import ConfigError, InputFileError, NetworkOutput, SsmtlError
from ssmtl.downstream.python_api import Evaluation, FinetuneResult
from ssmtl.pretraining.engine import PretrainResult

TINY = {"model.base_channels": 4, "model.depth": 2, "tasks.contrastive.queue_size": 16, "data.num_workers": 0}


def test_the_five_names_import_and_import_ssmtl_stays_light():
    from ssmtl import evaluate, finetune, load_network, predict, pretrain  # noqa: F401

    code = "import sys, ssmtl; from ssmtl import pretrain, finetune, evaluate, predict, load_network; print('torch' in sys.modules)"
    # importing the names loads their modules, but `import ssmtl` alone must not load torch
    light = subprocess.run([sys.executable, "-c", "import sys, ssmtl; print('torch' in sys.modules)"],
                           capture_output=True, text=True, check=True).stdout
    assert light.strip() == "False"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).returncode == 0


def test_the_functions_are_typed():
    signature = inspect.signature(ssmtl.pretrain)
    assert list(signature.parameters)[:2] == ["data", "out"] and signature.return_annotation == "PretrainResult"
    assert inspect.signature(ssmtl.finetune).return_annotation == "FinetuneResult"
    assert inspect.signature(ssmtl.evaluate).return_annotation == "Evaluation"
    assert inspect.signature(ssmtl.load_network).return_annotation == "nn.Module"
    # importing the pre-training package does not shadow the function (they have different names)
    importlib.import_module("ssmtl.pretraining.engine")
    assert inspect.isfunction(ssmtl.pretrain) and ssmtl.pretrain.__module__ == "ssmtl.pretraining.python_api"


def test_a_run_through_the_api_is_the_run_through_the_cli(ssmtl_cli, ssmtl_tiny_cache, tmp_path):
    result = ssmtl.pretrain(ssmtl_tiny_cache, tmp_path / "api", steps=2, batch_size=2, settings=TINY, progress=False)
    assert isinstance(result, PretrainResult) and result.steps == 2 and set(result.final_losses) == {"contrastive", "order", "loss"}
    sets = [arg for key, value in TINY.items() for arg in ("--set", f"{key}={value}")]
    cli = ssmtl_cli("pretrain", "--data", ssmtl_tiny_cache, "--out", tmp_path / "cli", "--steps", "2", "--batch-size", "2", *sets)
    assert cli.exit_code == 0, cli.stderr

    def records(run):
        return [{k: v for k, v in json.loads(line).items() if k != "slices_per_s"} for line in (run / "metrics.jsonl").read_text().splitlines()]

    assert records(tmp_path / "api") == records(tmp_path / "cli")
    api, via_cli = (load_file(tmp_path / run / "export" / "model.safetensors") for run in ("api", "cli"))
    assert all(torch.equal(api[k], via_cli[k]) for k in api)


def test_finetune_evaluate_and_load_network_return_results(finetuned_run, pretrained_run, ssmtl_tiny_cache, tmp_path):
    result = ssmtl.finetune(ssmtl_tiny_cache, tmp_path / "ft", init=pretrained_run, labeled_volumes=1, steps=1,
                            batch_size=2, progress=False)
    assert isinstance(result, FinetuneResult) and result.steps == 1 and result.init == str(pretrained_run)
    assert result.num_classes == 7 and len(result.labeled_subjects) == 1 and not set(result.labeled_subjects) & set(result.test_subjects)
    evaluation = ssmtl.evaluate(tmp_path / "ft")
    saved = json.loads((tmp_path / "ft" / "eval.json").read_text())
    assert isinstance(evaluation, Evaluation) and evaluation.results == saved and evaluation.mean_dice == saved["mean_dice"]
    assert set(evaluation.per_class) == set(saved["class_names"])
    images = torch.zeros(2, 1, 32, 32)
    with torch.no_grad():
        logits = ssmtl.load_network(finetuned_run)(images)
        features = ssmtl.load_network(pretrained_run)(images)
    assert logits.shape == (2, 7, 32, 32)
    assert isinstance(features, NetworkOutput) and features.decoder.shape == (2, 4, 32, 32)


def test_bad_input_raises_ssmtl_errors_before_any_work(ssmtl_tiny_cache, tmp_path):
    with pytest.raises(ConfigError) as info:
        ssmtl.pretrain(ssmtl_tiny_cache, tmp_path / "a", settings={"model.base_channels": 1, "train.steps": 0})
    assert [row[0] for row in info.value.rows] == ["model.base_channels", "train.steps"]
    with pytest.raises(InputFileError, match="cache file not found"):
        ssmtl.pretrain(tmp_path / "missing.h5", tmp_path / "b", steps=1)
    with pytest.raises(ConfigError, match="give a mapping"):
        ssmtl.pretrain(ssmtl_tiny_cache, tmp_path / "c", settings="train.steps=1")
    with pytest.raises(SsmtlError, match="unknown head 'nope'"):
        ssmtl.finetune(ssmtl_tiny_cache, tmp_path / "d", head="nope", steps=1)
    with pytest.raises(SsmtlError, match="not found"):
        ssmtl.evaluate(tmp_path)
    with pytest.raises(SsmtlError, match="neither a finished pre-training run"):
        ssmtl.load_network(tmp_path)
    assert not any((tmp_path / name).exists() for name in "abcd")


def test_predict_writes_label_maps_in_the_scan_space_and_counts_failures(ball_run, tmp_path):
    import nibabel as nib

    root, _, run = ball_run
    scan = sorted((root / "images").glob("*.nii.gz"))[0]
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a scan")
    result = ssmtl.predict(run, [scan, broken], tmp_path / "pred", modality="ct")
    assert (result.written, result.failed) == (1, 1)
    source = nib.load(str(scan))
    label_map = nib.load(str(tmp_path / "pred" / scan.name))
    assert label_map.shape == source.shape
    np.testing.assert_allclose(label_map.affine, source.affine, atol=1e-5)
    assert [item["status"] for item in result.items] == ["ok", "error"]
    assert result.record == json.loads((tmp_path / "pred" / "predictions.json").read_text())
    with pytest.raises(SsmtlError, match="broken.nii.gz"):
        ssmtl.predict(run, broken, tmp_path / "none", modality="ct")
