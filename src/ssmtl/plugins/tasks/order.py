"""``order``: predict the permutation of k shuffled slices of one sequence.

A sequence of ``num_slices`` slices, sampled ``data.stride`` apart from one volume,
is encoded slice by slice; the pooled features are shuffled by a permutation drawn
from a fixed set, and a head on the concatenated features classifies which
permutation was applied. Solving it requires knowing which anatomy comes above
which, i.e. the order of consecutive slices (Dong et al., ECML PKDD 2021; the
permutation-set idea follows Noroozi & Favaro's jigsaw puzzles, ECCV 2016, and
Misra et al.'s "Shuffle and Learn", ECCV 2016).

What it trains: the encoder. The slices are encoded independently before shuffling,
so the network cannot see the order through batch statistics.
"""

from __future__ import annotations

import itertools
import math
from typing import Literal

import numpy as np
import torch
from einops import rearrange
from pydantic import Field
from torch import nn
from torch.nn import functional as F

from ssmtl.api import hookimpl, NetworkInfo, PretextTask, StepContext, TaskConfig, TaskOutput, TaskSpec


class OrderConfig(TaskConfig):
    name: Literal["order"] = "order"
    num_slices: int = Field(3, ge=2, le=10, description="Slices per sequence to put in order (k).")
    max_permutations: int = Field(24, ge=2, le=1000, description="Size of the fixed permutation set (all k! when k! is smaller).")
    hidden_dim: int = Field(256, ge=1, description="Hidden size of the classification head.")


def permutation_set(k: int, size: int, seed: int = 0) -> np.ndarray:
    """A fixed (P, k) set of permutations of range(k).

    All k! permutations when k! <= size; otherwise the identity plus a greedy
    maximal-Hamming-distance subset (distinct permutations are easier to tell apart).
    """
    if math.factorial(k) <= size:
        return np.array(list(itertools.permutations(range(k))), dtype=np.int64)
    rng = np.random.default_rng(seed)
    pool = np.array([rng.permutation(k) for _ in range(max(size * 20, 200))], dtype=np.int64)
    pool = np.unique(pool, axis=0)
    chosen = [np.arange(k)]
    dist = (pool != chosen[0]).sum(axis=1)
    while len(chosen) < size:
        best = int(np.argmax(dist))
        chosen.append(pool[best])
        dist = np.minimum(dist, (pool != pool[best]).sum(axis=1))
    return np.stack(chosen)


def apply_permutation(x: torch.Tensor, perms: torch.Tensor) -> torch.Tensor:
    """Reorder dim 1 of (B, k, ...) by per-sample permutations (B, k): out[b, i] = x[b, perms[b, i]]."""
    index = perms.view(*perms.shape, *([1] * (x.dim() - 2))).expand_as(x)
    return torch.gather(x, 1, index)


def inverse_permutation(perms: torch.Tensor) -> torch.Tensor:
    """inv such that apply_permutation(apply_permutation(x, p), inv) == x."""
    return torch.argsort(perms, dim=-1)


class OrderTask(PretextTask):
    trains = frozenset({"encoder"})

    def __init__(self, config: OrderConfig, network: NetworkInfo):
        super().__init__(config, network)
        self.register_buffer("permutations", torch.from_numpy(permutation_set(config.num_slices, config.max_permutations)), persistent=False)
        c = network.bottleneck_channels
        self.head = nn.Sequential(
            nn.Linear(c * config.num_slices, config.hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(config.hidden_dim, len(self.permutations)),
        )

    @property
    def sequence_length(self) -> int:
        return self.config.num_slices

    def forward(self, ctx: StepContext) -> TaskOutput:
        b, k = ctx.batch.batch_size, ctx.batch.sequence_length
        n = self.config.num_slices
        start = (k - n) // 2  # the centred sub-sequence when the data has more slices
        feats = rearrange(ctx.pooled("sequence"), "(b k) c -> b k c", b=b)[:, start:start + n]
        labels = torch.randint(len(self.permutations), (b,), device=feats.device)
        shuffled = apply_permutation(feats, self.permutations[labels])
        logits = self.head(rearrange(shuffled, "b k c -> b (k c)"))  # the slices' features side by side
        loss = F.cross_entropy(logits.float(), labels)
        accuracy = (logits.argmax(dim=1) == labels).float().mean().detach()
        return TaskOutput(loss=loss, metrics={"acc": accuracy})


@hookimpl
def ssmtl_register_tasks():
    return [TaskSpec.of(OrderConfig, OrderTask, "Classify the permutation of k shuffled consecutive slices (encoder).")]
