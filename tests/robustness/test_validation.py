"""#15 classes 2 and 3: nothing non-finite, no seed out of range, no malformed cache and no NaN
init gets past validation; each is one `error:` line naming the field or file, exit 2, before
anything is written."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
import torch
from pydantic import ValidationError
from robustness.harness import Case, assert_all_held, run_cases, ssmtl_cli
from safetensors.torch import load_file, save_file
from ssmtl.host.registry import get_registry

TINY = ["--steps", "1", "--batch-size", "2", "--set", "model.base_channels=4", "--set", "model.depth=2",
        "--set", "data.num_workers=0", "--set", "tasks.contrastive.queue_size=16"]
FINETUNE = ["--steps", "1", "--batch-size", "2", "--labeled-volumes", "1"]


def test_non_finite_numbers_and_bad_seeds_are_refused_at_validation(ssmtl_tiny_cache, tmp_path):
    cache = ssmtl_tiny_cache
    out = tmp_path / "run"

    def pretrain(name, *args, message, env=None):
        return Case(name, ssmtl_cli("pretrain", "--data", cache, "--out", out, *TINY, *args), message=message,
                    inputs=[cache], absent=[out], watch=[tmp_path], env=env or {})

    def finetune(name, *args, message):
        return Case(name, ssmtl_cli("finetune", "--data", cache, "--out", out, *FINETUNE, *args), message=message,
                    inputs=[cache], absent=[out], watch=[tmp_path])

    built = tmp_path / "new.h5"
    cases = [
        pretrain("task weight inf", "--task", "order:inf", message="order:inf"),
        pretrain("lr inf", "--set", "train.lr=inf", message="train.lr"),
        pretrain("task weight -inf", "--set", "tasks.order.weight=-inf", message="tasks.order.weight"),
        pretrain("seed negative", "--seed", "-5", message="seed"),
        pretrain("seed huge", "--seed", "99999999999999", message="seed"),
        pretrain("seed from env", message="SSMTL_SEED", env={"SSMTL_SEED": "-1"}),
        finetune("finetune lr inf", "--set", "train.lr=inf", message="finetune.train.lr"),
        finetune("split seed", "--split-seed", "-1", message="split_seed"),
        Case("cache split seed", ssmtl_cli("cache", "build", "--dataset", "phantom", "--out", built, "--split-seed", "-1"),
             message="--split-seed", absent=[built], watch=[tmp_path]),
        Case("phantom seed", ssmtl_cli("cache", "build", "--dataset", "phantom", "--out", built, "--seed", str(2**32)),
             message="phantom.seed", absent=[built], watch=[tmp_path]),
    ]
    assert_all_held(run_cases(cases))
    # the rest of the fields, in-process (a subprocess per field would cost seconds each)
    from ssmtl.api import ConfigError
    from ssmtl.downstream.config import resolve_finetune_config
    from ssmtl.pretraining.config import resolve_pretrain_config

    for key in ("train.lr=1e400", "train.lr=.nan", "tasks.contrastive.temperature=inf", "augment.rotate=inf", "augment.gamma=[0.5, .inf]",
                "weighting.temperature=-.inf", "model.base_channels=.inf"):
        with pytest.raises(ConfigError, match=key.split("=")[0]):
            resolve_pretrain_config(registry=get_registry(), flags={"data.path": cache}, sets=[key], environ={})
    for key in ("class_balance=.nan", "labeled_seed=4294967296", "train.lr=inf", "test_fraction=.nan"):
        with pytest.raises(ConfigError, match=key.split("=")[0]):
            resolve_finetune_config(flags={"data": cache, "out": out}, sets=[key], environ={}, registry=get_registry())
    from ssmtl.experiments.benchmark import BenchmarkConfig

    with pytest.raises(ValidationError, match="split_seed"):
        BenchmarkConfig(data=cache, out=out, split_seed=-1)


def test_every_config_base_refuses_non_finite_numbers_and_plugins_inherit_it(ssmtl_registry_factory):
    """Each registered plugin's config model, the engine's sections and a third party's subclass."""
    from typing import Literal

    from ssmtl.api import TaskConfig
    from ssmtl.training.loop import LoopConfig
    from ssmtl.data.preprocess import PreprocessConfig
    from ssmtl.downstream.config import FinetuneConfig
    from ssmtl.experiments.benchmark import BenchmarkConfig
    from ssmtl.pretraining.config import PretrainConfig, WeightingConfig

    registry = ssmtl_registry_factory(builtins=True)
    plugin_models = [spec.config_model for kind in ("tasks", "datasets", "heads", "networks")
                     for spec in registry.kind(kind).values()]
    assert len(plugin_models) >= 10
    for model in plugin_models + [LoopConfig, PreprocessConfig, FinetuneConfig, BenchmarkConfig, PretrainConfig, WeightingConfig]:
        assert model.model_config.get("allow_inf_nan") is False, model.__name__
        assert model.model_config.get("extra") == "forbid", model.__name__

    class ThirdPartyConfig(TaskConfig):  # written as a plugin author would, with no model_config
        name: Literal["third"] = "third"
        margin: float = 1.0

    assert ThirdPartyConfig(margin=2.5).margin == 2.5
    for bad in (float("inf"), float("-inf"), float("nan"), "inf"):
        with pytest.raises(ValidationError, match="finite"):
            ThirdPartyConfig(margin=bad)


