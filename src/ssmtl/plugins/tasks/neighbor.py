"""``neighbor``: predict an adjacent slice, pixel by pixel, from the decoder features.

Consecutive slices of a volume (``data.stride`` slices apart) show the same anatomy
slightly displaced, so predicting one from another asks the network how structures
continue through the volume: a dense, sequence-aware objective for the decoder
(Dong et al., ECML PKDD 2021; related to slice interpolation and to inter-frame
prediction in video self-supervision).

Modes (``mode``):

* ``next`` (default): from slice i of a sequence predict slice i+s, where the
  direction s = +1 or -1 (one position in the sampled sequence) is drawn at random
  per slice (the other direction at the ends) and *given* to the head as an extra
  constant channel (+1 / -1) concatenated to the decoder features. Every decoded
  slice of the ``sequence`` view is an input (all of them, or one per sequence with
  ``train.decoder_slices="one"``). Needs sequences of 2 slices.
* ``middle``: predict the middle slice of every triplet (i-1, i, i+1) from the
  decoder features of its two neighbours, concatenated in that order. Needs
  sequences of 3 slices, and the decoder on every slice (it overrides
  ``train.decoder_slices="one"``).

The input is the shared ``ctx.decode("sequence")``, computed once for every
decoder task. The target is the *raw* neighbour slice warped with the input's
spatial transform (``apply_affine(raw, theta)``; the k slices of a sequence share
one transform), i.e. aligned with the view but free of the per-slice intensity
jitter, which cannot be predicted. The head is 3x3 conv + ReLU + 1x1 conv; the
loss is L1 (or L2) over the slice.

What it trains: the encoder and the decoder (plus its head).
"""

from __future__ import annotations

from typing import Literal

import torch
from einops import rearrange, repeat
from pydantic import Field
from torch import nn

from ssmtl.api import (
    apply_affine,
    hookimpl,
    NetworkInfo,
    PretextTask,
    SsmtlError,
    StepContext,
    TaskConfig,
    TaskOutput,
    TaskSpec,
)


class NeighborConfig(TaskConfig):
    name: Literal["neighbor"] = "neighbor"
    mode: Literal["next", "middle"] = Field("next", description="'next': predict the slice one position above or below (direction given to the head); 'middle': predict the middle slice of a triplet from its two neighbours.")
    loss: Literal["l1", "l2"] = Field("l1", description="Pixel loss between the prediction and the aligned raw neighbour slice.")
    hidden_channels: int | None = Field(None, ge=1, description="Channels of the head's 3x3 convolution (default: decoder width).")


def pixel_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """Mean absolute (``"l1"``) or squared (``"l2"``) error over every element."""
    diff = pred.float() - target.float()
    return diff.abs().mean() if kind == "l1" else diff.pow(2).mean()


def next_pairs(index: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For every flat slice index i (into B sequences of ``length`` slices, flattened),
    a random direction s (+1/-1) that stays inside its sequence. Returns (s, i + s)."""
    n = index.numel()
    device = index.device
    j = index % length
    step = torch.where(torch.rand(n, device=device) < 0.5, -1, 1)
    outside = (j + step < 0) | (j + step >= length)
    step = torch.where(outside, -step, step)
    return step, index + step


@torch.no_grad()
def _aligned(ctx: StepContext, rows: torch.Tensor | None = None) -> torch.Tensor:
    """The raw slices of ``rows`` (all: None), warped with the ``sequence`` view's transform."""
    theta = ctx.view("sequence").theta
    raw = ctx.view("raw").images
    if rows is not None:
        raw = raw.index_select(0, rows)
        theta = None if theta is None else theta.index_select(0, rows)
    return raw if theta is None else apply_affine(raw, theta)


class NeighborTask(PretextTask):
    trains = frozenset({"encoder", "decoder"})

    def __init__(self, config: NeighborConfig, network: NetworkInfo):
        super().__init__(config, network)
        c = network.decoder_channels
        in_ch = c + 1 if config.mode == "next" else 2 * c
        hidden = config.hidden_channels or c
        self.head = nn.Sequential(
            nn.Conv2d(in_ch, hidden, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, network.in_channels, 1),
        )

    @property
    def sequence_length(self) -> int:
        return 2 if self.config.mode == "next" else 3

    @property
    def decodes_every_slice(self) -> bool:
        return self.config.mode == "middle"  # both neighbours of every inner slice

    def prepare(self, ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
        """The head's input and the target slices for this step.

        ``next``: input = decoder features of every slice + a constant channel s (+1/-1),
        target = aligned raw slice i+s. ``middle``: input = features of slices i-1 and
        i+1 concatenated, target = aligned raw slice i, for every inner slice i.
        """
        b, k = ctx.batch.batch_size, ctx.batch.sequence_length
        if k < self.sequence_length:
            raise SsmtlError(f"neighbor: mode {self.config.mode!r} needs sequences of {self.sequence_length} slices, got {k}")
        feats = ctx.decode("sequence")
        h, w = feats.shape[-2:]
        if self.config.mode == "next":
            rows = ctx.decoder_rows  # the slices decoded this step (None: all of them)
            index = torch.arange(b * k, device=feats.device) if rows is None else rows
            step, partner = next_pairs(index, k)
            direction = repeat(step.to(feats.dtype), "n -> n 1 h w", h=h, w=w)
            return torch.cat([feats, direction], dim=1), _aligned(ctx, partner)  # only the targets it needs
        seq = rearrange(feats, "(b k) c h w -> b k c h w", b=b)
        aligned = rearrange(_aligned(ctx), "(b k) c h w -> b k c h w", b=b)
        # slice i's input: the features of i-1 and i+1 stacked on channels; every inner i
        pair = torch.cat([seq[:, :-2], seq[:, 2:]], dim=2)
        target = aligned[:, 1:-1]
        return rearrange(pair, "b k c h w -> (b k) c h w"), rearrange(target, "b k c h w -> (b k) c h w")

    def forward(self, ctx: StepContext) -> TaskOutput:
        inputs, target = self.prepare(ctx)
        pred = self.head(inputs)
        return TaskOutput(loss=pixel_loss(pred, target, self.config.loss))


@hookimpl
def ssmtl_register_tasks():
    return [TaskSpec.of(NeighborConfig, NeighborTask, "Predict the adjacent slice (direction given) or the middle slice of a triplet, pixel-wise (encoder + decoder).")]
