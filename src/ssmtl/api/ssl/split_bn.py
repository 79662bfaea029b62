"""Split BatchNorm: batch statistics computed in groups of a (shuffled) batch, in one process.

MoCo's shuffle-BN (:func:`~ssmtl.api.ssl.distributed.shuffle_bn_forward`) keeps a query's
BatchNorm statistics from leaking into its positive key by computing the key batch
on another process's samples. With one process there is nothing to shuffle across;
the MoCo authors' single-GPU CIFAR demo (facebookresearch/moco, ``colab/moco_cifar10_demo.ipynb``)
instead builds **both** encoders with split BatchNorm: the query batch is normalised in
G contiguous groups, the key batch is shuffled and then normalised in G contiguous
groups, so a sample's key and its query are normalised among different samples (the
two groups share about 1/G of their samples, as a key's process and its query's do in
G-process shuffle-BN).

Two ways to switch it on:

* :func:`split_batchnorm` (a block) with an exact number of groups: the key side,
  through :func:`split_bn_forward`, which also shuffles;
* :func:`set_split_batchnorm`: a standing policy for a module's every training-mode
  forward until it is turned off (the query side: the shared encoder, which every task
  uses). The number of groups is worked out per input from its batch size
  (:func:`split_bn_groups`, in runs of ``unit`` rows that stay together: the slices of
  one sequence), so every view of a step is normalised the way G processes would
  normalise their shares of it; and it holds through the backward pass, where
  activation checkpointing runs the forward again.

:func:`split_bn_forward` does that for any network: inside it, every BatchNorm layer of
``module`` that is in training mode normalises each of ``groups`` contiguous groups of
its input with that group's mean and (biased) variance, with the layer's own affine
parameters. Nothing is copied or converted: on first use each layer gets an instance
``forward`` that reads its number of groups (1 outside the block: the class's own
forward), so the state dict (and a checkpoint) is unchanged, and a compiled module sees
one stable function whose only changing input is an integer.

Running statistics: each layer's running mean and variance move towards the **mean over
groups** of the group means and of the unbiased group variances, with the layer's own
momentum (or its cumulative average when ``momentum`` is None) and one
``num_batches_tracked`` increment per call, as the demo's ``SplitBatchNorm`` does. With
equal groups the running mean then tracks the batch mean; the running variance tracks the
within-group variance. A layer in eval mode is left alone (it uses its running statistics).
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial
from typing import Callable, Iterator

import torch
from einops import rearrange
from torch import nn
from torch.nn import functional as F

# A group of fewer samples is close to normalising each sample by itself (instance norm),
# which changes what the key encoder computes more than it protects against the leak.
MIN_SPLIT_BN_GROUP = 4


def split_bn_groups(batch: int, groups: int, min_group: int = MIN_SPLIT_BN_GROUP) -> int:
    """The number of groups split BN uses for ``batch`` samples when ``groups`` are asked for.

    The largest divisor of ``batch`` that is at most ``groups`` and leaves at least
    ``min_group`` samples per group; 1 (ordinary BatchNorm) when there is none.

    >>> split_bn_groups(48, 8), split_bn_groups(16, 8), split_bn_groups(18, 8), split_bn_groups(7, 8)
    (8, 4, 3, 1)
    """
    if batch < 1 or groups < 1 or min_group < 1:
        raise ValueError(f"batch, groups and min_group must be positive, got {batch}, {groups}, {min_group}")
    for g in range(min(groups, batch // min_group), 1, -1):
        if batch % g == 0:
            return g
    return 1


def _split_forward(layer: nn.modules.batchnorm._BatchNorm, groups: int, x: torch.Tensor) -> torch.Tensor:
    """``layer``'s training-mode output with statistics per group of ``x`` (contiguous blocks)."""
    if not layer.training:
        return type(layer).forward(layer, x)
    if x.shape[0] % groups:
        raise ValueError(f"split BN: a batch of {x.shape[0]} does not split into {groups} equal groups")
    channels = x.shape[1]
    # (G*n, C, ...) -> (n, G*C, ...): each group's channels become their own BN channels
    grouped = rearrange(x, "(g n) c ... -> n (g c) ...", g=groups)
    weight = None if layer.weight is None else layer.weight.repeat(groups)
    bias = None if layer.bias is None else layer.bias.repeat(groups)
    if not (layer.track_running_stats and layer.running_mean is not None):
        out = F.batch_norm(grouped, None, None, weight, bias, training=True, momentum=0.0, eps=layer.eps)
        return rearrange(out, "n (g c) ... -> (g n) c ...", g=groups)
    with torch.no_grad():
        layer.num_batches_tracked.add_(1)
        factor = (1.0 / float(layer.num_batches_tracked)) if layer.momentum is None else layer.momentum
    # batch_norm updates one copy of the running statistics per group from the statistics
    # it computes anyway (unbiased variance, as plain BN); their mean is the layer's update
    # ((1-f) r + f mean_g(stat_g)). A second pass over the activations to compute them
    # again (in fp32, after a copy) cost more than the layer's own forward.
    running_mean, running_var = layer.running_mean.repeat(groups), layer.running_var.repeat(groups)
    out = F.batch_norm(grouped, running_mean, running_var, weight, bias, training=True, momentum=factor, eps=layer.eps)
    with torch.no_grad():
        layer.running_mean.copy_(running_mean.view(groups, channels).mean(dim=0))
        layer.running_var.copy_(running_var.view(groups, channels).mean(dim=0))
    return rearrange(out, "n (g c) ... -> (g n) c ...", g=groups)


