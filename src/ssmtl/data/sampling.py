"""Sampling from a slice cache, as a pure function of the step.

:class:`SequenceDataset` yields windows of k slices from one volume with a stride,
with their normalised positions and the volume index. The batch samplers decide which
items form the micro-batch of every step *as a pure function of the step*, so a resumed
run reads exactly the batches the uninterrupted run would have read, on every rank, with
no loader state to save: every training run opens its stream at the step it resumes
from (``start``) and ends it at the last (``stop``).

* :class:`StepBatchSampler`: epochs of seeded permutations (pre-training's sequences);
* :class:`WeightedStepBatchSampler`: items drawn per cache in proportion to weights;
* :class:`ReplacementStepBatchSampler`: items drawn with replacement, uniformly or with
  per-item weights (fine-tuning's slices, weighted by class balance).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, RandomSampler, Sampler, WeightedRandomSampler

from ssmtl.data.cache import SliceCache
from ssmtl.api.errors import SsmtlError
from ssmtl.api.views import SequenceBatch


class SequenceDataset(Dataset):
    """Windows (volume, first slice) of ``length`` slices ``stride`` apart."""

    def __init__(
        self,
        cache: SliceCache | Path,  # or a CacheSet (data/cache_set.py): the same reads
        length: int,
        stride: int = 1,
        volumes: Sequence[int] | None = None,
    ):
        self.cache = SliceCache(Path(cache)) if isinstance(cache, (str, Path)) else cache
        self.length = length
        self.stride = stride
        chosen = list(range(len(self.cache.volumes))) if volumes is None else list(volumes)
        span = (length - 1) * stride + 1
        windows = []
        for v in chosen:
            d = self.cache.volumes[v].num_slices
            windows += [(v, s) for s in range(0, d - span + 1)]
        if not windows:
            raise SsmtlError(
                f"{self.cache.path}: no volume has {span} slices, needed for sequences of "
                f"{length} slices with stride {stride}; lower data.sequence_length or data.stride"
            )
        self.windows = np.asarray(windows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        volume, start = (int(x) for x in self.windows[i])
        indices = start + self.stride * np.arange(self.length)
        slices = self.cache.read_slices(volume, indices)
        depth = self.cache.volumes[volume].num_slices
        positions = indices / max(depth - 1, 1)
        return {
            "slices": torch.from_numpy(np.ascontiguousarray(slices, dtype=np.float32)),
            "positions": torch.from_numpy(positions.astype(np.float32)),
            "volume": torch.tensor(volume, dtype=torch.int64),
            "slice_index": torch.from_numpy(indices.astype(np.int64)),
        }


def collate_sequences(items: list[dict[str, torch.Tensor]]) -> SequenceBatch:
    return SequenceBatch(
        slices=torch.stack([it["slices"] for it in items]),
        positions=torch.stack([it["positions"] for it in items]),
        volume=torch.stack([it["volume"] for it in items]),
        slice_index=torch.stack([it["slice_index"] for it in items]),
    )


class StepBatchSampler(Sampler[list[int]]):
    """Deterministic, resumable, rank-aware batches.

    The items of all epochs form one stream: epoch e is the permutation
    ``rng(seed, e)`` of the dataset. Micro-batch m of rank r takes the stream
    positions ``[(m * world + r) * B, ... + B)``. Every item is seen once per epoch
    across ranks, batches never run short, and micro-batch m is computable without
    replaying the ones before it.
    """

    def __init__(self, num_items: int, batch_size: int, *, seed: int, rank: int = 0, world: int = 1,
                 start: int = 0, stop: int | None = None):
        self.n, self.batch_size, self.seed = num_items, batch_size, seed
        self.rank, self.world, self.start, self.stop = rank, world, start, stop
        self._perm_epoch = -1
        self._perm = np.arange(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            self._perm_epoch = epoch
        return self._perm

    def batch(self, micro: int) -> list[int]:
        first = (micro * self.world + self.rank) * self.batch_size
        out = []
        for p in range(first, first + self.batch_size):
            out.append(int(self._permutation(p // self.n)[p % self.n]))
        return out

    def __iter__(self) -> Iterator[list[int]]:
        m = self.start
        while self.stop is None or m < self.stop:
            yield self.batch(m)
            m += 1

    def __len__(self) -> int:
        if self.stop is None:
            raise TypeError("infinite sampler")
        return self.stop - self.start


class WeightedStepBatchSampler(StepBatchSampler):
    """Batches whose items come from groups (one per cache) in proportion to ``weights``.

    Item j of micro-batch m on rank r picks its group with probability ``weights[g] /
    sum(weights)``, then a window of that group uniformly, both drawn from
    ``rng(seed, m * world + r)``: a pure function of the step, so resuming needs no
    loader state, and ranks draw independent streams. Draws are with replacement (a
    small cache weighted up is revisited, not exhausted).
    """

    def __init__(self, groups: Sequence[np.ndarray], weights: Sequence[float], batch_size: int, *, seed: int,
                 rank: int = 0, world: int = 1, start: int = 0, stop: int | None = None):
        total = float(sum(weights))
        if len(groups) != len(weights) or total <= 0 or min(weights) < 0:
            raise SsmtlError(f"sampling weights {list(weights)}: expected one non-negative weight per cache, not all 0")
        empty = [g for g, (items, w) in enumerate(zip(groups, weights)) if w > 0 and len(items) == 0]
        if empty:
            raise SsmtlError(f"cache {empty[0] + 1} has weight {weights[empty[0]]} but no sequence to sample")
        super().__init__(sum(len(g) for g in groups), batch_size, seed=seed, rank=rank, world=world,
                         start=start, stop=stop)
        self.groups = [np.asarray(g, dtype=np.int64) for g in groups]
        self.probabilities = np.asarray(weights, dtype=np.float64) / total

    def batch(self, micro: int) -> list[int]:
        rng = np.random.default_rng([self.seed, micro * self.world + self.rank])
        chosen = rng.choice(len(self.groups), size=self.batch_size, p=self.probabilities)
        return [int(self.groups[g][rng.integers(len(self.groups[g]))]) for g in chosen]


class ReplacementStepBatchSampler(StepBatchSampler):
    """Batches drawn with replacement from one seeded stream of item indices.

    The stream holds every item the run will draw (``total_batches`` micro-batches per rank)
    and is drawn once, up front, exactly as torch's ``RandomSampler`` (or, with ``weights``,
    ``WeightedRandomSampler``) draws it from a generator seeded with ``seed``; micro-batch m of
    rank r is the stream's positions ``[(m * world + r) * B, ... + B)``, as a loader sharded
    batch by batch across the ranks would deal them. Drawing with replacement makes the step
    count independent of how many items there are (fine-tuning's few labeled volumes).
    """

    def __init__(self, num_items: int, batch_size: int, *, seed: int, total_batches: int,
                 weights: Sequence[float] | np.ndarray | None = None, rank: int = 0, world: int = 1,
                 start: int = 0, stop: int | None = None):
        super().__init__(num_items, batch_size, seed=seed, rank=rank, world=world, start=start, stop=stop)
        generator = torch.Generator().manual_seed(seed)
        count = total_batches * batch_size * world
        if weights is None:
            draws = RandomSampler(range(num_items), replacement=True, num_samples=count, generator=generator)
        else:
            draws = WeightedRandomSampler(torch.as_tensor(weights, dtype=torch.double), count, replacement=True,
                                          generator=generator)
        self.stream = np.fromiter(iter(draws), dtype=np.int64, count=count)

    def batch(self, micro: int) -> list[int]:
        first = (micro * self.world + self.rank) * self.batch_size
        return self.stream[first:first + self.batch_size].tolist()
