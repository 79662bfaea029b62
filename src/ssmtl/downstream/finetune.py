"""Fine-tuning the shared U-Net plus a downstream head on a few labeled volumes.

The protocol follows the paper's few-label setting: a fixed, subject-level test set
(drawn with ``split_seed`` from the labeled subjects, so every method and every
training seed is scored on the same subjects), ``labeled_volumes`` labeled training
subjects, and 2D training on their slices. The network starts either from a
pre-training export (``init=RUN_DIR``, loaded with ``strict=True``) or from scratch
(``init="none"``), which is the baseline the pre-training is compared against.

A run directory holds ``config.json``, ``split.json`` (the exact subjects, seeds and
chosen labeled subjects), ``metrics.jsonl`` (step, loss, lr), ``model.safetensors``
(``network.*`` and ``head.*``) and ``run.json`` (what evaluation needs to rebuild the
model, and where the initial weights came from).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import save_file
from torch import nn

from ssmtl import __version__
from ssmtl.core.augment import AugmentConfig, random_affine, random_intensity
from ssmtl.api.geometry import apply_affine
from ssmtl.data.build import validate_model
from ssmtl.data.cache import SliceCache
from ssmtl.pretrain.engine import allow_precision, lr_lambda, parameter_groups
from ssmtl.api.errors import SsmtlError
from ssmtl.core.export import EXPORT_DIR, load_pretrained_network
from ssmtl.api.heads import DownstreamHead
from ssmtl.core.model import ModelConfig, UNet
from ssmtl.core.rundir import prepare_run_dir, write_json_atomic
from ssmtl.data.splits import choose_labeled, split_cache, volumes_of

WEIGHTS = "model.safetensors"


def finetune_augment() -> AugmentConfig:
    """Milder augmentation than pre-training: the labels must stay meaningful.

    No left-right flip: whole-heart structures are lateralised (left vs right
    ventricle/atrium), so a flipped slice would teach the wrong side. Small rotations
    and crops, light contrast/brightness/gamma, no blur or noise.
    """
    return AugmentConfig(
        flip=0.0, rotate=10.0, crop_scale=(0.85, 1.0), translate=0.05,
        contrast=0.1, brightness=0.1, gamma=(0.9, 1.1), blur=0.0, noise=0.0,
    )


class FinetuneConfig(BaseModel):
    """Everything a fine-tuning run needs. Saved as config.json in the run directory."""

    model_config = ConfigDict(extra="forbid")
    data: Path = Field(description="HDF5 slice cache with labels (built by `ssmtl cache build`).")
    out: Path = Field(description="Run directory (must be new or empty).")
    init: str = Field("none", description="'none' (random init, the baseline) or a pre-training run directory with an export/.")
    init_parts: Literal["all", "encoder"] = Field("all", description="What to load from the export: 'all' (encoder and decoder) or 'encoder' (the decoder starts from random init, seeded by `seed`: the ablation of decoder pre-training).")
    labeled_volumes: int = Field(2, ge=1, description="Labeled training subjects to fine-tune on (all labeled volumes of each chosen subject are used).")
    steps: int = Field(300, ge=1, description="Optimizer steps.")
    batch_size: int = Field(16, ge=1, description="Slices per process per step.")
    lr: float = Field(1e-3, gt=0, description="Peak AdamW learning rate (cosine decay to 0).")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay (not on norms and biases).")
    seed: int = Field(0, description="Seed for head/scratch initialisation, slice sampling and augmentation.")
    split_seed: int = Field(
        0,
        description="Seed of the subject-level test split. Keep it fixed across methods and training seeds "
        "so that every run is evaluated on the same test subjects.",
    )
    labeled_seed: int | None = Field(None, description="Seed choosing the labeled training subjects (default: split_seed, so every method sees the same labels).")
    test_fraction: float = Field(0.3, ge=0, lt=1, description="Fraction of the labeled subjects held out for testing (at least one).")
    head: str | None = Field(None, description="Downstream head plugin (None: the plugins' default head, see `ssmtl plugins`).")
    head_options: dict[str, Any] = Field(default_factory=dict, description="Options of the head's config model.")
    model: ModelConfig | None = Field(None, description="Network for init='none' (default: ModelConfig defaults). With an export, the export decides.")
    mixed_precision: Literal["no", "bf16", "fp16"] = Field("no", description="Autocast precision.")
    freeze_encoder: bool = Field(False, description="Train only the decoder and head (encoder weights and norm statistics stay fixed).")
    augment: AugmentConfig = Field(default_factory=finetune_augment, description="Random affine (image and label alike) and intensity augmentation.")
    num_workers: int = Field(0, ge=0, le=64, description="Data loader worker processes.")
    class_balance: float = Field(0.0, ge=0, le=1, description="Fraction of the sampled slices chosen class first: a foreground class uniformly, then a slice that shows it (oversampling of small structures, as nnU-Net oversamples foreground); the rest uniformly from all slices. 0: uniform.")

    def with_defaults(self, registry) -> "FinetuneConfig":
        """This config with what it leaves to the plugins (the head) taken from ``registry``."""
        return self if self.head is not None else self.model_copy(update={"head": registry.default_head()})


# -- model ---------------------------------------------------------------------------------


class FinetuneModel(nn.Module):
    """The shared network and the head; ``forward`` returns the head's logits.

    Its state dict has exactly the ``network.*`` and ``head.*`` keys of the saved weights.
    """

    def __init__(self, network: UNet, head: DownstreamHead):
        super().__init__()
        self.network = network
        self.head = head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.network(images).decoder)


def build_head(registry, name: str, options: dict[str, Any], network: UNet, num_classes: int) -> DownstreamHead:
    """Validate the head's options with its plugin's config model and build it."""
    spec = registry.head(name)
    config = validate_model(spec.config_model, {**options, "name": name}, prefix=name)
    head = spec.factory(config, network.info, num_classes)
    if not isinstance(head, DownstreamHead):
        raise SsmtlError(f"head {name!r}: factory returned {type(head).__name__}, not a DownstreamHead")
    return head


def resolve_init(init: str) -> Path | None:
    """None for 'none'; else the pre-training run directory (an export/ dir is accepted too)."""
    if init.strip().lower() == "none":
        return None
    path = Path(init)
    if path.name == EXPORT_DIR and (path / "manifest.json").is_file():
        return path.parent
    return path


def build_network(config: FinetuneConfig) -> tuple[UNet, dict[str, Any] | None]:
    """The initial network: the export's (strict load) or a fresh one; plus the export manifest."""
    run_dir = resolve_init(config.init)
    if run_dir is None:
        return UNet(config.model or ModelConfig()), None
    network, manifest = load_pretrained_network(run_dir)
    if config.model is not None and config.model != network.config:
        raise SsmtlError(
            f"model is set but init={config.init} loads an export with a different model config "
            f"({network.config.model_dump()}); drop the model options when starting from an export"
        )
    if config.init_parts == "encoder":
        fresh = UNet(network.config)  # random decoder, from the seeded RNG
        fresh.encoder.load_state_dict(network.encoder.state_dict(), strict=True)
        network = fresh
    return network, manifest


