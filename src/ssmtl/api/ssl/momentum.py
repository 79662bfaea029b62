"""Momentum (EMA) schedules of a key / target encoder, and what they leave of its start.

A momentum encoder is updated after every optimizer step as
``theta_k <- m_t * theta_k + (1 - m_t) * theta_q``. After ``T`` updates it still holds
``prod_t m_t`` of its *initial* (random) weights: with MoCo's constant m = 0.999 that is
0.999^600 = 55 % after 600 steps, so in a short run the keys come from a mostly random
network. Schedules:

* ``constant``: ``m_t = m0`` (MoCo v1/v2).
* ``cosine``: ``m_t = 1 - (1 - m0) * (cos(pi * t / T) + 1) / 2`` for step ``t`` of ``T``
  (0-based), rising from ``m0`` to 1 (BYOL, Grill et al. 2020; MoCo v3, Chen et al. 2021).
  Its remaining share is about ``exp(-(1 - m0) * T / 2)``.
"""

from __future__ import annotations

import math
from typing import Literal

MomentumSchedule = Literal["constant", "cosine"]


def ema_momentum(base: float, schedule: MomentumSchedule, step: int, total_steps: int | None) -> float:
    """The momentum ``m_t`` of the update after optimizer step ``step`` (0-based) of ``total_steps``.

    >>> ema_momentum(0.99, "cosine", 0, 100), ema_momentum(0.99, "cosine", 50, 100)
    (0.99, 0.995)
    """
    if not 0.0 <= base <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {base}")
    if schedule == "constant":
        return base
    if schedule != "cosine":
        raise ValueError(f"unknown momentum schedule {schedule!r}; use 'constant' or 'cosine'")
    if not total_steps or total_steps < 1:
        raise ValueError("the cosine momentum schedule needs the run's total number of steps")
    progress = min(max(step, 0), total_steps) / total_steps
    return 1.0 - (1.0 - base) * (math.cos(math.pi * progress) + 1.0) / 2.0


def initial_weight_share(base: float, schedule: MomentumSchedule, total_steps: int) -> float:
    """``prod_t m_t`` over ``total_steps`` updates: the share of its initial weights a momentum encoder keeps.

    >>> round(initial_weight_share(0.999, "constant", 600), 3)
    0.549
    """
    share = 1.0
    for t in range(total_steps):
        share *= ema_momentum(base, schedule, t, total_steps)
    return share
