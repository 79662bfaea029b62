"""Class 6 of #15 (and the resume fingerprint of class 3): hand-edited, truncated or foreign
files in a run. Each command that reads one gives one line naming the file and what is wrong,
never a pydantic/KeyError/TypeError/JSON traceback, never torch's advice to load with
``weights_only=False``, and changes nothing in the run."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from robustness.harness import Case, assert_all_held, run_cases, ssmtl_cli
from ssmtl.training import checkpointing as ckpt


def _copy(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


def _edit_json(path: Path, change: Callable[[Any], Any]) -> None:
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


def _only_checkpoint(run: Path) -> Path:
    [step] = ckpt.list_checkpoints(run / "checkpoints")[:1]
    return step


def _reseal(step: Path) -> None:
    """Update checkpoint.json's checksums, as someone who replaced a file on purpose would."""
    meta = json.loads((step / ckpt.MANIFEST).read_text())
    for name in meta["files"]:
        data = (step / name).read_bytes()
        meta["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (step / ckpt.MANIFEST).write_text(json.dumps(meta))


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_tampered_files_are_one_clear_line(tmp_path, ssmtl_tiny_cache, pretrained_run, finetuned_run):
    cases: list[Case] = []

    def case(name: str, source: Path, edit: Callable[[Path], None], argv: Callable[[Path], list], message: str,
             forbidden: str | None = None) -> None:
        run = _copy(source, tmp_path / name.replace(" ", "-"))
        edit(run)
        # a resumed fine-tuning rewrites config.json (with this copy's --out) before it loads the checkpoint
        kept = [p for p in run.iterdir() if not ("--resume" in argv(run) and p.name == "config.json")]
        cases.append(Case(name, ssmtl_cli(*argv(run)), message=message, inputs=kept, watch=[run]))

    evaluate = lambda run: ["evaluate", run]  # noqa: E731
    export = lambda run: ["export", run, "--out", tmp_path / f"hub-{run.name}"]  # noqa: E731
    report = lambda run: ["report", run, "--out", tmp_path / f"{run.name}.html"]  # noqa: E731
    init_from = lambda run: ["finetune", "--data", ssmtl_tiny_cache, "--init", run, "--out", tmp_path / f"ft-{run.name}",  # noqa: E731
                             "--labeled-volumes", "1", "--steps", "1", "--batch-size", "2"]
    resume_ft = lambda run: ["finetune", "--config", run / "config.json", "--out", run, "--resume"]  # noqa: E731
    resume_pre = lambda run: ["pretrain", "--config", run / "config.json", "--out", run, "--resume"]  # noqa: E731

    def truncate(name):
        return lambda run: (run / name).write_text((run / name).read_text()[:40])

    def change(name, fn):
        return lambda run: _edit_json(run / name, fn)

    case("run.json truncated", finetuned_run, truncate("run.json"), evaluate, "run.json is not valid JSON")
    case("run.json a list", finetuned_run, change("run.json", lambda d: [d]), export, "run.json should be a JSON object")
    case("run.json head name", finetuned_run, change("run.json", lambda d: {**d, "head": {"name": 5}}), evaluate,
         "'head.name' should be a string")
    case("run.json class ids", finetuned_run, change("run.json", lambda d: {**d, "class_names": {"one": "a"}}), report,
         "'class_names' should map class ids")
    case("run.json no model", finetuned_run, change("run.json", lambda d: {k: v for k, v in d.items() if k != "model"}),
         evaluate, "run.json has no 'model'")
    case("split.json test list", finetuned_run, change("split.json", lambda d: {**d, "test": 5}), evaluate,
         "split.json: 'test' should be a list")
    case("eval.json per class", finetuned_run, change("eval.json", lambda d: {**d, "per_class": {"a": 5}}),
         lambda run: ["compare", run], "per_class 'a' should be a JSON object")
    case("eval.json truncated", finetuned_run, truncate("eval.json"), report, "eval.json is not valid JSON")
    case("manifest data", pretrained_run, change("export/manifest.json", lambda d: {**d, "data": [1]}), init_from,
         "'data' should be an object")
    case("manifest model name", pretrained_run, change("export/manifest.json", lambda d: {**d, "model": {"name": 5}}),
         export, "'model.name' should be a string")

    def edited_validation(run):
        step = _only_checkpoint(run)
        _edit_json(step / ckpt.MANIFEST, lambda d: {**d, "state": {**d["state"], "validation": {"curve": "x"}}})

    case("checkpoint validation state", finetuned_run, edited_validation, resume_ft, "the validation state: 'curve'")

    def rng_replaced(run):
        step = _only_checkpoint(run)
        torch.save({"random_state": "not a state", "torch_manual_seed": torch.zeros(3)}, step / "random_states_0.pkl")
        _reseal(step)

    case("rng state replaced", pretrained_run, rng_replaced, resume_pre, "random_states_0.pkl: the random-number state")

    def evil_optimizer(run):
        step = _only_checkpoint(run)
        torch.save({"state": _Evil()}, step / "optimizer.bin")
        _reseal(step)

    case("malicious optimizer.bin", finetuned_run, evil_optimizer, resume_ft, "ssmtl never unpickles")
    case("resume with another width", pretrained_run, lambda run: None,
         lambda run: [*resume_pre(run), "--set", "model.base_channels=8", "--task", "rotation"],
         "tasks.order (removed), tasks.rotation (added), model.base_channels (4 -> 8)")
    case("resume with more steps", finetuned_run, lambda run: None, lambda run: [*resume_ft(run), "--steps", "5"],
         "--resume cannot change train.steps (3 -> 5)")

    outcomes = run_cases(cases, workers=2)
    assert_all_held(outcomes)
    for outcome in outcomes:
        text = (outcome.stdout + outcome.stderr).lower()
        assert "weights_only" not in text and "trusted source" not in text, outcome.case.name
        assert "pwned" not in text


def test_damaged_checkpoint_json_falls_back(tmp_path):
    """A checkpoint.json that is not a manifest any more is damage: verify() says so (the resume
    then falls back to the previous checkpoint), it is not a KeyError."""
    step = tmp_path / "step-00000002"
    step.mkdir()
    for bad in ('{"files": {}}', '{"files": {}, "state": {"step": "x"}}', '{"files": [], "state": {"step": 2}}', "[]"):
        (step / ckpt.MANIFEST).write_text(bad)
        with pytest.raises(ValueError, match="not a checkpoint manifest"):
            ckpt.verify(step)
    (step / ckpt.MANIFEST).write_text('{"files": {}, "state": {"step": 2}}')
    assert ckpt.verify(step).step == 2


def test_resume_names_the_fields_that_cannot_change():
    saved = {"seed": 0, "out": "a", "data": {"path": "x.h5", "num_workers": 1, "stride": 1},
             "train": {"lr": 0.001, "log_every": 10}, "tasks": {"order": {"weight": 1.0}}, "data_fingerprint": "f1"}
    same_but_bookkeeping = {**saved, "out": "b", "data": {"path": "y.h5", "num_workers": 4, "stride": 1},
                            "train": {"lr": 0.001, "log_every": 1}}
    assert ckpt.changed_fields(saved, same_but_bookkeeping) == {}
    changed = {**saved, "train": {"lr": 0.01, "log_every": 10}, "tasks": {"order": {"weight": 1.0}, "jigsaw": {}},
               "data_fingerprint": "f2"}
    assert ckpt.changed_fields(saved, changed) == {"tasks.jigsaw": "added", "data_fingerprint": "'f1' -> 'f2'",
                                                   "train.lr": "0.001 -> 0.01"}


def test_torch_advice_is_scrubbed():
    import pickle

    advice = pickle.UnpicklingError("Weights only load failed. Re-running `torch.load` with `weights_only` set to "
                                    "`False` will likely succeed, but it can result in arbitrary code execution. Do it "
                                    "only if you got the file from a trusted source.\n\nTrying to load unsupported "
                                    "GLOBAL posix.system whose module posix is blocked.\n\nCheck the documentation of "
                                    "torch.load to learn more")
    text = ckpt.scrub(advice)  # what a malicious optimizer.bin gave before: torch's advice to run its code
    assert "weights_only" not in text.lower() and "trusted" not in text
    assert "posix.system" in text and "never unpickles" in text