def check_network(network: UNet, cache: SliceCache) -> None:
    if network.config.in_channels != 1:
        raise SsmtlError(
            f"the network expects {network.config.in_channels} input channels but cache slices have 1"
        )
    shapes = {v.shape[1:] for v in cache.volumes}
    if len(shapes) > 1:
        raise SsmtlError(f"{cache.path}: volumes have different slice shapes {sorted(shapes)}; rebuild the cache with one size")


def cache_classes(cache: SliceCache) -> tuple[int, dict[int, str]]:
    """``(num_classes, {class id: name})``; errors when the cache cannot train a segmentation."""
    if not any(v.has_label for v in cache.volumes):
        raise SsmtlError(f"{cache.path}: the cache has no labeled volumes; fine-tuning needs labels")
    if cache.num_classes < 2:
        raise SsmtlError(f"{cache.path}: the cache names {cache.num_classes} class(es); segmentation needs background plus at least one class")
    names = {c: cache.class_names.get(c, f"class_{c}") for c in range(cache.num_classes)}
    return cache.num_classes, names


# -- data ----------------------------------------------------------------------------------


class LabeledSliceDataset(torch.utils.data.Dataset):
    """(image (1, H, W) float32, label (H, W) int64) pairs: every slice of the given volumes."""

    def __init__(self, cache: SliceCache, volumes: list[int]):
        self.cache = cache
        self.items = np.array(
            [(v, s) for v in volumes for s in range(cache.volumes[v].num_slices)], dtype=np.int64
        ).reshape(-1, 2)
        self._presence: np.ndarray | None = None

    def class_presence(self) -> np.ndarray:
        """(slices, classes) bool: which classes each slice shows (read once; few labeled volumes)."""
        if self._presence is None:
            num_classes = self.cache.num_classes
            rows = []
            for v in dict.fromkeys(int(v) for v in self.items[:, 0]):
                label = self.cache.read_label(v)  # the labels only: the images are not needed here
                flat = label.reshape(label.shape[0], -1).astype(np.int64)
                present = np.zeros((label.shape[0], num_classes), dtype=bool)
                for c in range(num_classes):
                    present[:, c] = (flat == c).any(axis=1)
                rows.append(present)
            self._presence = np.concatenate(rows) if rows else np.zeros((0, num_classes), dtype=bool)
        return self._presence

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        v, s = (int(x) for x in self.items[i])
        image = self.cache.read_slices(v, np.array([s]))
        label = self.cache.read_label_slice(v, s)
        return torch.from_numpy(np.ascontiguousarray(image)), torch.from_numpy(label.astype(np.int64))


