"""``monai-basic-unet``: MONAI's ``BasicUNet`` as the shared encoder-decoder (a network plugin).

A MONAI user pre-trains the very network they fine-tune in their own pipeline: the
module ssmtl trains *is* a ``monai.networks.nets.BasicUNet`` (2D), so its state dict
(``export/model.safetensors``) loads into ``BasicUNet(**kwargs)`` with
``strict=True``; the export's ``config.json`` (``ssmtl export``) holds those
``kwargs``.

What the tasks see (the network contract): the encoder is BasicUNet's own
``conv_0`` and ``down_1`` .. ``down_4`` (five scales, full resolution first, widths
``features[:5]``); the decoder is its ``upcat_4`` .. ``upcat_1`` (full-resolution
features of width ``features[5]``). BasicUNet's last layer, the 1x1 ``final_conv``
to ``out_channels``, is not part of what pre-training trains (no pretext loss
reaches it, and ssmtl's fine-tuning puts its head on the decoder features): it stays
at its random initialisation, frozen, and is exported so the state dict is complete.

MONAI is imported when a network is built, not when the plugin loads (importing it
takes about 2 s, which every ``ssmtl`` command would pay).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from ssmtl.api import hookimpl, NativeClass, NetworkConfig, NetworkSpec

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


def build_network(config: MonaiBasicUNetConfig):
    from ssmtl.plugins.networks.monai_unet_module import MonaiBasicUNet

    return MonaiBasicUNet(config)


@hookimpl
def ssmtl_register_networks():
    return [NetworkSpec.of(MonaiBasicUNetConfig, build_network, "MONAI BasicUNet (2D); its weights load into monai.networks.nets.BasicUNet with strict=True.")]
