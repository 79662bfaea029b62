"""``train.channels_last``: NHWC weights and views train like the default layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import tiny_sets

TASKS = ["contrastive", "order", "reconstruct", "neighbor"]


def _pretrain(cache: Path, out: Path, channels_last: bool) -> list[dict]:
    from ssmtl.pretrain.config import resolve_run_config
    from ssmtl.pretrain.engine import run_pretraining
    from ssmtl.core.registry import build_registry

    registry = build_registry(external=False)
    config = resolve_run_config(
        flags={"data.path": str(cache), "out": str(out), "train.steps": 2, "train.batch_size": 2,
               "train.channels_last": channels_last},
        tasks=TASKS, sets=tiny_sets(TASKS), environ={}, registry=registry,
    )
    run_pretraining(config, registry=registry, progress=False)
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_channels_last_run_matches_default_layout(tiny_cache, tmp_path):
    default = _pretrain(tiny_cache, tmp_path / "nchw", channels_last=False)
    nhwc = _pretrain(tiny_cache, tmp_path / "nhwc", channels_last=True)
    assert [r["step"] for r in nhwc] == [0, 1]
    for a, b in zip(default, nhwc):
        for task in TASKS:
            assert b["tasks"][task]["loss"] == pytest.approx(a["tasks"][task]["loss"], rel=1e-3, abs=1e-5), (a["step"], task)
    # the export is written (contiguous tensors) and holds the same weights, up to what
    # Adam makes of rounding: a weight whose gradient is ~eps moves by up to lr per step
    exported_a = load_file(tmp_path / "nchw" / "export" / "model.safetensors")
    exported_b = load_file(tmp_path / "nhwc" / "export" / "model.safetensors")
    assert exported_a.keys() == exported_b.keys()
    for key in exported_a:
        assert exported_b[key].is_contiguous()
        torch.testing.assert_close(exported_b[key], exported_a[key], rtol=0, atol=2e-3, msg=lambda m: f"{key}: {m}")


def test_channels_last_converts_weights_and_views(tiny_cache):
    from ssmtl.pretrain.config import resolve_run_config
    from ssmtl.core.accelerator import make_accelerator
    from ssmtl.pretrain.engine import Trainer
    from ssmtl.core.registry import build_registry
    from ssmtl.data.sampling import SequenceDataset, collate_sequences

    registry = build_registry(external=False)
    config = resolve_run_config(
        flags={"data.path": str(tiny_cache), "train.batch_size": 2, "train.channels_last": True},
        tasks=TASKS, sets=tiny_sets(TASKS), environ={}, registry=registry,
    )
    trainer = Trainer(config, registry, make_accelerator(config.train.mixed_precision), num_volumes=4, num_slices=32)
    module = trainer.unwrapped
    convs = [m for m in module.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    dataset = SequenceDataset(tiny_cache, trainer.sequence_length)
    seen = []
    module.step_observers.append(seen.append)
    outcome = trainer.step([collate_sequences([dataset[0], dataset[1]])], 0)
    assert not outcome.skipped
    ctx = seen[-1]
    assert all(ctx.view(v).images.is_contiguous(memory_format=torch.channels_last) for v in ctx.encoder_calls)
    # one encoder + decoder pass on the shared (masked) view serves every task
    assert dict(ctx.encoder_calls) == {"sequence": 1}
    assert dict(ctx.decoder_calls) == {"sequence": 1}
    assert ctx.decoder_rows is not None and ctx.decode("sequence").is_contiguous(memory_format=torch.channels_last)