def augment_pair(
    images: torch.Tensor, labels: torch.Tensor, config: AugmentConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """One random affine per sample, applied identically to the images and their labels.

    Images are resampled bilinearly; labels with nearest-neighbour on their float
    values (interpolating class ids would invent classes between neighbours). The
    intensity transforms touch the images only.
    """
    theta = random_affine(images.shape[0], config, images.device)
    images = apply_affine(images, theta)
    warped = apply_affine(labels[:, None].float(), theta, mode="nearest")
    return random_intensity(images, config), warped[:, 0].round().long()


# -- run -----------------------------------------------------------------------------------


def _save_weights(model: nn.Module, path: Path) -> None:
    """Write a state dict as safetensors via a temporary file, so ``path`` is never half-written."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file(tensors, tmp)
    os.replace(tmp, path)


def _init_record(config: FinetuneConfig, manifest: dict[str, Any] | None, test: list[str]) -> dict[str, Any]:
    """What run.json says about the initial weights, including whether pre-training saw test subjects."""
    if manifest is None:
        return {"init": "none", "init_manifest": None, "init_saw_test_subjects": []}
    data = manifest.get("data") or {}
    seen = sorted(set(data.get("volumes") or []) & set(test))
    return {
        "init": str(resolve_init(config.init)),
        "init_parts": config.init_parts,
        "init_manifest": {
            "tasks": manifest.get("tasks"),
            "steps": manifest.get("steps"),
            "data": {"path": data.get("path"), "fingerprint": data.get("fingerprint")},
            "created": manifest.get("created"),
            "model": manifest.get("model"),
        },
        # self-supervised pre-training on the test images is transductive: flag it, don't hide it
        "init_saw_test_subjects": seen,
    }


def run_finetune(config: FinetuneConfig, registry=None, progress: bool = True) -> dict[str, Any]:
    """Fine-tune ``config.init`` (or a fresh network) on ``config.labeled_volumes`` labeled subjects."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    if registry is None:
        from ssmtl.core.registry import get_registry

        registry = get_registry()
    config = config.with_defaults(registry)
    allow_precision(config.mixed_precision)
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=config.mixed_precision)
    main = accelerator.is_main_process
    out = Path(config.out)

    # every input is checked before the run directory is created
    cache = SliceCache(config.data)
    num_classes, class_names = cache_classes(cache)
    split = split_cache(cache, seed=config.split_seed, test_fraction=config.test_fraction)
    labeled_seed = config.split_seed if config.labeled_seed is None else config.labeled_seed
    labeled = choose_labeled(split["train"], config.labeled_volumes, labeled_seed)
    train_volumes = volumes_of(cache, labeled)
    set_seed(config.seed)
    network, manifest = build_network(config)
    check_network(network, cache)
    head = build_head(registry, config.head, config.head_options, network, num_classes)
    init = _init_record(config, manifest, split["test"])
    if init["init_saw_test_subjects"] and main:
        print(
            f"warning: the pre-training of {init['init']} used {len(init['init_saw_test_subjects'])} of the "
            f"{len(split['test'])} test subject(s) (unlabeled); results are transductive", file=sys.stderr,
        )

    if main:
        prepare_run_dir(out, resume=False)
        write_json_atomic(out / "config.json", config.model_dump(mode="json"))
        write_json_atomic(out / "split.json", {
            **split,
            "split_seed": config.split_seed,
            "test_fraction": config.test_fraction,
            "labeled_seed": labeled_seed,
            "labeled_volumes": config.labeled_volumes,
            "labeled": labeled,
            "train_volumes": [cache.volumes[v].name for v in train_volumes],
            "test_volumes": [cache.volumes[v].name for v in volumes_of(cache, split["test"])],
            "data": str(config.data),
            "data_fingerprint": cache.fingerprint,
        })
    accelerator.wait_for_everyone()

    model = FinetuneModel(network, head)
    if config.freeze_encoder:
        network.encoder.requires_grad_(False)
    optimizer = torch.optim.AdamW(parameter_groups(model, config.weight_decay), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(0, config.steps))
    loader = _loader(LabeledSliceDataset(cache, train_volumes), config, accelerator.num_processes)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    unwrapped: FinetuneModel = accelerator.unwrap_model(model)

    t_start = time.perf_counter()
    losses = _train(config, accelerator, model, unwrapped, optimizer, scheduler, loader, out if main else None, progress and main)
    seconds = time.perf_counter() - t_start

    if main:
        _save_weights(unwrapped, out / WEIGHTS)
        write_json_atomic(out / "run.json", {
            **init,
            "ssmtl_version": __version__,
            "data": {"path": str(config.data), "fingerprint": cache.fingerprint},
            "num_classes": num_classes,
            "class_names": {str(c): n for c, n in class_names.items()},
            "model": unwrapped.network.config.model_dump(mode="json"),
            "head": unwrapped.head.config.model_dump(mode="json"),
            "labeled_volumes": config.labeled_volumes,
            "labeled_subjects": labeled,
            "steps": config.steps,
            "seconds": seconds,
            "final_loss": losses[-1] if losses else None,
        })
    accelerator.wait_for_everyone()  # no end_training(): it would destroy a caller's process group
    return {
        "run_dir": str(out),
        "init": init["init"],
        "steps": config.steps,
        "seconds": seconds,
        "final_loss": losses[-1] if losses else None,
        "num_classes": num_classes,
        "labeled_subjects": labeled,
        "train_volumes": [cache.volumes[v].name for v in train_volumes],
        "test_subjects": split["test"],
    }


