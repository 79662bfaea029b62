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

from ssmtl.api import hookimpl, NetworkSpec

from ssmtl.plugins.networks.monai_unet_config import MonaiBasicUNetConfig


def build_network(config: MonaiBasicUNetConfig):
    from ssmtl.plugins.networks.monai_unet_module import MonaiBasicUNet

    return MonaiBasicUNet(config)


@hookimpl
def ssmtl_register_networks():
    return [NetworkSpec.of(MonaiBasicUNetConfig, build_network, "MONAI BasicUNet (2D); its weights load into monai.networks.nets.BasicUNet with strict=True.")]
