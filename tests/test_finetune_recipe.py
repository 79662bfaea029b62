"""The fine-tuning recipe (docs/finetune.md): warm-up and clipping, lr per part, LP-FT, which
weights are kept (best, last, EMA), the weight change, and the frozen random encoder control."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from ssmtl.downstream.config import FinetuneConfig, FinetuneTrainConfig
from ssmtl.downstream.finetune import run_finetune
from ssmtl.host.registry import build_registry, get_registry
from ssmtl.plugins.networks.unet import UNet, UNetConfig
from ssmtl.training.export import write_export

TINY = UNetConfig(base_channels=4, depth=2)
LR = 3e-3


@pytest.fixture(scope="module")
def registry():
    return build_registry(external=False)


def _config(cache, out, *, init="none", train=None, **top) -> FinetuneConfig:
    values = dict(data=cache, out=out, init=init, labeled_volumes=1, model=None if init != "none" else TINY.model_dump(),
                  train={"steps": 8, "batch_size": 4, "lr": LR, "log_every": 1, "validate_every": 4, **(train or {})}, **top)
    return FinetuneConfig.model_validate(values, context={"registry": get_registry()})


def _export(run_dir) -> dict[str, torch.Tensor]:
    """A pre-training export whose BatchNorm statistics are not their initial values; its state dict."""
    torch.manual_seed(11)
    network = UNet(TINY)
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
                module.num_batches_tracked.fill_(7)
    write_export(run_dir, network, {"tasks": {"contrastive": {"name": "contrastive"}}, "steps": 10,
                                    "data": {"path": "pre.h5", "fingerprint": "x", "volumes": []}})
    return {k: v.detach().clone() for k, v in network.state_dict().items()}


def _checkpoint_weights(out, step: int) -> dict[str, torch.Tensor]:
    saved = load_file(out / "checkpoints" / f"step-{step:08d}" / "model.safetensors")
    return {k.removeprefix("model."): v for k, v in saved.items()}


def _hand_factor(step: int, warmup: int, total: int, lp: int = 0) -> float:
    """The schedule written out: warm-up then cosine within each phase (LP-FT restarts at lp)."""
    start, length = (0, lp) if step < lp else (lp, total - lp)
    j, w = step - start, min(warmup, length - 1)
    if j < w:
        return (j + 1) / w
    return 0.5 * (1 + math.cos(math.pi * (j - w) / (length - w)))


# -- lr schedule and parameter groups (no training run) ----------------------------------------------


def _objective(train: FinetuneTrainConfig, freeze_encoder: bool = False):
    from ssmtl.downstream.model import FinetuneModel, SegmentationObjective
    from ssmtl.plugins.heads.segmentation import SegmentationConfig
    from ssmtl.training.augment_config import AugmentConfig

    torch.manual_seed(0)
    network = UNet(TINY)
    head = build_registry(external=False).head("segmentation").factory(SegmentationConfig(), network.info, 3)
    still = AugmentConfig(flip=0, rotate=0, crop_scale=(1, 1), translate=0, contrast=0, brightness=0, gamma=(1, 1), blur=0, noise=0)
    return SegmentationObjective(FinetuneModel(network, head), still, freeze_encoder, train.lp_steps)


def test_the_scheduler_gives_each_part_its_scaled_lr_with_warmup_and_the_lp_ft_restart():
    from ssmtl.downstream.recipe import build_finetune_optimizer

    train = FinetuneTrainConfig(steps=20, lr=LR, warmup_steps=3, lp_steps=6, encoder_lr_scale=0.1, decoder_lr_scale=0.5)
    objective = _objective(train)
    optimizer, scheduler = build_finetune_optimizer(objective, train, 20)
    groups = optimizer.param_groups
    assert [(g["part"], g["decay"]) for g in groups] == [("head", True), ("head", False), ("encoder", True),
                                                         ("encoder", False), ("decoder", True), ("decoder", False)]
    names = {id(p): n for n, p in objective.named_parameters()}
    for g in groups:  # every parameter in its part's group, norms and biases undecayed
        prefix = {"head": "model.head.", "encoder": "model.network.encoder.", "decoder": "model.network.decoder."}[g["part"]]
        assert all(names[id(p)].startswith(prefix) for p in g["params"])
        assert all((p.ndim > 1) == g["decay"] for p in g["params"])
        assert g["weight_decay"] == (train.weight_decay if g["decay"] else 0.0)
    assert sum(len(g["params"]) for g in groups) == len(list(objective.parameters()))
    scale = {"head": 1.0, "encoder": 0.1, "decoder": 0.5}
    for step in range(20):
        for g in groups:
            joined = g["part"] != "encoder" or step >= 6
            expected = LR * scale[g["part"]] * _hand_factor(step, 3, 20, lp=6) * joined
            assert g["lr"] == pytest.approx(expected, rel=1e-12, abs=1e-15), (step, g["part"])
        optimizer.step()
        scheduler.step()


def test_without_lp_ft_the_schedule_is_one_warmup_and_one_cosine():
    from ssmtl.training.optim import lr_lambda, phased_lr_lambda

    for step in range(12):
        assert phased_lr_lambda(4, 12)(step) == pytest.approx(_hand_factor(step, 4, 12)) == pytest.approx(lr_lambda(4, 12)(step))
    assert [round(lr_lambda(2, 6)(k), 6) for k in range(6)] == [0.5, 1.0, 1.0, round(0.5 * (1 + math.cos(math.pi / 4)), 6), 0.5,
                                                                round(0.5 * (1 + math.cos(3 * math.pi / 4)), 6)]


def test_one_step_moves_each_part_as_adamw_with_its_scaled_lr():
    from ssmtl.downstream.recipe import build_finetune_optimizer

    train = FinetuneTrainConfig(steps=10, lr=LR, encoder_lr_scale=0.1, decoder_lr_scale=0.5, weight_decay=0.01)
    objective = _objective(train)
    optimizer, _ = build_finetune_optimizer(objective, train, 10)
    g = torch.Generator().manual_seed(0)
    batch = (torch.randn(4, 1, 32, 32, generator=g), torch.randint(0, 3, (4, 32, 32), generator=g))
    objective.train()
    objective(batch, 0)[0].backward()
    params = dict(objective.named_parameters())
    before = {n: (p.detach().clone(), p.grad.detach().clone()) for n, p in params.items()}
    optimizer.step()
    checked = {"model.network.encoder.stem.0.weight": 0.1, "model.network.decoder.ups.0.reduce.weight": 0.5,
               "model.head.classifier.weight": 1.0, "model.network.encoder.stem.1.weight": 0.1}
    for name, scale in checked.items():
        p0, grad = before[name]
        lr, decay = LR * scale, 0.01 if p0.ndim > 1 else 0.0
        # AdamW's first step by hand: m = (1 - b1) g and v = (1 - b2) g^2, bias-corrected to g and g^2
        expected = p0 * (1 - lr * decay) - lr * grad / (grad.abs() + 1e-8)
        torch.testing.assert_close(params[name].detach(), expected, rtol=1e-6, atol=1e-9)
        moved = (params[name].detach() - p0 * (1 - lr * decay)).abs()
        big = grad.abs() > 1e-5  # where |g| >> eps an Adam step moves a weight by lr itself
        assert big.any() and torch.allclose(moved[big], torch.full_like(moved[big], lr), rtol=1e-2)


# -- warm-up and clipping inside a fine-tuning run ------------------------------------------------------


def _record_steps(monkeypatch) -> list[dict]:
    """Patch AdamW.step to record, for every update, each part's lr and the global gradient norm."""
    calls: list[dict] = []
    original = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        calls.append({"lr": {g["part"]: g["lr"] for g in self.param_groups if g["decay"]},
                      "norm": float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(x) for x in grads]))),
                      "encoder_grads": any(p.grad is not None for g in self.param_groups if g["part"] == "encoder" for p in g["params"])})
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    return calls


