"""The optimiser and learning-rate schedule every training run uses.

AdamW with decoupled weight decay on weights only (norm scales, biases and learned
loss-weighting parameters are not decayed: decaying a BatchNorm scale or a task's
log-variance towards 0 has no regularising meaning), and a linear warm-up followed by
a cosine decay to 0 at the last step.

A run may split its parameters into named **parts** (:class:`ParamPart`: fine-tuning's
head, encoder and decoder), each with its own multiplier of the peak learning rate and
the step at which it joins the training; the decay / no-decay split is kept inside each
part. A schedule may also **restart** at given steps (:func:`phased_lr_lambda`): each
phase has its own warm-up and its own cosine to 0 at the phase's end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn


@dataclass(frozen=True)
class ParamPart:
    """The parameters whose names start with one of ``prefixes`` (``""``: all the others).

    Their peak learning rate is ``lr_scale`` times the run's; before step ``joins_at``
    their learning rate is 0 (a part frozen for the first steps gets no update then).
    """

    name: str
    prefixes: tuple[str, ...]
    lr_scale: float = 1.0
    joins_at: int = 0


def parameter_groups(module: nn.Module, weight_decay: float, no_decay_prefixes: tuple[str, ...] = ("weighting.",),
                     parts: Sequence[ParamPart] | None = None) -> list[dict[str, Any]]:
    """AdamW groups of ``module``'s trainable parameters.

    Without ``parts``: two groups, decayed weights and undecayed norms, biases and
    ``no_decay_prefixes``. With ``parts``: those two groups for each part, in the parts'
    order (a parameter belongs to the first part whose prefix its name starts with;
    one that matches none is an error), each group carrying ``part``, ``decay`` and
    ``lr_scale``; a part without trainable parameters has no group.
    """
    named = [(name, p) for name, p in module.named_parameters() if p.requires_grad]
    no_decay = lambda name, p: p.ndim <= 1 or name.startswith(no_decay_prefixes)  # noqa: E731
    if parts is None:
        return [{"params": [p for n, p in named if not no_decay(n, p)], "weight_decay": weight_decay},
                {"params": [p for n, p in named if no_decay(n, p)], "weight_decay": 0.0}]
    members: dict[str, list[tuple[str, nn.Parameter]]] = {part.name: [] for part in parts}
    for name, p in named:
        part = next((part for part in parts if name.startswith(part.prefixes)), None)
        if part is None:
            raise ValueError(f"parameter {name!r} belongs to none of the parts {[part.name for part in parts]}")
        members[part.name].append((name, p))
    groups = []
    for part in parts:
        for decayed in (True, False):
            params = [p for n, p in members[part.name] if no_decay(n, p) != decayed]
            if params:
                groups.append({"params": params, "weight_decay": weight_decay if decayed else 0.0,
                               "part": part.name, "decay": decayed, "lr_scale": part.lr_scale})
    return groups


def lr_lambda(warmup: int, total: int) -> Callable[[int], float]:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``.

    The factor of step ``k`` (0-based: the step that makes update ``k + 1``) is
    ``(k + 1) / warmup`` during the warm-up, then ``(1 + cos(pi (k - warmup) / (total - warmup))) / 2``.
    """
    warmup = min(warmup, max(total - 1, 0))

    def factor(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def phased_lr_lambda(warmup: int, total: int, restarts: Sequence[int] = (), joins_at: int = 0) -> Callable[[int], float]:
    """:func:`lr_lambda` restarted at each step of ``restarts``: every phase warms up over
    ``warmup`` steps (at most its length) and decays to 0 at its own end; 0 before ``joins_at``.

    Without restarts (and ``joins_at`` 0) this is :func:`lr_lambda` over ``total`` steps.
    """
    bounds = [0, *sorted(s for s in set(restarts) if 0 < s < total), total]
    phases = [(start, lr_lambda(warmup, end - start)) for start, end in zip(bounds, bounds[1:])]

    def factor(step: int) -> float:
        if step < joins_at:
            return 0.0
        start, phase = next((start, phase) for start, phase in reversed(phases) if step >= start)
        return phase(step - start)

    return factor


def build_optimizer(module: nn.Module, *, lr: float, weight_decay: float, warmup_steps: int, total_steps: int,
                    parts: Sequence[ParamPart] | None = None, restarts: Sequence[int] = ()):
    """``(AdamW, LambdaLR)`` for ``module``'s trainable parameters.

    With ``parts``, each part's groups start at ``lr * lr_scale`` and follow the schedule
    (:func:`phased_lr_lambda`, restarted at ``restarts``) from the part's ``joins_at`` on.
    """
    groups = parameter_groups(module, weight_decay, parts=parts)
    if parts is None:
        optimizer = torch.optim.AdamW(groups, lr=lr)
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(warmup_steps, total_steps))
    joins = {part.name: part.joins_at for part in parts}
    for group in groups:
        group["lr"] = lr * group["lr_scale"]
    optimizer = torch.optim.AdamW(groups, lr=lr)
    factors = [phased_lr_lambda(warmup_steps, total_steps, restarts, joins[group["part"]]) for group in groups]
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factors)
