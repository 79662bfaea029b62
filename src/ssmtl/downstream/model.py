"""The fine-tuned model: the shared network (from a pre-training export or from scratch)
plus a downstream head plugin, and the objective one training step computes on it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from ssmtl.api.errors import SsmtlError
from ssmtl.api.heads import DownstreamHead
from ssmtl.api.network import SharedNetwork
from ssmtl.training.augment import AugmentConfig
from ssmtl.training.export import check_finite_weights, EXPORT_DIR, load_pretrained_network
from ssmtl.host.networks import build_network, network_config
from ssmtl.host.plugin_calls import checked_loss, plugin_call, refuse
from ssmtl.settings.sources import validate_model
from ssmtl.data.cache import SliceCache
from ssmtl.data.cache_set import check_slice_shapes
from ssmtl.downstream.config import FinetuneConfig
from ssmtl.downstream.data import augment_pair
from ssmtl.downstream.records import WEIGHTS, read_run_json


class FinetuneModel(nn.Module):
    """The shared network and the head; ``forward`` returns the head's logits.

    Its state dict has exactly the ``network.*`` and ``head.*`` keys of the saved weights.
    """

    def __init__(self, network: SharedNetwork, head: DownstreamHead, registry=None):
        super().__init__()
        self.network = network
        self.head = head
        self.registry = registry  # names a failing plugin's package in the error line

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with plugin_call("network", plugin_name(self.network), "forward", self.registry):
            features = self.network(images).decoder
        with plugin_call("head", plugin_name(self.head), "forward", self.registry):
            return self.head(features)


def plugin_name(module: nn.Module) -> str:
    """The plugin name a network or head was built from (its config's ``name``)."""
    return str(getattr(getattr(module, "config", None), "name", type(module).__name__))


def build_head(registry, name: str, options: dict[str, Any], network: SharedNetwork, num_classes: int) -> DownstreamHead:
    """Validate the head's options with its plugin's config model and build it."""
    spec = registry.head(name)
    config = validate_model(spec.config_model, {**options, "name": name}, prefix=name)
    with plugin_call("head", name, "its factory (build)", registry):
        head = spec.factory(config, network.info, num_classes)
    if not isinstance(head, DownstreamHead):
        raise refuse("head", name, "the factory", f"returned {type(head).__name__}, not a DownstreamHead", registry)
    return head


def resolve_init(init: str) -> Path | None:
    """None for 'none'; else the pre-training run directory (an export/ dir is accepted too)."""
    if init.strip().lower() == "none":
        return None
    path = Path(init)
    if path.name == EXPORT_DIR and (path / "manifest.json").is_file():
        return path.parent
    return path


def initial_network(config: FinetuneConfig, registry) -> tuple[SharedNetwork, dict[str, Any] | None]:
    """The initial network: the export's (strict load) or a fresh one; plus the export manifest."""
    run_dir = resolve_init(config.init)
    if run_dir is None:
        return build_network(network_config(config.model, registry), registry), None
    network, manifest = load_pretrained_network(run_dir, registry)
    if config.model is not None and config.model != network.config:
        raise SsmtlError(
            f"model is set but init={config.init} loads an export with a different model config "
            f"({network.config.model_dump()}); drop the model options when starting from an export"
        )
    if config.init_parts == "encoder":
        fresh = build_network(network.config, registry)  # random decoder, from the seeded RNG
        fresh.encoder.load_state_dict(network.encoder.state_dict(), strict=True)
        network = fresh
    return network, manifest


def check_network(network: SharedNetwork, cache: SliceCache) -> None:
    if network.info.in_channels != 1:
        raise SsmtlError(
            f"the network expects {network.info.in_channels} input channels but cache slices have 1"
        )
    check_slice_shapes(cache)


def cache_classes(cache: SliceCache) -> tuple[int, dict[int, str]]:
    """``(num_classes, {class id: name})``; errors when the cache cannot train a segmentation."""
    if not any(v.has_label for v in cache.volumes):
        raise SsmtlError(f"{cache.path}: the cache has no labeled volumes; fine-tuning needs labels")
    if cache.num_classes < 2:
        raise SsmtlError(f"{cache.path}: the cache names {cache.num_classes} class(es); segmentation needs background plus at least one class")
    names = {c: cache.class_names.get(c, f"class_{c}") for c in range(cache.num_classes)}
    return cache.num_classes, names


class SegmentationObjective(nn.Module):
    """What one fine-tuning step computes, in the training loop's terms (the unit DDP wraps).

    ``forward((images, labels), step)`` augments the pair (one random affine per slice,
    applied to image and label alike), runs the model, and returns the head's loss as
    ``(total, losses (1,), weights (1,), metrics)``. The augmentation mirrors only along
    ``flip_axes``, the data's declaration (the cache's ``flip_axes``).

    The encoder is **frozen** at step ``step`` (0-based) with ``freeze_encoder`` (every
    step; its parameters are then left out of the optimiser) or while ``step < lp_steps``
    (LP-FT's first phase): its parameters get no gradient and it stays in eval mode, so
    its BatchNorm statistics do not move either. Whether it is frozen is a function of
    the step, so a resumed run is in the same phase as an uninterrupted one.
    """

    def __init__(self, model: "FinetuneModel", augment: AugmentConfig, freeze_encoder: bool = False, lp_steps: int = 0,
                 flip_axes: tuple[int, ...] = ()):
        super().__init__()
        self.model = model
        self.augment = augment
        self.freeze_encoder = freeze_encoder
        self.lp_steps = lp_steps
        self.flip_axes = tuple(flip_axes)
        self.encoder_frozen = False
        self._set_encoder_frozen(freeze_encoder)  # LP-FT freezes at its first step: the optimiser holds the encoder

    def frozen_at(self, step: int) -> bool:
        """Whether the encoder is frozen at (0-based) step ``step``."""
        return self.freeze_encoder or step < self.lp_steps

    def _set_encoder_frozen(self, frozen: bool) -> None:
        encoder = self.model.network.encoder
        if frozen != self.encoder_frozen:
            encoder.requires_grad_(not frozen)
            self.encoder_frozen = frozen
        encoder.train(self.training and not frozen)  # frozen means frozen: no BatchNorm statistics updates either

    def train(self, mode: bool = True) -> "SegmentationObjective":
        super().train(mode)
        if self.encoder_frozen:
            self.model.network.encoder.eval()
        return self

    def forward(self, batch: tuple[torch.Tensor, torch.Tensor], step: int):
        self._set_encoder_frozen(self.frozen_at(step))
        images, labels = augment_pair(*batch, self.augment, self.flip_axes)
        logits = self.model(images)
        name, registry = plugin_name(self.model.head), self.model.registry
        with plugin_call("head", name, "loss", registry):
            loss = self.model.head.loss(logits, labels)
        loss = checked_loss("head", name, "loss", loss, registry)
        value = loss.detach().float()
        return loss, value.reshape(1), torch.ones(1, device=value.device), {}


def load_finetuned(run_dir: Path, registry) -> tuple[FinetuneModel, dict[str, Any]]:
    """Rebuild network + head from ``run.json`` and load ``model.safetensors`` with ``strict=True``."""
    run_dir = Path(run_dir)
    run = read_run_json(run_dir)
    network = build_network(network_config(run["model"], registry), registry)
    head_options = {k: v for k, v in run["head"].items() if k != "name"}
    head = build_head(registry, run["head"]["name"], head_options, network, int(run["num_classes"]))
    model = FinetuneModel(network, head, registry)
    weights = run_dir / WEIGHTS
    try:
        state = load_file(weights)
    except Exception as exc:
        raise SsmtlError(f"{weights}: cannot read weights ({exc})") from None
    # NaN or Inf weights predict background everywhere and score Dice 0 without a word: refuse them here,
    # the one place fine-tuned weights are loaded (predict, evaluate, report, export)
    check_finite_weights(state, str(weights), "refusing to load them (the file is damaged, or the run diverged)")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise SsmtlError(f"{weights}: weights do not match run.json: {first}") from None
    return model, run
