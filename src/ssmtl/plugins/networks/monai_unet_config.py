"""The options of the ``monai-basic-unet`` network and the ``BasicUNet`` arguments they stand for.

Kept apart from the plugin module (:mod:`~ssmtl.plugins.networks.monai_unet`) and the module
that builds the network (:mod:`~ssmtl.plugins.networks.monai_unet_module`, which imports
MONAI), so that both read the config from here and neither imports the other.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from ssmtl.api import NativeClass, NetworkConfig

NATIVE_CLASS = "monai.networks.nets.BasicUNet"
#: BasicUNet's default activation, passed explicitly so a change of MONAI's default
#: cannot make exported weights disagree with the arguments recorded beside them
ACTIVATION = ["LeakyReLU", {"negative_slope": 0.1, "inplace": True}]
NORMS = {"instance": ["instance", {"affine": True}], "batch": ["batch", {}]}


class MonaiBasicUNetConfig(NetworkConfig):
    """MONAI `BasicUNet` (2D) options."""

    name: Literal["monai-basic-unet"] = "monai-basic-unet"
    in_channels: int = Field(1, ge=1, description="Input channels (1 for CT/MR intensity slices).")
    out_channels: int = Field(2, ge=1, description="Output channels of BasicUNet's final 1x1 convolution: the number of classes your own MONAI pipeline segments. Pre-training does not train it (it is exported at its random initialisation so the weights load with strict=True).")
    features: tuple[int, int, int, int, int, int] = Field((32, 32, 64, 128, 256, 32), description="BasicUNet's features: five encoder widths (full resolution first), then the width of the decoder output.")
    norm: Literal["instance", "batch"] = Field("instance", description="Normalisation layer (MONAI's default: instance norm with affine parameters).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout ratio in every convolution block.")
    upsample: Literal["deconv", "pixelshuffle", "nontrainable"] = Field("deconv", description="Up-sampling mode of the decoder.")


def native_kwargs(config: MonaiBasicUNetConfig) -> dict[str, Any]:
    """The arguments of ``monai.networks.nets.BasicUNet`` that build this network (JSON-serialisable)."""
    return {
        "spatial_dims": 2,
        "in_channels": config.in_channels,
        "out_channels": config.out_channels,
        "features": list(config.features),
        "act": ACTIVATION,
        "norm": NORMS[config.norm],
        "bias": True,
        "dropout": config.dropout,
        "upsample": config.upsample,
    }


def native_class(config: MonaiBasicUNetConfig) -> NativeClass:
    return NativeClass(NATIVE_CLASS, native_kwargs(config))
