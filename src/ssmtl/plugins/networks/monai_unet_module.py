"""The module of the ``monai-basic-unet`` network: a ``BasicUNet`` that also keeps ssmtl's
network contract (imported only when such a network is built; it imports MONAI)."""

from __future__ import annotations

import torch
from monai.networks.nets import BasicUNet
from torch import nn

from ssmtl.api import NativeClass, NetworkInfo, NetworkOutput
from ssmtl.plugins.networks.monai_unet_config import MonaiBasicUNetConfig, native_class, native_kwargs

ENCODER_STAGES = ("conv_0", "down_1", "down_2", "down_3", "down_4")  # full resolution first
DECODER_STAGES = ("upcat_4", "upcat_3", "upcat_2", "upcat_1")  # deepest first


class BasicUNetEncoder(nn.Module):
    """BasicUNet's encoder stages (the same module objects): features at every scale."""

    def __init__(self, net: BasicUNet):
        super().__init__()
        for name in ENCODER_STAGES:
            self.add_module(name, getattr(net, name))

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        features = [self.conv_0(images)]
        for name in ENCODER_STAGES[1:]:
            features.append(getattr(self, name)(features[-1]))
        return features


class BasicUNetDecoder(nn.Module):
    """BasicUNet's up-sampling stages (the same module objects): full-resolution features."""

    def __init__(self, net: BasicUNet):
        super().__init__()
        for name in DECODER_STAGES:
            self.add_module(name, getattr(net, name))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        for name, skip in zip(DECODER_STAGES, reversed(features[:-1])):
            x = getattr(self, name)(x, skip)
        return x


class MonaiBasicUNet(BasicUNet):
    """A ``BasicUNet`` whose forward returns ssmtl's :class:`NetworkOutput`.

    ``encoder`` and ``decoder`` are views over BasicUNet's own stages, set without
    registering them as children: the module's state dict is exactly BasicUNet's (the
    same keys, each tensor once), which is what lets other code load it with
    ``strict=True``. A deep copy of ``encoder`` (MoCo's key encoder) copies those stages.
    """

    def __init__(self, config: MonaiBasicUNetConfig):
        super().__init__(**native_kwargs(config))
        self.config = config
        object.__setattr__(self, "encoder", BasicUNetEncoder(self))
        object.__setattr__(self, "decoder", BasicUNetDecoder(self))
        # no loss of ssmtl reaches it; frozen, so distributed training sees no unused parameter
        self.final_conv.requires_grad_(False)

    @property
    def info(self) -> NetworkInfo:
        features = self.config.features
        return NetworkInfo(in_channels=self.config.in_channels, encoder_channels=tuple(features[:5]),
                           decoder_channels=features[5], depth=len(ENCODER_STAGES) - 1)

    def native_class(self) -> NativeClass:
        return native_class(self.config)

    def forward(self, images: torch.Tensor) -> NetworkOutput:  # type: ignore[override]
        features = self.encoder(images)
        return NetworkOutput(encoder=features, decoder=self.decoder(features))
