"""The optimiser and learning-rate schedule every training run uses.

AdamW with decoupled weight decay on weights only (norm scales, biases and learned
loss-weighting parameters are not decayed: decaying a BatchNorm scale or a task's
log-variance towards 0 has no regularising meaning), and a linear warm-up followed by
a cosine decay to 0 at the last step.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn


def parameter_groups(module: nn.Module, weight_decay: float, no_decay_prefixes: tuple[str, ...] = ("weighting.",)) -> list[dict[str, Any]]:
    """Two AdamW groups: decayed weights, and undecayed norms, biases and ``no_decay_prefixes``."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.startswith(no_decay_prefixes) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_lambda(warmup: int, total: int) -> Callable[[int], float]:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    warmup = min(warmup, max(total - 1, 0))

    def factor(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def build_optimizer(module: nn.Module, *, lr: float, weight_decay: float, warmup_steps: int, total_steps: int):
    """``(AdamW, LambdaLR)`` for ``module``'s trainable parameters."""
    optimizer = torch.optim.AdamW(parameter_groups(module, weight_decay), lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(warmup_steps, total_steps))
    return optimizer, scheduler
