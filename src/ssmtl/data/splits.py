"""Subject-level train/val/test splits for fine-tuning and evaluation.

Splits are made over *subjects*, never over volumes: several volumes can share a
subject (e.g. the ED and ES frames of one cardiac scan), and putting one frame in
training and the other in the test set would leak the test anatomy.

Only labeled subjects can be evaluated, so val and test are drawn from them;
unlabeled subjects are listed apart (``unlabeled``) and never tested. The four
lists ``train`` (labeled training subjects), ``val``, ``test`` and ``unlabeled``
partition the subjects.

Draws use ``numpy.random.default_rng(seed)`` over the *sorted* subject names, so a
split depends only on the set of subjects, the labels and the seed, not on the
order volumes were written to the cache.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping

import numpy as np

from ssmtl.api.errors import SsmtlError
from ssmtl.api.volumes import SPLITS



def _round_half_up(x: float) -> int:
    # Python's round() rounds halves to even (round(2.5) == 2); a split size should not
    return int(math.floor(x + 0.5))


def make_split(
    subjects: Iterable[str],
    labeled: set[str],
    *,
    seed: int,
    test_fraction: float = 0.3,
    val_fraction: float = 0.0,
    min_test: int = 1,
    preset: Mapping[str, str] | None = None,
) -> dict[str, list[str]]:
    """Split subjects into ``train`` / ``val`` / ``test`` / ``unlabeled`` (sorted lists).

    Args:
        subjects: subject ids; repeats (several volumes of one subject) are fine.
        labeled: the subjects that have labels (a subset of ``subjects``).
        seed: the only source of randomness; the same inputs and seed give the same split.
        test_fraction: the test set has ``max(min_test, round(test_fraction * L))``
            subjects, L being the number of labeled subjects.
        val_fraction: the validation set has *at most* this fraction of L
            (``floor(val_fraction * L)``); 0 disables it.
        min_test: the smallest test set.
        preset: subject -> ``"train"``/``"val"``/``"test"``, e.g. a split stored in the
            cache. When given and non-empty it is used as-is (the fractions are
            ignored) and subjects it does not mention go to train.

    Raises:
        SsmtlError: when too few labeled subjects are left for training, or a preset
            puts an unlabeled subject in val/test.
    """
    all_subjects = sorted(set(subjects))
    unknown = set(labeled) - set(all_subjects)
    if unknown:
        raise ValueError(f"labeled subjects not among the subjects: {sorted(unknown)}")
    if not 0 <= test_fraction < 1 or not 0 <= val_fraction < 1:
        raise SsmtlError(f"test_fraction ({test_fraction}) and val_fraction ({val_fraction}) must be in [0, 1)")
    unlabeled = [s for s in all_subjects if s not in labeled]
    candidates = [s for s in all_subjects if s in labeled]
    if preset:
        split = _preset_split(candidates, unlabeled, preset)
    else:
        split = _random_split(candidates, seed, test_fraction, val_fraction, min_test)
    split["unlabeled"] = unlabeled
    return split


def _preset_split(labeled: list[str], unlabeled: list[str], preset: Mapping[str, str]) -> dict[str, list[str]]:
    bad = sorted(s for s in unlabeled if preset.get(s) in ("val", "test"))
    if bad:
        raise SsmtlError(f"the stored split puts unlabeled subject(s) {', '.join(bad)} in val/test; they cannot be evaluated")
    split = {name: [s for s in labeled if preset.get(s, "train") == name] for name in SPLITS}
    if not split["train"]:
        raise SsmtlError("the stored split leaves no labeled subject for training")
    return split


def _random_split(
    labeled: list[str], seed: int, test_fraction: float, val_fraction: float, min_test: int
) -> dict[str, list[str]]:
    n = len(labeled)
    n_test = max(min_test, _round_half_up(test_fraction * n))
    n_val = int(math.floor(val_fraction * n))
    if n - n_test - n_val < 1:
        raise SsmtlError(
            f"{n} labeled subject(s) cannot be split into {n_test} test + {n_val} val and at least 1 for training; "
            "add labeled subjects or lower test_fraction/val_fraction"
        )
    order = [labeled[i] for i in np.random.default_rng(seed).permutation(n)]
    return {
        "test": sorted(order[:n_test]),
        "val": sorted(order[n_test:n_test + n_val]),
        "train": sorted(order[n_test + n_val:]),
    }


def cache_preset(cache) -> dict[str, str]:
    """Subject -> split stored in a :class:`~ssmtl.data.cache.SliceCache` (volumes' ``split`` attribute).

    Raises SsmtlError on an unknown split name, or when volumes of one subject disagree.
    """
    preset: dict[str, str] = {}
    for v in cache.volumes:
        if not v.split:
            continue
        if v.split not in SPLITS:
            raise SsmtlError(f"{cache.path}: volume {v.name} has split {v.split!r}; expected one of {', '.join(SPLITS)}")
        if preset.setdefault(v.subject, v.split) != v.split:
            raise SsmtlError(f"{cache.path}: the volumes of subject {v.subject!r} are in different splits ({preset[v.subject]}, {v.split})")
    return preset


def split_cache(
    cache, *, seed: int, test_fraction: float = 0.3, val_fraction: float = 0.0, min_test: int = 1
) -> dict[str, object]:
    """:func:`make_split` over a cache's subjects; a split stored in the cache takes precedence.

    Returns the four subject lists plus ``source``: ``"cache"`` or ``"random"``.
    """
    preset = cache_preset(cache)
    split: dict[str, object] = dict(
        make_split(
            [v.subject for v in cache.volumes],
            {v.subject for v in cache.volumes if v.has_label},
            seed=seed,
            test_fraction=test_fraction,
            val_fraction=val_fraction,
            min_test=min_test,
            preset=preset,
        )
    )
    split["source"] = "cache" if preset else "random"
    return split


def volumes_of(cache, subjects: Iterable[str], *, labeled_only: bool = True) -> list[int]:
    """Indices of the cache volumes of ``subjects`` (only labeled ones by default), in cache order."""
    wanted = set(subjects)
    return [v.index for v in cache.volumes if v.subject in wanted and (v.has_label or not labeled_only)]


def choose_labeled(train_labeled: list[str], n: int, seed: int) -> list[str]:
    """``n`` of the labeled training subjects, deterministically (sorted list).

    The choice is the first ``n`` of one seeded permutation, so for a fixed seed the
    sets are nested: the subjects chosen for n=2 are among those chosen for n=4,
    which keeps "more labels" comparisons free of subject-choice noise.
    """
    pool = sorted(set(train_labeled))
    if n < 1:
        raise SsmtlError(f"the number of labeled subjects must be at least 1 (got {n})")
    if n > len(pool):
        raise SsmtlError(
            f"asked for {n} labeled subject(s) for fine-tuning but only {len(pool)} labeled training "
            "subject(s) are available after holding out the test/val subjects"
        )
    order = np.random.default_rng(seed).permutation(len(pool))
    return sorted(pool[i] for i in order[:n])
