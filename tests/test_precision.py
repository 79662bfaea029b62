"""Mixed precision gives finite losses: bf16 on CPU here; bf16/fp16 on CUDA where a GPU exists."""

from __future__ import annotations

import json
import math

import pytest
import torch

from helpers import ALL_TASKS, tiny_sets


def _pretrain(cache, out, precision: str, steps: int = 3, extra: list[str] | None = None):
    from ssmtl.pretraining.config import resolve_pretrain_config
    from ssmtl.pretraining.engine import run_pretraining
    from ssmtl.host.registry import build_registry

    registry = build_registry(external=False)
    config = resolve_pretrain_config(
        flags={"data.path": str(cache), "out": str(out), "train.steps": steps, "train.batch_size": 2,
               "train.mixed_precision": precision},
        tasks=ALL_TASKS, sets=tiny_sets(ALL_TASKS) + (extra or []), registry=registry, environ={},
    )
    run_pretraining(config, registry=registry, progress=False)
    records = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    manifest = json.loads((out / "export" / "manifest.json").read_text())
    return records, manifest


def _assert_finite(records, steps):
    assert [r["step"] for r in records] == list(range(1, steps + 1))
    for r in records:
        assert not r.get("skipped")
        for name, task in r["tasks"].items():
            assert math.isfinite(task["loss"]), (r["step"], name, task)


def test_bf16_autocast_on_cpu_gives_finite_losses(tiny_cache, tmp_path):
    records, manifest = _pretrain(tiny_cache, tmp_path / "run", "bf16")
    _assert_finite(records, 3)
    assert manifest["mixed_precision"] == "bf16"


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on the GPU machine)")


@cuda
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cuda_mixed_precision_all_tasks(tiny_cache, tmp_path, precision):
    records, manifest = _pretrain(tiny_cache, tmp_path / "run", precision, steps=5)
    _assert_finite(records, 5)
    assert manifest["mixed_precision"] == precision


@cuda
def test_cuda_channels_last_and_compile(tiny_cache, tmp_path):
    records, _ = _pretrain(tiny_cache, tmp_path / "run", "bf16", steps=3,
                           extra=["train.channels_last=true", "train.compile=true"])
    _assert_finite(records, 3)


def test_one_process_can_train_at_several_precisions(tiny_cache, tmp_path):
    """Accelerate keeps one precision per process; trainings in one process may differ (seen on CUDA)."""
    from ssmtl.training.accelerator import allow_precision
    from accelerate import Accelerator

    allow_precision("bf16")
    assert Accelerator(cpu=True, mixed_precision="bf16").mixed_precision == "bf16"
    records, manifest = _pretrain(tiny_cache, tmp_path / "run", "no", steps=1)
    assert manifest["mixed_precision"] == "no"
