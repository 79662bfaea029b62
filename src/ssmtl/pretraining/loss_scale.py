"""``weighting.normalise``: each task's loss divided by its own mean over the first N steps.

Task losses live on different scales: InfoNCE starts near ``ln(K + 1)`` (6.6 for a queue of
708 keys), a pixel loss on CT's [0, 1] intensities near 1e-2 and on z-scored MR about ten
times higher. Fixed weights on raw losses therefore mix the tasks differently per
modality. With ``weighting.normalise`` every loss is first divided by a divisor of its
own, the mean absolute value of that task's loss over the first ``normalise_steps``
optimizer steps::

    c_i(t) = mean of |L_i(s)| over the micro-batches of steps s <= min(t, N - 1), all processes
    L_i'(t) = L_i(t) / c_i(t)

During the first N steps the divisor is the mean so far, this step included (so every
task starts at 1, not only after N steps); from step N on it is fixed. The divisor is
detached (no gradient flows into it), is summed over all processes each of those steps
(one all-reduce of 2 x tasks numbers, only then), so every process divides by the same
number, and lives in buffers, so a checkpoint carries it and a resumed run divides
exactly as an uninterrupted one. Non-finite losses are left out of the mean; a task with
no finite loss yet, or a mean of 0, is divided by 1. The absolute value keeps the sign
of a loss that may be negative (a negative cosine similarity, say).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class InitialLossScale(nn.Module):
    """The divisors ``c_i`` of ``num_tasks`` losses, from their means over the first ``steps`` steps."""

    def __init__(self, num_tasks: int, steps: int):
        super().__init__()
        if steps < 1:
            raise ValueError(f"weighting.normalise_steps must be at least 1, got {steps}")
        self.steps = steps
        self.register_buffer("total", torch.zeros(num_tasks))  # sum of |finite losses|, all processes
        self.register_buffer("count", torch.zeros(num_tasks))  # how many finite losses

    @torch.no_grad()
    def forward(self, losses: torch.Tensor, step: int) -> torch.Tensor:
        """The divisor of each of the (num_tasks,) ``losses`` at optimizer step ``step`` (0-based)."""
        if step < self.steps:  # a Python comparison: after the first N steps, no sync and no collective
            detached = losses.detach().float()
            finite = torch.isfinite(detached)
            update = torch.stack([torch.where(finite, detached.abs(), torch.zeros_like(detached)), finite.float()])
            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                dist.all_reduce(update)
            self.total.add_(update[0])
            self.count.add_(update[1])
        mean = self.total / self.count.clamp_min(1.0)
        return torch.where(mean > 0, mean, torch.ones_like(mean))

    def note(self) -> str:
        return (f"weighting.normalise: each task's loss is divided by its mean over the first {self.steps} steps "
                "(all processes; the mean so far until then), so tasks start at about 1 whatever their scale")
