"""``contrastive``: MoCo v2 instance discrimination on slices, with slice-aware positives.

Reference: He et al., "Momentum Contrast for Unsupervised Visual Representation
Learning", CVPR 2020; Chen et al., "Improved Baselines with Momentum Contrastive
Learning" (MoCo v2), 2020 (facebookresearch/moco, ``moco/builder.py``). Positional
positives follow Zeng et al., "Positional Contrastive Learning for Volumetric
Medical Image Segmentation", MICCAI 2021.

What it trains: the encoder (and its projection head). It leaves the decoder
untouched, which is why the method adds decoder tasks.

As in the reference:

* the key encoder is an EMA of the query encoder and receives no gradients; it is
  updated after every optimizer step. MoCo's constant m = 0.999 suits runs of
  hundreds of thousands of steps; here the default is m0 = 0.99 rising to 1 on a
  cosine (``momentum_schedule``, as BYOL / MoCo v3), so a run of a few hundred steps
  does not end with a mostly random key encoder. The share of its initial weights the
  key encoder still holds is logged (``contrastive/key_init_share``) and announced;
* keys are gathered from all processes before they enter the queue of
  ``queue_size`` keys (at most ``max_queue_fraction`` = 10 % of the training slices: a
  larger share makes a query's own neighbouring slices its negatives; MoCo's CIFAR demo
  keeps 8 %); the queue is kept out of DDP's broadcast buffers;
* a 2-layer MLP projection head, InfoNCE with temperature 0.2;
* shuffle-BN across processes for the key encoder (``bn_mode="shuffle"``), or SyncBN.
  In one process there is nothing to shuffle across: split BatchNorm then takes its
  place on **both** sides, as in the MoCo authors' single-GPU demo. The query encoder
  (the shared network, so every task's views) normalises ``bn_groups`` contiguous groups
  of whole sequences (``encoder_bn_groups``), the key encoder ``bn_groups`` groups of
  the shuffled key batch, so a key and its query are normalised among different
  samples (their groups share about 1/G of their samples, as a key's process and its
  query's do in G-process shuffle-BN). Which mode is in effect is printed at start-up.

Positives (``positives``):

* ``augment``: two augmentations of the same slice (plain MoCo v2, the default);
* ``neighbors``: the key is the adjacent slice (stride apart) of the same volume;
* ``position``: every key whose normalised slice position is within
  ``position_threshold`` of the query's, from any volume, is a positive.
"""

from __future__ import annotations

import copy
import math
from typing import Literal

import torch
from einops import rearrange
from pydantic import Field
from torch import nn
from torch.nn import functional as F

from ssmtl.api import (
    DataInfo,
    global_pool,
    hookimpl,
    NetworkInfo,
    PretextTask,
    SharedNetwork,
    StepContext,
    TaskConfig,
    TaskOutput,
    TaskSpec,
)
from ssmtl.api.ssl import (
    batchnorm_layers,
    concat_all_gather,
    ema_momentum,
    info_nce,
    initial_weight_share,
    KeyQueue,
    MIN_SPLIT_BN_GROUP,
    multi_positive_info_nce,
    shuffle_bn_forward,
    split_bn_forward,
    split_bn_groups,
    split_bn_groups_in_units,
    world_size,
)


