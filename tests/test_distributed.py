"""Multi-process pre-training on CPU (gloo): the same code as `accelerate launch` on GPUs."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from helpers import ALL_TASKS, accelerate_cmd, run, tiny_sets

pytestmark = pytest.mark.slow

COMBOS = [list(p) for p in itertools.combinations(ALL_TASKS, 2)] + [ALL_TASKS]


def test_two_processes_share_one_queue(tiny_cache, tmp_path):
    """Keys are gathered from both ranks before enqueue: the queue holds keys of rank 0 and rank 1."""
    out = tmp_path / "run"
    sets = [a for s in tiny_sets(["contrastive", "order"]) + ["tasks.contrastive.max_queue_fraction=10"] for a in ("--set", s)]
    run(accelerate_cmd(2) + ["pretrain", "--data", str(tiny_cache), "--out", str(out), "--steps", "4",
                             "--batch-size", "2", "--task", "contrastive", "--task", "order", *sets])
    state = load_file(out / "checkpoints" / "step-00000004" / "model.safetensors")
    owners = state["tasks.contrastive.queue.owner"]
    # 4 steps x 2 ranks x (batch 2 x k=3 slices) = 48 keys in a queue of 64
    assert int((owners == 0).sum()) == 24 and int((owners == 1).sum()) == 24
    manifest = json.loads((out / "export" / "manifest.json").read_text())
    assert manifest["world_size"] == 2
    assert (out / "checkpoints" / "step-00000004" / "random_states_1.pkl").is_file()


def _combos_two_steps(cache: str, root: str) -> None:
    """Runs inside each process (2 under debug_launcher, or this one)."""
    from accelerate.state import AcceleratorState

    # forked children inherit the parent's (single-process) Accelerate state: start afresh
    AcceleratorState._reset_state(reset_partial_state=True)
    from ssmtl.core.config import resolve_run_config
    from ssmtl.core.engine import run_pretraining
    from ssmtl.core.registry import build_registry

    registry = build_registry(external=False)
    for i, tasks in enumerate(COMBOS):
        config = resolve_run_config(
            flags={"data.path": cache, "out": f"{root}/combo{i}", "train.steps": 2, "train.batch_size": 2},
            tasks=tasks, sets=tiny_sets(tasks), registry=registry,
        )
        result = run_pretraining(config, registry=registry, progress=False)
        assert result.steps == 2


@pytest.mark.parametrize("processes", [1, 2])
def test_every_pair_of_tasks_and_all_together(tiny_cache, tmp_path, processes):
    from accelerate import debug_launcher

    if processes == 1:
        _combos_two_steps(str(tiny_cache), str(tmp_path))
    else:
        debug_launcher(_combos_two_steps, args=(str(tiny_cache), str(tmp_path)), num_processes=2)
    for i, tasks in enumerate(COMBOS):
        records = [json.loads(l) for l in (tmp_path / f"combo{i}" / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records] == [0, 1], tasks
        assert set(records[-1]["tasks"]) == set(tasks)
        manifest = json.loads((tmp_path / f"combo{i}" / "export" / "manifest.json").read_text())
        assert manifest["world_size"] == processes
