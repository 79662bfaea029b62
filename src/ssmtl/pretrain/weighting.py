"""Combining task losses into the one loss that is back-propagated.

Every scheme multiplies each task's loss by its configured ``weight`` and by its
warm-up ramp ``min(1, step / warmup_steps)``, then applies its own adaptive factor.
``forward`` returns the total and the *effective* weight of every task (what the
raw loss was multiplied by), which the engine logs.

* :class:`FixedWeighting`: the configured weights alone.
* :class:`UncertaintyWeighting`: Kendall, Gal & Cipolla, "Multi-Task Learning Using
  Uncertainty to Weigh Losses", CVPR 2018. A learned log-variance ``s_i`` per task:
  ``L = sum_i exp(-s_i) * L_i + s_i`` (the regression form, used for every task as
  is common practice); effective weight ``exp(-s_i)``.
* :class:`DynamicWeightAverage`: Liu, Johns & Davison, "End-to-End Multi-Task
  Learning with Attention", CVPR 2019. ``w_i = n * softmax(r_i / T)`` where
  ``r_i = L_i(t-1) / L_i(t-2)``; tasks whose loss falls slowly get more weight. Loss
  levels are smoothed with an EMA per step (the paper uses epoch means).
"""

from __future__ import annotations

import torch
from torch import nn


class LossWeighting(nn.Module):
    """Base class: configured weights and warm-up ramps; subclasses add an adaptive factor."""

    def __init__(self, names: list[str], weights: dict[str, float], warmups: dict[str, int]):
        super().__init__()
        self.names = list(names)
        self.register_buffer("base", torch.tensor([float(weights[n]) for n in self.names]), persistent=False)
        self.warmups = [int(warmups.get(n, 0)) for n in self.names]

    def ramp(self, step: int, device) -> torch.Tensor:
        values = [min(1.0, step / w) if w > 0 else 1.0 for w in self.warmups]
        return torch.tensor(values, device=device)

    def adaptive(self, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(factor per task, extra loss term). Default: no adaptation."""
        return torch.ones_like(losses), losses.new_zeros(())

    def forward(self, losses: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, torch.Tensor]:
        stacked = torch.stack([losses[n].float() for n in self.names])
        factor, extra = self.adaptive(stacked)
        weights = self.base.to(stacked.device) * self.ramp(step, stacked.device) * factor
        total = (weights * stacked).sum() + extra
        return total, weights.detach()


class FixedWeighting(LossWeighting):
    """The configured per-task weights (``--task NAME:WEIGHT``) and warm-up ramps."""


class UncertaintyWeighting(LossWeighting):
    """Learned homoscedastic-uncertainty weights (Kendall et al., 2018)."""

    def __init__(self, names, weights, warmups):
        super().__init__(names, weights, warmups)
        self.log_vars = nn.Parameter(torch.zeros(len(self.names)))

    def adaptive(self, losses):
        precision = torch.exp(-self.log_vars)
        # the regulariser is ramped with its task so a warming-up task adds no pull on s_i
        return precision, self.log_vars.sum()


class DynamicWeightAverage(LossWeighting):
    """Dynamic weight average (Liu et al., 2019) on EMA-smoothed loss levels."""

    def __init__(self, names, weights, warmups, temperature: float = 2.0, smoothing: float = 0.9):
        super().__init__(names, weights, warmups)
        self.temperature = temperature
        self.smoothing = smoothing
        self.register_buffer("previous", torch.zeros(len(self.names)))
        self.register_buffer("current", torch.zeros(len(self.names)))
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))

    def adaptive(self, losses):
        detached = losses.detach().float()
        with torch.no_grad():
            # both levels start at the first loss; a tensor condition, not `if int(seen)`,
            # so that the step makes no host-device sync
            first = self.seen == 0
            smoothed = torch.add(self.current * self.smoothing, detached, alpha=1 - self.smoothing)
            self.previous.copy_(torch.where(first, detached, self.current))
            self.current.copy_(torch.where(first, detached, smoothed))
            self.seen.add_(1)
            ratio = self.current / self.previous.clamp_min(1e-12)
            factor = len(self.names) * torch.softmax(ratio / self.temperature, dim=0)
        return factor, losses.new_zeros(())


SCHEMES = {"fixed": FixedWeighting, "uncertainty": UncertaintyWeighting, "dwa": DynamicWeightAverage}


def build_weighting(scheme: str, names: list[str], weights: dict[str, float], warmups: dict[str, int], temperature: float = 2.0) -> LossWeighting:
    if scheme not in SCHEMES:
        raise ValueError(f"unknown weighting scheme {scheme!r}; available: {', '.join(SCHEMES)}")
    if scheme == "dwa":
        return DynamicWeightAverage(names, weights, warmups, temperature=temperature)
    return SCHEMES[scheme](names, weights, warmups)