class ContrastiveConfig(TaskConfig):
    name: Literal["contrastive"] = "contrastive"
    queue_size: int = Field(4096, ge=1, description="Number of negative keys in the queue (K).")
    max_queue_fraction: float = Field(0.1, gt=0, le=10, description="Cap K at this fraction of the slices the run samples from (at least one batch of keys). A queue holding a fraction f of the slices holds on average 2 r f keys within r slices of a query's own slice, and its own stale key with probability f: near-duplicate negatives. 0.1 keeps that to about one key within 5 slices, the order of MoCo's own ratios (4096 keys for CIFAR's 50k images, 8 %; 65536 for ImageNet's 1.28M, 5 %).")
    temperature: float = Field(0.2, gt=0, description="InfoNCE temperature (T).")
    momentum: float = Field(0.99, ge=0, le=1, description="EMA momentum of the key encoder (m; the starting value m0 of a cosine schedule).")
    momentum_schedule: Literal["constant", "cosine"] = Field("cosine", description="Key-encoder momentum over the run: 'constant' (MoCo v2: m), or 'cosine' from m to 1 (BYOL, MoCo v3), so short runs do not end with a mostly random key encoder.")
    projection_dim: int = Field(128, ge=1, description="Output size of the projection head.")
    hidden_dim: int | None = Field(None, ge=1, description="Hidden size of the 2-layer MLP head (default: encoder width).")
    bn_mode: Literal["shuffle", "split", "sync", "none"] = Field("shuffle", description="Keep BN statistics from leaking across the positive pair: shuffle-BN across processes, split BN (statistics per group of the shuffled key batch), or SyncBN. With one process, shuffle and sync fall back to split. 'none' lets them leak.")
    bn_groups: int = Field(8, ge=1, description="Split BN: groups with their own statistics, of the shuffled key batch in the key encoder and of whole sequences in the query encoder (the shared network, every view); fewer when a batch does not divide into groups of at least 4 samples.")
    query_slices: Literal["all", "center"] = Field("all", description="Use every slice of each sequence as a query, or only the centre one.")
    positives: Literal["augment", "neighbors", "position"] = Field("augment", description="What counts as a positive key.")
    position_threshold: float = Field(0.1, gt=0, le=1, description="Max normalised position distance of positional positives.")


def queue_size(asked: int, max_fraction: float, num_slices: int, keys_per_batch: int) -> int:
    """The queue's K: ``asked``, capped at ``floor(max_fraction x num_slices)`` but never below one
    batch of keys (a queue that cannot hold a step's keys would drop some of them unseen).

    >>> queue_size(4096, 0.1, 1417, 16), queue_size(4096, 0.1, 100, 32), queue_size(64, 0.1, 1417, 16)
    (141, 32, 64)
    """
    cap = math.floor(max_fraction * num_slices + 1e-9)  # 0.29 x 100 is 28.999...: still 29
    return min(asked, max(keys_per_batch, cap))


def projection_head(in_dim: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out))


