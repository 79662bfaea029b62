"""``local-contrastive``: dense contrastive learning on decoder features.

Reference: Chaitanya et al., "Contrastive learning of global and local features for
medical image segmentation with limited annotations", NeurIPS 2020 (the local,
decoder-level loss). Here the positive pairs come from the augmentation itself:
both random views (``sequence`` and ``sequence_b``) sample the same raw slice
through known affine transforms, so the location in view b that shows the same
anatomy as a location in view a is known exactly
(:func:`ssmtl.api.correspondence`).

Per step:

1. decoder features of both views (``ctx.decode``, shared with every other decoder
   task);
2. ``num_points`` locations per image in view a, on a regular grid (cell centres;
   ``num_points`` is rounded to a square) or uniformly at random, in
   ``affine_grid`` normalised coordinates (``align_corners=False``);
3. mapped into view b; points that fall outside view b ([-1, 1]) are dropped;
4. features bilinearly sampled at both locations (``F.grid_sample``), then a
   per-location projection head (two 1x1 convolutions) and L2 normalisation;
5. symmetric InfoNCE (NT-Xent) with temperature ``temperature``: the positive of a
   point is its corresponding point in the other view; the negatives are every
   other kept point of the same image in both views (``negatives="image"``), or of
   the whole batch (``"batch"``, whose cost grows with (batch x points)^2).

What it trains: the encoder and the decoder (plus the projection head). It gives
the decoder features that are invariant to the augmentation yet distinct between
locations, which is what segmentation needs.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from einops import rearrange, repeat
from pydantic import Field
from torch import nn
from torch.nn import functional as F

from ssmtl.api import (
    correspondence,
    hookimpl,
    NetworkInfo,
    PretextTask,
    StepContext,
    TaskConfig,
    TaskOutput,
    TaskSpec,
)

_MASKED = -1e9  # logit of excluded keys (finite, so rows with no key stay NaN-free)


class LocalContrastiveConfig(TaskConfig):
    name: Literal["local-contrastive"] = "local-contrastive"
    num_points: int = Field(64, ge=2, le=4096, description="Locations sampled per image in view a ('grid' rounds it to a square).")
    sampling: Literal["grid", "random"] = Field("grid", description="Where the locations lie in view a: cell centres of a regular grid, or uniformly at random.")
    negatives: Literal["image", "batch"] = Field("image", description="Negatives of a point: the other points of its image (both views), or of the whole batch.")
    temperature: float = Field(0.1, gt=0, description="InfoNCE temperature (T).")
    projection_dim: int = Field(128, ge=1, description="Output size of the per-location projection head.")
    hidden_dim: int | None = Field(None, ge=1, description="Hidden size of the projection head (default: decoder width).")


def sample_points(n: int, num_points: int, sampling: str, device) -> torch.Tensor:
    """(n, P, 2) locations (x, y) in normalised [-1, 1] coordinates."""
    if sampling == "grid":
        g = max(2, int(round(math.sqrt(num_points))))
        centres = (2 * torch.arange(g, device=device, dtype=torch.float32) + 1) / g - 1
        yy, xx = torch.meshgrid(centres, centres, indexing="ij")
        # every image gets the same g x g cell centres, row by row
        return repeat(torch.stack([xx, yy], dim=-1), "gy gx xy -> n (gy gx) xy", n=n).contiguous()
    return torch.rand(n, num_points, 2, device=device) * 2 - 1


def map_points(points: torch.Tensor, transform: torch.Tensor) -> torch.Tensor:
    """Apply (n, 2, 3) affine maps to (n, P, 2) points."""
    return torch.einsum("nij,npj->npi", transform[:, :, :2].to(points.dtype), points) + transform[:, None, :, 2].to(points.dtype)


def sample_features(features: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of (n, C, H, W) at (n, P, 2) normalised points -> (n, C, P, 1)."""
    grid = rearrange(points.to(features.dtype), "n p xy -> n p 1 xy")  # the points as a P x 1 sampling grid
    return F.grid_sample(features, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _positive_log_probs(za: torch.Tensor, zb: torch.Tensor, valid: torch.Tensor, temperature: float, negatives: str):
    """log p(positive) and whether the positive is the top key, for every kept query."""
    n, p, _ = za.shape
    two = 2 * p
    z = torch.cat([za, zb], dim=1).float()  # (n, 2P, D): view-a points, then view-b points
    v = torch.cat([valid, valid], dim=1)
    idx = torch.arange(two, device=z.device)
    pos = (idx + p) % two  # a_i <-> b_i
    if negatives == "image":
        logits = z @ z.transpose(1, 2) / temperature  # (n, 2P, 2P)
        keep = v[:, None, :] & (idx[:, None] != idx[None, :])[None]
        logits = logits.masked_fill(~keep, _MASKED)
        log_prob = logits - logits.logsumexp(dim=2, keepdim=True)
        lp = log_prob.gather(2, repeat(pos, "q -> n q 1", n=n)).squeeze(2)
        top = logits.argmax(dim=2) == pos[None]
        return lp[v], top[v]
    flat = rearrange(z, "n q d -> (n q) d")
    kept = rearrange(v, "n q -> (n q)").nonzero().squeeze(1)
    m = kept.numel()
    remap = torch.full((n * two,), -1, dtype=torch.long, device=z.device)
    remap[kept] = torch.arange(m, device=z.device)
    global_pos = rearrange(torch.arange(n, device=z.device)[:, None] * two + pos[None], "n q -> (n q)")
    pos_kept = remap[global_pos[kept]]
    zk = flat[kept]
    logits = zk @ zk.t() / temperature
    logits = logits.masked_fill(torch.eye(m, dtype=torch.bool, device=z.device), _MASKED)
    log_prob = F.log_softmax(logits, dim=1)
    rows = torch.arange(m, device=z.device)
    return log_prob[rows, pos_kept], logits.argmax(dim=1) == pos_kept


def dense_info_nce(za: torch.Tensor, zb: torch.Tensor, valid: torch.Tensor, temperature: float = 0.1, negatives: str = "image") -> torch.Tensor:
    """Symmetric point-wise InfoNCE.

    ``za``, ``zb``: (N, P, D) L2-normalised embeddings of P corresponding points in
    two views of N images; ``valid``: (N, P) bool, the points kept. For every kept
    point of either view (query q), with positive k+ its counterpart in the other
    view, the loss is ``-log(exp(q.k+/T) / sum_k exp(q.k/T))`` where k runs over
    every kept point of both views except q itself, of the same image
    (``negatives="image"``) or of the whole batch (``"batch"``). Returns the mean
    over queries (0, attached to the graph, when no point is kept).
    """
    lp, _ = _positive_log_probs(za, zb, valid, temperature, negatives)
    return _mean_loss(lp, za, zb)


def _mean_loss(lp: torch.Tensor, za: torch.Tensor, zb: torch.Tensor) -> torch.Tensor:
    if lp.numel() == 0:
        return (za.sum() + zb.sum()).float() * 0
    return -lp.mean()


class LocalContrastiveTask(PretextTask):
    trains = frozenset({"encoder", "decoder"})

    def __init__(self, config: LocalContrastiveConfig, network: NetworkInfo):
        super().__init__(config, network)
        c = network.decoder_channels
        hidden = config.hidden_dim or c
        self.projection = nn.Sequential(
            nn.Conv2d(c, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, config.projection_dim, 1),
        )

    def _embed(self, features: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        sampled = sample_features(features, points)
        z = rearrange(self.projection(sampled), "n d p 1 -> n p d")
        return F.normalize(z.float(), dim=2)

    def forward(self, ctx: StepContext) -> TaskOutput:
        c = self.config
        view_a, view_b = ctx.view("sequence"), ctx.view("sequence_b")
        feats_a, feats_b = ctx.decode("sequence"), ctx.decode("sequence_b")
        n = feats_a.shape[0]
        with torch.no_grad():
            points_a = sample_points(n, c.num_points, c.sampling, feats_a.device)
            theta_a, theta_b = ctx.decoded(view_a.theta.float()), ctx.decoded(view_b.theta.float())
            points_b = map_points(points_a, correspondence(theta_a, theta_b))
            valid = (points_b.abs() <= 1).all(dim=2)
        za = self._embed(feats_a, points_a)
        zb = self._embed(feats_b, points_b)
        lp, top = _positive_log_probs(za, zb, valid, c.temperature, c.negatives)
        loss = _mean_loss(lp, za, zb)
        metrics = {
            "acc": top.float().mean() if top.numel() else torch.zeros((), device=za.device),
            "kept": valid.float().mean(),
        }
        return TaskOutput(loss=loss, metrics=metrics)


@hookimpl
def ssmtl_register_tasks():
    return [TaskSpec.of(LocalContrastiveConfig, LocalContrastiveTask, "Dense InfoNCE between corresponding locations of two augmented views (Chaitanya et al. 2020) (encoder + decoder).")]