def slice_weights(presence: np.ndarray, class_balance: float) -> np.ndarray:
    """Sampling probability of every slice: the mixture ``(1 - b) * uniform + b * class-first``.

    Class-first draws a foreground class (column 1 onwards) uniformly among those some
    slice shows, then one of the slices that show it uniformly. ``presence`` is
    (slices, classes) bool. Without any foreground the weights are uniform.
    """
    n = presence.shape[0]
    uniform = np.full(n, 1.0 / n)
    foreground = presence[:, 1:]
    shown = foreground.any(axis=0)
    if class_balance == 0 or not shown.any():
        return uniform
    per_class = foreground[:, shown] / foreground[:, shown].sum(axis=0)  # each column sums to 1
    class_first = per_class.sum(axis=1) / shown.sum()
    return (1 - class_balance) * uniform + class_balance * class_first


def _loader(dataset: LabeledSliceDataset, config: FinetuneConfig, world: int) -> torch.utils.data.DataLoader:
    """Exactly ``steps`` batches per process, sampled with replacement from all training slices
    (weighted by :func:`slice_weights`).

    Sampling with replacement makes the step count independent of how many slices
    the few labeled volumes have.
    """
    generator = torch.Generator().manual_seed(config.seed)
    num_samples = config.steps * config.batch_size * world
    if config.class_balance > 0:
        weights = torch.from_numpy(slice_weights(dataset.class_presence(), config.class_balance))
        sampler = torch.utils.data.WeightedRandomSampler(weights, num_samples, replacement=True, generator=generator)
    else:
        sampler = torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=num_samples, generator=generator)
    return torch.utils.data.DataLoader(
        dataset, batch_size=config.batch_size, sampler=sampler, drop_last=True,
        num_workers=config.num_workers, persistent_workers=False,
    )


def _train(config, accelerator, model, unwrapped: FinetuneModel, optimizer, scheduler, loader, out: Path | None, progress: bool) -> list[float]:
    """The training loop; returns the (process-averaged) loss of every step."""
    metrics = open(out / "metrics.jsonl", "w") if out is not None else None
    bar = _Progress(progress, config.steps)
    losses: list[float] = []
    try:
        for step, (images, labels) in enumerate(loader):
            if step >= config.steps:
                break
            model.train()
            if config.freeze_encoder:
                unwrapped.network.encoder.eval()  # frozen means frozen: no BatchNorm statistics updates either
            images, labels = augment_pair(images, labels, config.augment)
            with accelerator.autocast():
                logits = model(images)
            loss = unwrapped.head.loss(logits, labels)
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            value = loss.detach().float()
            if accelerator.num_processes > 1:
                value = accelerator.reduce(value, reduction="mean")
            value = value.item()
            if not math.isfinite(value):
                raise SsmtlError(
                    f"step {step}: the loss is not finite ({value}); lower lr or use mixed_precision='no'"
                )
            losses.append(value)
            if metrics is not None:
                metrics.write(json.dumps({"step": step, "loss": value, "lr": scheduler.get_last_lr()[0]}) + "\n")
                metrics.flush()
            bar.update(step + 1, value)
    finally:
        bar.close()
        if metrics is not None:
            metrics.close()
    return losses


class _Progress:
    """A rich progress bar on the main process: step, loss, ETA."""

    def __init__(self, enabled: bool, total: int):
        self.enabled = enabled
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]finetune"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True),
        )
        self.task = self.progress.add_task("finetune", total=total, info="")
        self.progress.start()

    def update(self, done: int, loss: float) -> None:
        if self.enabled:
            self.progress.update(self.task, completed=done, info=f"loss={loss:.4f}")

    def close(self) -> None:
        if self.enabled:
            self.progress.stop()
