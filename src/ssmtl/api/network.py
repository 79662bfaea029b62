"""What a plugin knows about the shared encoder-decoder: its shapes, and its output.

Tasks and heads build their own layers from :class:`NetworkInfo` (channels per
scale, decoder width, depth); they never need the network class itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from einops import reduce
from torch import nn


@dataclass(frozen=True)
class NetworkInfo:
    """Shapes a plugin needs to build its heads on the shared network."""

    in_channels: int
    encoder_channels: tuple[int, ...]  # one per scale, full resolution first
    decoder_channels: int  # channels of the full-resolution decoder output
    depth: int

    @property
    def bottleneck_channels(self) -> int:
        return self.encoder_channels[-1]


@dataclass
class NetworkOutput:
    encoder: list[torch.Tensor]  # [full-res, 1/2, ..., 1/2**depth]
    decoder: torch.Tensor  # (N, decoder_channels, H, W)


def global_pool(features: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, C) average pooling, the input of every encoder-level head."""
    return reduce(features, "n c h w -> n c", "mean")


class SharedNetwork(Protocol):
    """The shared encoder-decoder every task and head trains (the built-in U-Net or a
    network plugin): ``encoder(x)`` returns features at every scale, full resolution
    first; ``decoder(features)`` returns full-resolution features (N, C, H, W)."""

    encoder: nn.Module
    decoder: nn.Module

    @property
    def info(self) -> NetworkInfo: ...
