"""``rotation``: predict by how many quarter turns a slice was rotated.

Reference: Gidaris, Singh and Komodakis, "Unsupervised Representation Learning by
Predicting Image Rotations", ICLR 2018. Medical slices have a canonical
orientation (the cache stores every slice in the radiological convention:
anterior up, the patient's right on the left), so telling 0/90/180/270 degrees
apart requires recognising anatomy, not only texture.

The task defines its own view, ``rotation/rotated``: every image of its source
view (by default the shared ``sequence`` view, so it reuses the augmentation all
tasks share) is turned by a random number of quarter turns. The shared encoder
runs on it once (other tasks could ask for the same view without a second pass);
a 2-layer MLP on the globally pooled bottleneck features (``ctx.pooled``)
classifies the number of turns with cross-entropy.

What it trains: the encoder (plus its MLP). It never runs the decoder.

Cost: one extra encoder pass per step (the rotated view is a new input). The
augmentation's own small rotations (``augment.rotate``, 15 degrees by default)
keep quarter turns distinguishable; do not raise it towards 45 degrees.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch
from pydantic import Field
from torch import nn
from torch.nn import functional as F

from ssmtl.api import NetworkInfo, PretextTask, SsmtlError, StepContext, TaskConfig, TaskOutput, View

ROTATED_VIEW = "rotation/rotated"
NUM_CLASSES = 4  # 0, 90, 180 and 270 degrees


class RotationConfig(TaskConfig):
    """Options of the ``rotation`` task (``--set tasks.rotation.OPTION=VALUE``)."""

    name: Literal["rotation"] = "rotation"
    source_view: Literal["sequence", "raw"] = Field(
        "sequence", description="View that is rotated: the shared augmented view, or the raw slices."
    )
    hidden_dim: int = Field(128, ge=1, description="Hidden size of the 2-layer MLP head.")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Label smoothing of the cross-entropy.")


@dataclass
class RotatedView(View):
    """A view whose image i is its source image turned ``quarter_turns[i]`` times counter-clockwise."""

    quarter_turns: torch.Tensor | None = None  # (N,) int64 in [0, 4)


def rotate_quarter_turns(images: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Turn each (N, C, H, W) image ``turns[i]`` times by 90 degrees counter-clockwise (``torch.rot90``)."""
    if images.shape[-1] != images.shape[-2]:
        raise SsmtlError(f"rotation: quarter turns need square slices, got {images.shape[-2]}x{images.shape[-1]}")
    out = images.clone()
    for k in range(1, NUM_CLASSES):
        chosen = turns == k
        if chosen.any():
            out[chosen] = torch.rot90(images[chosen], k, dims=(-2, -1))
    return out


def quarter_turn_matrices(turns: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(N, 2, 2) maps from rotated to unrotated normalised (x, y) coordinates.

    One counter-clockwise quarter turn moves the source pixel at (x, y) to (y, -x)
    in ``affine_grid`` coordinates, so the rotated image at (x, y) shows the source
    at (-y, x); k turns apply that map k times.
    """
    one = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=dtype, device=turns.device)
    powers = torch.stack([torch.linalg.matrix_power(one, k) for k in range(NUM_CLASSES)])
    return powers[turns]


def rotated_theta(theta: torch.Tensor | None, turns: torch.Tensor) -> torch.Tensor:
    """The view-to-raw affine of a rotated view, from its source's ``theta`` (None: identity).

    ``raw = A p_source + t`` and ``p_source = R p_rotated``, so the rotated view's
    map is ``[A R | t]``: dense tasks can still find corresponding pixels.
    """
    n = turns.shape[0]
    dtype = theta.dtype if theta is not None else torch.float32
    rot = quarter_turn_matrices(turns, dtype)
    if theta is None:
        theta = torch.zeros(n, 2, 3, dtype=dtype, device=turns.device)
        theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    return torch.cat([theta[:, :, :2] @ rot, theta[:, :, 2:]], dim=2)


class RotationTask(PretextTask):
    """Cross-entropy over 4 rotation classes on pooled bottleneck features of ``rotation/rotated``."""

    trains = frozenset({"encoder"})

    def __init__(self, config: RotationConfig, network: NetworkInfo):
        super().__init__(config, network)
        self.head = nn.Sequential(
            nn.Linear(network.bottleneck_channels, config.hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(config.hidden_dim, NUM_CLASSES),
        )

    def view_builders(self) -> dict[str, Callable[[StepContext], View]]:
        return {ROTATED_VIEW: self._rotated_view}

    def _rotated_view(self, ctx: StepContext) -> RotatedView:
        source = ctx.view(self.config.source_view)
        with torch.no_grad():
            turns = torch.randint(NUM_CLASSES, (source.images.shape[0],), device=source.images.device)
            images = rotate_quarter_turns(source.images, turns)
            theta = rotated_theta(source.theta, turns)
        return RotatedView(images=images, theta=theta, group=source.group, quarter_turns=turns)

    def forward(self, ctx: StepContext) -> TaskOutput:
        view = ctx.view(ROTATED_VIEW)
        logits = self.head(ctx.pooled(ROTATED_VIEW))
        loss = F.cross_entropy(logits.float(), view.quarter_turns, label_smoothing=self.config.label_smoothing)
        with torch.no_grad():
            accuracy = (logits.argmax(dim=1) == view.quarter_turns).float().mean()
        return TaskOutput(loss=loss, metrics={"acc": accuracy})
