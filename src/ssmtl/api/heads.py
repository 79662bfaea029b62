"""The downstream-head contract for ``ssmtl finetune``.

A head plugin registers a :class:`~ssmtl.api.specs.HeadSpec` through the
``ssmtl_register_heads`` hook. The spec names the head, gives its pydantic config
model (a :class:`HeadConfig` subclass whose ``name`` field is ``Literal[NAME]``
with that default) and a factory::

    factory(config: HeadConfig, network_info: NetworkInfo, num_classes: int) -> DownstreamHead

Fine-tuning then runs, per batch of 2D slices::

    features = network(images).decoder            # (N, network_info.decoder_channels, H, W)
    logits = head(features)                       # anything the head's loss/predict accept
    loss = head.loss(logits, labels)              # labels: (N, H, W) int64 class ids
    ...
    prediction = head.predict(logits)             # (N, H, W) int64 class ids, for evaluation
    probabilities = head.probabilities(logits)    # (N, num_classes, H, W), for `ssmtl predict`

The head owns its parameters (they are trained with the network and saved as
``head.*`` in the fine-tuned ``model.safetensors``), its loss and its prediction
rule. Evaluation rebuilds the head from the saved config with the same factory,
so a factory must be deterministic given ``(config, network_info, num_classes)``
apart from the random parameter initialisation.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import torch
from torch import nn

from ssmtl.api.configs import HeadConfig

if TYPE_CHECKING:
    from ssmtl.api.network import NetworkInfo


class DownstreamHead(nn.Module, ABC):
    """Base class of every downstream head.

    Subclasses implement :meth:`forward` and :meth:`loss`; :meth:`predict` defaults to
    the arg-max over the class dimension, which suits any head that returns
    per-pixel class scores of shape (N, num_classes, H, W).
    """

    def __init__(self, config: HeadConfig, network_info: "NetworkInfo", num_classes: int):
        super().__init__()
        self.config = config
        self.network_info = network_info
        self.num_classes = num_classes

    @property
    def name(self) -> str:
        return self.config.name

    @abstractmethod
    def forward(self, decoder_features: torch.Tensor) -> torch.Tensor:
        """Map the shared decoder output (N, C, H, W) to logits, e.g. (N, num_classes, H, W)."""

    @abstractmethod
    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """A scalar training loss from this head's logits and (N, H, W) int64 labels.

        Compute it in float32 (cast the logits) so mixed-precision training stays stable.
        """

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        """(N, H, W) int64 class ids from logits; the arg-max over dimension 1 by default."""
        return logits.argmax(dim=1)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """(N, num_classes, H, W) float32 class probabilities; the softmax over dimension 1 by default.

        ``ssmtl predict`` interpolates them onto the scan's own grid (and writes them with
        ``--probabilities``); a head whose :meth:`predict` is not the arg-max of per-pixel
        scores overrides both consistently.
        """
        return torch.softmax(logits.float(), dim=1)