class ContrastiveTask(PretextTask):
    trains = frozenset({"encoder"})

    def __init__(self, config: ContrastiveConfig, network: NetworkInfo):
        super().__init__(config, network)
        c = network.bottleneck_channels
        self.projection = projection_head(c, config.hidden_dim or c, config.projection_dim)
        self.queue = KeyQueue(config.queue_size, config.projection_dim)
        self.key_encoder: nn.Module | None = None
        self.key_projection = copy.deepcopy(self.projection)
        self.key_projection.requires_grad_(False)
        # the product of the momenta applied so far: the share of its initial weights the
        # key encoder still holds (a buffer, so a resumed run continues the product)
        self.register_buffer("key_init_share", torch.ones(()))
        self.total_steps: int | None = None

    @property
    def sequence_length(self) -> int:
        return 2 if self.config.positives == "neighbors" else 1

    @property
    def needs_sync_batchnorm(self) -> bool:
        return self.config.bn_mode == "sync"

    @property
    def encoder_bn_groups(self) -> int:
        """Split BN's query side: the shared encoder normalises in ``bn_groups`` groups too."""
        return self.config.bn_groups if self._bn_mode() == "split" else 1

    def setup(self, network: SharedNetwork) -> None:
        self.key_encoder = copy.deepcopy(network.encoder)
        self.key_encoder.requires_grad_(False)
        self.key_projection.load_state_dict(self.projection.state_dict())

    def on_data(self, info: DataInfo) -> list[str]:
        keys_per_batch = info.global_batch * (info.sequence_length if self.config.query_slices == "all" else 1)
        self.total_steps = info.total_steps  # the cosine schedule's T (None: unknown, constant momentum)
        rows = info.global_batch // world_size() * info.sequence_length  # of each view, per process
        notes = [self._bn_note(keys_per_batch // world_size(), rows, info.sequence_length), self._momentum_note()]
        size = queue_size(self.config.queue_size, self.config.max_queue_fraction, info.num_slices, keys_per_batch)
        if self.queue.size != size:
            old = self.queue.size
            self.queue = KeyQueue(size, self.config.projection_dim).to(self.queue.keys.device)
            notes.append(
                f"contrastive: queue_size {old} > {self.config.max_queue_fraction:g} x {info.num_slices} training slices; "
                f"using {size} keys, so that few negatives are the query's own or neighbouring slices "
                "(tasks.contrastive.max_queue_fraction)")
        return notes

    # -- BatchNorm of the key encoder -------------------------------------------------
    def _bn_mode(self) -> str:
        """What keeps the key batch's BN statistics apart in this process group: shuffle, split, sync or none."""
        mode = self.config.bn_mode
        if mode in ("shuffle", "sync") and world_size() == 1:
            return "split"  # nothing to shuffle or sync across
        return mode

    def _bn_note(self, keys: int, rows: int, k: int) -> str:
        mode, asked = self._bn_mode(), self.config.bn_mode
        if self.key_encoder is not None and not batchnorm_layers(self.key_encoder):
            return "contrastive: the key encoder has no BatchNorm layers; no batch statistics can leak across the positive pair"
        if mode == "shuffle":
            return f"contrastive: shuffle-BN: keys are computed on a batch shuffled across {world_size()} processes"
        if mode == "sync":
            return f"contrastive: SyncBatchNorm across {world_size()} processes"
        if mode == "none":
            return ("contrastive: bn_mode=none: the key encoder's BatchNorm statistics come from the query batch's own "
                    "samples, so they leak across the positive pair")
        asked_groups = self.config.bn_groups
        groups = split_bn_groups(keys, asked_groups)
        query_groups = split_bn_groups_in_units(rows, asked_groups, k)
        why = {"split": "bn_mode=split", "shuffle": "one process: nothing to shuffle across",
               "sync": "one process: nothing to sync across"}[asked]
        if groups == 1 or query_groups == 1:
            return (f"contrastive: split BN ({why}) cannot split {keys} keys and {rows} query slices into groups of "
                    f"at least {MIN_SPLIT_BN_GROUP}; the {'key' if groups == 1 else 'query'} encoder uses plain "
                    "BatchNorm, whose statistics leak across the positive pair")
        fewer = "" if groups == query_groups == asked_groups else (
            f" (tasks.contrastive.bn_groups={asked_groups} does not split the batch into equal groups of at least "
            f"{MIN_SPLIT_BN_GROUP})")
        return (f"contrastive: split BN ({why}): the query encoder (the shared network, every view) normalises "
                f"{query_groups} groups of {rows // query_groups} slices (whole sequences), the key encoder {groups} "
                f"groups of {keys // groups} shuffled keys{fewer}")

    # -- momentum ---------------------------------------------------------------------
    def _momentum_note(self) -> str:
        c, total_steps = self.config, self.total_steps
        if not total_steps:
            if c.momentum_schedule == "cosine":
                return "contrastive: the run length is unknown; momentum_schedule=cosine falls back to a constant momentum"
            return f"contrastive: constant key-encoder momentum {c.momentum:g}"
        share = initial_weight_share(c.momentum, c.momentum_schedule, total_steps)
        return (f"contrastive: key-encoder momentum {c.momentum:g} ({c.momentum_schedule}); after {total_steps} steps "
                f"it holds {100 * share:.3g} % of its initial weights (logged as contrastive/key_init_share)")

    def momentum_at(self, step: int) -> float:
        schedule = self.config.momentum_schedule if self.total_steps else "constant"
        return ema_momentum(self.config.momentum, schedule, step, self.total_steps)

    def ddp_ignored_names(self) -> list[str]:
        names = [f"queue.{n}" for n, _ in self.queue.named_buffers()] + ["key_init_share"]
        for prefix, module in (("key_encoder", self.key_encoder), ("key_projection", self.key_projection)):
            if module is not None:
                names += [f"{prefix}.{n}" for n, _ in module.named_parameters()]
                names += [f"{prefix}.{n}" for n, _ in module.named_buffers()]
        return names

    def _keys(self, images: torch.Tensor) -> torch.Tensor:
        def encode(x: torch.Tensor) -> torch.Tensor:
            return F.normalize(self.key_projection(global_pool(self.key_encoder(x)[-1])), dim=1)

        mode = self._bn_mode()
        if mode == "shuffle":
            return shuffle_bn_forward(encode, images)
        if mode == "split":
            return split_bn_forward(encode, images, self.key_encoder, split_bn_groups(images.shape[0], self.config.bn_groups))
        with torch.no_grad():
            return encode(images)

    def _select(self, ctx: StepContext) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Indices of query slices and of their positive key slices in the flat (B*k) views.

        ``None`` stands for every slice in order: the default (every slice a query, its
        positive its own other view) then needs no gather, which would copy the
        features and key images every step.
        """
        if self.config.query_slices == "all" and self.config.positives != "neighbors":
            return None, None
        b, k = ctx.batch.batch_size, ctx.batch.sequence_length
        device = ctx.batch.slices.device
        q = torch.arange(b * k, device=device)
        if self.config.query_slices == "center":
            q = rearrange(q, "(b k) -> b k", k=k)[:, k // 2]  # the row of each sequence's centre slice
        if self.config.positives != "neighbors":
            return q, q
        j = q % k
        step = torch.where(torch.rand(q.shape, device=device) < 0.5, -1, 1)
        partner = (j + step).clamp(0, k - 1)
        partner = torch.where(partner == j, j - step, partner)  # at the ends, take the other side
        return q, q - j + partner

    def forward(self, ctx: StepContext) -> TaskOutput:
        q_index, k_index = self._select(ctx)
        features = _take(ctx.pooled("sequence"), q_index)
        query = F.normalize(self.projection(features), dim=1)
        n = query.shape[0]
        with torch.no_grad():
            keys = self._keys(_take(ctx.view("sequence_b").images, k_index)).to(query.dtype)
            key_positions = _take(ctx.batch.flat_positions(), k_index)
        negatives = self.queue.keys.clone().detach().to(query.dtype)
        if self.config.positives == "position":
            all_keys = torch.cat([keys, negatives], dim=0)
            all_pos = torch.cat([key_positions, self.queue.positions], dim=0)
            q_pos = _take(ctx.batch.flat_positions(), q_index)
            mask = (q_pos[:, None] - all_pos[None, :]).abs() <= self.config.position_threshold
            mask &= all_pos[None, :] >= 0  # unfilled queue slots have no position
            mask[torch.arange(n), torch.arange(n)] = True  # own key
            loss = multi_positive_info_nce(query, all_keys, mask, self.config.temperature)
        else:
            loss = info_nce(query, keys, negatives, self.config.temperature)
        with torch.no_grad():
            pos_logit = (query * keys).sum(dim=1)
            neg_max = (query @ negatives.t()).amax(dim=1)
            accuracy = (pos_logit > neg_max).float().mean()
            gathered = concat_all_gather(keys.float())
            gathered_pos = concat_all_gather(key_positions.float())
            self.queue.enqueue(gathered, gathered_pos)
        return TaskOutput(loss=loss, metrics={"acc": accuracy, "key_init_share": self.key_init_share.detach().clone()})

    @torch.no_grad()
    def after_optimizer_step(self, network: SharedNetwork, step: int) -> None:
        m = self.momentum_at(step)
        self.key_init_share.mul_(m)
        online = [p.detach() for p in (*network.encoder.parameters(), *self.projection.parameters())]
        keys = [*self.key_encoder.parameters(), *self.key_projection.parameters()]
        # p_k = m * p_k + (1 - m) * p_q, as two multi-tensor ops instead of two per parameter
        torch._foreach_mul_(keys, m)
        torch._foreach_add_(keys, online, alpha=1 - m)


def _take(x: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    return x if index is None else x[index]


@hookimpl
def ssmtl_register_tasks():
    return [TaskSpec.of(ContrastiveConfig, ContrastiveTask, "MoCo v2 on slices (encoder); positives by augmentation, neighbouring slice, or slice position.")]
