"""The ``order`` task's permutation helpers."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from ssmtl.plugins.tasks.order import apply_permutation, inverse_permutation, permutation_set


@pytest.mark.parametrize("k", [2, 3, 4])
def test_permutation_set_is_all_permutations_when_small(k):
    perms = permutation_set(k, size=24)
    assert perms.shape == (math.factorial(k), k)
    assert perms.dtype == np.int64
    assert {tuple(p) for p in perms} == set(itertools.permutations(range(k)))
    assert perms[0].tolist() == list(range(k))  # identity first


def test_permutation_set_exact_factorial_size_is_complete():
    perms = permutation_set(3, size=6)
    assert len(perms) == 6 and len({tuple(p) for p in perms}) == 6


@pytest.mark.parametrize("k,size", [(5, 24), (4, 10), (6, 50)])
def test_permutation_set_subset_when_large(k, size):
    perms = permutation_set(k, size=size)
    assert perms.shape == (size, k)
    assert perms[0].tolist() == list(range(k))
    assert len({tuple(p) for p in perms}) == size  # unique rows
    for p in perms:  # every row is a permutation of range(k)
        assert sorted(p.tolist()) == list(range(k))


def test_permutation_set_is_deterministic_and_spread_out():
    a, b = permutation_set(5, 24, seed=0), permutation_set(5, 24, seed=0)
    np.testing.assert_array_equal(a, b)
    # greedy max-Hamming: the second row differs from the identity everywhere (a derangement
    # of 5 elements is certainly in a pool of 480 random permutations)
    assert (a[1] != np.arange(5)).all()
    # min pairwise distance of the chosen set is at least 2 (distinct permutations)
    d = (a[:, None, :] != a[None, :, :]).sum(-1)
    assert d[~np.eye(len(a), dtype=bool)].min() >= 2


def test_apply_permutation_by_hand():
    x = torch.tensor([[10, 11, 12], [20, 21, 22]])
    perms = torch.tensor([[2, 0, 1], [1, 2, 0]])
    out = apply_permutation(x, perms)
    # out[b, i] = x[b, perm[b, i]]
    assert out.tolist() == [[12, 10, 11], [21, 22, 20]]


def test_apply_permutation_moves_feature_vectors_whole():
    # (B=1, k=3, C=2): the trailing feature dims move together
    x = torch.tensor([[[0.0, 0.5], [1.0, 1.5], [2.0, 2.5]]])
    out = apply_permutation(x, torch.tensor([[1, 2, 0]]))
    assert out.tolist() == [[[1.0, 1.5], [2.0, 2.5], [0.0, 0.5]]]


def test_label_to_permutation_mapping():
    perms = torch.from_numpy(permutation_set(3, 24))
    x = torch.arange(2 * 3 * 4, dtype=torch.float32).view(2, 3, 4)
    labels = torch.tensor([3, 5])
    out = apply_permutation(x, perms[labels])
    for b, label in enumerate(labels.tolist()):
        perm = perms[label].tolist()
        for i in range(3):
            torch.testing.assert_close(out[b, i], x[b, perm[i]])
    # label 0 is the identity
    torch.testing.assert_close(apply_permutation(x, perms[torch.tensor([0, 0])]), x)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_inverse_restores_input(k):
    torch.manual_seed(k)
    x = torch.randn(6, k, 3, 2)
    perms = torch.stack([torch.randperm(k) for _ in range(6)])
    shuffled = apply_permutation(x, perms)
    restored = apply_permutation(shuffled, inverse_permutation(perms))
    torch.testing.assert_close(restored, x)
    # and the other way round
    torch.testing.assert_close(apply_permutation(apply_permutation(x, inverse_permutation(perms)), perms), x)


def test_inverse_permutation_by_hand():
    assert inverse_permutation(torch.tensor([[2, 0, 1]])).tolist() == [[1, 2, 0]]
    assert inverse_permutation(torch.tensor([[0, 1, 2, 3]])).tolist() == [[0, 1, 2, 3]]
