"""Small collective helpers that degrade to no-ops in a single process."""

from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


@torch.no_grad()
def concat_all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from every rank along dim 0 (no gradient). Equal shapes required."""
    if not is_distributed():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


@torch.no_grad()
def shuffle_bn_forward(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Run ``fn`` on a batch shuffled across ranks, then undo the shuffle (MoCo's shuffle-BN).

    Each rank's BatchNorm then normalises keys computed from other ranks' samples,
    so the statistics of a query's own batch cannot leak into its positive key.
    """
    if not is_distributed():
        return fn(x)
    n = x.shape[0]
    x_all = concat_all_gather(x)
    perm = torch.randperm(x_all.shape[0], device=x.device)
    dist.broadcast(perm, src=0)
    inverse = torch.argsort(perm)
    r = rank()
    y = fn(x_all[perm[r * n:(r + 1) * n]])
    y_all = concat_all_gather(y)
    return y_all[inverse[r * n:(r + 1) * n]]
