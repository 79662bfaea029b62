"""Sequence windows and the deterministic, resumable, rank-aware step sampler."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from ssmtl.data.cache import SliceCache
from ssmtl.api.errors import SsmtlError
from ssmtl.data.sampling import SequenceDataset, StepBatchSampler, collate_sequences

# cache_factory (conftest) fills slice d of volume v with the value 100 * v + d


def expected_windows(depths, length, stride):
    span = (length - 1) * stride + 1
    return [(v, s) for v, depth in enumerate(depths) for s in range(depth - span + 1)]


# -- SequenceDataset ---------------------------------------------------------------------


@pytest.mark.parametrize("length,stride", [(1, 1), (3, 1), (3, 2), (2, 4)])
def test_windows(cache_factory, length, stride):
    depths = [5, 3, 9]
    ds = SequenceDataset(cache_factory(depths), length=length, stride=stride)
    assert [tuple(w) for w in ds.windows.tolist()] == expected_windows(depths, length, stride)
    assert len(ds) == len(expected_windows(depths, length, stride))


def test_items_read_the_right_slices_with_positions(cache_factory):
    depths = [5, 3, 9]
    ds = SequenceDataset(cache_factory(depths), length=3, stride=2)
    # windows: vol 0 start 0; vol 1 none (3 < 5); vol 2 starts 0..4
    assert ds.windows.tolist() == [[0, 0], [2, 0], [2, 1], [2, 2], [2, 3], [2, 4]]
    item = ds[3]  # volume 2, start 2 -> slices 2, 4, 6
    assert item["slices"].shape == (3, 8, 8) and item["slices"].dtype == torch.float32
    assert item["slice_index"].tolist() == [2, 4, 6]
    assert item["volume"].item() == 2
    for i, d in enumerate([2, 4, 6]):
        assert torch.all(item["slices"][i] == 100 * 2 + d)
    torch.testing.assert_close(item["positions"], torch.tensor([2 / 8, 4 / 8, 6 / 8]))
    first = ds[0]  # volume 0 (5 slices): 0, 2, 4 -> positions 0, 0.5, 1
    torch.testing.assert_close(first["positions"], torch.tensor([0.0, 0.5, 1.0]))
    assert first["positions"].dtype == torch.float32


def test_single_slice_volume_position_is_zero(cache_factory):
    ds = SequenceDataset(cache_factory([1, 4]), length=1)
    assert ds[0]["positions"].tolist() == [0.0]
    assert ds[4]["positions"].tolist() == [1.0]  # volume 1, last slice


def test_volume_subset(cache_factory):
    ds = SequenceDataset(cache_factory([4, 4, 4]), length=2, volumes=[2, 0])
    assert sorted({int(v) for v, _ in ds.windows}) == [0, 2]
    assert len(ds) == 6


def test_no_window_long_enough(cache_factory):
    with pytest.raises(SsmtlError, match="stride 3"):
        SequenceDataset(cache_factory([4, 5]), length=3, stride=3)


def test_dataset_accepts_a_path_and_pickles(cache_factory):
    path = cache_factory([4, 6])
    ds = SequenceDataset(path, length=2)
    before = ds[5]["slices"]  # opens the HDF5 handle
    clone = pickle.loads(pickle.dumps(ds))
    torch.testing.assert_close(clone[5]["slices"], before)


def test_collate(cache_factory):
    ds = SequenceDataset(cache_factory([6, 6]), length=3)
    batch = collate_sequences([ds[0], ds[5]])
    assert batch.slices.shape == (2, 3, 8, 8)
    assert batch.positions.shape == (2, 3)
    assert batch.volume.tolist() == [0, 1]
    assert batch.slice_index.tolist() == [[0, 1, 2], [1, 2, 3]]
    assert batch.batch_size == 2 and batch.sequence_length == 3


# -- StepBatchSampler ----------------------------------------------------------------------


def take(sampler, count):
    it = iter(sampler)
    return [next(it) for _ in range(count)]


def test_sampler_is_deterministic_given_seed():
    a = take(StepBatchSampler(10, 3, seed=5), 12)
    b = take(StepBatchSampler(10, 3, seed=5), 12)
    c = take(StepBatchSampler(10, 3, seed=6), 12)
    assert a == b
    assert a != c
    assert all(len(batch) == 3 for batch in a)
    assert all(0 <= i < 10 for batch in a for i in batch)


def test_batch_m_equals_mth_iteration_element():
    reference = take(StepBatchSampler(11, 4, seed=1, rank=1, world=2), 15)
    fresh = StepBatchSampler(11, 4, seed=1, rank=1, world=2)
    for m in [14, 0, 7, 3, 9]:  # out of order: no replay needed
        assert fresh.batch(m) == reference[m]
    resumed = take(StepBatchSampler(11, 4, seed=1, rank=1, world=2, start=6), 9)
    assert resumed == reference[6:]


def test_start_stop_and_len():
    sampler = StepBatchSampler(10, 2, seed=0, start=3, stop=7)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 4
    assert batches == [StepBatchSampler(10, 2, seed=0).batch(m) for m in range(3, 7)]
    with pytest.raises(TypeError):
        len(StepBatchSampler(10, 2, seed=0))


def test_ranks_cover_disjoint_items_in_a_global_step():
    n, batch, world = 12, 3, 2  # a global step (6 items) never straddles an epoch
    ranks = [StepBatchSampler(n, batch, seed=3, rank=r, world=world) for r in range(world)]
    for m in range(10):
        first, second = ranks[0].batch(m), ranks[1].batch(m)
        assert len(set(first)) == batch and len(set(second)) == batch
        assert set(first).isdisjoint(second)


def stream(n, batch, world, seed, steps):
    """Reassemble the global item stream from every rank's micro-batches."""
    out = np.full(steps * world * batch, -1)
    for r in range(world):
        sampler = StepBatchSampler(n, batch, seed=seed, rank=r, world=world)
        for m in range(steps):
            first = (m * world + r) * batch
            out[first:first + batch] = sampler.batch(m)
    return out


