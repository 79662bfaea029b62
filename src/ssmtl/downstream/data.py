"""Fine-tuning data: every slice of the labeled training volumes, sampled with replacement.

The batch of step ``s`` is a function of the seed and ``s`` only: the sampler draws
``steps x batch`` slice indices from its own seeded generator
(:class:`~ssmtl.data.sampling.ReplacementStepBatchSampler`), and a resumed run opens the
stream at the step it resumes from, as pre-training does, so ``--resume`` continues with
exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ssmtl.training.augment import AugmentConfig, apply_affine, random_affine, random_intensity
from ssmtl.data.cache import SliceCache
from ssmtl.data.sampling import ReplacementStepBatchSampler


class LabeledSliceDataset(torch.utils.data.Dataset):
    """(image (1, H, W) float32, label (H, W) int64) pairs: every slice of the given volumes."""

    def __init__(self, cache: SliceCache, volumes: list[int]):
        self.cache = cache
        self.items = np.array(
            [(v, s) for v in volumes for s in range(cache.volumes[v].num_slices)], dtype=np.int64
        ).reshape(-1, 2)
        self._presence: np.ndarray | None = None

    def class_presence(self) -> np.ndarray:
        """(slices, classes) bool: which classes each slice shows (read once; few labeled volumes)."""
        if self._presence is None:
            num_classes = self.cache.num_classes
            rows = []
            for v in dict.fromkeys(int(v) for v in self.items[:, 0]):
                label = self.cache.read_label(v)  # the labels only: the images are not needed here
                flat = label.reshape(label.shape[0], -1).astype(np.int64)
                present = np.zeros((label.shape[0], num_classes), dtype=bool)
                for c in range(num_classes):
                    present[:, c] = (flat == c).any(axis=1)
                rows.append(present)
            self._presence = np.concatenate(rows) if rows else np.zeros((0, num_classes), dtype=bool)
        return self._presence

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        v, s = (int(x) for x in self.items[i])
        image = self.cache.read_slices(v, np.array([s]))
        label = self.cache.read_label_slice(v, s)
        return torch.from_numpy(np.ascontiguousarray(image)), torch.from_numpy(label.astype(np.int64))


def augment_pair(
    images: torch.Tensor, labels: torch.Tensor, config: AugmentConfig, flip_axes: Sequence[int] = ()
) -> tuple[torch.Tensor, torch.Tensor]:
    """One random affine per sample, applied identically to the images and their labels.

    Images are resampled bilinearly; labels with nearest-neighbour on their float
    values (interpolating class ids would invent classes between neighbours). The
    intensity transforms touch the images only. Mirror flips only along ``flip_axes``
    (the cache's declaration; none by default).
    """
    theta = random_affine(images.shape[0], config, images.device, flip_axes)
    images = apply_affine(images, theta)
    warped = apply_affine(labels[:, None].float(), theta, mode="nearest")
    return random_intensity(images, config), warped[:, 0].round().long()


def slice_weights(presence: np.ndarray, class_balance: float) -> np.ndarray:
    """Sampling probability of every slice: the mixture ``(1 - b) * uniform + b * class-first``.

    Class-first draws a foreground class (column 1 onwards) uniformly among those some
    slice shows, then one of the slices that show it uniformly. ``presence`` is
    (slices, classes) bool. Without any foreground the weights are uniform.
    """
    n = presence.shape[0]
    uniform = np.full(n, 1.0 / n)
    foreground = presence[:, 1:]
    shown = foreground.any(axis=0)
    if class_balance == 0 or not shown.any():
        return uniform
    per_class = foreground[:, shown] / foreground[:, shown].sum(axis=0)  # each column sums to 1
    class_first = per_class.sum(axis=1) / shown.sum()
    return (1 - class_balance) * uniform + class_balance * class_first


def make_loader(dataset: LabeledSliceDataset, *, batches: int, batch_size: int, seed: int, rank: int = 0,
                world: int = 1, start: int = 0, class_balance: float = 0.0,
                num_workers: int = 0) -> torch.utils.data.DataLoader:
    """Micro-batches ``start`` .. ``batches - 1`` of this rank, sampled with replacement from all
    training slices (weighted by :func:`slice_weights`) with a generator of their own, seeded by ``seed``.

    Sampling with replacement makes the step count independent of how many slices
    the few labeled volumes have. The loader has no generator of its own: opening it draws
    its workers' base seed from the global RNG, which the run restores right after opening
    (:meth:`~ssmtl.training.lifecycle.TrainingRun.resume`), as in an uninterrupted run.
    """
    weights = slice_weights(dataset.class_presence(), class_balance) if class_balance > 0 else None
    sampler = ReplacementStepBatchSampler(len(dataset), batch_size, seed=seed, total_batches=batches, weights=weights,
                                          rank=rank, world=world, start=start, stop=batches)
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, persistent_workers=False)
