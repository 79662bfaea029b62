"""The ``rotation`` task: the ssmtl task contract, the geometry of its view, and a run through the CLI."""

from __future__ import annotations

import json

import pytest
import torch


from ssmtl.api import apply_affine, SsmtlError
from ssmtl.testing import check_task_contract, tiny_batch, tiny_context, tiny_network
from ssmtl_rotation import plugin
from ssmtl_rotation.rotation import ROTATED_VIEW, RotationConfig, RotationTask, rotate_quarter_turns, rotated_theta

TINY_RUN = ["--steps", "2", "--batch-size", "2", "--workers", "0",
            "--set", "model.base_channels=4", "--set", "model.depth=2", "--set", "tasks.contrastive.queue_size=16"]


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny tensors: one thread avoids oversubscribing small CI machines
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_task_contract():
    report = check_task_contract(plugin, name="rotation")
    assert report.trains == {"encoder"}
    assert report.views == [ROTATED_VIEW]
    assert set(report.metrics) == {"acc"}


@pytest.mark.parametrize("options", [{"source_view": "raw"}, {"label_smoothing": 0.1, "hidden_dim": 8}])
def test_task_contract_with_options(options):
    check_task_contract(plugin, name="rotation", config=options, batch_size=3)


def test_registers_next_to_the_builtins(ssmtl_registry_factory):
    registry = ssmtl_registry_factory(plugin, builtins=True)
    assert {"rotation", "contrastive", "order"} <= set(registry.tasks)
    assert {"png-stack", "phantom"} <= set(registry.datasets)
    [info] = [p for p in registry.plugins if p.name == plugin.__name__]
    assert info.provides == {"tasks": ["rotation"], "datasets": ["png-stack"]}
    assert info.hooks == ["ssmtl_register_datasets", "ssmtl_register_tasks"]


def test_quarter_turns_are_torch_rot90():
    images = torch.randn(8, 1, 6, 6)
    turns = torch.arange(8) % 4
    rotated = rotate_quarter_turns(images, turns)
    for i in range(8):
        assert torch.equal(rotated[i], torch.rot90(images[i], int(turns[i]), dims=(-2, -1)))


def test_rotated_view_theta_points_back_into_the_raw_slice():
    raw = torch.randn(4, 1, 8, 8)
    turns = torch.arange(4)
    # from the raw slices: the affine alone reproduces the rotation
    assert torch.allclose(apply_affine(raw, rotated_theta(None, turns)), rotate_quarter_turns(raw, turns), atol=1e-5)
    # composed with an augmentation's affine (scale and shift)
    theta = torch.tensor([[[0.75, 0.0, 0.125], [0.0, 0.75, -0.25]]]).repeat(4, 1, 1)
    view = rotate_quarter_turns(apply_affine(raw, theta), turns)
    assert torch.allclose(apply_affine(raw, rotated_theta(theta, turns)), view, atol=1e-5)


def test_non_square_slices_are_a_clear_error():
    with pytest.raises(SsmtlError, match="square"):
        rotate_quarter_turns(torch.zeros(2, 1, 8, 6), torch.tensor([1, 2]))


def test_learns_to_tell_rotations_apart():
    torch.manual_seed(0)
    network = tiny_network()
    task = RotationTask(RotationConfig(source_view="raw"), network.info)
    batch = tiny_batch(batch_size=8, sequence_length=1)
    optimizer = torch.optim.AdamW([*network.parameters(), *task.parameters()], lr=1e-2)
    losses = []
    for step in range(40):
        torch.manual_seed(1)  # the same rotations every step: a fixed problem to fit
        out = task(tiny_context(batch, network, [task], step))
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_pretrain_next_to_contrastive_through_the_cli(ssmtl_cli, ssmtl_tiny_cache, tmp_path):
    out = tmp_path / "run"
    result = ssmtl_cli("pretrain", "--data", ssmtl_tiny_cache, "--task", "rotation", "--task", "contrastive",
                       "--out", out, *TINY_RUN, plugins=[plugin])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "export" / "manifest.json").read_text())
    assert set(manifest["tasks"]) == {"rotation", "contrastive"}
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert set(last["tasks"]) == {"rotation", "contrastive"} and "acc" in last["tasks"]["rotation"]