def test_finetuning_warms_up_restarts_after_lp_and_clips_the_global_norm(tiny_cache, tmp_path, registry, monkeypatch):
    recipe = {"warmup_steps": 2, "lp_steps": 3, "encoder_lr_scale": 0.1, "decoder_lr_scale": 0.5}
    runs = {}
    for clip in (1e-3, None):
        calls = _record_steps(monkeypatch)
        run_finetune(_config(tiny_cache, tmp_path / f"clip{clip}", validation="none", train={**recipe, "grad_clip": clip}),
                     registry=registry, progress=False)
        runs[clip] = list(calls)
        monkeypatch.undo()
    clipped = runs[1e-3]
    assert len(clipped) == 8
    scale = {"head": 1.0, "encoder": 0.1, "decoder": 0.5}
    for k, call in enumerate(clipped):
        for part, lr in call["lr"].items():
            expected = LR * scale[part] * _hand_factor(k, 2, 8, lp=3) * (part != "encoder" or k >= 3)
            assert lr == pytest.approx(expected, rel=1e-12, abs=1e-15), (k, part)
        assert call["encoder_grads"] == (k >= 3)  # LP-FT: no encoder gradient in the first 3 steps
        assert call["norm"] == pytest.approx(1e-3, rel=1e-4)  # every step clipped to the global norm
    # the same first step without clipping: its gradient was far above the clip
    assert runs[None][0]["norm"] > 10 * 1e-3 and any(abs(c["norm"] - 1e-3) > 1e-4 for c in runs[None])


