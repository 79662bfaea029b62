"""The built-in ``segmentation`` head: 3x3 conv + BatchNorm + ReLU, then a 1x1 classifier,
trained with cross-entropy + soft Dice.

The decoder of the pre-trained U-Net already produces full-resolution features, so
the head is small: one hidden layer of ``hidden_channels`` (default 32) and a linear
per-pixel classifier. The hidden layer decouples the number of classes from the
decoder's width: a 1x1 classifier alone (``hidden_channels=0``) on the 8 ReLU
features of a base-8 U-Net could not separate 7 classes: fine-tuning learned 2 to 4
of the 6 heart structures and never predicted the others, even on its own training
volumes (with base 16 it learned all of them).
"""

from __future__ import annotations

from typing import Literal

import torch
from einops import rearrange, reduce
from pydantic import Field, model_validator
from torch import nn
from torch.nn import functional as F

from ssmtl.api import DownstreamHead, HeadConfig, HeadSpec, hookimpl, NetworkInfo


class SegmentationConfig(HeadConfig):
    """Options of the ``segmentation`` head."""

    name: Literal["segmentation"] = "segmentation"
    dice_weight: float = Field(1.0, ge=0, description="Weight of the soft Dice loss (mean over the foreground classes present in the batch).")
    ce_weight: float = Field(1.0, ge=0, description="Weight of the pixel-wise cross-entropy loss.")
    smooth: float = Field(1e-5, gt=0, description="Smoothing added to the numerator and denominator of the soft Dice.")
    hidden_channels: int = Field(32, ge=0, description="Channels of the 3x3 conv + BatchNorm + ReLU before the 1x1 classifier (0: the 1x1 classifier alone).")

    @model_validator(mode="after")
    def _some_loss(self):
        if self.dice_weight == 0 and self.ce_weight == 0:
            raise ValueError("dice_weight and ce_weight are both 0: the head would have no loss")
        return self


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float) -> torch.Tensor:
    """1 - mean soft Dice over the foreground classes present in ``target``.

    Dice is computed per class over the whole batch (sums over slices and pixels),
    so a class that appears in one slice of the batch is scored on all of them.
    Classes absent from the batch's labels are left out of the mean: with few
    labeled volumes most 2D slices miss most structures, and scoring an absent
    class only adds a term near 1 that swamps the others. False positives of such
    classes are still penalised by the cross-entropy term. When the batch has no
    foreground at all the Dice term is 0.
    """
    num_classes = logits.shape[1]
    probs = logits.float().softmax(dim=1)
    one_hot = rearrange(F.one_hot(target, num_classes), "n h w c -> n c h w").to(probs.dtype)

    def per_class(x: torch.Tensor) -> torch.Tensor:
        return reduce(x, "n c h w -> c", "sum")

    intersection = per_class(probs * one_hot)
    denominator = per_class(probs) + per_class(one_hot)
    dice = (2 * intersection + smooth) / (denominator + smooth)
    present = per_class(one_hot) > 0
    present[0] = False  # background is not scored
    if not bool(present.any()):
        return probs.sum() * 0.0  # keeps the graph (and the dtype) without contributing
    return 1.0 - dice[present].mean()


class SegmentationHead(DownstreamHead):
    """Per-pixel class logits (N, num_classes, H, W) from the decoder features."""

    def __init__(self, config: SegmentationConfig, network_info: NetworkInfo, num_classes: int):
        super().__init__(config, network_info, num_classes)
        width = network_info.decoder_channels
        hidden = config.hidden_channels
        self.hidden = nn.Sequential(
            nn.Conv2d(width, hidden, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
        ) if hidden > 0 else nn.Identity()
        self.classifier = nn.Conv2d(hidden or width, num_classes, kernel_size=1)

    def forward(self, decoder_features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.hidden(decoder_features))

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = logits.new_zeros((), dtype=torch.float32)
        if self.config.ce_weight > 0:
            total = total + self.config.ce_weight * F.cross_entropy(logits.float(), target)
        if self.config.dice_weight > 0:
            total = total + self.config.dice_weight * soft_dice_loss(logits, target, self.config.smooth)
        return total


def build_head(config: SegmentationConfig, network_info: NetworkInfo, num_classes: int) -> SegmentationHead:
    return SegmentationHead(config, network_info, num_classes)


@hookimpl
def ssmtl_register_heads():
    return [
        HeadSpec(
            name="segmentation",
            config_model=SegmentationConfig,
            factory=build_head,
            description="3x3 conv + BN + ReLU and a 1x1 classifier on the decoder features, cross-entropy + soft Dice loss",
        )
    ]
