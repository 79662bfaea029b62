"""KeyQueue.enqueue against a reference FIFO implemented with a Python list."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from ssmtl.api.ssl.queue import KeyQueue


class ListFifo:
    """Reference FIFO: a Python list of rows, oldest first, trimmed to the newest ``size``.

    Starts full with the queue's initial (random, position -1) rows, as the queue does.
    """

    def __init__(self, initial_keys: torch.Tensor):
        self.size = initial_keys.shape[0]
        self.rows: list[tuple] = [(initial_keys[i].clone(), -1.0) for i in range(self.size)]

    def enqueue(self, rows: list[tuple]) -> None:
        self.rows = (self.rows + list(rows))[-self.size:]


def _keys(seed: int, n: int, dim: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, dim, generator=g), dim=1)


def _check_against_reference(queue: KeyQueue, ref: ListFifo) -> None:
    """The queue read from its pointer (the oldest slot, next to be overwritten) equals the list."""
    size = queue.size
    order = [(int(queue.pointer) + i) % size for i in range(size)]
    for slot, (key, position) in zip(order, ref.rows):
        torch.testing.assert_close(queue.keys[slot], key)
        assert queue.positions[slot].item() == pytest.approx(position)


def test_initial_state():
    torch.manual_seed(0)
    q = KeyQueue(10, 4)
    assert q.keys.shape == (10, 4)
    torch.testing.assert_close(q.keys.norm(dim=1), torch.ones(10))
    assert int(q.pointer) == 0
    assert (q.positions == -1).all()
    assert set(dict(q.named_buffers())) == {"keys", "positions", "pointer"}


def test_rejects_empty_queue():
    with pytest.raises(ValueError):
        KeyQueue(0, 4)


def test_pointer_advances_by_batch_size():
    q = KeyQueue(10, 3)
    q.enqueue(_keys(0, 4, 3))
    assert int(q.pointer) == 4
    q.enqueue(_keys(1, 3, 3))
    assert int(q.pointer) == 7


def test_wraps_when_batch_does_not_divide_k():
    q = KeyQueue(10, 3)
    batches = [_keys(i, 4, 3) for i in range(3)]
    for b in batches:
        q.enqueue(b)
    # slots 0..3 <- b0, 4..7 <- b1, 8,9 <- b2[0:2], then 0,1 <- b2[2:4]
    torch.testing.assert_close(q.keys[0], batches[2][2])
    torch.testing.assert_close(q.keys[1], batches[2][3])
    torch.testing.assert_close(q.keys[8], batches[2][0])
    torch.testing.assert_close(q.keys[9], batches[2][1])
    torch.testing.assert_close(q.keys[2:4], batches[0][2:4])
    torch.testing.assert_close(q.keys[4:8], batches[1])
    assert int(q.pointer) == 2


def test_batch_larger_than_k_keeps_newest():
    q = KeyQueue(5, 2)
    keys = _keys(3, 8, 2)
    positions = torch.linspace(0, 1, 8)
    q.enqueue(keys, positions)
    # only keys 3..7 survive; they are written from the pointer (0) on
    torch.testing.assert_close(q.keys, keys[3:])
    torch.testing.assert_close(q.positions, positions[3:])
    assert int(q.pointer) == 0


def test_batch_larger_than_k_from_nonzero_pointer_matches_reference():
    q = KeyQueue(5, 2)
    ref = ListFifo(q.keys)
    first = _keys(0, 2, 2)
    q.enqueue(first, torch.tensor([0.1, 0.2]))
    ref.enqueue([(first[i], p) for i, p in enumerate([0.1, 0.2])])
    big = _keys(1, 7, 2)
    pos = torch.linspace(0.3, 0.9, 7)
    q.enqueue(big, pos)
    ref.enqueue([(big[i], pos[i].item()) for i in range(7)])
    _check_against_reference(q, ref)


def test_positions_recorded_and_default_to_minus_one():
    q = KeyQueue(6, 2)
    q.enqueue(_keys(0, 3, 2), torch.tensor([0.0, 0.5, 1.0]))
    assert q.positions[:3].tolist() == [0.0, 0.5, 1.0]
    # a later batch without positions overwrites those slots' positions with -1 after wrap
    q.enqueue(_keys(1, 5, 2))
    assert q.positions.tolist() == [-1.0, -1.0, 1.0, -1.0, -1.0, -1.0]


def test_enqueue_casts_dtypes():
    q = KeyQueue(4, 2)
    q.enqueue(_keys(0, 2, 2).double(), torch.tensor([1, 0]))
    assert q.keys.dtype == torch.float32 and q.positions.dtype == torch.float32
    assert q.positions[:2].tolist() == [1.0, 0.0]


@pytest.mark.parametrize("size,batches", [(10, [4, 4, 4, 4]), (7, [3, 1, 5, 2, 9, 7, 6]), (4, [1] * 9), (3, [3, 3])])
def test_random_sequence_matches_list_reference(size, batches):
    dim = 3
    q = KeyQueue(size, dim)
    ref = ListFifo(q.keys)
    g = torch.Generator().manual_seed(size)
    for i, n in enumerate(batches):
        keys = _keys(100 + i, n, dim)
        pos = torch.rand(n, generator=g)
        q.enqueue(keys, pos)
        ref.enqueue([(keys[j], pos[j].item()) for j in range(n)])
        _check_against_reference(q, ref)


def test_enqueue_is_not_tracked_by_autograd():
    q = KeyQueue(4, 2)
    keys = _keys(0, 2, 2).requires_grad_(True)
    q.enqueue(keys)
    assert not q.keys.requires_grad


def test_state_dict_round_trip_keeps_pointer():
    q = KeyQueue(5, 2)
    q.enqueue(_keys(0, 3, 2), torch.tensor([0.1, 0.2, 0.3]))
    r = KeyQueue(5, 2)
    r.load_state_dict(q.state_dict())
    assert int(r.pointer) == 3
    torch.testing.assert_close(r.keys, q.keys)
    assert r.positions.tolist() == q.positions.tolist()
