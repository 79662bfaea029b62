"""``reconstruct``: masked-slice modelling, or context restoration, with the full U-Net.

Part of every slice of the ``sequence`` view is destroyed, the shared encoder *and*
decoder run on it, a 1x1 convolution on the full-resolution decoder features
predicts the intact image, and the loss (L1 or L2) is taken on the destroyed
pixels only (``loss_region="masked"``) or on the whole slice (``"all"``).

Where the destroyed slices live (``view``):

* ``shared`` (default): the task *transforms* the shared ``sequence`` view, so one
  encoder + decoder pass serves every task. Only the slices the decoder runs on are
  altered: with ``train.decoder_slices="one"`` (the default) one slice per sequence,
  and the other k-1 slices reach the encoder tasks intact (with every slice masked,
  order stayed at chance; with one of three masked it learns, more slowly than on
  intact slices: see docs/performance.md). The MoCo keys, from ``sequence_b``, are never masked: a masked
  query must match an intact key, as in masked siamese networks (Assran et al.,
  ECCV 2022). With ``decoder_slices="all"`` every slice is altered.
* ``separate``: the task defines its own view, ``reconstruct/masked``, a masked copy
  of ``sequence``; the other tasks keep intact inputs, at the price of one more
  encoder + decoder pass per step.

Modes (``mode``):

* ``mask`` (default): the slice is cut into a grid of ``patch_size`` x
  ``patch_size`` cells and a random ``mask_ratio`` of them (the same count in every
  slice) is replaced by ``fill``: by default the slice's own mean intensity, which
  keeps the first-order statistics the normalisation layers see unchanged (zero is
  an arbitrary intensity in normalised CT/MR; ``noise`` draws from the slice's mean
  and std). References: Pathak et al., "Context Encoders: Feature Learning by
  Inpainting", CVPR 2016; He et al., "Masked Autoencoders Are Scalable Vision
  Learners", CVPR 2022 (a convolutional U-Net sees the filled cells, as in Xie et
  al.'s SimMIM, CVPR 2022).
* ``restore``: context restoration (Chen et al., "Self-supervised learning for
  medical image analysis using image context restoration", Medical Image Analysis
  2019): ``num_swaps`` times, two random non-overlapping cells of the slice swap
  places; the network restores the original. The loss region is the swapped cells.

Cells lie on a grid anchored at the top-left corner; a margin narrower than
``patch_size`` at the bottom/right is never altered.

What it trains: the encoder and the decoder (plus its 1x1 head). Use it to give
the decoder a dense, pixel-level objective next to encoder-level tasks
(``contrastive``, ``order``), so that the exported decoder is pre-trained too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch
from einops import rearrange, repeat
from pydantic import Field
from torch import nn

from ssmtl.api import (
    hookimpl,
    NetworkInfo,
    PretextTask,
    SsmtlError,
    StepContext,
    TaskConfig,
    TaskOutput,
    TaskSpec,
    View,
)

MASKED_VIEW = "reconstruct/masked"


class ReconstructConfig(TaskConfig):
    name: Literal["reconstruct"] = "reconstruct"
    view: Literal["shared", "separate"] = Field("shared", description="'shared': mask the shared `sequence` view itself, so one encoder+decoder pass serves every task; 'separate': mask a copy (one more encoder+decoder pass per step, other tasks see intact slices).")
    mode: Literal["mask", "restore"] = Field("mask", description="'mask': fill random patches and predict them (MAE / context encoders); 'restore': swap pairs of patches and restore the slice (Chen et al. 2019).")
    mask_ratio: float = Field(0.6, gt=0, lt=1, description="Fraction of the patch cells masked in 'mask' mode (at least one cell, never all).")
    patch_size: int = Field(16, ge=1, description="Side length in pixels of the square patches (masked cells, or swapped patches in 'restore' mode).")
    fill: Literal["mean", "zero", "noise"] = Field("mean", description="What masked cells are filled with: the slice's mean intensity, zero, or Gaussian noise with the slice's mean and std.")
    num_swaps: int = Field(10, ge=1, description="Patch pairs swapped per slice in 'restore' mode (capped at half the number of cells).")
    loss: Literal["l1", "l2"] = Field("l2", description="Pixel loss between prediction and the intact slice.")
    loss_region: Literal["masked", "all"] = Field("masked", description="Average the loss over the altered pixels only, or over the whole slice.")


@dataclass
class MaskedView(View):
    """A view with part of every image altered; ``mask`` (N, 1, H, W) is True there."""

    mask: torch.Tensor | None = None
    original: torch.Tensor | None = None  # the images before they were altered


def _grid(height: int, width: int, patch_size: int) -> tuple[int, int]:
    gh, gw = height // patch_size, width // patch_size
    if gh * gw == 0:
        raise SsmtlError(f"reconstruct: patch_size={patch_size} is larger than the {height}x{width} slices; lower tasks.reconstruct.patch_size")
    return gh, gw


def _cells_to_pixels(cells: torch.Tensor, gh: int, gw: int, patch_size: int, height: int, width: int) -> torch.Tensor:
    """(N, gh*gw) bool -> (N, 1, H, W) bool; the margin outside the grid is False."""
    n = cells.shape[0]
    m = repeat(cells, "n (gh gw) -> n 1 (gh p1) (gw p2)", gh=gh, p1=patch_size, p2=patch_size)
    out = torch.zeros((n, 1, height, width), dtype=torch.bool, device=cells.device)
    out[:, :, : gh * patch_size, : gw * patch_size] = m
    return out


def mask_patches(images: torch.Tensor, mask_ratio: float, patch_size: int, fill: str = "mean") -> tuple[torch.Tensor, torch.Tensor]:
    """Replace a random ``mask_ratio`` of the patch cells of each (N, C, H, W) image.

    Returns the masked images and the (N, 1, H, W) bool mask of the replaced pixels.
    Every image gets the same number of masked cells, between 1 and all but one.
    """
    n, _, h, w = images.shape
    gh, gw = _grid(h, w, patch_size)
    cells = gh * gw
    count = min(max(int(round(mask_ratio * cells)), 1), max(cells - 1, 1))
    rank = torch.rand(n, cells, device=images.device).argsort(dim=1).argsort(dim=1)
    mask = _cells_to_pixels(rank < count, gh, gw, patch_size, h, w)
    if fill == "zero":
        value = torch.zeros_like(images)
    else:
        mean = images.mean(dim=(1, 2, 3), keepdim=True)
        if fill == "mean":
            value = mean.expand_as(images)
        else:
            std = images.std(dim=(1, 2, 3), keepdim=True)
            value = mean + std * torch.randn_like(images)
    return torch.where(mask, value, images), mask


def swap_patches(images: torch.Tensor, num_swaps: int, patch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Swap ``num_swaps`` pairs of distinct random patch cells in each (N, C, H, W) image.

    Returns the altered images and the (N, 1, H, W) bool mask of the swapped cells.
    """
    n, c, h, w = images.shape
    gh, gw = _grid(h, w, patch_size)
    cells = gh * gw
    if cells < 2:
        raise SsmtlError(f"reconstruct: restore mode needs at least two {patch_size}px patches in a {h}x{w} slice; lower tasks.reconstruct.patch_size")
    s = min(num_swaps, cells // 2)
    order = torch.rand(n, cells, device=images.device).argsort(dim=1)
    first, second = order[:, :s], order[:, s:2 * s]
    source = torch.arange(cells, device=images.device).repeat(n, 1)
    source.scatter_(1, first, second)
    source.scatter_(1, second, first)
    p = patch_size
    crop = images[:, :, : gh * p, : gw * p]
    patches = rearrange(crop, "n c (gh p1) (gw p2) -> n c (gh gw) p1 p2", p1=p, p2=p)
    index = repeat(source, "n cells -> n c cells p1 p2", c=c, p1=p, p2=p)
    moved = torch.gather(patches, 2, index)
    moved = rearrange(moved, "n c (gh gw) p1 p2 -> n c (gh p1) (gw p2)", gh=gh)
    out = images.clone()
    out[:, :, : gh * p, : gw * p] = moved
    changed = torch.zeros(n, cells, dtype=torch.bool, device=images.device)
    changed.scatter_(1, order[:, : 2 * s], True)
    return out, _cells_to_pixels(changed, gh, gw, p, h, w)


def masked_reconstruction_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None, kind: str = "l2") -> torch.Tensor:
    """Mean L1 (``kind="l1"``) or squared (``"l2"``) error over the pixels where ``mask`` is True.

    ``mask`` broadcasts against ``pred``; ``None`` averages over every pixel. An
    empty mask gives 0 (still attached to the graph).
    """
    diff = pred.float() - target.float()
    err = diff.abs() if kind == "l1" else diff.pow(2)
    if mask is None:
        return err.mean()
    weight = mask.to(err.dtype).expand_as(err)
    return (err * weight).sum() / weight.sum().clamp_min(1.0)


