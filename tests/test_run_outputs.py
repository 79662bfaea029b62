"""Runs people can see: experiment trackers (``--log-with``) get what ``metrics.jsonl`` gets,
and every run directory holds ``curves.png``."""

from __future__ import annotations

import importlib.util
import json
import shutil

import pytest
from PIL import Image

from ssmtl.training import trackers
from ssmtl.training.curves import CURVES_FILE, collect, read_records, render, write_curves

TINY_PRETRAIN = ["--steps", "3", "--batch-size", "2", "--workers", "0", "--set", "model.base_channels=4",
                 "--set", "model.depth=2", "--set", "tasks.contrastive.queue_size=16", "--set", "train.log_every=1"]


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_tensorboard_gets_every_metrics_record(ssmtl_cli, ssmtl_tiny_cache, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "pre"
    result = ssmtl_cli("pretrain", "--data", ssmtl_tiny_cache, "--out", out, "--log-with", "tensorboard", *TINY_PRETRAIN)
    assert result.exit_code == 0, result.stderr
    [events] = (out / "logs" / "pretrain").glob("events.out.tfevents.*")  # the scalars; hparams sit in a sub-folder
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    assert {"loss", "lr", "contrastive/loss", "contrastive/acc", "order/loss"} <= set(accumulator.Tags()["scalars"])
    records = _records(out)
    logged = {e.step: e.value for e in accumulator.Scalars("contrastive/loss")}
    assert logged == pytest.approx({r["step"]: r["tasks"]["contrastive"]["loss"] for r in records}, rel=1e-6)
    assert [e.step for e in accumulator.Scalars("lr")] == [1, 2, 3]
    hparams = next((out / "logs" / "pretrain").glob("*/hparams.yml")).read_text()
    assert "train.steps: 3" in hparams and "model.name: unet" in hparams


def test_wandb_runs_offline_under_the_run(ssmtl_cli, ssmtl_tiny_cache, tmp_path, monkeypatch):
    if importlib.util.find_spec("wandb") is None:
        pytest.skip("wandb is not installed (pip install 'ssmtl[wandb]'); the tensorboard test covers the shared path")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    out = tmp_path / "pre"
    result = ssmtl_cli("pretrain", "--data", ssmtl_tiny_cache, "--out", out, "--log-with", "wandb", *TINY_PRETRAIN)
    assert result.exit_code == 0, result.stderr
    [run] = (out / "logs" / "wandb").glob("offline-run-*")
    assert list(run.glob("run-*.wandb"))


def test_a_missing_tracker_package_is_one_clear_error(ssmtl_cli, ssmtl_tiny_cache, tmp_path, monkeypatch):
    monkeypatch.setattr(trackers, "_available", lambda name: name != "aim")
    out = tmp_path / "pre"
    result = ssmtl_cli("pretrain", "--data", ssmtl_tiny_cache, "--out", out, "--log-with", "aim", *TINY_PRETRAIN)
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: --log-with aim needs the aim package: pip install 'ssmtl[aim]'"
    assert not out.exists()
    unknown = ssmtl_cli("finetune", "--data", ssmtl_tiny_cache, "--out", out, "--log-with", "visdom")
    assert unknown.exit_code == 2 and "train.log_with.0" in unknown.stderr and not out.exists()


def test_scalars_flatten_a_record_as_trackers_take_it():
    record = {"step": 7, "loss": 1.5, "lr": 0.01, "slices_per_s": 20, "skipped": False,
              "tasks": {"contrastive": {"loss": 1.0, "weight": 0.5, "acc": float("nan")}}}
    assert trackers.scalars(record) == {"loss": 1.5, "lr": 0.01, "slices_per_s": 20.0,
                                        "contrastive/loss": 1.0, "contrastive/weight": 0.5}
    assert trackers.scalars({"step": 9, "val_dice": 0.8, "val": {"aorta": 0.7}}) == {"val_dice": 0.8, "val/aorta": 0.7}
    assert trackers.hyperparameters({"train": {"lr": 1e-3, "log_with": ["tensorboard"]}, "init": None}) == {
        "train.lr": 1e-3, "train.log_with": "['tensorboard']", "init": "None"}


# -- curves.png --------------------------------------------------------------------------------------


def test_every_run_draws_its_curves(pretrained_run, finetuned_run, tmp_path):
    for run in (pretrained_run, finetuned_run):
        validated = bool(collect(read_records(run / "metrics.jsonl")).val_dice.steps)  # finite validation scores
        panels = 3 if validated else 2  # loss and learning rate (+ the validation Dice when fine-tuning validated)
        with Image.open(run / CURVES_FILE) as image:
            assert image.format == "PNG" and panels * image.height < image.width < (panels + 1) * image.height
    copy = tmp_path / "pre"
    shutil.copytree(pretrained_run, copy)
    (copy / CURVES_FILE).unlink()
    assert write_curves(copy) == copy / CURVES_FILE  # drawn again from metrics.jsonl alone
    assert (copy / CURVES_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_curves_collect_losses_and_validation_dice():
    records = [
        {"step": 0, "loss": 2.0, "lr": 0.1, "tasks": {"segmentation": {"loss": 2.0, "weight": 1.0}}},
        {"step": 1, "skipped": True, "nonfinite": ["segmentation"]},
        {"step": 1, "val_dice": 0.25},
        {"step": 2, "loss": 1.0, "lr": 0.05, "tasks": {"segmentation": {"loss": 1.0, "weight": 1.0}}},
        {"step": 2, "val_dice": 0.5},
    ]
    curves = collect(records)
    assert (curves.total.steps, curves.total.values) == ([0, 2], [2.0, 1.0])
    assert curves.losses["segmentation"].values == [2.0, 1.0] and curves.lr.values == [0.1, 0.05]
    assert (curves.val_dice.steps, curves.val_dice.values) == ([1, 2], [0.25, 0.5])
    import io

    with_val = Image.open(io.BytesIO(render(curves)))
    without = Image.open(io.BytesIO(render(collect(records[:1]))))
    assert with_val.width > without.width  # a third panel: validation Dice


def test_no_metrics_no_curves(tmp_path):
    assert write_curves(tmp_path) is None
    (tmp_path / "metrics.jsonl").write_text('{"step": 0, "skipped": true}\n{"step": 1, "lo')  # a cut line too
    assert write_curves(tmp_path) is None and not (tmp_path / CURVES_FILE).exists()


def test_a_record_of_the_callers_reaches_the_file_the_trackers_and_the_curves(tmp_path):
    """What fine-tuning's validation does: Recorder.log({"step", "val_dice"}) between training steps."""
    import torch
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from ssmtl.training.accelerator import make_accelerator
    from ssmtl.training.recorder import Recorder

    accelerator = make_accelerator(None, ["tensorboard"], tmp_path)
    recorder = Recorder(accelerator, tmp_path, ["segmentation"], keep_checkpoints=1)
    recorder.start(0, project="finetune", config={"train": {"steps": 2}})
    for step in range(2):
        recorder.add(step, 0.1, torch.tensor([1.0 - step / 2]), torch.ones(1), {}, 10.0)
        recorder.log({"step": step, "val_dice": 0.25 * (step + 1)})
    recorder.finish()
    records = _records(tmp_path)
    assert [sorted(r) for r in records] == [["loss", "lr", "slices_per_s", "step", "tasks"], ["step", "val_dice"]] * 2
    [events] = (tmp_path / "logs" / "finetune").glob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    assert [(e.step, e.value) for e in accumulator.Scalars("val_dice")] == [(0, 0.25), (1, 0.5)]
    assert [e.value for e in accumulator.Scalars("segmentation/loss")] == [1.0, 0.5]
    with Image.open(tmp_path / CURVES_FILE) as image:
        assert image.width > 3 * image.height  # loss, learning rate and validation Dice
    assert accelerator.trackers == []  # closed
