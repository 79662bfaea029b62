"""Two-process checks of the engine (started by tests/test_distributed.py through
`accelerate launch`, as combo_driver.py is). Each rank writes what it saw to
``<out>/rank<r>.pt``:

* ``sync_bn``: for a Trainer whose contrastive task declares ``needs_sync_batchnorm``
  (``bn_mode=sync``) and for one that does not (``shuffle``), the engine's calls of
  ``nn.SyncBatchNorm.convert_sync_batchnorm``: the class of the module it converts
  and its number of BatchNorm layers. The call is recorded and its input handed on
  unchanged: DDP refuses SyncBatchNorm on CPU modules, and these processes run on CPU;
* ``queue``: the MoCo queue after 2 steps in which each rank trained on its own
  batch, with slice positions no other rank has, so the test can tell whose keys a
  queue holds.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from helpers import tiny_sets

BATCH = 2


def own_batch(rank: int, step: int):
    """B single slices whose positions belong to this rank and step alone."""
    from ssmtl.api.views import SequenceBatch

    g = torch.Generator().manual_seed(100 * rank + step)
    positions = torch.tensor([[0.1 + 0.5 * rank + 0.1 * step + 0.01 * i] for i in range(BATCH)])
    return SequenceBatch(torch.rand(BATCH, 1, 32, 32, generator=g), positions, torch.full((BATCH,), rank),
                         torch.arange(BATCH).view(BATCH, 1))


def main(cache: str, out: str) -> None:
    from torch import nn

    from ssmtl.host.registry import build_registry
    from ssmtl.pretraining.config import resolve_pretrain_config
    from ssmtl.training.accelerator import make_accelerator
    from ssmtl.pretraining.engine import Trainer

    registry = build_registry(external=False)
    result, trainers = {"sync_bn": {}}, {}
    convert, converted = nn.SyncBatchNorm.convert_sync_batchnorm, []

    def record_conversion(module, process_group=None):
        converted.append([type(module).__name__, sum(isinstance(m, nn.BatchNorm2d) for m in module.modules())])
        return module

    nn.SyncBatchNorm.convert_sync_batchnorm = staticmethod(record_conversion)
    for mode in ("sync", "shuffle"):
        converted.clear()
        config = resolve_pretrain_config(
            flags={"data.path": cache, "train.batch_size": BATCH}, tasks=["contrastive"],
            # max_queue_fraction=10: the queue (64) holds every key of the run, whatever the 32 slices cap it at
            sets=tiny_sets(["contrastive"]) + [f"tasks.contrastive.bn_mode={mode}", "tasks.contrastive.max_queue_fraction=10"],
            environ={}, registry=registry,
        )
        accelerator = make_accelerator(config.train.mixed_precision)
        trainers[mode] = Trainer(config, registry, accelerator, num_volumes=4, num_slices=32)
        result["sync_bn"][mode] = list(converted)
    nn.SyncBatchNorm.convert_sync_batchnorm = convert
    rank = accelerator.process_index
    trainer = trainers["shuffle"]
    for step in range(2):
        assert not trainer.step([own_batch(rank, step)], step).skipped
    queue = trainer.unwrapped.tasks["contrastive"].queue
    result["queue"] = {"keys": queue.keys.clone(), "positions": queue.positions.clone(), "pointer": int(queue.pointer)}
    result["own_positions"] = torch.cat([own_batch(rank, s).positions.reshape(-1) for s in range(2)])
    result["world_size"] = accelerator.num_processes
    torch.save(result, Path(out) / f"rank{rank}.pt")
    accelerator.wait_for_everyone()
    torch.distributed.destroy_process_group()  # a clean teardown: left to the exit, gloo sometimes aborted a rank


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