@pytest.mark.parametrize("n,batch,world", [(10, 3, 1), (10, 3, 2), (7, 2, 3), (12, 4, 3)])
def test_each_epoch_covers_every_item_once(n, batch, world):
    steps = 4 * n // (batch * world) + 1
    items = stream(n, batch, world, seed=11, steps=steps)
    assert (items >= 0).all()
    epochs = len(items) // n
    assert epochs >= 3
    perms = []
    for e in range(epochs):
        chunk = items[e * n:(e + 1) * n]
        assert sorted(chunk.tolist()) == list(range(n)), f"epoch {e}"
        perms.append(tuple(chunk))
    assert len(set(perms)) > 1  # reshuffled between epochs


def test_sampler_drives_a_dataloader(cache_factory):
    ds = SequenceDataset(cache_factory([5, 6]), length=2)
    sampler = StepBatchSampler(len(ds), 3, seed=0, stop=4)
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=collate_sequences, num_workers=0)
    batches = list(loader)
    assert len(batches) == 4
    for m, b in enumerate(batches):
        expected = [tuple(ds.windows[i]) for i in sampler.batch(m)]
        got = list(zip(b.volume.tolist(), b.slice_index[:, 0].tolist()))
        assert got == [(int(v), int(s)) for v, s in expected]
        # the slice contents follow the (volume, index) bookkeeping
        want = 100 * b.volume[:, None] + b.slice_index
        assert torch.equal(b.slices[:, :, 0, 0], want.float())


def test_dataset_on_phantom_cache(tiny_cache):
    cache = SliceCache(tiny_cache)
    ds = SequenceDataset(cache, length=3, stride=2)
    assert len(ds) == 4 * (8 - 4)
    item = ds[len(ds) - 1]
    image, _ = cache.read_volume(3)
    np.testing.assert_array_equal(item["slices"].numpy(), image[[3, 5, 7]])
    torch.testing.assert_close(item["positions"], torch.tensor([3 / 7, 5 / 7, 1.0]))