def batchnorm_layers(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of ``module`` (SyncBatchNorm included: in one process it is plain BN)."""
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


_GROUPS = "_ssmtl_split_bn_groups"  # exact groups, inside a split_batchnorm block
_POLICY = "_ssmtl_split_bn_policy"  # (groups asked, unit) of set_split_batchnorm; (1, 1): off


def split_bn_groups_in_units(batch: int, groups: int, unit: int = 1, min_group: int = MIN_SPLIT_BN_GROUP) -> int:
    """The groups split BN uses for ``batch`` rows made of runs of ``unit`` consecutive rows that
    stay in one group (a sequence's k slices): :func:`split_bn_groups` over the runs, with at
    least ``min_group`` rows per group. A batch that is not whole runs counts rows.

    >>> split_bn_groups_in_units(48, 8, 3), split_bn_groups_in_units(12, 8, 3), split_bn_groups_in_units(16, 8, 1)
    (8, 2, 4)
    """
    if unit < 1:
        raise ValueError(f"unit must be positive, got {unit}")
    if batch % unit:
        unit = 1
    return split_bn_groups(batch // unit, groups, -(-min_group // unit))


def _layer_groups(layer: nn.modules.batchnorm._BatchNorm, batch: int) -> int:
    groups = getattr(layer, _GROUPS, 1)
    if groups == 1:
        asked, unit = getattr(layer, _POLICY, (1, 1))
        if asked > 1:
            groups = split_bn_groups_in_units(batch, asked, unit)
    return groups


def _grouped_forward(layer: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
    if layer.training:
        groups = _layer_groups(layer, x.shape[0])
        if groups > 1:
            return _split_forward(layer, groups, x)
    return type(layer).forward(layer, x)


def _install(layer: nn.modules.batchnorm._BatchNorm) -> None:
    if not hasattr(layer, _GROUPS):
        # an instance attribute shadows the class's forward for this layer only
        layer.forward = partial(_grouped_forward, layer)
        setattr(layer, _GROUPS, 1)


@contextmanager
def split_batchnorm(module: nn.Module, groups: int) -> Iterator[None]:
    """Within the block, every BatchNorm layer of ``module`` computes its statistics in ``groups`` groups."""
    layers = batchnorm_layers(module)
    for layer in layers:
        _install(layer)
        setattr(layer, _GROUPS, groups)
    try:
        yield
    finally:
        for layer in layers:
            setattr(layer, _GROUPS, 1)


def set_split_batchnorm(module: nn.Module, groups: int, unit: int = 1) -> None:
    """From now on, every BatchNorm layer of ``module`` in training mode normalises each input in
    :func:`split_bn_groups_in_units` ``(rows, groups, unit)`` contiguous groups; ``groups=1`` turns
    it off. Unlike :func:`split_batchnorm` it stays in effect after the forward returns, through the
    backward pass (activation checkpointing recomputes the forward there, and must see the same
    groups). The state dict is unchanged. Setting the same values every step costs nothing.
    """
    if groups < 1 or unit < 1:
        raise ValueError(f"groups and unit must be positive, got {groups}, {unit}")
    for layer in batchnorm_layers(module):
        _install(layer)
        setattr(layer, _POLICY, (int(groups), int(unit)))


@torch.no_grad()
def split_bn_forward(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, module: nn.Module,
                     groups: int) -> torch.Tensor:
    """Run ``fn`` on a shuffled ``x`` with ``module``'s BatchNorm split into ``groups``, then unshuffle.

    The order of the output rows is that of ``x``. The shuffle draws from the global
    torch RNG (restored on resume, like every other random draw of a step).
    """
    perm = torch.randperm(x.shape[0], device=x.device)
    with split_batchnorm(module, groups):
        y = fn(x[perm])
    return y[torch.argsort(perm)]
