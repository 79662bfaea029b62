"""The parts of a trained run that ``ssmtl export`` writes, each as a module with plain tensor
outputs (what TorchScript and ONNX trace) and as weights under the network's own key names.

* ``encoder``: images (N, C, H, W) -> features at every scale, full resolution first
  (``features_0`` .. ``features_D``);
* ``network``: images -> the full-resolution decoder features (``features``, N, C', H, W),
  what the pre-trained encoder-decoder computes for a downstream head;
* ``finetuned`` (fine-tuning runs): images -> class logits (``logits``, N, classes, H, W).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ssmtl.api.errors import SsmtlError
from ssmtl.training.export import part_state
from ssmtl.publish.runs import RunKind

PARTS = ("encoder", "network", "finetuned")


class EncoderFeatures(nn.Module):
    """images -> a tuple of encoder features, full resolution first."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.encoder(images))


class DecoderFeatures(nn.Module):
    """images -> the shared network's full-resolution decoder features."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(images).decoder


@dataclass
class PartModule:
    name: str
    module: nn.Module  # in eval mode; what the traced formats compute
    weights: dict[str, torch.Tensor]  # what the safetensors format holds
    outputs: list[str]  # names of the module's outputs, in order
    description: str


def default_part(kind: RunKind) -> str:
    return "finetuned" if kind == "finetune" else "network"


def select_part(model: nn.Module, kind: RunKind, part: str) -> PartModule:
    """``part`` of ``model`` (what :func:`~ssmtl.publish.runs.load_network` returned for a run of ``kind``)."""
    if part not in PARTS:
        raise SsmtlError(f"--part {part}: unknown part; use one of {', '.join(PARTS)}")
    network = model.network if kind == "finetune" else model
    if part == "finetuned":
        if kind != "finetune":
            raise SsmtlError("--part finetuned needs a fine-tuning run (network + head); this is a pre-training run: "
                             "use --part network or --part encoder")
        return PartModule(part, model.eval(), {k: v.detach() for k, v in model.state_dict().items()}, ["logits"],
                          "the fine-tuned network and head: images -> class logits")
    if part == "network":
        return PartModule(part, DecoderFeatures(network).eval(), {k: v.detach() for k, v in network.state_dict().items()},
                          ["features"], "the shared encoder-decoder: images -> full-resolution decoder features")
    scales = len(network.info.encoder_channels)
    return PartModule(part, EncoderFeatures(network.encoder).eval(), part_state(network, network.encoder),
                      [f"features_{i}" for i in range(scales)],
                      f"the encoder: images -> features at {scales} scales, full resolution first")
