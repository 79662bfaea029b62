"""The example plugin package, installed with pip and used as a third party would.

examples/ssmtl-rotation is installed into the test environment (editable, once;
a no-op when it is already current) and then only reached through its ``ssmtl``
entry point: ``ssmtl plugins``, ``ssmtl cache build --dataset png-stack``, and
``ssmtl pretrain --task rotation --task contrastive`` on one process and on two
gloo processes under ``accelerate launch``, where every rank discovers the
plugin on its own.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from safetensors.torch import load_file

from plugin_packages import EXAMPLE, ROOT, TINY_RUN, accelerate_ssmtl, clean_env, install_editable, plugins_json, run, ssmtl

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def rotation_plugin():
    install_editable(EXAMPLE)
    return EXAMPLE


def read_manifest(run_dir):
    return json.loads((run_dir / "export" / "manifest.json").read_text())


def last_metrics(run_dir) -> dict:
    return json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])


def test_ssmtl_never_imports_the_example():
    offenders = [p for p in (ROOT / "src").rglob("*.py") if "ssmtl_rotation" in p.read_text()]
    assert offenders == []


def test_plugins_lists_the_installed_example(rotation_plugin):
    data = plugins_json()
    [info] = [p for p in data["plugins"] if p["name"] == "rotation"]
    assert info == {
        "name": "rotation",
        "distribution": "ssmtl-rotation",
        "version": "0.1.0",
        "builtin": False,
        "hooks": ["ssmtl_register_datasets", "ssmtl_register_tasks"],
        "provides": {"tasks": ["rotation"], "datasets": ["png-stack"]},
        "error": None,
    }


def test_pretrain_rotation_and_contrastive_on_one_process(rotation_plugin, ssmtl_tiny_cache, tmp_path):
    out = tmp_path / "run"
    ssmtl("pretrain", "--data", ssmtl_tiny_cache, "--task", "rotation", "--task", "contrastive", "--out", out,
          "--workers", "1", *TINY_RUN)
    manifest = read_manifest(out)
    assert set(manifest["tasks"]) == {"rotation", "contrastive"} and manifest["world_size"] == 1
    assert manifest["tasks"]["rotation"]["source_view"] == "sequence"
    assert set(last_metrics(out)["tasks"]) == {"rotation", "contrastive"}


def test_pretrain_rotation_and_contrastive_on_two_processes(rotation_plugin, ssmtl_tiny_cache, tmp_path):
    out = tmp_path / "run"
    # the allow-list travels to every rank through the environment, like any launcher setting
    accelerate_ssmtl(2, "pretrain", "--data", ssmtl_tiny_cache, "--task", "rotation", "--task", "contrastive",
                     "--out", out, "--workers", "1", *TINY_RUN, env=clean_env(SSMTL_PLUGINS="rotation"))
    manifest = read_manifest(out)
    assert manifest["world_size"] == 2
    assert set(manifest["tasks"]) == {"rotation", "contrastive"}
    checkpoint = out / "checkpoints" / "step-00000002"
    assert (checkpoint / "random_states_1.pkl").is_file()  # rank 1 ran the same loop to the end
    state = load_file(checkpoint / "model.safetensors")
    assert any(key.startswith("tasks.rotation.head.") for key in state)
    assert "acc" in last_metrics(out)["tasks"]["rotation"]


def test_png_stack_dataset_through_its_entry_point(rotation_plugin, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for subject in ("a", "b"):
        folder = tmp_path / "slices" / subject
        folder.mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 4000, (24, 24)).astype(np.uint16)).save(folder / f"{i:03d}.png")
    out = tmp_path / "stack.h5"
    # its config fields are flags like a built-in's (--pixel-spacing), and --set still reaches any field
    ssmtl("cache", "build", "--dataset", "png-stack", "--images", tmp_path / "slices", "--modality", "ct",
          "--pixel-spacing", "0.5", "--set", "dataset.rescale_intercept=-1024", "--out", out, "--size", "32")
    info = json.loads(ssmtl("cache", "info", out, "--json").stdout)
    assert info["volumes"] == 2 and info["slices"] == 8 and info["dataset"] == "png-stack"
    assert info["spacing_stats_mm"]["original"]["x"]["min"] == 0.5
    help_text = " ".join(ssmtl("cache", "build", "--dataset", "png-stack", "--help", env=clean_env(COLUMNS="200")).stdout.split())
    assert "--pixel-spacing" in help_text and "In-plane pixel size in mm. (default: 1.0)" in help_text


def test_the_example_packages_own_tests_pass(rotation_plugin):
    result = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=EXAMPLE, timeout=600)
    assert " passed" in result.stdout and "failed" not in result.stdout
