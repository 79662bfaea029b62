"""Bad input through the CLI: one clear error line, exit code 2, nothing half-written."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from ssmtl.cli.app import app

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, ["--no-plugins", *args])


def assert_clean_failure(result, *needles: str) -> str:
    """Exit 2, an `error:` line naming what is wrong, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    text = result.stderr if result.stderr else result.output
    assert "Traceback" not in result.output and "Traceback" not in text
    assert not text.startswith("\n"), "a blank line before the error makes it two lines"
    first = [line for line in text.splitlines() if line.strip()][0]
    assert first.startswith("error:"), text
    joined = " ".join(text.split())
    for needle in needles:
        assert needle in joined, (needle, text)
    return joined


def no_cache_files(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if p.suffix == ".h5" or p.name.startswith(".ssmtl-tmp-")]


def save_nifti(path: Path, data: np.ndarray, affine=None) -> Path:
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


@pytest.fixture()
def nifti_dirs(tmp_path: Path):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    return images, labels


def test_missing_directory(tmp_path):
    missing = tmp_path / "nope"
    result = invoke("cache", "build", "--dataset", "nifti", "--images", str(missing), "--out", str(tmp_path / "x.h5"), "--size", "32")
    assert_clean_failure(result, str(missing), "not found")
    assert no_cache_files(tmp_path) == []


def test_a_long_path_stays_on_one_line(tmp_path):
    """rich wraps at 80 columns when the output is not a terminal; a path must not be cut in two."""
    out = tmp_path / ("scans_" * 20) / "x.h5"
    built = invoke("cache", "build", "--dataset", "phantom", "--out", str(out), "--subjects", "2", "--size", "32",
                   "--set", "dataset.num_slices=8")
    assert built.exit_code == 0, built.output
    assert str(out) in built.stdout.splitlines()
    missing = tmp_path / ("scans_" * 20) / "nope"
    failed = invoke("cache", "build", "--dataset", "nifti", "--images", str(missing), "--out", str(tmp_path / "y.h5"),
                    "--size", "32")
    assert_clean_failure(failed)
    first = [line for line in (failed.stderr or failed.output).splitlines() if line.strip()][0]
    assert str(missing) in first


def test_image_label_shape_mismatch(tmp_path, nifti_dirs):
    images, labels = nifti_dirs
    save_nifti(images / "case1.nii.gz", np.random.rand(20, 20, 6).astype(np.float32) * 100)
    bad_label = save_nifti(labels / "case1.nii.gz", np.zeros((20, 18, 6), np.uint8))
    result = invoke("cache", "build", "--dataset", "nifti", "--images", str(images), "--labels", str(labels),
                    "--out", str(tmp_path / "x.h5"), "--size", "32", "--modality", "mr")
    assert_clean_failure(result, str(bad_label), "shape")
    assert no_cache_files(tmp_path) == []


@pytest.mark.parametrize("shape", [(20, 20), (20, 20, 6, 3)], ids=["2d", "4d"])
def test_wrong_dimensionality(tmp_path, nifti_dirs, shape):
    images, _ = nifti_dirs
    bad = save_nifti(images / "case1.nii.gz", np.random.rand(*shape).astype(np.float32))
    result = invoke("cache", "build", "--dataset", "nifti", "--images", str(images), "--out", str(tmp_path / "x.h5"), "--size", "32")
    assert_clean_failure(result, str(bad))
    assert no_cache_files(tmp_path) == []


def test_truncated_nifti(tmp_path, nifti_dirs):
    images, _ = nifti_dirs
    good = save_nifti(images / "case1.nii.gz", np.random.rand(30, 30, 10).astype(np.float32))
    blob = good.read_bytes()
    good.write_bytes(blob[: len(blob) // 2])
    result = invoke("cache", "build", "--dataset", "nifti", "--images", str(images), "--out", str(tmp_path / "x.h5"), "--size", "32")
    assert_clean_failure(result, str(good))
    assert no_cache_files(tmp_path) == []


def test_existing_cache_needs_force(tmp_path):
    out = tmp_path / "demo.h5"
    first = invoke("cache", "build", "--dataset", "phantom", "--out", str(out), "--subjects", "2", "--size", "32", "--set", "dataset.num_slices=8")
    assert first.exit_code == 0, first.output
    before = out.read_bytes()
    again = invoke("cache", "build", "--dataset", "phantom", "--out", str(out), "--subjects", "3", "--size", "32", "--set", "dataset.num_slices=8")
    assert_clean_failure(again, str(out), "--force")
    assert out.read_bytes() == before
    forced = invoke("cache", "build", "--dataset", "phantom", "--out", str(out), "--subjects", "3", "--size", "32", "--set", "dataset.num_slices=8", "--force")
    assert forced.exit_code == 0, forced.output
    assert out.read_bytes() != before


def test_unknown_task_lists_available(tmp_path):
    result = invoke("config", "show", "--task", "contrastive", "--task", "bogus")
    text = assert_clean_failure(result, "bogus", "available:", "contrastive", "order")
    assert "tasks.bogus" in text


@pytest.mark.parametrize(
    "setting, field",
    [("train.steps=0", "train.steps"), ("model.norm=bogus", "model.norm"), ("train.bogus=1", "train.bogus"),
     ("tasks.order.num_slices=1", "tasks.order.num_slices"), ("weighting.scheme=magic", "weighting.scheme")],
)
def test_invalid_config_value(setting, field):
    result = invoke("config", "show", "--set", setting)
    assert_clean_failure(result, field)


def test_unknown_dataset(tmp_path):
    result = invoke("cache", "build", "--dataset", "bogus", "--out", str(tmp_path / "x.h5"))
    assert_clean_failure(result, "bogus", "phantom", "nifti")


def test_pretrain_missing_cache(tmp_path):
    result = invoke("pretrain", "--data", str(tmp_path / "missing.h5"), "--out", str(tmp_path / "run"), "--steps", "1")
    assert_clean_failure(result, "missing.h5")
    assert not (tmp_path / "run").exists()


def test_config_file_parse_error(tmp_path):
    bad = tmp_path / "run.toml"
    bad.write_text("[train\nsteps = 3\n")
    result = invoke("config", "show", "--config", str(bad))
    assert_clean_failure(result, str(bad))


@pytest.mark.parametrize("flags, needle", [
    (["--task", "order", "--task", "order"], "--task order: given twice"),
    (["--task", "order:"], "expected NAME or NAME:WEIGHT"),
    (["--task", "order:inf"], "'inf' is not a finite number"),
    (["--task", "order:nan"], "'nan' is not a finite number"),
    (["--format", "xml"], "--format 'xml': use yaml or json"),
])
def test_config_show_refuses_what_it_cannot_mean(flags, needle):
    assert_clean_failure(invoke("config", "show", *flags), needle)
