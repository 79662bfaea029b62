"""The fine-tuning configuration and where it comes from.

``ssmtl finetune`` resolves :class:`FinetuneConfig` like pre-training resolves its
config (:mod:`ssmtl.settings.sources`): defaults, then ``--config FILE``, then
``SSMTL_FINETUNE__*`` environment variables (``SSMTL_FINETUNE__TRAIN__STEPS=500``), then
flags, then ``--set``. The ``train`` section is the training loop's, shared with
pre-training (:class:`~ssmtl.training.loop.LoopConfig`), with fine-tuning's own defaults.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping

from pydantic import BaseModel, Field, SerializeAsAny, ValidationInfo, field_validator, model_validator

from ssmtl.api.rules import CONFIG_RULES, AbsolutePath, Seed
from ssmtl.api.errors import ConfigError
from ssmtl.training.augment_config import AugmentConfig
from ssmtl.training.loop_config import LoopConfig
from ssmtl.api.configs import NetworkConfig
from ssmtl.host.networks import context_registry, validate_network_field
from ssmtl.settings.sources import (
    ENV_PREFIX, blame_environment, dotted_paths, env_origins, flag_layer, layered, parse_set_flags, validate_model,
)

ENV = f"{ENV_PREFIX}FINETUNE__"


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


class FinetuneTrainConfig(LoopConfig):
    """The training loop of fine-tuning: 2D slices, sampled with replacement from the labeled volumes.

    ``steps: auto`` trains until the validation Dice stops improving (``patience`` steps
    without a new best, at most ``max_steps``); a number is a fixed schedule. ``select``
    says which weights are kept: the best validation step (when there are validation
    volumes), the last step, or the moving average of the weights. The recipe's options
    (warm-up, clipping, lr scales, LP-FT, selection) are explained in docs/finetune.md.
    """

    steps: Annotated[int, Field(ge=1)] | Literal["auto"] = Field("auto", description="Optimizer steps, or `auto`: stop on a validation plateau (patience, max_steps).")
    max_steps: int = Field(1000, ge=1, description="With steps=auto: the most steps (the cosine schedule spans them), and the fixed schedule when there is no validation.")
    patience: int = Field(200, ge=1, description="With steps=auto: stop after this many steps without a new best validation Dice.")
    min_delta: float = Field(0.001, ge=0, description="A validation Dice must beat the best by more than this to count as a new best.")
    validate_every: int = Field(50, ge=1, description="Validate every N steps (a multiple of log_every) and at the last step.")
    batch_size: int = Field(16, ge=1, description="Slices per process per micro-batch.")
    lr: float = Field(3e-3, gt=0, description="Peak AdamW learning rate of the head (cosine decay to 0); the encoder and decoder get it times their lr scales.")
    checkpoint_every: int = Field(100, ge=1, description="Save a resumable checkpoint every N steps.")
    # -- the recipe (docs/finetune.md): every option off by default, the same for every init --
    warmup_steps: int = Field(0, ge=0, description="Linear learning-rate warm-up steps, then cosine decay to 0; with lp_steps, each phase warms up again. 0: off (pre-training uses 50).")
    grad_clip: float | None = Field(None, gt=0, description="Clip the global gradient norm of all trained parameters to this value (None: off; pre-training uses 1.0).")
    encoder_lr_scale: float = Field(1.0, gt=0, description="The encoder's learning rate is lr times this (e.g. 0.1: a pre-trained encoder moves gently while the random head learns at lr). To freeze the encoder use freeze_encoder.")
    decoder_lr_scale: float = Field(1.0, gt=0, description="The decoder's learning rate is lr times this (the head always gets lr).")
    lp_steps: int = Field(0, ge=0, description="LP-FT: for the first N steps the encoder is frozen (no gradient, norm statistics fixed) and only the decoder and head train; then everything trains, on a restarted schedule (warm-up, cosine to 0 at the last step). 0: off.")
    select: Literal["best", "last", "ema"] = Field("best", description="Which weights the run keeps: best (the step with the best validation Dice), last (the last step of a fixed schedule; validation is reported but selects nothing; needs a number of steps) or ema (the exponential moving average of the weights at the end, see ema_decay).")
    ema_decay: float = Field(0.99, gt=0, lt=1, description="With select=ema: avg <- decay * avg + (1 - decay) * weights after each step; 0.99 averages about the last 100 steps and keeps 0.004% of the start after 1000 (0.999 would keep 37%).")

    @field_validator("steps", mode="before")
    @classmethod
    def _number_or_auto(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip().lower()
            if text == "auto":
                return text
            try:
                return int(text)
            except ValueError:
                raise ValueError(f"expected a number of steps or auto, got {value!r}") from None
        return value

    @model_validator(mode="after")
    def _validation_on_log_steps(self) -> "FinetuneTrainConfig":
        if self.validate_every % self.log_every:
            raise ValueError(f"validate_every ({self.validate_every}) must be a multiple of log_every ({self.log_every})")
        return self

    @model_validator(mode="after")
    def _recipe_fits_the_schedule(self) -> "FinetuneTrainConfig":
        if self.select == "last" and self.steps == "auto":
            raise ValueError("select=last keeps the last step of a fixed schedule; set steps to a number "
                             "(steps=auto stops whenever the validation Dice plateaus)")
        if self.lp_steps and self.lp_steps >= self.schedule_steps:
            raise ValueError(f"lp_steps ({self.lp_steps}) must be less than the schedule's {self.schedule_steps} steps "
                             "(steps, or max_steps with steps=auto), or the encoder never trains")
        return self

    @property
    def schedule_steps(self) -> int:
        """The steps the learning-rate schedule and the sampler span."""
        return self.max_steps if self.steps == "auto" else self.steps


class FinetuneConfig(BaseModel):
    """Everything a fine-tuning run needs. Saved as config.json in the run directory."""

    model_config = CONFIG_RULES
    data: AbsolutePath | list[AbsolutePath] | None = Field(None, description="HDF5 slice cache with labels (built by `ssmtl cache build`), a folder of caches, or a list: several caches fine-tune as one dataset when they name the same classes.")
    out: Path | None = Field(None, description="Run directory (must be new or empty).")
    init: str = Field("none", description="'none' (random init, the baseline) or a pre-training run directory with an export/.")
    init_parts: Literal["all", "encoder"] = Field("all", description="What to load from the export: 'all' (encoder and decoder) or 'encoder' (the decoder starts from random init, seeded by `seed`: the ablation of decoder pre-training).")
    labeled_volumes: int = Field(2, ge=1, description="Labeled training subjects to fine-tune on (all labeled volumes of each chosen subject are used).")
    seed: Seed = Field(0, description="Seed for head/scratch initialisation, slice sampling and augmentation.")
    split_seed: Seed = Field(
        0,
        description="Seed of the subject-level test split. Keep it fixed across methods and training seeds "
        "so that every run is evaluated on the same test subjects.",
    )
    labeled_seed: Seed | None = Field(None, description="Seed choosing the labeled training subjects (default: split_seed, so every method sees the same labels).")
    test_fraction: float = Field(0.3, ge=0, lt=1, description="Fraction of the labeled subjects held out for testing (at least one).")
    head: str | None = Field(None, description="Downstream head plugin (None: the plugins' default head, see `ssmtl plugins`).")
    head_options: dict[str, Any] = Field(default_factory=dict, description="Options of the head's config model.")
    model: SerializeAsAny[NetworkConfig] | None = Field(None, description="Network for init='none' (`name` picks the network plugin; default: the plugins' default network with its defaults). With an export, the export decides.")
    freeze_encoder: bool = Field(False, description="Train only the decoder and head (encoder weights and norm statistics stay fixed). With init=none it is a control: a frozen random encoder, the floor of the frozen protocol.")
    augment: AugmentConfig = Field(default_factory=finetune_augment, description="Random affine (image and label alike) and intensity augmentation.")
    num_workers: int = Field(0, ge=0, le=64, description="Data loader worker processes.")
    train: FinetuneTrainConfig = Field(default_factory=lambda: FinetuneTrainConfig(), description="Optimisation and bookkeeping (the training loop shared with pre-training).")
    validation: Literal["auto", "budget", "none"] = Field("auto", description="Validation volumes: auto (the split's val subjects, else up to val_volumes labeled subjects the budget leaves unused, else none), budget (carve 20% of the labeled budget, at least 1) or none.")
    val_volumes: int = Field(2, ge=0, description="With validation=auto and no val split: at most this many unused labeled subjects validate.")
    val_fraction: float = Field(0.0, ge=0, lt=1, description="Fraction of the labeled subjects drawn as val subjects when the cache stores no split.")
    class_balance: float = Field(0.0, ge=0, le=1, description="Fraction of the sampled slices chosen class first: a foreground class uniformly, then a slice that shows it (oversampling of small structures, as nnU-Net oversamples foreground); the rest uniformly from all slices. 0: uniform.")

    @model_validator(mode="after")
    def _frozen_or_lp_ft(self) -> "FinetuneConfig":
        if self.freeze_encoder and self.train.lp_steps:
            raise ValueError(f"freeze_encoder keeps the encoder frozen for the whole run, train.lp_steps={self.train.lp_steps} "
                             "would train it after the first steps; set one of them")
        return self

    @field_validator("init")
    @classmethod
    def _absolute_init(cls, value: str) -> str:
        """A run directory is stored absolute, so the run can be used from any directory."""
        return value if value.strip().lower() == "none" else os.path.abspath(value)

    @field_validator("model", mode="before")
    @classmethod
    def _resolve_model(cls, value: Any, info: ValidationInfo) -> NetworkConfig | None:
        return None if value is None else validate_network_field(value, context_registry(info))

    def with_defaults(self, registry) -> "FinetuneConfig":
        """This config with what it leaves to the plugins (the head) taken from ``registry``."""
        return self if self.head is not None else self.model_copy(update={"head": registry.default_head()})


def resolve_finetune_config(
    *,
    file: Path | None = None,
    flags: Mapping[str, Any] | None = None,
    sets: list[str] | None = None,
    environ: Mapping[str, str] | None = None,
    registry,
) -> FinetuneConfig:
    """Merge file, ``SSMTL_FINETUNE__*`` variables, flags and ``--set``; validate once, against
    the plugins of ``registry`` (the network a ``model`` table names)."""
    merged = layered(FinetuneConfig, env_prefix=ENV, file=file, flags=flags, sets=sets or (), environ=environ)
    try:
        return validate_model(FinetuneConfig, merged, prefix="finetune", context={"registry": registry})
    except ConfigError as exc:
        later = dotted_paths(flag_layer(flags)) + [key for key, _ in parse_set_flags(sets or ())]
        raise blame_environment(exc, env_origins(ENV, FinetuneConfig.model_fields, environ), later, "finetune", environ) from None
