"""Fine-tuning that knows when it is done: validation volumes, the best step, --steps auto."""

from __future__ import annotations

from ssmtl.host.registry import get_registry

import json

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from ssmtl.host.registry import build_registry
from ssmtl.downstream.config import FinetuneConfig
from ssmtl.downstream.finetune import run_finetune
from ssmtl.downstream.validation import plan_validation

TINY = {"base_channels": 4, "depth": 2}


@pytest.fixture(scope="module")
def registry():
    return build_registry(external=False)


def _config(cache, out, **train):
    return FinetuneConfig.model_validate(
        dict(data=cache, out=out, labeled_volumes=1, model=TINY,
             train={"batch_size": 4, "lr": 3e-3, "log_every": 5, "validate_every": 5, **train}),
        context={"registry": get_registry()})


# -- which volumes validate ------------------------------------------------------------------------


SPLIT = {"train": ["a", "b", "c", "d", "e"], "val": [], "test": ["t"], "source": "cache"}


def test_the_split_val_subjects_come_first():
    plan = plan_validation({**SPLIT, "val": ["v1", "v2"]}, ["a"], "auto", 2, seed=0)
    assert (plan.train, plan.val, plan.source) == (["a"], ["v1", "v2"], "split")
    assert "stored in the cache" in plan.reason


def test_unused_labeled_subjects_validate_never_the_budget():
    plan = plan_validation(SPLIT, ["a", "c"], "auto", 2, seed=0)
    assert plan.train == ["a", "c"] and len(plan.val) == 2 and not set(plan.val) & {"a", "c"}
    assert plan.source == "unused labeled subjects"
    assert plan_validation(SPLIT, ["a", "c"], "auto", 2, seed=0).val == plan.val  # seeded
    assert len(plan_validation(SPLIT, ["a", "c"], "auto", 9, seed=0).val) == 3  # at most what is left


def test_carving_from_the_budget_and_no_room():
    plan = plan_validation(SPLIT, ["a", "b", "c", "d", "e"], "budget", 2, seed=0)
    assert len(plan.val) == 1 and len(plan.train) == 4 and not set(plan.val) & set(plan.train)
    full = plan_validation(SPLIT, ["a", "b", "c", "d", "e"], "auto", 2, seed=0)
    assert full.val == [] and full.source == "none" and "no room" in full.reason
    assert plan_validation(SPLIT, ["a"], "budget", 2, seed=0).source == "none"
    assert plan_validation(SPLIT, ["a"], "none", 2, seed=0).val == []


# -- selection and early stopping ------------------------------------------------------------------


def test_the_best_validation_step_is_kept_and_recorded(tiny_cache, tmp_path, registry):
    out = tmp_path / "run"
    result = run_finetune(_config(tiny_cache, out, steps=30, checkpoint_every=5, keep_checkpoints=10),
                          registry=registry, progress=False)
    run = json.loads((out / "run.json").read_text())
    curve = run["validation"]["curve"]
    assert [step for step, _ in curve] == [5, 10, 15, 20, 25, 30]
    best_step, best_dice = curve[0]
    for step, dice in curve[1:]:  # a new best beats the old by more than min_delta
        if dice > best_dice + 0.001:
            best_step, best_dice = step, dice
    assert run["selected_step"] == result["selected_step"] == best_step and run["validation"]["dice"] == best_dice
    assert run["steps"] == 30 and run["steps_requested"] == 30 and run["stopped_early"] is False
    assert run["validation"]["source"] == "unused labeled subjects" and len(run["validation"]["subjects"]) == 2
    split = json.loads((out / "split.json").read_text())
    assert split["validation"]["subjects"] == run["validation"]["subjects"] and not set(split["val_volumes"]) & set(split["train_volumes"])
    # model.safetensors holds exactly the weights of the checkpoint at the selected step
    kept = load_file(out / "model.safetensors")
    saved = load_file(out / "checkpoints" / f"step-{best_step:08d}" / "model.safetensors")
    assert {f"model.{k}" for k in kept} == set(saved)
    for key, value in kept.items():
        torch.testing.assert_close(value, saved[f"model.{key}"], rtol=0, atol=0)
    assert json.loads((out / "validation.json").read_text())["best_step"] == best_step


def test_steps_auto_stops_on_a_plateau(tiny_cache, tmp_path, registry):
    out = tmp_path / "run"
    # nothing can beat the first score by a whole Dice point: the plateau starts at step 5
    result = run_finetune(_config(tiny_cache, out, steps="auto", max_steps=200, patience=10, min_delta=1.0),
                          registry=registry, progress=False)
    run = json.loads((out / "run.json").read_text())
    assert result["steps"] == run["steps"] == 15 and run["stopped_early"] is True and run["selected_step"] == 5
    assert run["steps_requested"] == "auto" and run["schedule_steps"] == 200
    assert sorted(p.name for p in (out / "checkpoints").iterdir())[-1] == "step-00000015"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 16))
    # the validation Dice reaches metrics.jsonl (and the trackers, and curves.png) at each validation
    curve = json.loads((out / "validation.json").read_text())["curve"]
    assert [[r["step"], r["val_dice"]] for r in records if "val_dice" in r] == curve and len(curve) == 3


def test_no_room_for_validation_says_so_and_keeps_the_schedule(tiny_cache, tmp_path):
    from ssmtl.cli.app import app

    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["--no-plugins", "finetune", "--data", str(tiny_cache), "--out", str(out),
                                      "--labeled-volumes", "3", "--steps", "auto",
                                      "--max-steps", "6", "--set", "model.base_channels=4", "--set", "model.depth=2",
                                      "--batch-size", "2", "--set", "train.log_every=2", "--set", "train.validate_every=2"])
    assert result.exit_code == 0, result.output
    assert "note: no validation volumes (no room for validation" in " ".join(result.stderr.split())
    run = json.loads((out / "run.json").read_text())
    assert run["validation"]["source"] == "none" and run["validation"]["dice"] is None
    assert run["steps"] == run["selected_step"] == 6 and not (out / "validation.json").exists()


def test_validate_every_must_fall_on_logged_steps():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="multiple of log_every"):
        FinetuneConfig(data="x.h5", out="o", train={"validate_every": 25, "log_every": 10})
