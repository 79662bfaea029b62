"""``ssmtl export``: every part of a run in every format, as a model-hub folder whose model
computes what ``ssmtl.load_network`` computes (within 1e-4), with a model card.

TorchScript is checked with plain ``torch.jit.load``; ONNX with onnxruntime, an optional
test dependency (``pip install 'ssmtl[onnx]'``): without it those checks are skipped.
"""

from __future__ import annotations

import importlib.util
import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from ssmtl import load_network
from ssmtl.api import SsmtlError
from ssmtl.publish.hub import export_run
from ssmtl.host.registry import get_registry

FORMATS = ["safetensors", "torchscript", "onnx"]
needs_onnxruntime = pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None,
                                       reason="onnxruntime is not installed (optional: pip install 'ssmtl[onnx]')")


def _images(batch: int = 2, size: int = 32) -> torch.Tensor:
    return torch.randn(batch, 1, size, size, generator=torch.Generator().manual_seed(7))


def _reference(model, part: str, images: torch.Tensor) -> list[torch.Tensor]:
    """What load_network's module computes for a part, as a list of outputs."""
    with torch.no_grad():
        if part == "finetuned":
            return [model(images)]
        out = model(images)
        return list(out.encoder) if part == "encoder" else [out.decoder]


def _run_exported(folder, fmt: str, images: torch.Tensor) -> list[np.ndarray]:
    if fmt == "torchscript":
        with torch.no_grad():
            out = torch.jit.load(str(folder / "model.pt"))(images)
        return [t.numpy() for t in (out if isinstance(out, (tuple, list)) else [out])]
    import onnxruntime

    session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": images.numpy()})


def _front_matter(folder) -> dict:
    text = (folder / "README.md").read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("part", ["encoder", "network"])
def test_pretraining_parts_match_load_network(pretrained_run, tmp_path, part, fmt):
    if fmt == "onnx" and importlib.util.find_spec("onnxruntime") is None:
        pytest.skip("onnxruntime is not installed (optional: pip install 'ssmtl[onnx]')")
    result = export_run(pretrained_run, fmt, part=part, out=tmp_path / "hub", registry=get_registry())
    folder = tmp_path / "hub"
    weights = {"safetensors": "model.safetensors", "torchscript": "model.pt", "onnx": "model.onnx"}[fmt]
    assert sorted(p.name for p in folder.iterdir()) == sorted(["README.md", "config.json", "LICENSE", "ssmtl-export.json", weights])
    marker = json.loads((folder / "ssmtl-export.json").read_text())
    assert marker["kind"] == "export folder" and marker["files"] == sorted(["README.md", "config.json", "LICENSE", weights])
    config = json.loads((folder / "config.json").read_text())
    assert (config["part"], config["format"], config["file"]) == (part, fmt, weights)
    assert config["parity"]["checked"] and config["parity"]["max_abs_error"] <= 1e-4 and result.parity == config["parity"]
    assert _front_matter(folder)["library_name"] == "ssmtl"
    model = load_network(pretrained_run)
    if fmt == "safetensors":
        state = load_file(folder / weights)
        expected = model.state_dict()
        if part == "encoder":  # the network's own key names, the encoder's entries only
            expected = {k: v for k, v in expected.items() if k.startswith("encoder.")}
        assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in state)
        return
    images = _images(batch=3)  # another batch size than the trace's: the batch axis is dynamic
    exported = _run_exported(folder, fmt, images)
    reference = _reference(model, part, images)
    assert [tuple(e.shape) for e in exported] == [tuple(r.shape) for r in reference]
    for got, want in zip(exported, reference):
        np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=1e-4)


@pytest.mark.parametrize("fmt", ["torchscript", pytest.param("onnx", marks=needs_onnxruntime)])
def test_the_finetuned_model_gives_the_logits_of_load_network(finetuned_run, tmp_path, fmt):
    export_run(finetuned_run, fmt, out=tmp_path / "hub", registry=get_registry())  # the default part of a fine-tuning run
    config = json.loads((tmp_path / "hub" / "config.json").read_text())
    assert config["part"] == "finetuned" and config["num_classes"] == 7 and config["outputs"]["logits"][1] == 7
    images = _images(size=64)  # a size other than the cache's 32: height and width are dynamic
    [logits] = _run_exported(tmp_path / "hub", fmt, images)
    np.testing.assert_allclose(logits, _reference(load_network(finetuned_run), "finetuned", images)[0].numpy(), rtol=0, atol=1e-4)


def test_the_model_card_describes_the_run(finetuned_run, tmp_path):
    export_run(finetuned_run, "safetensors", out=tmp_path / "hub", registry=get_registry())
    card = (tmp_path / "hub" / "README.md").read_text()
    meta = _front_matter(tmp_path / "hub")
    assert meta["pipeline_tag"] == "image-segmentation" and {"ssmtl", "safetensors", "ct"} <= set(meta["tags"])
    evaluation = json.loads((finetuned_run / "eval.json").read_text())
    for section in ("## Input and output", "## Data", "## Training", "## Evaluation", "## How to use",
                    "## Intended use and limits", "## Configuration"):
        assert section in card
    assert f"| **mean** | **{evaluation['mean_dice']:.3f}** |" in card
    assert "**Research use only.**" in card and "subjects of one cache (dataset `phantom`)" in card
    assert "4 subjects" in card and "fine-tuned on 1 labeled subject(s)" in card and "`contrastive`, `order`" in card