def _copy_with(cache, out, edit, every_volume=False):
    """A copy of ``cache`` with ``edit(file, volume group)`` applied to its second volume (or to all)."""
    shutil.copy(cache, out)
    with h5py.File(out, "r+") as f:
        names = [n.decode() for n in f["index/names"][()]]
        for name in names if every_volume else names[1:2]:
            edit(f, f[f"volumes/{name}"])
    return out


def _replace(group, key, array):
    del group[key]
    group[key] = array


def test_malformed_caches_are_refused_when_opened(ssmtl_tiny_cache, tmp_path):
    edits = {
        "int64 image": (lambda f, g: _replace(g, "image", g["image"][()].astype(np.int64)), "image dtype int64"),
        "string image": (lambda f, g: _replace(g, "image", np.full(g["image"].shape, b"x", dtype="S1")), "image dtype |S1"),
        "2-D image": (lambda f, g: _replace(g, "image", g["image"][0]), "image shape"),
        "one volume smaller": (lambda f, g: _replace(g, "image", g["image"][:, :16, :16]), "16x16 pixels"),
        "float label": (lambda f, g: _replace(g, "label", g["label"][()].astype(np.float32)), "label dtype float32"),
        "label shape": (lambda f, g: _replace(g, "label", g["label"][:-1]), "label shape"),
        "short index": (lambda f, g: _replace(f["index"], "volume", f["index/volume"][:-2]), "the slice index lists"),
        "index out of range": (lambda f, g: _replace(f["index"], "volume", f["index/volume"][()] + 7), "the slice index names volume"),
    }
    # `cache info` opens a cache as training does, and starts fast; one training command of each kind too
    commands = {3: lambda bad, out: ("pretrain", "--data", bad, "--out", out, *TINY),
                4: lambda bad, out: ("finetune", "--data", bad, "--out", out, *FINETUNE)}
    cases = []
    for i, (name, (edit, reason)) in enumerate(edits.items()):
        bad = _copy_with(ssmtl_tiny_cache, tmp_path / f"bad{i}.h5", edit)
        out = tmp_path / f"run{i}"
        command = commands.get(i, lambda bad, out: ("cache", "info", bad))(bad, out)
        cases.append(Case(f"{name} ({command[0]})", ssmtl_cli(*command), message=reason, inputs=[bad], absent=[out], watch=[tmp_path]))
    # class ids the cache does not name: found where labels are read, before the run directory exists
    labels = _copy_with(ssmtl_tiny_cache, tmp_path / "labels.h5",
                        lambda f, g: _replace(g, "label", np.full(g["label"].shape, 200, dtype=np.uint8)), every_volume=True)
    out = tmp_path / "labels-run"
    cases.append(Case("label out of range", ssmtl_cli("finetune", "--data", labels, "--out", out, *FINETUNE),
                      message="label value 200 outside the cache's", inputs=[labels], absent=[out], watch=[tmp_path]))
    outcomes = run_cases(cases)
    assert_all_held(outcomes)
    for outcome in outcomes:  # every line names the cache file
        bad = next(str(a) for a in outcome.case.argv if str(a).endswith(".h5"))
        assert f"error: {bad}" in outcome.stderr, outcome.stderr


def test_a_nan_init_is_named_before_fine_tuning(pretrained_run, ssmtl_tiny_cache, tmp_path):
    init = tmp_path / "diverged"
    shutil.copytree(pretrained_run, init)
    weights = init / "export" / "model.safetensors"
    tensors = load_file(weights)
    key = sorted(k for k in tensors if k.startswith("encoder."))[0]
    tensors[key] = torch.full_like(tensors[key], float("nan"))
    save_file(tensors, weights)
    out = tmp_path / "ft"
    outcome = run_cases([Case("nan init", ssmtl_cli("finetune", "--data", ssmtl_tiny_cache, "--init", init, "--out", out, *FINETUNE),
                              message=key, inputs=[init, ssmtl_tiny_cache], absent=[out], watch=[tmp_path])])
    assert_all_held(outcome)
    assert f"run {init}" in outcome[0].stderr and "diverged" in outcome[0].stderr
