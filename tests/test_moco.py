"""MoCo v2 in one process: split BatchNorm on both sides, the queue's size, the momentum schedule.

Split BN against per-group ``F.batch_norm`` written out here; the running statistics by
hand; the statistics a key and its query saw, against a hand computation, and their
groups; the cosine momentum against its formula, and the key encoder's remaining share
of its initial weights.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from ssmtl.api import DataInfo
from ssmtl.api.ssl import (
    ema_momentum,
    initial_weight_share,
    split_bn_forward,
    split_bn_groups,
)
from ssmtl.api.ssl.split_bn import split_batchnorm
from ssmtl.host.registry import get_registry
from ssmtl.pretraining.config import resolve_pretrain_config
from ssmtl.pretraining.module import build_pretrain_module

SMALL = {"model.base_channels": 8, "model.depth": 2, "seed": 0}


def _bn(channels: int = 3, momentum: float | None = 0.1) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels, momentum=momentum)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.5, 0.5, -2.0][:channels]))
        bn.bias.copy_(torch.tensor([0.1, -0.3, 2.0][:channels]))
        bn.running_mean.copy_(torch.tensor([0.2, -0.1, 0.4][:channels]))
        bn.running_var.copy_(torch.tensor([1.3, 0.7, 2.2][:channels]))
    return bn


def _per_group_reference(bn: nn.BatchNorm2d, x: torch.Tensor, groups: int) -> torch.Tensor:
    """Each contiguous block of the batch normalised alone with F.batch_norm."""
    blocks = x.chunk(groups, dim=0)
    return torch.cat([F.batch_norm(b, None, None, bn.weight, bn.bias, training=True, eps=bn.eps) for b in blocks])


def test_groups_for_a_batch():
    assert split_bn_groups(48, 8) == 8
    assert split_bn_groups(16, 8) == 4  # 8 groups of 2 would be close to instance norm
    assert split_bn_groups(18, 8) == 3
    assert split_bn_groups(7, 8) == 1
    assert split_bn_groups(64, 8, min_group=2) == 8
    with pytest.raises(ValueError):
        split_bn_groups(0, 8)


@pytest.mark.parametrize("groups", [2, 4])
def test_split_bn_equals_per_group_batch_norm(groups):
    torch.manual_seed(0)
    bn = _bn().train()
    x = torch.randn(8, 3, 5, 4) * torch.tensor([1.0, 3.0, 0.5]).view(1, 3, 1, 1) + 2.0
    with split_batchnorm(bn, groups):
        out = bn(x)
    torch.testing.assert_close(out, _per_group_reference(bn, x, groups))


def test_split_bn_running_statistics_by_hand():
    torch.manual_seed(1)
    bn = _bn(momentum=0.25).train()
    old_mean, old_var = bn.running_mean.clone(), bn.running_var.clone()
    x = torch.randn(6, 3, 4, 4) + torch.arange(6.0).view(6, 1, 1, 1)
    with split_batchnorm(bn, 3):
        bn(x)
    blocks = x.chunk(3)
    group_means = torch.stack([b.mean(dim=(0, 2, 3)) for b in blocks])
    group_vars = torch.stack([b.var(dim=(0, 2, 3), unbiased=True) for b in blocks])
    torch.testing.assert_close(bn.running_mean, 0.75 * old_mean + 0.25 * group_means.mean(0))
    torch.testing.assert_close(bn.running_var, 0.75 * old_var + 0.25 * group_vars.mean(0))
    assert int(bn.num_batches_tracked) == 1


def test_split_bn_cumulative_average_when_momentum_is_none():
    bn = _bn(momentum=None).train()
    x = torch.randn(4, 3, 3, 3)
    with split_batchnorm(bn, 2):
        bn(x)
    means = torch.stack([b.mean(dim=(0, 2, 3)) for b in x.chunk(2)]).mean(0)
    torch.testing.assert_close(bn.running_mean, means)  # factor 1/num_batches_tracked = 1


def test_split_bn_leaves_eval_mode_and_restores_the_layer():
    bn = _bn().eval()
    x = torch.randn(4, 3, 3, 3)
    with split_batchnorm(bn, 2):
        inside = bn(x)
    torch.testing.assert_close(inside, bn(x))  # eval: running statistics, not split
    bn.train()
    plain = F.batch_norm(x, None, None, bn.weight, bn.bias, training=True, eps=bn.eps)
    torch.testing.assert_close(bn(x), plain)  # outside the block, plain BN again
    assert set(bn.state_dict()) == set(_bn().state_dict())  # nothing added to a checkpoint


def test_split_bn_forward_shuffles_then_unshuffles():
    bn = _bn().train()
    x = torch.randn(8, 3, 4, 4)
    torch.manual_seed(7)
    out = split_bn_forward(bn, x, bn, 2)
    torch.manual_seed(7)
    perm = torch.randperm(8)
    reference = torch.empty_like(out)
    reference[perm] = _per_group_reference(bn, x[perm], 2)
    torch.testing.assert_close(out, reference)


# -- the contrastive task in one process ----------------------------------------------


def _task(sets=(), total_steps: int | None = 100, batch: int = 8, k: int = 1):
    config = resolve_pretrain_config(registry=get_registry(), flags=SMALL, tasks=["contrastive"], sets=["tasks.contrastive.queue_size=64", *sets], environ={})
    module = build_pretrain_module(config, get_registry())
    task = module.tasks["contrastive"]
    notes = task.on_data(DataInfo(num_volumes=2, num_slices=1000, sequence_length=k, global_batch=batch,
                                  total_steps=total_steps))
    return module, task, notes


def test_one_process_run_says_split_bn_is_in_effect():
    _, _, notes = _task()
    assert any("split BN (one process: nothing to shuffle across)" in n and "2 groups of 4" in n for n in notes), notes
    _, _, notes = _task(["tasks.contrastive.bn_mode=none"])
    assert any("leak" in n for n in notes)
    _, _, notes = _task(batch=6)
    assert any("plain BatchNorm" in n for n in notes)  # 6 keys: no groups of at least 4


def _first_bn(module: nn.Module) -> nn.BatchNorm2d:
    return next(m for m in module.modules() if isinstance(m, nn.BatchNorm2d))


def _record(layer: nn.Module, into: list) -> None:
    layer.register_forward_hook(lambda m, args, out: into.append((args[0].detach().clone(), out.detach().clone())))


def _block_reference(bn: nn.BatchNorm2d, x: torch.Tensor, groups: int) -> torch.Tensor:
    """Each contiguous block normalised by hand: (x - mean) / sqrt(biased var + eps) * w + b."""
    out = []
    for block in x.chunk(groups):
        mean = block.mean(dim=(0, 2, 3), keepdim=True)
        var = block.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
        out.append((block - mean) / torch.sqrt(var + bn.eps) * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1))
    return torch.cat(out)


def _batch(b: int, k: int = 1):
    from ssmtl.api import SequenceBatch

    slices = torch.randn(b, k, 32, 32) + torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1)
    return SequenceBatch(slices, torch.linspace(0, 1, k).repeat(b, 1), torch.arange(b), torch.arange(k).repeat(b, 1))


def test_split_bn_normalises_a_key_and_its_query_in_different_groups():
    """The statistics each sample's query and key saw, against a hand computation.

    The first BatchNorm layer of the query encoder (the shared network) must equal per-block
    normalisation of contiguous blocks of the batch, that of the key encoder per-block
    normalisation of the shuffled key batch; a sample's query group and key group then differ.
    """
    module, task, _ = _task(batch=8)  # 8 queries and keys: 2 groups of 4 on each side
    module.train()
    seen_q, seen_k, key_inputs = [], [], []
    _record(_first_bn(module.network.encoder), seen_q)
    _record(_first_bn(task.key_encoder), seen_k)
    task.key_encoder.register_forward_pre_hook(lambda m, args: key_inputs.append(args[0].detach().clone()))
    torch.manual_seed(0)
    ctx = module.context(_batch(8))
    task(ctx)
    (x_q, y_q), (x_k, y_k) = seen_q[0], seen_k[0]
    bn_q, bn_k = _first_bn(module.network.encoder), _first_bn(task.key_encoder)
    torch.testing.assert_close(y_q, _block_reference(bn_q, x_q, 2), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(y_k, _block_reference(bn_k, x_k, 2), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(y_q, _block_reference(bn_q, x_q, 1), atol=1e-3)  # not the whole batch
    # which sample is in which row of the shuffled key batch
    view_b = ctx.view("sequence_b").images
    perm = [int(torch.cdist(row.flatten()[None], view_b.flatten(1)).argmin()) for row in key_inputs[0]]
    assert sorted(perm) == list(range(8))
    query_group = {i: frozenset(range(4 * (i // 4), 4 * (i // 4) + 4)) for i in range(8)}
    key_group = {perm[j]: frozenset(perm[4 * (j // 4): 4 * (j // 4) + 4]) for j in range(8)}
    assert all(key_group[i] != query_group[i] for i in range(8)), (perm, key_group)


def test_the_shared_encoder_splits_whole_sequences_and_every_view():
    """k = 3 slices per sequence, 4 sequences, bn_groups 8: 2 groups of 2 whole sequences (6 rows)."""
    module, task, notes = _task(["data.sequence_length=3"], batch=4, k=3)
    assert any("query encoder (the shared network, every view) normalises 2 groups of 6 slices (whole sequences), "
               "the key encoder 3 groups of 4 shuffled keys" in n for n in notes), notes
    module.train()
    seen = []
    _record(_first_bn(module.network.encoder), seen)
    ctx = module.context(_batch(4, k=3))
    ctx.encode("raw")  # a view no contrastive query comes from is split too
    x, y = seen[0]
    torch.testing.assert_close(y, _block_reference(_first_bn(module.network.encoder), x, 2), atol=1e-4, rtol=1e-4)
    assert module.encoder_bn_groups == 8
    _, task, _ = _task(["tasks.contrastive.bn_mode=none"])
    assert task.encoder_bn_groups == 1


def test_split_bn_gradients_survive_activation_checkpointing():
    """Checkpointing recomputes the forward in the backward pass: it must see the same groups."""
    grads = []
    for checkpointing in (False, True):
        module, task, _ = _task([f"model.checkpointing={str(checkpointing).lower()}"], batch=8)
        module.train()
        torch.manual_seed(0)
        batch = _batch(8)
        total, *_ = module(batch, step=0)
        total.backward()
        grads.append(torch.cat([p.grad.flatten() for p in module.network.encoder.parameters()]))
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5, rtol=1e-4)


def test_tasks_must_agree_on_the_encoders_groups():
    from ssmtl.api.errors import SsmtlError
    from ssmtl.pretraining.module import _encoder_bn_groups

    class Asks:
        def __init__(self, groups):
            self.encoder_bn_groups = groups

    assert _encoder_bn_groups({"a": Asks(1), "b": Asks(4)}) == 4
    assert _encoder_bn_groups({"a": Asks(1)}) == 1
    with pytest.raises(SsmtlError, match="different BatchNorm groups of the shared encoder: a 8, b 4"):
        _encoder_bn_groups({"a": Asks(8), "b": Asks(4)})


# -- the queue's size ---------------------------------------------------------------------


def test_queue_cap_arithmetic():
    from ssmtl.plugins.tasks.contrastive import ContrastiveConfig, queue_size

    assert ContrastiveConfig().max_queue_fraction == 0.1
    assert queue_size(4096, 0.1, 1417, 16) == 141  # floor(141.7); the old 0.5 gave 708, half the slices
    assert queue_size(4096, 0.5, 1417, 16) == 708
    assert queue_size(64, 0.1, 1417, 16) == 64  # a queue below the cap is kept
    assert queue_size(4096, 0.1, 100, 32) == 32  # never below one batch of keys (floor(10) < 32)
    assert queue_size(4096, 0.29, 100, 1) == 29  # 0.29 x 100 = 28.999... in floating point
    assert queue_size(4096, 2.0, 1000, 16) == 2000


def test_the_task_caps_its_queue_and_says_so():
    _, task, notes = _task(["tasks.contrastive.queue_size=4096"], batch=16)  # 1000 training slices
    assert task.queue.size == 100 and task.queue.keys.shape == (100, task.config.projection_dim)
    assert any("queue_size 4096 > 0.1 x 1000 training slices; using 100 keys" in n for n in notes), notes
    _, task, notes = _task(["tasks.contrastive.queue_size=64"])
    assert task.queue.size == 64 and not any("queue_size" in n for n in notes)


# -- momentum schedule ------------------------------------------------------------------


def test_cosine_momentum_formula():
    for t in (0, 1, 37, 99):
        expected = 1 - (1 - 0.99) * (math.cos(math.pi * t / 100) + 1) / 2
        assert ema_momentum(0.99, "cosine", t, 100) == pytest.approx(expected)
    assert ema_momentum(0.99, "constant", 50, 100) == 0.99
    with pytest.raises(ValueError, match="total number of steps"):
        ema_momentum(0.99, "cosine", 3, None)


def test_remaining_share_of_the_initial_weights():
    assert initial_weight_share(0.999, "constant", 600) == pytest.approx(0.999 ** 600)
    product = 1.0
    for t in range(600):
        product *= 1 - 0.01 * (math.cos(math.pi * t / 600) + 1) / 2
    assert initial_weight_share(0.99, "cosine", 600) == pytest.approx(product)
    assert initial_weight_share(0.99, "cosine", 600) == pytest.approx(0.049, abs=1e-3)


def test_key_encoder_keeps_the_predicted_share_and_logs_it():
    module, task, notes = _task(total_steps=50)
    share = initial_weight_share(0.99, "cosine", 50)
    assert any(f"after 50 steps it holds {100 * share:.3g} % of its initial weights" in n for n in notes), notes
    with torch.no_grad():
        for p in [*module.network.encoder.parameters(), *task.projection.parameters()]:
            p.zero_()  # the key encoder then decays to prod(m_t) * its initial weights
    initial = [p.clone() for p in task.key_encoder.parameters()]
    for step in range(50):
        task.after_optimizer_step(module.network, step)
    assert float(task.key_init_share) == pytest.approx(share, rel=1e-5)
    for p, p0 in zip(task.key_encoder.parameters(), initial):
        torch.testing.assert_close(p, p0 * share, rtol=1e-4, atol=1e-7)
    assert "key_init_share" in task.state_dict()  # part of the checkpoint: resume continues the product


def test_momentum_schedule_without_run_length_falls_back_to_constant():
    _, task, notes = _task(total_steps=None)
    assert any("falls back to a constant" in n for n in notes)
    assert task.momentum_at(10) == 0.99


def test_a_one_process_run_announces_split_bn_and_logs_the_share(tiny_cache, tmp_path):
    from helpers import run, ssmtl_cmd, tiny_sets

    out = tmp_path / "run"
    args = ["pretrain", "--data", str(tiny_cache), "--out", str(out), "--steps", "4", "--batch-size", "8",
            "--task", "contrastive"]
    for s in tiny_sets(["contrastive"]):
        args += ["--set", s]
    result = run(ssmtl_cmd() + args)
    assert "split BN (one process: nothing to shuffle across)" in result.stderr
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    shares = [r["tasks"]["contrastive"]["key_init_share"] for r in records]
    assert shares[0] == 1.0 and shares == sorted(shares, reverse=True)
    # the value logged at the last step is the product before its own update
    assert shares[-1] == pytest.approx(math.prod(ema_momentum(0.99, "cosine", t, 4) for t in range(3)), rel=1e-5)