# -- LP-FT --------------------------------------------------------------------------------------------------


def test_lp_ft_keeps_the_encoder_and_its_statistics_byte_identical_then_trains_it(tiny_cache, tmp_path, registry):
    w0 = _export(tmp_path / "pre")
    out = tmp_path / "ft"
    run_finetune(_config(tiny_cache, out, init=str(tmp_path / "pre"), validation="none",
                         train={"steps": 5, "lp_steps": 3, "checkpoint_every": 1, "keep_checkpoints": 5}),
                 registry=registry, progress=False)
    encoder = [k for k in w0 if k.startswith("encoder.")]
    stats = [k for k in encoder if "running_" in k or "num_batches" in k]
    assert stats and len(encoder) > len(stats)
    for step in (1, 2, 3):
        saved = _checkpoint_weights(out, step)
        for key in encoder:  # parameters and BatchNorm statistics, bit for bit
            assert torch.equal(saved[f"network.{key}"], w0[key]), (step, key)
        assert not torch.equal(saved["network.decoder.ups.0.reduce.weight"], w0["decoder.ups.0.reduce.weight"])
    after = _checkpoint_weights(out, 4)
    for kind in ("weight", "running_mean"):
        keys = [k for k in encoder if k.endswith(kind)]
        assert all(not torch.equal(after[f"network.{k}"], w0[k]) for k in keys), kind
    run = json.loads((out / "run.json").read_text())
    assert run["recipe"]["encoder"] == "lp-ft" and run["recipe"]["lp_steps"] == 3
    assert run["recipe"]["encoder_init"] == run["recipe"]["decoder_init"] == "pre-trained"


def test_a_plateau_cannot_stop_a_run_before_its_encoder_trained(tiny_cache, tmp_path, registry):
    # nothing beats the first score by a whole Dice point: without LP-FT the run stops at step 4 + 8
    result = run_finetune(_config(tiny_cache, tmp_path / "ft", train={
        "steps": "auto", "max_steps": 100, "patience": 8, "min_delta": 1.0, "lp_steps": 16}), registry=registry, progress=False)
    run = json.loads((tmp_path / "ft" / "run.json").read_text())
    assert result["steps"] == run["steps"] == 24 and run["selected_step"] == 4  # 16 + 8
    assert run["stop_reason"] == "plateau" and run["selection"] == "best"


# -- which weights are kept -----------------------------------------------------------------------------


