"""Multi-process pre-training on CPU (gloo): the same code as `accelerate launch` on GPUs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from combo_driver import COMBOS
from helpers import accelerate_cmd, run, tiny_sets

pytestmark = pytest.mark.slow


def test_two_processes_share_one_queue(tiny_cache, tmp_path):
    """Keys are gathered from both ranks before enqueue: rank 0's saved queue holds both ranks' keys."""
    out = tmp_path / "run"
    sets = [a for s in tiny_sets(["contrastive", "order"]) + ["tasks.contrastive.max_queue_fraction=10"] for a in ("--set", s)]
    run(accelerate_cmd(2) + ["pretrain", "--data", str(tiny_cache), "--out", str(out), "--steps", "4",
                             "--batch-size", "2", "--task", "contrastive", "--task", "order", *sets])
    state = load_file(out / "checkpoints" / "step-00000004" / "model.safetensors")
    positions = state["tasks.contrastive.queue.positions"]
    # 4 steps x 2 ranks x (batch 2 x k=3 slices) = 48 keys in a queue of 64; rank 0's
    # own keys alone would fill 24 slots
    assert int(state["tasks.contrastive.queue.pointer"]) == 48
    assert int((positions >= 0).sum()) == 48 and bool((positions[48:] == -1).all())
    manifest = json.loads((out / "export" / "manifest.json").read_text())
    assert manifest["world_size"] == 2
    assert (out / "checkpoints" / "step-00000004" / "random_states_1.pkl").is_file()


def test_queues_of_both_ranks_agree_and_sync_batchnorm_only_when_declared(tiny_cache, tmp_path):
    driver = Path(__file__).with_name("ddp_driver.py")
    launch = accelerate_cmd(2)[:-2]  # the launcher without "-m ssmtl": it runs the driver script
    run(launch + [str(driver), str(tiny_cache), str(tmp_path)], cwd=driver.parent)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    for r in ranks:  # the task declares it (bn_mode=sync); the engine does not read bn_mode
        sync, shuffle = r["sync_bn"]["sync"], r["sync_bn"]["shuffle"]
        assert shuffle == [] and len(sync) == 1  # one conversion of the whole module, only when declared
        assert sync[0][0] == "PretrainModule" and sync[0][1] > 0
    a, b = ranks[0]["queue"], ranks[1]["queue"]
    # each rank enqueued the gathered keys of both: the two queues are the same ...
    assert a["pointer"] == b["pointer"] == 2 * 2 * 2  # 2 steps x 2 ranks x batch 2
    assert torch.equal(a["keys"], b["keys"]) and torch.equal(a["positions"], b["positions"])
    # ... and hold, rank 0's first, the keys of slices only one rank trained on
    own = [r["own_positions"] for r in ranks]
    assert set(own[0].tolist()).isdisjoint(own[1].tolist())
    expected = torch.cat([torch.cat([own[0][2 * s:2 * s + 2], own[1][2 * s:2 * s + 2]]) for s in range(2)])
    assert torch.equal(a["positions"][:8], expected)


@pytest.mark.parametrize("processes", [1, 2])
def test_every_pair_of_tasks_and_all_together(tiny_cache, tmp_path, processes):
    driver = Path(__file__).with_name("combo_driver.py")
    if processes == 1:
        run([sys.executable, str(driver), str(tiny_cache), str(tmp_path)], cwd=driver.parent)
    else:
        launch = accelerate_cmd(2)[:-2]  # the launcher without "-m ssmtl": it runs the driver script
        run(launch + [str(driver), str(tiny_cache), str(tmp_path)], cwd=driver.parent)
    for i, tasks in enumerate(COMBOS):
        records = [json.loads(l) for l in (tmp_path / f"combo{i}" / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records] == [1, 2], tasks
        assert set(records[-1]["tasks"]) == set(tasks)
        manifest = json.loads((tmp_path / f"combo{i}" / "export" / "manifest.json").read_text())
        assert manifest["world_size"] == processes
