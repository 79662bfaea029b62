"""Tiny stand-ins for the real thing: a small network and a synthetic sequence batch.

They are small enough for a forward and backward pass in well under a second on
one CPU core, yet structured like the data ssmtl trains on: every "volume" is a
body ellipse with an organ that grows along the slice axis and a bright spot that
moves with it, so consecutive slices are similar, slice order and position are
visible, and no two slices are constant images (which would make normalisation
layers and contrastive losses degenerate).
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import torch

from ssmtl.api import NetworkConfig, PretextTask, SequenceBatch, SharedNetwork, StepContext
from ssmtl.api.views import task_views
from ssmtl.training.augment import AugmentConfig, make_augmenter
from ssmtl.host.networks import build_network, network_config

#: The options of the default network (ssmtl's U-Net) every tiny network uses unless overridden.
TINY_MODEL: dict[str, int] = {"base_channels": 4, "depth": 2}

#: In-plane size of tiny batches (divisible by 2**depth for every tiny depth).
TINY_SIZE = 32


def harness_registry(registry=None):
    """The registry a test harness call works with: the one given, else the installed plugins
    (the harness is an entry point, as the command line and the Python API are)."""
    if registry is not None:
        return registry
    from ssmtl.host.registry import get_registry

    return get_registry()


def tiny_model(model: Mapping[str, Any] | None = None, registry=None) -> NetworkConfig:
    """A network config: the default network (the U-Net) with :data:`TINY_MODEL` and
    ``model``'s options, or, when ``model`` names another network (``name``), exactly
    ``model`` (its own options; make them small)."""
    registry = harness_registry(registry)
    model = dict(model or {})
    if model.get("name", registry.default_network()) == registry.default_network():
        model = {**TINY_MODEL, **model}
    return network_config(model, registry)


def tiny_network(**overrides) -> SharedNetwork:
    """The default network with 4 base channels and depth 2 (override any field), or
    ``tiny_network(name="NETWORK", ...)`` another network plugin's with these options."""
    registry = harness_registry()
    return build_network(tiny_model(overrides, registry), registry)


def tiny_batch(
    batch_size: int = 2,
    sequence_length: int = 1,
    size: int = TINY_SIZE,
    depth: int = 16,
    seed: int = 0,
) -> SequenceBatch:
    """``batch_size`` sequences of ``sequence_length`` consecutive slices of synthetic volumes.

    Each sequence comes from its own volume of ``depth`` slices (``volume`` = its
    index in the batch) and starts at a random slice; ``positions`` are the slice
    indices divided by ``depth - 1``, as the real sampler normalises them.
    """
    if sequence_length > depth:
        raise ValueError(f"sequence_length={sequence_length} exceeds the volume depth {depth}")
    g = torch.Generator().manual_seed(seed)
    axis = torch.linspace(-1, 1, size)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    slices, positions, indices = [], [], []
    for _ in range(batch_size):
        start = int(torch.randint(0, depth - sequence_length + 1, (1,), generator=g))
        cx, cy, phase = (torch.rand(3, generator=g) - 0.5).tolist()
        seq, pos, idx = [], [], []
        for z in range(start, start + sequence_length):
            t = z / (depth - 1)
            body = ((xx / 0.85) ** 2 + (yy / 0.65) ** 2 < 1).float()
            radius = 0.15 + 0.25 * t
            organ = (((xx - 0.6 * cx) ** 2 + (yy - 0.5 * cy) ** 2) < radius**2).float()
            spot = (((xx - 0.3 * math.sin(3 * t + phase)) ** 2 + (yy - 0.4) ** 2) < 0.02).float()
            noise = 0.05 * torch.randn(size, size, generator=g)
            seq.append(0.3 * body + 0.8 * organ * body + 1.2 * spot + 0.2 * xx * t + noise)
            pos.append(t)
            idx.append(z)
        slices.append(torch.stack(seq))
        positions.append(pos)
        indices.append(idx)
    return SequenceBatch(
        slices=torch.stack(slices),
        positions=torch.tensor(positions, dtype=torch.float32),
        volume=torch.arange(batch_size, dtype=torch.int64),
        slice_index=torch.tensor(indices, dtype=torch.int64),
    )


def tiny_context(
    batch: SequenceBatch,
    network,
    tasks: Iterable[PretextTask] | Mapping[str, PretextTask] = (),
    step: int = 0,
    *,
    augment: dict[str, Any] | None = None,
    decoder_slices: str = "all",
    flip_axes: tuple[int, ...] = (),
) -> StepContext:
    """A :class:`~ssmtl.api.StepContext` as the engine builds it: the built-in views plus
    the views and view transforms of ``tasks``, random views drawn with the default
    augmentation (or ``augment``: options of the ``augment`` config section), mirrored
    only along ``flip_axes`` (the data's declaration; none by default)."""
    if not isinstance(tasks, Mapping):
        tasks = {task.name: task for task in tasks}
    builders, transforms = task_views(tasks)
    augmenter = make_augmenter(AugmentConfig(**(augment or {})), flip_axes)
    return StepContext(batch, network, augmenter, builders, step, transforms=transforms, decoder_slices=decoder_slices)
