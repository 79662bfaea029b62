"""The model card of an export as the Hugging Face hub reads it (``huggingface_hub``'s own card
classes, offline), its license, and ``--push-to-hub``'s refusals without the network."""

from __future__ import annotations

import json
import sys

import pytest
from huggingface_hub import ModelCard, ModelCardData

from ssmtl.api import SsmtlError
from ssmtl.host.registry import get_registry
from ssmtl.publish.hub import export_run
from ssmtl.publish.model_card import HUB_LICENSES
from ssmtl.publish.push import prepare_push


def test_the_card_is_a_valid_hub_model_card(finetuned_run, tmp_path):
    export_run(finetuned_run, "safetensors", out=tmp_path / "hub", registry=get_registry())
    card = ModelCard.load(tmp_path / "hub" / "README.md")  # a local file: parsed and checked by huggingface_hub, offline
    data = card.data
    assert isinstance(data, ModelCardData)
    assert (data.library_name, data.license, data.license_name, data.license_link) == \
        ("ssmtl", "other", "training-data-terms", "LICENSE")
    assert data.pipeline_tag == "image-segmentation" and {"ssmtl", "medical-imaging", "safetensors", "ct"} <= set(data.tags)
    evaluation = json.loads((finetuned_run / "eval.json").read_text())
    [result, *per_class] = data.eval_results  # model-index, as huggingface_hub parses and validates it
    assert (result.task_type, result.metric_type, result.metric_name) == ("image-segmentation", "dice", "mean 3D Dice")
    assert result.metric_value == pytest.approx(evaluation["mean_dice"], abs=1e-4) and result.dataset_type == "phantom"
    assert [r.metric_name for r in per_class] == [f"3D Dice: {name}" for name in evaluation["class_names"]
                                                  if evaluation["per_class"][name]["dice"] is not None]
    roundtrip = ModelCard(str(card))  # what the hub would store: the same metadata again
    assert roundtrip.data.to_dict() == data.to_dict()
    text = (tmp_path / "hub" / "LICENSE").read_text()
    assert "not set" in text and "ssmtl export --license" in text and "## License" in card.text


def test_a_named_license_is_a_hub_identifier(pretrained_run, tmp_path):
    export_run(pretrained_run, "safetensors", out=tmp_path / "hub", license="CC-BY-NC-4.0", registry=get_registry())
    data = ModelCard.load(tmp_path / "hub" / "README.md").data
    assert (data.license, data.license_name, data.license_link) == ("cc-by-nc-4.0", None, None)
    assert data.pipeline_tag == "image-feature-extraction" and data.eval_results is None  # features: no score of their own
    assert not (tmp_path / "hub" / "LICENSE").exists()
    assert {"apache-2.0", "mit", "cc-by-4.0", "cc-by-nc-sa-4.0", "unknown"} <= HUB_LICENSES and "other" not in HUB_LICENSES
    with pytest.raises(SsmtlError, match="--license other: not a license identifier"):  # 'other' is what leaving it out means
        export_run(pretrained_run, "safetensors", out=tmp_path / "x", license="other", registry=get_registry())


def test_push_refusals_need_no_network(monkeypatch, ssmtl_cli, pretrained_run, tmp_path):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # the optional extra is not installed
    with pytest.raises(SsmtlError, match=r"^--push-to-hub needs the huggingface_hub package: pip install 'ssmtl\[hub\]'$"):
        prepare_push("me/model")
    result = ssmtl_cli("export", pretrained_run, "--push-to-hub", "me/model", "--out", tmp_path / "hub")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == \
        ["error: --push-to-hub needs the huggingface_hub package: pip install 'ssmtl[hub]'"]
    assert not (tmp_path / "hub").exists()  # refused before anything was written
    monkeypatch.delitem(sys.modules, "huggingface_hub")
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)  # nobody logged in
    with pytest.raises(SsmtlError, match="--push-to-hub me/model: no Hugging Face token; log in first"):
        prepare_push("me/model")
    with pytest.raises(SsmtlError, match="--push-to-hub me/bad name: not a valid repository id"):
        prepare_push("me/bad name")
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_test")
    target = prepare_push("me/model", private=True)
    assert (target.repo, target.private) == ("me/model", True)
