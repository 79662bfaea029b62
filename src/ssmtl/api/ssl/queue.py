"""A fixed-size FIFO memory of keys (MoCo's dictionary queue)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class KeyQueue(nn.Module):
    """K keys of dimension D, with the slice position of each (-1: unknown or unfilled).

    Unlike the reference implementation, the batch size need not divide K: writes
    wrap around, so a short last batch cannot break the queue. Starts with random
    unit vectors, as the reference does.
    """

    def __init__(self, size: int, dim: int):
        super().__init__()
        if size < 1:
            raise ValueError(f"queue size must be >= 1, got {size}")
        self.size = size
        self.register_buffer("keys", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("positions", torch.full((size,), -1.0))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor, positions: torch.Tensor | None = None) -> None:
        n = keys.shape[0]
        if n > self.size:  # only the newest K survive
            keys = keys[-self.size:]
            positions = positions[-self.size:] if positions is not None else None
            n = self.size
        index = (self.pointer + torch.arange(n, device=keys.device)) % self.size
        self.keys[index] = keys.to(self.keys.dtype)
        self.positions[index] = positions.to(self.positions.dtype) if positions is not None else -1.0
        self.pointer.copy_((self.pointer + n) % self.size)
