"""The ``train`` section every training command shares (:class:`LoopConfig`).

Apart from the loop that reads it (:mod:`ssmtl.training.loop`), so that a config can be read,
validated and shown without importing torch.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from ssmtl.api.rules import CONFIG_RULES
from ssmtl.training.trackers import Tracker


class LoopConfig(BaseModel):
    """The ``train`` section every training command shares: optimisation and bookkeeping.

    Pre-training and fine-tuning subclass it (their own defaults, their own extra fields,
    each its own ``steps``: a number for pre-training, a number or ``auto`` for fine-tuning);
    the loop reads only these fields, and is told where to stop.
    """

    model_config = CONFIG_RULES
    batch_size: int = Field(16, ge=1, description="Samples per process per micro-batch.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    lr: float = Field(1e-3, gt=0, description="Peak AdamW learning rate.")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay (not on norms and biases).")
    warmup_steps: int = Field(0, ge=0, description="Linear learning-rate warm-up steps, then cosine decay to 0.")
    grad_clip: float | None = Field(None, gt=0, description="Clip the global gradient norm (None: off).")
    mixed_precision: Literal["no", "bf16", "fp16"] | None = Field(
        None, description="Autocast precision. None: what `accelerate launch --mixed_precision` / `accelerate config` set, else no."
    )
    checkpoint_every: int = Field(200, ge=1, description="Save a resumable checkpoint every N steps.")
    keep_checkpoints: int = Field(2, ge=1, description="Checkpoints kept on disk (older ones are deleted).")
    log_every: int = Field(10, ge=1, description="Write metrics.jsonl every N steps.")
    max_nonfinite_steps: int = Field(10, ge=1, description="Stop after this many consecutive steps with a non-finite loss (each is skipped: no update).")
    max_skipped_share: float = Field(0.1, ge=0, le=1, description="Fail the run (exit 2, no final checkpoint, no export) once more than this share of its steps was skipped for a non-finite loss: such weights are not trained as asked. 1 turns the check off.")
    log_with: list[Tracker] = Field(default_factory=list, description="Experiment trackers that get every metrics.jsonl record: tensorboard, wandb (offline unless WANDB_MODE=online), mlflow (a file store in the run unless MLFLOW_TRACKING_URI is set), aim. Each writes under RUN_DIR/logs; each is an optional extra (pip install 'ssmtl[tensorboard]').")
