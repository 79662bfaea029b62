"""Issue 27, class 10: what an export says about the run is true, and shareable.

* the size a run was trained at comes from its records, apart from the size a file is traced
  and checked at (``--size``), and stays known when the cache is gone;
* nothing exported carries an absolute local path (the run's, the cache's, the installation's)
  or a subject identifier;
* every exported file has the mode a plain ``open()`` gives (0644 under umask 022).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
from pathlib import Path

import pytest
import yaml

from ssmtl.host.registry import get_registry
from ssmtl.publish.hub import export_run


def _card_meta(folder: Path) -> dict:
    return yaml.safe_load((folder / "README.md").read_text().split("---\n")[1])


def test_the_trained_size_is_the_runs_not_the_trace_size(finetuned_run, tmp_path):
    export_run(finetuned_run, "torchscript", size=64, out=tmp_path / "hub", registry=get_registry())
    images = json.loads((tmp_path / "hub" / "config.json").read_text())["inputs"]["images"]
    assert images["trained_size"] == [32, 32] and images["trace_size"] == [64, 64]
    card = (tmp_path / "hub" / "README.md").read_text()
    assert "(trained on 32 x 32 slices)" in card and "64 x 64 slices" not in card
    assert "torch.zeros(1, 1, 64, 64)" in card  # the usage example runs at the size the file was checked at


def test_the_trained_size_survives_the_cache_and_is_never_guessed(pretrained_run, tmp_path):
    run = tmp_path / "pre"
    shutil.copytree(pretrained_run, run)
    manifest_path = run / "export" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert manifest["data"]["slice_shape"] == [32, 32]  # pre-training records it now
    manifest["data"]["path"] = str(tmp_path / "gone.h5")
    manifest_path.write_text(json.dumps(manifest))
    export_run(run, "safetensors", out=tmp_path / "a", registry=get_registry())
    assert json.loads((tmp_path / "a" / "config.json").read_text())["inputs"]["images"]["trained_size"] == [32, 32]
    del manifest["data"]["slice_shape"]  # a run from before the record, its cache gone: unknown, and said so
    manifest_path.write_text(json.dumps(manifest))
    export_run(run, "safetensors", out=tmp_path / "b", registry=get_registry())
    images = json.loads((tmp_path / "b" / "config.json").read_text())["inputs"]["images"]
    assert images["trained_size"] is None and images["trace_size"] == [64, 64]
    assert "the slice size it was trained at is not recorded" in (tmp_path / "b" / "README.md").read_text()


@pytest.mark.parametrize("fmt", ["safetensors", "torchscript", "onnx", "monai-bundle"])
def test_exports_carry_no_local_path_or_subject_and_are_0644(finetuned_run, tmp_path, fmt):
    old = os.umask(0o022)
    try:
        result = export_run(finetuned_run, fmt, out=tmp_path / "hub", registry=get_registry())
    finally:
        os.umask(old)
    run = json.loads((finetuned_run / "run.json").read_text())
    local = {str(finetuned_run.parent), str(Path(run["data"]["path"]).parent), str(Path(run["init"]).parent),
             str(Path(sys.prefix)), str(Path(__file__).resolve().parents[1]), str(Path.home())}
    subjects = set(run["labeled_subjects"]) | set(run["train_subjects"]) | set(json.loads(
        (finetuned_run / "eval.json").read_text())["test_subjects"])
    files = sorted(p for p in (tmp_path / "hub").rglob("*") if p.is_file())
    assert sorted(p.relative_to(tmp_path / "hub").as_posix() for p in files) == sorted(result.files)
    for path in files:
        content = path.read_bytes()
        leaks = sorted(s for s in local | subjects if s.encode() in content)
        assert leaks == [], f"{path.name} carries {leaks}"
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, f"{path.name}: {oct(path.stat().st_mode)}"
    config = json.loads((tmp_path / "hub" / "config.json").read_text())
    assert config["run"]["name"] == "ft" and "ft" in _card_meta(tmp_path / "hub")["model-index"][0]["name"]
