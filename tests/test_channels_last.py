"""``train.channels_last``: NHWC weights and views train like the default layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import NetworkPasses, tiny_sets

TASKS = ["contrastive", "order", "reconstruct", "neighbor"]


def _pretrain(cache: Path, out: Path, channels_last: bool) -> list[dict]:
    from ssmtl.pretraining.config import resolve_pretrain_config
    from ssmtl.pretraining.engine import run_pretraining
    from ssmtl.host.registry import build_registry

    registry = build_registry(external=False)
    config = resolve_pretrain_config(
        flags={"data.path": str(cache), "out": str(out), "train.steps": 2, "train.batch_size": 2,
               "train.channels_last": channels_last},
        tasks=TASKS, sets=tiny_sets(TASKS), environ={}, registry=registry,
    )
    run_pretraining(config, registry=registry, progress=False)
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_channels_last_run_matches_default_layout(tiny_cache, tmp_path):
    default = _pretrain(tiny_cache, tmp_path / "nchw", channels_last=False)
    nhwc = _pretrain(tiny_cache, tmp_path / "nhwc", channels_last=True)
    assert [r["step"] for r in nhwc] == [1, 2]
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
    from ssmtl.pretraining.config import resolve_pretrain_config
    from ssmtl.training.accelerator import make_accelerator
    from ssmtl.pretraining.engine import Trainer
    from ssmtl.host.registry import build_registry
    from ssmtl.data.sampling import SequenceDataset, collate_sequences

    registry = build_registry(external=False)
    config = resolve_pretrain_config(
        flags={"data.path": str(tiny_cache), "train.batch_size": 2, "train.channels_last": True},
        tasks=TASKS, sets=tiny_sets(TASKS), environ={}, registry=registry,
    )
    trainer = Trainer(config, registry, make_accelerator(config.train.mixed_precision), num_volumes=4, num_slices=32)
    module = trainer.unwrapped
    convs = [m for m in module.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    dataset = SequenceDataset(tiny_cache, trainer.sequence_length)
    with NetworkPasses(module) as passes:
        outcome = trainer.step([collate_sequences([dataset[0], dataset[1]])], 0)
    assert not outcome.skipped
    [ctx] = passes.contexts
    # one encoder + decoder pass on the shared (masked) view serves every task
    assert ctx.encoded_views == ctx.decoded_views == ("sequence",)
    assert len(passes.encoder_inputs) == 1 and passes.encoder_inputs[0] is ctx.view("sequence").images
    assert passes.encoder_inputs[0].is_contiguous(memory_format=torch.channels_last)
    assert passes.decoder_rows == [2]  # one slice of each of the 2 sequences
    assert ctx.decoder_rows is not None and ctx.decode("sequence").is_contiguous(memory_format=torch.channels_last)


def test_decoded_rows_keep_the_gradient_layout_of_the_features():
    """The decoder's row selection sends back a gradient in the features' own layout and values
    equal to index_select's: a contiguous gradient meeting channels_last ones made the encoder's
    ReLU backward take a slow strided path (the bf16 + channels_last multi-task step)."""
    from ssmtl.api.views import select_rows

    channels_last = torch.channels_last
    leaf = torch.randn(6, 4, 5, 5).contiguous(memory_format=channels_last).requires_grad_()
    weights = torch.randn(3, 4, 5, 5)
    rows = torch.tensor([1, 3, 5])
    grads, layouts = {}, {}
    for name, select in (("index_select", lambda x: x.index_select(0, rows)), ("select_rows", lambda x: select_rows(x, rows))):
        features = leaf * 2  # not a leaf: no gradient layout contract applies
        features.register_hook(lambda g, name=name: grads.__setitem__(name, g))
        layouts[name] = features.stride()
        (select(features).contiguous(memory_format=channels_last) * weights).sum().backward()
    expected = torch.zeros(6, 4, 5, 5)
    expected[rows] = weights  # d/dfeatures of sum(selected * weights); unselected rows get 0
    torch.testing.assert_close(grads["select_rows"], grads["index_select"], rtol=0, atol=0)
    torch.testing.assert_close(grads["select_rows"], expected, rtol=0, atol=0)
    assert grads["select_rows"].stride() == layouts["select_rows"]
