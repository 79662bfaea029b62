"""Spatial warps between a view and the raw slices it was sampled from.

Every augmented view carries its affine ``theta`` (``affine_grid`` convention, (n, 2, 3),
mapping view coordinates to raw-slice coordinates). Dense tasks use these to warp
targets into a view (:func:`apply_affine`) or to find which pixel of one view shows
the same anatomy as a pixel of another (:func:`correspondence`).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def apply_affine(x: torch.Tensor, theta: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Warp (n, C, H, W) by (n, 2, 3); out-of-slice pixels take the border value."""
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode="border", align_corners=False)


def correspondence(theta_a: torch.Tensor, theta_b: torch.Tensor) -> torch.Tensor:
    """The (n, 2, 3) map from view-a coordinates to view-b coordinates.

    Both views sample the same source slice: ``src = A_a p_a + t_a = A_b p_b + t_b``,
    so ``p_b = A_b^-1 (A_a p_a + t_a - t_b)``.
    """
    a_a, t_a = theta_a[:, :, :2], theta_a[:, :, 2:]
    a_b, t_b = theta_b[:, :, :2], theta_b[:, :, 2:]
    inv_b = torch.linalg.inv(a_b)
    return torch.cat([inv_b @ a_a, inv_b @ (t_a - t_b)], dim=2)
