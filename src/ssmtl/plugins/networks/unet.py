"""``unet``: ssmtl's own 2D U-Net, the default shared encoder-decoder (a network plugin).

Every pretext task and the downstream head share one network. Its forward pass
returns the multi-scale encoder features *and* the decoder features, so encoder
tasks (contrastive, order, position) and decoder tasks (reconstruct, neighbor,
local-contrastive) train the same weights, and the export carries a pre-trained
decoder, not only an encoder. Its state dict holds ``encoder.*`` and ``decoder.*``;
outside ssmtl it loads through ``ssmtl.load_network`` or as TorchScript/ONNX
(``ssmtl export``).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from ssmtl.api import hookimpl, NetworkConfig, NetworkInfo, NetworkOutput, NetworkSpec


class UNetConfig(NetworkConfig):
    """Width and depth of the shared U-Net."""

    name: Literal["unet"] = "unet"
    in_channels: int = Field(1, ge=1, description="Input channels (1 for CT/MR intensity slices).")
    base_channels: int = Field(16, ge=2, le=512, description="Channels of the first stage; doubled at every down-sampling.")
    depth: int = Field(4, ge=1, le=7, description="Number of down-sampling stages (input size must be divisible by 2**depth).")
    max_channels: int = Field(512, ge=2, description="Cap on the channel count of the deepest stages.")
    norm: Literal["batch", "instance", "group"] = Field("batch", description="Normalisation layer. MoCo's shuffle-BN expects 'batch'.")
    decoder_convs: int = Field(2, ge=1, le=3, description="3x3 convolutions per decoder stage (1 gives a lighter decoder).")
    checkpointing: bool = Field(False, description="Activation checkpointing in every stage: less memory for large inputs, ~30% more compute.")


def make_norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    return nn.GroupNorm(min(8, channels), channels)


class ConvBlock(nn.Sequential):
    """``convs`` x (3x3 conv, norm, ReLU)."""

    def __init__(self, in_ch: int, out_ch: int, norm: str, convs: int = 2):
        layers: list[nn.Module] = []
        for i in range(convs):
            layers += [
                nn.Conv2d(in_ch if i == 0 else out_ch, out_ch, 3, padding=1, bias=False),
                make_norm(norm, out_ch),
                nn.ReLU(inplace=True),
            ]
        super().__init__(*layers)


def _run(block: nn.Module, x: torch.Tensor, use_checkpoint: bool) -> torch.Tensor:
    if use_checkpoint and torch.is_grad_enabled() and x.requires_grad:
        return checkpoint(block, x, use_reentrant=False)
    return block(x)


class Encoder(nn.Module):
    """Returns features at every scale, full resolution first."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.channels = tuple(
            min(config.base_channels * 2**i, config.max_channels) for i in range(config.depth + 1)
        )
        self.checkpointing = config.checkpointing
        self.stem = ConvBlock(config.in_channels, self.channels[0], config.norm)
        self.stages = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(2), ConvBlock(self.channels[i], self.channels[i + 1], config.norm))
            for i in range(config.depth)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = [_run(self.stem, x, self.checkpointing)]
        for stage in self.stages:
            feats.append(_run(stage, feats[-1], self.checkpointing))
        return feats


class UpStage(nn.Module):
    def __init__(self, in_ch: int, skip_ch: int, out_ch: int, norm: str, convs: int):
        super().__init__()
        self.reduce = nn.Conv2d(in_ch, out_ch, 1, bias=False)
        self.block = ConvBlock(out_ch + skip_ch, out_ch, norm, convs)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(self.reduce(x), size=skip.shape[-2:], mode="nearest")
        return self.block(torch.cat([x, skip], dim=1))


class Decoder(nn.Module):
    """Up-samples the deepest features back to full resolution with skip connections."""

    def __init__(self, encoder_channels: tuple[int, ...], config: UNetConfig):
        super().__init__()
        self.checkpointing = config.checkpointing
        ups = []
        for i in range(len(encoder_channels) - 1, 0, -1):
            ups.append(UpStage(encoder_channels[i], encoder_channels[i - 1], encoder_channels[i - 1], config.norm, config.decoder_convs))
        self.ups = nn.ModuleList(ups)
        self.out_channels = encoder_channels[0]

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = feats[-1]
        for up, skip in zip(self.ups, reversed(feats[:-1])):
            if self.checkpointing and torch.is_grad_enabled() and x.requires_grad:
                x = checkpoint(up, x, skip, use_reentrant=False)
            else:
                x = up(x, skip)
        return x


class UNet(nn.Module):
    """The shared encoder-decoder. ``forward`` returns :class:`NetworkOutput`."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(self.encoder.channels, config)

    @property
    def info(self) -> NetworkInfo:
        return NetworkInfo(
            in_channels=self.config.in_channels,
            encoder_channels=self.encoder.channels,
            decoder_channels=self.decoder.out_channels,
            depth=self.config.depth,
        )

    def forward(self, x: torch.Tensor) -> NetworkOutput:
        feats = self.encoder(x)
        return NetworkOutput(encoder=feats, decoder=self.decoder(feats))



@hookimpl
def ssmtl_register_networks():
    return [NetworkSpec.of(UNetConfig, UNet, "ssmtl's 2D U-Net: conv blocks with batch/instance/group norm, max-pool down, nearest-neighbour up.")]