def test_select_last_keeps_the_last_weights_and_still_reports_validation(tiny_cache, tmp_path, registry):
    out = tmp_path / "ft"
    result = run_finetune(_config(tiny_cache, out, train={"select": "last", "checkpoint_every": 4}), registry=registry, progress=False)
    run = json.loads((out / "run.json").read_text())
    assert run["selection"] == "last" and run["selected_step"] == result["selected_step"] == 8
    assert run["stop_reason"] == "schedule end" and run["stopped_early"] is False
    curve = run["validation"]["curve"]
    assert [s for s, _ in curve] == [4, 8] and run["validation"]["dice"] == curve[-1][1]
    assert run["validation"]["best_dice"] == max(d for _, d in curve)
    kept, last = load_file(out / "model.safetensors"), _checkpoint_weights(out, 8)
    assert kept.keys() == last.keys() and all(torch.equal(kept[k], last[k]) for k in kept)
    assert not any((d / "best.safetensors").exists() for d in (out / "checkpoints").iterdir())


def test_select_ema_keeps_the_hand_computed_average(tiny_cache, tmp_path, registry):
    w0 = _export(tmp_path / "pre")
    out = tmp_path / "ft"
    decay = 0.6
    run_finetune(_config(tiny_cache, out, init=str(tmp_path / "pre"),
                         train={"steps": 4, "select": "ema", "ema_decay": decay, "checkpoint_every": 1, "keep_checkpoints": 4,
                                "validate_every": 2}),
                 registry=registry, progress=False)
    average = {f"network.{k}": v.clone() for k, v in w0.items()}
    for step in range(1, 5):
        weights = _checkpoint_weights(out, step)
        for key, value in average.items():
            average[key] = decay * value + (1 - decay) * weights[key] if value.is_floating_point() else weights[key]
    kept = load_file(out / "model.safetensors")
    for key, value in average.items():
        torch.testing.assert_close(kept[key], value, rtol=1e-5, atol=1e-7)
    assert torch.equal(kept["network.encoder.stem.1.num_batches_tracked"], _checkpoint_weights(out, 4)["network.encoder.stem.1.num_batches_tracked"])
    run = json.loads((out / "run.json").read_text())
    assert run["selection"] == "ema" and run["selected_step"] == 4 and run["recipe"]["ema_decay"] == decay
    assert run["ema"]["updates"] == 4 and run["ema"]["start_share"] == pytest.approx(decay ** 4)
    assert 0.0 <= run["validation"]["dice"] <= 1.0 and [s for s, _ in run["validation"]["curve"]] == [2, 4]


# -- weight change and the frozen random encoder ---------------------------------------------------------


def test_weight_change_is_the_relative_norm_of_each_part():
    from ssmtl.downstream.recipe import weight_change

    start = {"network.encoder.a": torch.tensor([3.0, 0.0]), "network.encoder.b": torch.tensor([[4.0]]),
             "network.decoder.c": torch.tensor([1.0, 1.0]), "head.d": torch.tensor([5.0])}
    now = {"network.encoder.a": torch.tensor([3.0, 1.0]), "network.encoder.b": torch.tensor([[2.0]]),
           "network.decoder.c": torch.tensor([1.0, 1.0]), "head.d": torch.tensor([0.0])}
    change = weight_change(start, now)
    assert change["encoder"] == pytest.approx(math.sqrt(1 + 4) / 5) and change["decoder"] == 0.0
    assert set(change) == {"encoder", "decoder"}