class ReconstructTask(PretextTask):
    trains = frozenset({"encoder", "decoder"})

    def __init__(self, config: ReconstructConfig, network: NetworkInfo):
        super().__init__(config, network)
        self.head = nn.Conv2d(network.decoder_channels, network.in_channels, kernel_size=1)

    def view_builders(self) -> dict[str, Callable[[StepContext], View]]:
        if self.config.view == "separate":
            return {MASKED_VIEW: lambda ctx: self._alter(ctx.view("sequence"))}
        return {}

    def view_transforms(self) -> dict[str, Callable[[StepContext, View], View]]:
        if self.config.view == "shared":
            # only the slices the decoder reconstructs are altered; with one decoded slice
            # per sequence the other k-1 reach the encoder tasks intact
            return {"sequence": lambda ctx, view: self._alter(view, ctx.decoder_rows)}
        return {}

    @property
    def view_name(self) -> str:
        return MASKED_VIEW if self.config.view == "separate" else "sequence"

    def _alter(self, source: View, rows: torch.Tensor | None = None) -> MaskedView:
        """``source`` with its images altered: every row, or only ``rows`` (flat indices)."""
        c = self.config
        with torch.no_grad():
            picked = source.images if rows is None else source.images.index_select(0, rows)
            if c.mode == "mask":
                altered, mask = mask_patches(picked, c.mask_ratio, c.patch_size, c.fill)
            else:
                altered, mask = swap_patches(picked, c.num_swaps, c.patch_size)
            if rows is not None:
                images = source.images.index_copy(0, rows, altered)
                mask = torch.zeros((source.images.shape[0], *mask.shape[1:]), dtype=torch.bool, device=mask.device).index_copy(0, rows, mask)
            else:
                images = altered
        return MaskedView(images=images, theta=source.theta, group=source.group, mask=mask, original=source.images)

    def forward(self, ctx: StepContext) -> TaskOutput:
        view = ctx.view(self.view_name)
        if not isinstance(view, MaskedView):
            raise SsmtlError(f"reconstruct: view {self.view_name!r} is not the masked view (another task replaced it)")
        pred = self.head(ctx.decode(self.view_name))
        target = ctx.decoded(view.original).detach()
        altered = ctx.decoded(view.mask)
        region = altered if self.config.loss_region == "masked" else None
        loss = masked_reconstruction_loss(pred, target, region, self.config.loss)
        with torch.no_grad():
            mae = masked_reconstruction_loss(pred, target, altered, "l1")
        return TaskOutput(loss=loss, metrics={"masked_l1": mae})


@hookimpl
def ssmtl_register_tasks():
    return [TaskSpec.of(ReconstructConfig, ReconstructTask, "Predict masked patches (MAE / context encoders) or restore swapped patches (Chen et al. 2019) (encoder + decoder).")]
