"""Issue 27, the predict/evaluate classes: predict's --out folder, bad scans among good ones for every
worker count, non-finite weights, and a run's data identity. Every command is the real CLI in a
subprocess (robustness.harness): exit code, one error line, no traceback, inputs untouched."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from safetensors.torch import load_file, save_file

from robustness.harness import Case, assert_all_held, fingerprint, run_cases, ssmtl_cli
from robustness.test_output_paths import _held_by_another_process
from ssmtl.downstream.prediction_folder import PredictionFolder, RECORD
from ssmtl.downstream.records import modality_counts


def _scan(path: Path, shape=(12, 12, 6), seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (np.random.default_rng(seed).normal(size=shape) * 200).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 3.0, 1.0])), str(path))
    return path


def _predict(run: Path, *args) -> list[str]:
    return ssmtl_cli("predict", run, "--modality", "ct", *args)


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_predict_never_writes_over_an_input_or_a_file_it_did_not_write(tmp_path, finetuned_run):
    scans = tmp_path / "scans"
    _scan(scans / "a.nii.gz")
    _scan(scans / "a_seg.nii.gz", seed=1)  # an input that the old `_seg` naming would have overwritten
    clash = tmp_path / "clash"
    _scan(clash / "b.nii.gz")
    _scan(clash / "b_probabilities.nii.gz", seed=2)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my own notes")
    a_file = tmp_path / "results.nii.gz"
    a_file.write_bytes(b"not a folder")
    busy = tmp_path / "busy"
    cases = [
        Case("--out is the input folder", _predict(finetuned_run, "--input", scans, "--out", scans),
             message="is the input --input", inputs=[scans], watch=[tmp_path]),
        Case("--out holds a file predict did not write", _predict(finetuned_run, "--input", scans / "a.nii.gz", "--out", mine),
             message="holds notes.txt, which predict did not write", inputs=[mine, scans], watch=[tmp_path]),
        Case("a scan's probabilities carry another scan's name",
             _predict(finetuned_run, "--input", clash, "--out", tmp_path / "p1", "--probabilities"),
             message="would carry the name of the scan", inputs=[clash], absent=[tmp_path / "p1"], watch=[tmp_path]),
        Case("--out is a file", _predict(finetuned_run, "--input", scans / "a.nii.gz", "--out", a_file),
             message="exists and is not a folder", inputs=[a_file]),
        Case("--out is the run", _predict(finetuned_run, "--input", scans / "a.nii.gz", "--out", finetuned_run),
             message="is the input --run", inputs=[finetuned_run]),
    ]
    with _held_by_another_process(tmp_path / f".{busy.name}.ssmtl-lock") as holder:
        cases.append(Case("a second predict into a busy --out", _predict(finetuned_run, "--input", scans, "--out", busy),
                          message=f"{busy} is in use by PID {holder}", absent=[busy]))
        assert_all_held(run_cases(cases))

    # --force replaces the folder as a whole: the user's file goes, nothing but predict's files is left
    forced = subprocess.run(_predict(finetuned_run, "--input", scans / "a.nii.gz", "--out", mine, "--force"),
                            capture_output=True, text=True, timeout=300)
    assert forced.returncode == 0, forced.stderr
    record = json.loads((mine / RECORD).read_text())
    assert _listing(mine) == sorted(record["files"]) == ["a.nii.gz", RECORD]
    # and an earlier prediction is replaced without --force: every file in it is predict's
    again = subprocess.run(_predict(finetuned_run, "--input", scans, "--out", mine, "--probabilities"),
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert _listing(mine) == sorted(json.loads((mine / RECORD).read_text())["files"]) == [
        "a.nii.gz", "a_probabilities.nii.gz", "a_seg.nii.gz", "a_seg_probabilities.nii.gz", RECORD]
    assert _listing(tmp_path) == ["clash", "mine", "results.nii.gz", "scans"]  # no lock, no staging, no refused output


def test_a_killed_predict_leaves_the_earlier_prediction_whole(tmp_path, finetuned_run):
    scans = tmp_path / "scans"
    for i in range(3):
        _scan(scans / f"s{i}.nii.gz", shape=(24, 24, 12), seed=i)
    out = tmp_path / "pred"
    first = subprocess.run(_predict(finetuned_run, "--input", scans / "s0.nii.gz", "--out", out),
                           capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    before = fingerprint([out])

    # the second predict is killed while it writes (its staging folder exists; --workers 1 starts a pool first)
    child = subprocess.Popen(_predict(finetuned_run, "--input", scans, "--out", out, "--workers", "1"),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".pred.partial-*")) and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert child.poll() is None, "the second predict ended before it could be killed"
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=60)
    assert fingerprint([out]) == before  # the earlier prediction, and the record that describes it
    assert _listing(out) == sorted(json.loads((out / RECORD).read_text())["files"])

    third = subprocess.run(_predict(finetuned_run, "--input", scans, "--out", out), capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stderr
    assert _listing(out) == [RECORD, "s0.nii.gz", "s1.nii.gz", "s2.nii.gz"]
    assert _listing(tmp_path) == ["pred", "scans"]  # the killed run's staging folder and lock are gone


def test_an_interrupted_swap_is_completed_by_the_next_predict(tmp_path):
    """A kill between the two renames of the fallback swap leaves the earlier folder under its hidden name."""
    out = tmp_path / "pred"
    displaced = tmp_path / ".pred.partial-old-12345"
    displaced.mkdir()
    (displaced / RECORD).write_text(json.dumps({"predictions": [], "files": [RECORD]}))
    with PredictionFolder(out, [], force=False) as folder:
        assert _listing(out) == [RECORD]  # restored before anything else
        (folder.staging / RECORD).write_text(json.dumps({"predictions": [], "files": [RECORD, "x.nii.gz"]}))
        (folder.staging / "x.nii.gz").write_bytes(b"x")
        folder.commit()
    assert _listing(out) == [RECORD, "x.nii.gz"] and _listing(tmp_path) == ["pred"]
    with PredictionFolder(out, [], force=False):  # not committed: the folder stays as it was
        pass
    assert _listing(out) == [RECORD, "x.nii.gz"] and _listing(tmp_path) == ["pred"]


@pytest.mark.parametrize("workers", [0, 2])
def test_degenerate_scans_among_good_ones_are_one_line_each(tmp_path, finetuned_run, workers):
    scans = tmp_path / "scans"
    good = [_scan(scans / "good1.nii.gz"), _scan(scans / "good2.nii.gz", seed=3)]
    _scan(scans / "dot.nii.gz", shape=(1, 1, 1))
    _scan(scans / "line.nii.gz", shape=(1, 1, 10))
    out = tmp_path / "pred"
    [outcome] = run_cases([Case(f"workers {workers}", _predict(finetuned_run, "--input", scans, "--out", out,
                                                               "--workers", str(workers)),
                                exit_code=1, inputs=[scans], watch=[tmp_path])])
    assert_all_held([outcome])
    errors = [line for line in outcome.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and any("dot.nii.gz" in e for e in errors) and any("line.nii.gz" in e for e in errors)
    assert _listing(out) == ["good1.nii.gz", "good2.nii.gz", RECORD]
    record = json.loads((out / RECORD).read_text())
    assert record["written"] == len(good) and record["failed"] == 2
    assert {Path(p["input"]).name: p["status"] for p in record["predictions"]} == {
        "dot.nii.gz": "error", "good1.nii.gz": "ok", "good2.nii.gz": "ok", "line.nii.gz": "error"}


def test_non_finite_weights_stop_predict_and_evaluate(tmp_path, finetuned_run):
    run = shutil.copytree(finetuned_run, tmp_path / "run", ignore=shutil.ignore_patterns("checkpoints"))
    weights = load_file(str(run / "model.safetensors"))
    name = next(k for k, t in weights.items() if t.is_floating_point() and t.numel() > 1)
    weights[name].view(-1)[1] = float("nan")
    save_file(weights, str(run / "model.safetensors"))
    scan = _scan(tmp_path / "scan.nii.gz")
    message = f"model.safetensors: 1 weight tensor(s) hold NaN or Inf (e.g. {name}); refusing to load them"
    assert_all_held(run_cases([
        Case("predict", _predict(run, "--input", scan, "--out", tmp_path / "pred"), message=message, inputs=[run, scan],
             absent=[tmp_path / "pred"], watch=[tmp_path]),
        Case("evaluate", ssmtl_cli("evaluate", run), message=message, inputs=[run]),
    ]))


def test_evaluate_refuses_data_that_is_not_the_run_s(tmp_path, finetuned_run, ssmtl_tiny_cache):
    """The run's cache replaced by a phantom of another seed (same subjects' names, other images), or gone."""
    from ssmtl.testing.fixtures import TINY_CACHE

    run = shutil.copytree(finetuned_run, tmp_path / "run", ignore=shutil.ignore_patterns("checkpoints"))
    cache = tmp_path / "data" / "phantom.h5"
    cache.parent.mkdir()
    shutil.copy(ssmtl_tiny_cache, cache)
    record = json.loads((run / "run.json").read_text())
    record["data"]["path"] = str(cache)
    (run / "run.json").write_text(json.dumps(record))
    recorded = record["data"]["fingerprint"]
    counts = record["data"]["modalities"]  # one shape for every reader: {modality: training volumes}
    assert list(counts) == ["ct"] and isinstance(counts["ct"], int) and counts["ct"] >= 1
    record["data"]["modalities"] = ["ct"]  # as runs before that wrote it: read back as the same shape
    assert modality_counts(record["data"]["modalities"]) == {"ct": None} and modality_counts(counts) == counts
    ok = subprocess.run(ssmtl_cli("evaluate", run), capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr  # the same data at another path is the run's data

    cache.unlink()
    built = subprocess.run(ssmtl_cli("cache", "build", "--dataset", "phantom", "--seed", "1", "--out", cache,
                                     *(f"--{k.replace('_', '-')}={v}" for k, v in TINY_CACHE.items())),
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    from ssmtl.data.cache import SliceCache

    foreign = SliceCache(cache).fingerprint
    assert foreign != recorded
    assert_all_held(run_cases([
        Case("another seed's phantom under the run's path", ssmtl_cli("evaluate", run),
             message=f"{cache}: the cache's data fingerprint {foreign[:16]} differs from {recorded[:16]}", inputs=[run, cache]),
        Case("--data with other data", ssmtl_cli("evaluate", run, "--data", cache),
             message="it is not the data the run was trained and split on", inputs=[run, cache]),
    ]))
    report = subprocess.run(ssmtl_cli("report", run, "--out", tmp_path / "report.html"), capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr
    page = (tmp_path / "report.html").read_text()
    assert "No overlays" in page and "differs from" in page  # no pictures of foreign data

    cache.unlink()  # the cache moved away: one line; export and the report still describe the run
    gone = "cache file not found (build one with `ssmtl cache build`); it holds the data the run was trained on"
    [missing] = run_cases([Case("the cache is gone", ssmtl_cli("evaluate", run), message=gone, inputs=[run])])
    assert_all_held([missing])
    for argv in (ssmtl_cli("export", run, "--out", tmp_path / "hub"), ssmtl_cli("report", run, "--out", tmp_path / "r2.html")):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "ct" in (tmp_path / "hub" / "README.md").read_text()  # the modality, from run.json's record