def test_weight_change_in_run_json_from_the_start_to_the_kept_weights(tiny_cache, tmp_path, registry):
    w0 = _export(tmp_path / "pre")
    out = tmp_path / "ft"
    result = run_finetune(_config(tiny_cache, out, init=str(tmp_path / "pre"), train={"encoder_lr_scale": 0.1}),
                          registry=registry, progress=False)
    kept = load_file(out / "model.safetensors")
    params = {n for n, _ in UNet(TINY).named_parameters()}
    for part in ("encoder", "decoder"):
        keys = [k for k in params if k.startswith(f"{part}.")]
        moved = math.sqrt(sum(float(((kept[f"network.{k}"].double() - w0[k].double()) ** 2).sum()) for k in keys))
        size = math.sqrt(sum(float((w0[k].double() ** 2).sum()) for k in keys))
        run = json.loads((out / "run.json").read_text())
        assert run["weight_change"][part] == result["weight_change"][part] == pytest.approx(moved / size, rel=1e-9)
        assert moved > 0


def test_a_frozen_random_encoder_is_a_recorded_control(tiny_cache, tmp_path, registry):
    from accelerate.utils import set_seed

    from ssmtl.downstream.model import initial_network

    config = _config(tiny_cache, tmp_path / "ft", freeze_encoder=True, seed=5, train={"encoder_lr_scale": 0.1})
    run_finetune(config, registry=registry, progress=False)
    set_seed(5)
    random_start, _ = initial_network(config.with_defaults(registry), registry)  # the run's seeded random init
    kept = load_file(tmp_path / "ft" / "model.safetensors")
    for key, value in random_start.encoder.state_dict().items():
        assert torch.equal(kept[f"network.encoder.{key}"], value), key
    assert all(torch.all(kept[k] == 0) for k in kept if k.startswith("network.encoder.") and k.endswith("running_mean"))
    run = json.loads((tmp_path / "ft" / "run.json").read_text())
    assert run["recipe"]["encoder"] == "frozen" and run["recipe"]["encoder_init"] == "random"
    assert run["recipe"]["control"].startswith("frozen random encoder")
    assert run["weight_change"]["encoder"] == 0.0 and run["weight_change"]["decoder"] > 0


# -- refused combinations -------------------------------------------------------------------------------


@pytest.mark.parametrize("train, top, message", [
    ({"select": "last"}, {}, "select=last"),
    ({"steps": 10, "lp_steps": 10}, {}, "lp_steps"),
    ({"steps": "auto", "max_steps": 50, "lp_steps": 60}, {}, "lp_steps"),
    ({"lp_steps": 5}, {"freeze_encoder": True}, "freeze_encoder"),
    ({"encoder_lr_scale": 0}, {}, "encoder_lr_scale"),
    ({"ema_decay": 1.0}, {}, "ema_decay"),
])
def test_a_recipe_that_cannot_work_is_refused(train, top, message):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=message):
        FinetuneConfig(data="x.h5", out="o", train=train, **top)


def test_select_last_with_steps_auto_is_one_error_line_from_the_cli(tiny_cache, tmp_path):
    from ssmtl.cli.app import app

    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["--no-plugins", "finetune", "--data", str(tiny_cache), "--out", str(out),
                                      "--set", "train.select=last"])
    assert result.exit_code == 2, result.output
    assert "select=last" in result.stderr and "Traceback" not in result.output and not out.exists()


@pytest.mark.slow
def test_lp_ft_on_two_processes_keeps_the_encoder_then_trains_it_alike_on_both(tiny_cache, tmp_path):
    from pathlib import Path

    from helpers import accelerate_cmd, run

    driver = Path(__file__).with_name("lpft_ddp_driver.py")
    run(accelerate_cmd(2)[:-2] + [str(driver), str(tiny_cache), str(tmp_path)], cwd=driver.parent)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    start = ranks[0][0]
    for states in ranks:
        for step in (1, 2):  # the LP phase: parameters and statistics untouched on every rank
            assert all(torch.equal(states[step][k], start[k]) for k in start), step
        assert not torch.equal(states[4]["stem.0.weight"], start["stem.0.weight"])
    for step in range(5):  # one encoder: the trained steps' gradients were all-reduced
        for key, value in ranks[0][step].items():
            if "running_" not in key and "num_batches" not in key:  # each rank's statistics see its own batch
                torch.testing.assert_close(ranks[1][step][key], value, rtol=0, atol=0)
