"""The shared encoder-decoder: what tasks and heads see of it, and what a network plugin provides.

Tasks and heads build their own layers from :class:`NetworkInfo` (channels per
scale, decoder width, depth); they never need the network class itself.

A **network plugin** registers a :class:`~ssmtl.api.specs.NetworkSpec` through
``ssmtl_register_networks``: a :class:`NetworkConfig` subclass (``model.name`` in a
run's config selects it) and ``factory(config) -> module``. The module keeps the
:class:`SharedNetwork` contract:

* ``encoder(images (N, C, H, W)) -> [features at every scale]``, full resolution first;
* ``decoder(features) -> (N, info.decoder_channels, H, W)`` full-resolution features;
* ``forward(images) -> NetworkOutput`` (both), ``info`` and ``config``;
* optionally ``native_class() -> NativeClass``: a class outside ssmtl whose instances
  load the module's ``state_dict()`` with ``strict=True`` (the MONAI adapter names
  ``monai.networks.nets.BasicUNet``), so exported weights load in other code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

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


@dataclass(frozen=True)
class NativeClass:
    """A class outside ssmtl whose instances load a network's state dict with ``strict=True``.

    ``path`` is its import path (``"monai.networks.nets.BasicUNet"``) and ``kwargs``
    the JSON-serialisable arguments that build it with this network's shapes; the
    export writes both into ``config.json`` so other code can rebuild it::

        cls = getattr(importlib.import_module(module), name)   # path = "module.name"
        net = cls(**kwargs); net.load_state_dict(weights, strict=True)
    """

    path: str
    kwargs: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class SharedNetwork(Protocol):
    """The shared encoder-decoder every task and head trains (built by a network plugin):
    ``encoder(x)`` returns features at every scale, full resolution first;
    ``decoder(features)`` returns full-resolution features (N, C, H, W)."""

    encoder: nn.Module
    decoder: nn.Module

    @property
    def info(self) -> NetworkInfo: ...
