"""Combining task losses into the one loss that is back-propagated.

Every scheme starts from each task's configured ``weight`` ``w_i`` times its warm-up
ramp ``r_i(t) = min(1, t / warmup_steps)`` (the *prior* ``p_i = w_i r_i``), then applies
its own adaptive factor. ``forward`` returns the total and the *effective* weight of
every task (what the raw loss was multiplied by), which the engine logs.

With ``weighting.normalise`` (:mod:`ssmtl.pretraining.loss_scale`) every scheme sees
``L_i / c_i`` instead of ``L_i``, ``c_i`` being task i's mean loss over the first
``normalise_steps`` steps; the effective weight then includes the ``1 / c_i``.

* :class:`FixedWeighting`: ``L = sum_i p_i L_i``.
* :class:`UncertaintyWeighting`: Kendall, Gal & Cipolla, "Multi-Task Learning Using
  Uncertainty to Weigh Losses", CVPR 2018, with a learned log-variance ``s_i`` per task::

      L = sum_i p_i * (exp(-s_i) * L_i + s_i)

  The bracket is the paper's regression form with ``s = log sigma^2`` (its 1/2 factors
  dropped, a constant scale, as is common practice), used for every task. The prior
  multiplies **both** terms: at the optimum ``exp(-s_i) = 1 / L_i`` still, so the
  effective weight ``p_i exp(-s_i)`` converges to ``w_i / L_i`` and the configured
  weights keep their meaning (without ``p_i`` on the bracket every task converged to
  ``1 / L_i`` whatever its weight), and a task still warming up (``r_i = 0``) puts no
  pull on its ``s_i``.
* :class:`DynamicWeightAverage`: Liu, Johns & Davison, "End-to-End Multi-Task Learning
  with Attention", CVPR 2019, eq. (7)::

      lambda_i(k) = K exp(q_i(k-1) / T) / sum_j exp(q_j(k-1) / T),   q_i(k-1) = Lbar_i(k-1) / Lbar_i(k-2)

  with ``Lbar_i(k)`` the **mean** loss of task i over window k (the paper's epoch; by
  default one pass over the training slices, ``weighting.window``), ``K`` tasks and
  ``lambda_i = 1`` in the first two windows. Effective weight ``p_i lambda_i``. The
  window state lives on the device (no host sync per step) and in the checkpoint; each
  process weighs by its own loss means (over a whole pass they agree closely).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ssmtl.pretraining.loss_scale import InitialLossScale


class LossWeighting(nn.Module):
    """Base class: configured weights and warm-up ramps; subclasses add an adaptive factor.

    ``normalise_steps``: divide each loss by its mean over that many first steps
    (:class:`~ssmtl.pretraining.loss_scale.InitialLossScale`) before weighing it; None: raw losses.
    """

    def __init__(self, names: list[str], weights: dict[str, float], warmups: dict[str, int],
                 normalise_steps: int | None = None):
        super().__init__()
        self.names = list(names)
        self.register_buffer("base", torch.tensor([float(weights[n]) for n in self.names]), persistent=False)
        self.warmups = [int(warmups.get(n, 0)) for n in self.names]
        self.scale = None if normalise_steps is None else InitialLossScale(len(self.names), normalise_steps)

    def ramp(self, step: int, device) -> torch.Tensor:
        values = [min(1.0, step / w) if w > 0 else 1.0 for w in self.warmups]
        return torch.tensor(values, device=device)

    def on_data(self, steps_per_pass: int) -> list[str]:
        """Called once before training with the micro-batches of one pass over the training data; notes to print."""
        return [] if self.scale is None else [self.scale.note()]

    def adaptive(self, losses: torch.Tensor, prior: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(factor per task, extra loss term) for the priors ``w_i r_i``. Default: no adaptation."""
        return torch.ones_like(losses), losses.new_zeros(())

    def forward(self, losses: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, torch.Tensor]:
        stacked = torch.stack([losses[n].float() for n in self.names])
        divisor = None if self.scale is None else self.scale(stacked, step)
        if divisor is not None:
            stacked = stacked / divisor
        prior = self.base.to(stacked.device) * self.ramp(step, stacked.device)
        factor, extra = self.adaptive(stacked, prior)
        weights = prior * factor
        total = (weights * stacked).sum() + extra
        effective = weights if divisor is None else weights / divisor  # what the raw loss was multiplied by
        return total, effective.detach()


class FixedWeighting(LossWeighting):
    """The configured per-task weights (``--task NAME:WEIGHT``) and warm-up ramps."""