def test_a_monai_export_loads_into_basicunet(monai_run, tmp_path):
    from monai.networks.nets import BasicUNet

    export_run(monai_run, "safetensors", out=tmp_path / "net", registry=get_registry())
    export_run(monai_run, "safetensors", part="encoder", out=tmp_path / "enc", registry=get_registry())
    config = json.loads((tmp_path / "net" / "config.json").read_text())
    assert config["native_class"]["path"] == "monai.networks.nets.BasicUNet"
    net = BasicUNet(**config["native_class"]["kwargs"])
    net.load_state_dict(load_file(tmp_path / "net" / "model.safetensors"), strict=True)
    missing, unexpected = net.load_state_dict(load_file(tmp_path / "enc" / "model.safetensors"), strict=False)
    assert unexpected == [] and {k.split(".")[0] for k in missing} == {"upcat_4", "upcat_3", "upcat_2", "upcat_1", "final_conv"}
    images = _images()
    net.eval()
    with torch.no_grad():
        features = load_network(monai_run)(images).decoder
        torch.testing.assert_close(net(images), net.final_conv(features), rtol=0, atol=1e-5)


@needs_onnxruntime
def test_a_monai_network_runs_in_onnxruntime(monai_run, tmp_path):
    export_run(monai_run, "onnx", out=tmp_path / "hub", registry=get_registry())
    images = _images(batch=1)
    [features] = _run_exported(tmp_path / "hub", "onnx", images)
    np.testing.assert_allclose(features, _reference(load_network(monai_run), "network", images)[0].numpy(), rtol=0, atol=1e-4)


def test_non_finite_weights_are_never_written(pretrained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(pretrained_run, run)
    weights = run / "export" / "model.safetensors"
    state = load_file(weights)
    key = next(k for k in state if k.endswith("weight") and state[k].is_floating_point())
    state[key][0] = float("nan")
    save_file(state, str(weights))
    with pytest.raises(SsmtlError, match=rf"NaN or Inf .*\(e.g. {key}\)"):  # named by the loader, before any writer
        export_run(run, "torchscript", out=tmp_path / "hub", registry=get_registry())
    assert not (tmp_path / "hub").exists()


def test_bad_requests_are_named(pretrained_run, tmp_path):
    with pytest.raises(SsmtlError, match="--part finetuned needs a fine-tuning run"):
        export_run(pretrained_run, "onnx", part="finetuned", out=tmp_path / "a", registry=get_registry())
    with pytest.raises(SsmtlError, match="--format keras: unknown format"):
        export_run(pretrained_run, "keras", out=tmp_path / "a", registry=get_registry())
    with pytest.raises(SsmtlError, match="--size 30: the network needs a multiple of 4"):
        export_run(pretrained_run, "torchscript", size=30, out=tmp_path / "a", registry=get_registry())
    with pytest.raises(SsmtlError, match="neither a finished pre-training run"):
        export_run(tmp_path, "safetensors", out=tmp_path / "a", registry=get_registry())
    with pytest.raises(SsmtlError, match="--size 0: expected a positive slice size"):
        export_run(pretrained_run, "torchscript", size=0, out=tmp_path / "a", registry=get_registry())
    with pytest.raises(SsmtlError, match="--license apache: not a license identifier of the Hugging Face hub"):
        export_run(pretrained_run, "safetensors", license="apache", out=tmp_path / "a", registry=get_registry())
    with pytest.raises(SsmtlError, match="--format monai-bundle exports a fine-tuning run's network"):
        export_run(pretrained_run, "monai-bundle", out=tmp_path / "a", registry=get_registry())
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    for force in (False, True):  # a folder that is not an earlier export is never replaced
        with pytest.raises(SsmtlError, match="holds 'keep.txt', which is not part of an earlier export folder"):
            export_run(pretrained_run, "safetensors", out=tmp_path / "full", force=force, registry=get_registry())
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    assert not (tmp_path / "a").exists()
    export_run(pretrained_run, "safetensors", out=tmp_path / "earlier", registry=get_registry())
    with pytest.raises(SsmtlError, match="holds an earlier export folder; pass --force to replace it"):
        export_run(pretrained_run, "torchscript", out=tmp_path / "earlier", registry=get_registry())
    export_run(pretrained_run, "torchscript", out=tmp_path / "earlier", force=True, registry=get_registry())
    assert (tmp_path / "earlier" / "model.pt").is_file() and not (tmp_path / "earlier" / "model.safetensors").exists()


def test_the_export_command(ssmtl_cli, pretrained_run, tmp_path):
    result = ssmtl_cli("export", pretrained_run, "--format", "torchscript", "--part", "encoder", "--out", tmp_path / "hub")
    assert result.exit_code == 0, result.stderr
    line = " ".join(result.stdout.split())
    assert line.startswith(f"exported encoder as torchscript to {tmp_path / 'hub'}") and "max |difference| to torch" in line
    default = ssmtl_cli("export", pretrained_run)  # safetensors of the network, inside the run
    assert default.exit_code == 0 and (pretrained_run / "hub" / "network-safetensors" / "model.safetensors").is_file()
    shutil.rmtree(pretrained_run / "hub")  # the session's run stays as the other tests expect it

