"""Run 2 steps of every pair of tasks (and all together) in this process group.

Started by tests/test_distributed.py through `accelerate launch` (a real launch: the
forked children of a pytest process that already used torch's thread pool can
deadlock in OpenMP, so debug_launcher is not an option there).
"""

from __future__ import annotations

import itertools
import sys

from helpers import ALL_TASKS, tiny_sets

COMBOS = [list(p) for p in itertools.combinations(ALL_TASKS, 2)] + [ALL_TASKS]


def run_all(cache: str, root: str) -> None:
    from ssmtl.pretraining.config import resolve_pretrain_config
    from ssmtl.pretraining.engine import run_pretraining
    from ssmtl.host.registry import build_registry

    registry = build_registry(external=False)
    for i, tasks in enumerate(COMBOS):
        config = resolve_pretrain_config(
            flags={"data.path": cache, "out": f"{root}/combo{i}", "train.steps": 2, "train.batch_size": 2},
            tasks=tasks, sets=tiny_sets(tasks), registry=registry, environ={},
        )
        result = run_pretraining(config, registry=registry, progress=False)
        assert result.steps == 2
    import torch.distributed as dist

    if dist.is_initialized():  # as the CLI does at exit: left to the interpreter, gloo sometimes aborted a rank
        dist.destroy_process_group()


if __name__ == "__main__":
    run_all(sys.argv[1], sys.argv[2])
