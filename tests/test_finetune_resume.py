"""Fine-tuning runs through the same loop as pre-training: config sources, checkpoints, exact resume."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import kill_after_checkpoint, run, ssmtl_cmd

pytestmark = pytest.mark.slow


def finetune_args(cache: Path, out: Path, steps: int = 10) -> list[str]:
    return ["finetune", "--data", str(cache), "--init", "none", "--out", str(out), "--labeled-volumes", "1",
            "--steps", str(steps), "--batch-size", "4", "--lr", "3e-3", "--workers", "1",
            "--set", "model.base_channels=4", "--set", "model.depth=2",
            "--set", "train.checkpoint_every=2", "--set", "train.keep_checkpoints=3", "--set", "train.log_every=1",
            "--set", "train.validate_every=3"]


def losses(run_dir: Path) -> dict[int, float]:
    records = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    return {r["step"]: r["loss"] for r in records if "loss" in r}  # validation records have val_dice instead


def validation_records(run_dir: Path) -> list[dict]:
    records = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    return [r for r in records if "val_dice" in r]


@pytest.fixture(scope="module")
def uninterrupted(tiny_cache, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ft-full") / "run"
    run(ssmtl_cmd() + finetune_args(tiny_cache, out))
    return out


def test_kill_and_resume_matches_uninterrupted_run(tiny_cache, tmp_path, uninterrupted):
    out = tmp_path / "run"
    args = finetune_args(tiny_cache, out)
    kill_after_checkpoint(args, out, 4, done_marker="model.safetensors")
    result = run(ssmtl_cmd() + args + ["--resume"])
    assert "resuming from" in result.stderr

    expected, got = losses(uninterrupted), losses(out)
    assert sorted(got) == list(range(1, 11))  # no step lost, none repeated (counted as steps done)
    for step in range(1, 11):
        assert got[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-6), step
    a, b = load_file(uninterrupted / "model.safetensors"), load_file(out / "model.safetensors")
    assert a.keys() == b.keys() and any(k.startswith("head.") for k in a)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000006", "step-00000008", "step-00000010"]
    # validation (on the labeled subjects the budget leaves unused) selects the same step with the same score:
    # its curve, best score and best weights are part of every checkpoint
    ran, resumed = (json.loads((d / "run.json").read_text()) for d in (uninterrupted, out))
    assert resumed["validation"]["source"] == "unused labeled subjects"
    assert [s for s, _ in resumed["validation"]["curve"]] == [3, 6, 9, 10]
    # metrics.jsonl holds each validation once, after the resume as in the uninterrupted run
    assert [r["step"] for r in validation_records(out)] == [r["step"] for r in validation_records(uninterrupted)] == [3, 6, 9, 10]
    assert resumed["selected_step"] == ran["selected_step"]
    for (step, dice), (step_ran, dice_ran) in zip(resumed["validation"]["curve"], ran["validation"]["curve"]):
        assert step == step_ran and dice == pytest.approx(dice_ran, rel=1e-5, abs=1e-9)


def test_config_file_env_flags_and_set_in_precedence(tiny_cache, tmp_path):
    config = tmp_path / "ft.toml"
    config.write_text(
        f'data = "{tiny_cache}"\ninit = "none"\nlabeled_volumes = 1\nseed = 4\n'
        "[model]\nbase_channels = 4\ndepth = 2\n"
        "[train]\nsteps = 3\nbatch_size = 2\nlr = 0.01\nlog_every = 1\n"
    )
    env = dict(os.environ, SSMTL_FINETUNE__TRAIN__STEPS="2", SSMTL_FINETUNE__SEED="5", SSMTL_TRAIN__STEPS="99")
    out = tmp_path / "run"
    cmd = ssmtl_cmd() + ["finetune", "--config", str(config), "--out", str(out), "--seed", "6",
                         "--set", "train.batch_size=3"]
    import subprocess

    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    saved = json.loads((out / "config.json").read_text())
    assert saved["train"]["steps"] == 2  # env over file; the pre-training variable is not read
    assert saved["train"]["lr"] == 0.01 and saved["model"]["base_channels"] == 4  # file
    assert saved["seed"] == 6  # flag over env
    assert saved["train"]["batch_size"] == 3  # --set over everything
    assert sorted(losses(out)) == [1, 2]


def test_a_bad_config_field_is_one_error_line(tiny_cache, tmp_path):
    cmd = ssmtl_cmd() + ["finetune", "--data", str(tiny_cache), "--init", "none", "--out", str(tmp_path / "r"),
                         "--set", "train.stepz=3"]
    import subprocess

    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "error:" in result.stderr and "train.stepz" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "r").exists()


#: the whole recipe at once: LP-FT for 4 of 10 steps, warm-up, clipping, lr per part, an EMA of the weights
RECIPE = ["--set", "train.lp_steps=4", "--set", "train.warmup_steps=2", "--set", "train.grad_clip=0.5",
          "--set", "train.encoder_lr_scale=0.3", "--set", "train.decoder_lr_scale=0.6",
          "--set", "train.select=ema", "--set", "train.ema_decay=0.8"]


@pytest.fixture(scope="module")
def uninterrupted_recipe(tiny_cache, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ft-recipe") / "run"
    run(ssmtl_cmd() + finetune_args(tiny_cache, out) + RECIPE)
    return out


@pytest.mark.parametrize("resume_at", [2, 4], ids=["inside-the-lp-phase", "at-the-lp-boundary"])
def test_the_recipe_resumes_exactly_inside_and_across_the_lp_phase(tiny_cache, tmp_path, uninterrupted_recipe, resume_at):
    import shutil

    out = tmp_path / "run"
    # every checkpoint kept: with 3 kept, a kill that lands late would find checkpoint 2 pruned
    args = finetune_args(tiny_cache, out) + RECIPE + ["--set", "train.keep_checkpoints=10"]
    kill_after_checkpoint(args, out, resume_at, done_marker="model.safetensors")
    for later in (p for p in (out / "checkpoints").iterdir() if int(p.name.split("-")[-1]) > resume_at):
        shutil.rmtree(later)  # resume from exactly this step, whatever the kill left
    result = run(ssmtl_cmd() + args + ["--resume"])
    assert f"at step {resume_at}" in result.stderr

    expected, got = losses(uninterrupted_recipe), losses(out)
    assert sorted(got) == list(range(1, 11))
    for step in range(1, 11):
        assert got[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-6), step
    a, b = load_file(uninterrupted_recipe / "model.safetensors"), load_file(out / "model.safetensors")  # the EMA weights
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6)
    ran, resumed = (json.loads((d / "run.json").read_text()) for d in (uninterrupted_recipe, out))
    assert resumed["selection"] == ran["selection"] == "ema" and resumed["ema"] == ran["ema"] and ran["ema"]["updates"] == 10
    for part in ("encoder", "decoder"):
        assert resumed["weight_change"][part] == pytest.approx(ran["weight_change"][part], rel=1e-5)
    assert resumed["validation"]["dice"] == pytest.approx(ran["validation"]["dice"], rel=1e-5, abs=1e-9)