class UncertaintyWeighting(LossWeighting):
    """Learned homoscedastic-uncertainty weights (Kendall et al., 2018), the configured weights as priors."""

    def __init__(self, names, weights, warmups, normalise_steps: int | None = None):
        super().__init__(names, weights, warmups, normalise_steps)
        self.log_vars = nn.Parameter(torch.zeros(len(self.names)))

    def adaptive(self, losses, prior):
        # p_i * (exp(-s_i) L_i + s_i): the regulariser is ramped and weighted with its task
        return torch.exp(-self.log_vars), (prior * self.log_vars).sum()


class DynamicWeightAverage(LossWeighting):
    """Dynamic weight average (Liu et al., 2019) on loss means over windows of micro-batches."""

    def __init__(self, names, weights, warmups, temperature: float = 2.0, window: int | None = None,
                 normalise_steps: int | None = None):
        super().__init__(names, weights, warmups, normalise_steps)
        if window is not None and window < 1:
            raise ValueError(f"the DWA window must be at least 1 step, got {window}")
        self.temperature = temperature
        self.window = window  # micro-batches per window; None: one pass, set by on_data
        n = len(self.names)
        self.register_buffer("window_sum", torch.zeros(n))  # finite losses of the current window
        self.register_buffer("window_count", torch.zeros(n))
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))  # micro-batches in the current window
        self.register_buffer("mean_1", torch.zeros(n))  # Lbar(k-1): the last complete window
        self.register_buffer("mean_2", torch.zeros(n))  # Lbar(k-2)
        self.register_buffer("windows", torch.zeros((), dtype=torch.long))  # complete windows so far

    def on_data(self, steps_per_pass: int) -> list[str]:
        notes = super().on_data(steps_per_pass)
        if self.window is not None:
            return notes + [f"dwa: loss means over windows of {self.window} micro-batches (weighting.window)"]
        self.window = max(1, steps_per_pass)
        return notes + [f"dwa: loss means over windows of {self.window} micro-batches (one pass over the training slices)"]

    def adaptive(self, losses, prior):
        if self.window is None:
            raise RuntimeError("DynamicWeightAverage needs its window: call on_data() before the first step")
        with torch.no_grad():
            ratio = self.mean_1 / self.mean_2.clamp_min(1e-12)
            dwa = len(self.names) * torch.softmax(ratio / self.temperature, dim=0)
            # tensor conditions, not `if int(...)`: the step makes no host-device sync
            factor = torch.where(self.windows >= 2, dwa, torch.ones_like(dwa))
            detached = losses.detach().float()
            finite = torch.isfinite(detached)
            self.window_sum.add_(torch.where(finite, detached, torch.zeros_like(detached)))
            self.window_count.add_(finite.float())
            self.calls.add_(1)
            closed = self.calls >= self.window
            mean = self.window_sum / self.window_count.clamp_min(1.0)
            self.mean_2.copy_(torch.where(closed, self.mean_1, self.mean_2))
            self.mean_1.copy_(torch.where(closed, mean, self.mean_1))
            self.windows.add_(closed.long())
            keep = (~closed).float()
            self.window_sum.mul_(keep)
            self.window_count.mul_(keep)
            self.calls.mul_((~closed).long())
        return factor, losses.new_zeros(())


SCHEMES = {"fixed": FixedWeighting, "uncertainty": UncertaintyWeighting, "dwa": DynamicWeightAverage}


def build_weighting(scheme: str, names: list[str], weights: dict[str, float], warmups: dict[str, int],
                    temperature: float = 2.0, window: int | None = None,
                    normalise_steps: int | None = None) -> LossWeighting:
    """The weighting ``scheme``; ``window`` (DWA) is in micro-batches, None for one pass over the data;
    ``normalise_steps``: divide each loss by its mean over the first that many optimizer steps (None: off)."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown weighting scheme {scheme!r}; available: {', '.join(SCHEMES)}")
    if scheme == "dwa":
        return DynamicWeightAverage(names, weights, warmups, temperature=temperature, window=window,
                                    normalise_steps=normalise_steps)
    return SCHEMES[scheme](names, weights, warmups, normalise_steps=normalise_steps)


def micro_batches_per_pass(num_slices: int, global_batch: int) -> int:
    """Micro-batches (forward passes per process) that sample about ``num_slices`` sequences in all."""
    return max(1, math.ceil(num_slices / max(1, global_batch)))
