"""Every built-in pretext task keeps the contract third-party tasks are held to.

The same :func:`ssmtl.testing.check_task_contract` that plugin authors run:
registration, config, heads, a finite scalar loss, and gradients exactly where
``trains`` says, with default options and with the options that change which
inputs, heads or losses a task uses, on every built-in network.
"""

from __future__ import annotations

import pytest
import torch

from ssmtl.host.registry import build_registry
from ssmtl.testing import check_task_contract, tiny_network

BUILTIN_TASKS = build_registry(external=False).tasks
BUILTIN_NETWORKS = build_registry(external=False).networks
#: a tiny model table per built-in network (None: the default network's tiny defaults)
TINY_NETWORKS = {
    "unet": None,
    "monai-basic-unet": {"name": "monai-basic-unet", "features": [4, 4, 8, 8, 16, 4]},
}

# Options that switch a task to another code path (views, heads, loss or sequence length).
VARIANTS = [
    ("contrastive", {"positives": "neighbors", "queue_size": 16}),
    ("contrastive", {"positives": "position", "bn_mode": "none", "query_slices": "center", "queue_size": 16}),
    ("order", {"num_slices": 4, "max_permutations": 6}),
    ("reconstruct", {"mode": "restore", "patch_size": 8, "loss": "l1", "loss_region": "all"}),
    ("reconstruct", {"fill": "noise", "patch_size": 4}),
    ("neighbor", {"mode": "middle", "loss": "l2"}),
    ("position", {"mode": "classify", "bins": 4}),
    ("local-contrastive", {"negatives": "batch", "sampling": "random", "num_points": 16}),
]


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny tensors on a shared 2-core machine: one thread is faster and steadier
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_every_builtin_network_has_a_tiny_model():
    assert set(TINY_NETWORKS) == set(BUILTIN_NETWORKS)


@pytest.mark.parametrize("network", sorted(TINY_NETWORKS))
@pytest.mark.parametrize("name", sorted(BUILTIN_TASKS))
def test_builtin_task_keeps_the_contract(name, network):
    spec = BUILTIN_TASKS[name]
    report = check_task_contract(spec, model=TINY_NETWORKS[network])
    assert report.name == name
    assert len(report.losses) == 2
    # the task ran on that network (its encoder and decoder), not on the default U-Net
    tiny = tiny_network(**(TINY_NETWORKS[network] or {}))
    assert report.encoder_parameters == sum(p.numel() for p in tiny.encoder.parameters())
    assert report.decoder_parameters == sum(p.numel() for p in tiny.decoder.parameters())


@pytest.mark.parametrize("name,options", VARIANTS, ids=[f"{n}-{'-'.join(map(str, o.values()))}" for n, o in VARIANTS])
def test_builtin_task_variant_keeps_the_contract(name, options):
    check_task_contract(BUILTIN_TASKS[name], config=options)


def test_decoder_tasks_say_so():
    trains = {name: check_task_contract(spec, steps=1).trains for name, spec in BUILTIN_TASKS.items()}
    decoder = {name for name, parts in trains.items() if "decoder" in parts}
    assert decoder == {"reconstruct", "neighbor", "local-contrastive"}


def test_every_variant_names_a_builtin_task():
    assert {name for name, _ in VARIANTS} == set(BUILTIN_TASKS)


def test_only_contrastive_with_sync_bn_needs_sync_batchnorm():
    from ssmtl.api import NetworkInfo

    info = NetworkInfo(in_channels=1, encoder_channels=(4, 8, 16), decoder_channels=4, depth=2)
    registry = build_registry(external=True)  # the example rotation plugin keeps the default
    declared = {name: spec.factory(spec.config_model(), info).needs_sync_batchnorm for name, spec in registry.tasks.items()}
    assert declared == {name: False for name in registry.tasks} and "rotation" in declared
    contrastive = registry.tasks["contrastive"]
    for mode, expected in (("sync", True), ("shuffle", False), ("none", False)):
        task = contrastive.factory(contrastive.config_model(bn_mode=mode), info)
        assert task.needs_sync_batchnorm is expected
