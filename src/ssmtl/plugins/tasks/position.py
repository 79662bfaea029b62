"""``position``: predict where in the volume a slice lies.

Every sampled slice has a normalised position in [0, 1] along the slice axis
(``ctx.batch.positions``: 0 for the first slice of its volume, 1 for the last).
An MLP on the pooled bottleneck features of the ``sequence`` view either regresses
it (``mode="regress"``: sigmoid output, smooth-L1 or MSE loss) or classifies it
into ``bins`` equal-width bins (``mode="classify"``: cross-entropy). Anatomy
changes predictably along the body axis, so the task teaches the encoder coarse
anatomical context. The anatomical position as a free self-supervision signal
follows Bai et al., "Self-Supervised Learning for Cardiac MR Image Segmentation
by Anatomical Position Prediction", MICCAI 2019, and Zeng et al., "Positional
Contrastive Learning for Volumetric Medical Image Segmentation", MICCAI 2021.

What it trains: the encoder (plus its MLP). Cheap: it reuses the pooled features
every encoder task shares. Most useful when volumes cover comparable fields of
view (positions of different subjects then mean the same anatomy).
"""

from __future__ import annotations

from typing import Literal

import torch
from einops import rearrange
from pydantic import Field
from torch import nn
from torch.nn import functional as F

from ssmtl.api import hookimpl, NetworkInfo, PretextTask, StepContext, TaskConfig, TaskOutput, TaskSpec


class PositionConfig(TaskConfig):
    name: Literal["position"] = "position"
    mode: Literal["regress", "classify"] = Field("regress", description="Regress the position in [0, 1] (sigmoid output), or classify it into `bins` equal bins.")
    loss: Literal["smooth_l1", "mse"] = Field("smooth_l1", description="Regression loss ('regress' mode).")
    beta: float = Field(0.1, gt=0, description="Transition point of the smooth-L1 loss (positions lie in [0, 1], so keep it well below 1).")
    bins: int = Field(10, ge=2, le=1000, description="Number of position bins ('classify' mode).")
    hidden_dim: int = Field(256, ge=1, description="Hidden size of the 2-layer MLP head.")


def position_bins(positions: torch.Tensor, bins: int) -> torch.Tensor:
    """Bin index of positions in [0, 1]: floor(p * bins), with p = 1 in the last bin."""
    return (positions.float() * bins).floor().long().clamp(0, bins - 1)


def position_loss(
    output: torch.Tensor,
    positions: torch.Tensor,
    mode: str = "regress",
    loss: str = "smooth_l1",
    beta: float = 0.1,
    bins: int = 10,
) -> torch.Tensor:
    """Loss of head outputs against positions (N,).

    ``regress``: ``output`` is (N, 1) logits; the prediction is their sigmoid and the
    loss the mean smooth-L1 (with ``beta``) or squared error. ``classify``: ``output``
    is (N, bins) logits and the loss the cross-entropy with :func:`position_bins`.
    """
    output = output.float()
    if mode == "classify":
        return F.cross_entropy(output, position_bins(positions, bins))
    pred = torch.sigmoid(rearrange(output, "n 1 -> n"))
    target = positions.float().reshape(-1)
    if loss == "mse":
        return F.mse_loss(pred, target)
    return F.smooth_l1_loss(pred, target, beta=beta)


class PositionTask(PretextTask):
    trains = frozenset({"encoder"})

    def __init__(self, config: PositionConfig, network: NetworkInfo):
        super().__init__(config, network)
        out = 1 if config.mode == "regress" else config.bins
        self.head = nn.Sequential(
            nn.Linear(network.bottleneck_channels, config.hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(config.hidden_dim, out),
        )

    def forward(self, ctx: StepContext) -> TaskOutput:
        c = self.config
        positions = ctx.batch.flat_positions()
        output = self.head(ctx.pooled("sequence"))
        loss = position_loss(output, positions, c.mode, c.loss, c.beta, c.bins)
        with torch.no_grad():
            if c.mode == "regress":
                metrics = {"mae": (torch.sigmoid(rearrange(output.float(), "n 1 -> n")) - positions.float()).abs().mean()}
            else:
                metrics = {"acc": (output.argmax(dim=1) == position_bins(positions, c.bins)).float().mean()}
        return TaskOutput(loss=loss, metrics=metrics)


@hookimpl
def ssmtl_register_tasks():
    return [TaskSpec.of(PositionConfig, PositionTask, "Regress or classify the normalised slice position in the volume (encoder).")]
