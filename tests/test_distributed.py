"""Multi-process pre-training on CPU (gloo): the same code as `accelerate launch` on GPUs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from combo_driver import COMBOS
from helpers import accelerate_cmd, run, tiny_sets

pytestmark = pytest.mark.slow


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
        assert [r["step"] for r in records] == [0, 1], tasks
        assert set(records[-1]["tasks"]) == set(tasks)
        manifest = json.loads((tmp_path / f"combo{i}" / "export" / "manifest.json").read_text())
        assert manifest["world_size"] == processes
