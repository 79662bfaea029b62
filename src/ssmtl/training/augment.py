"""Batched augmentation of 1-channel intensity slices, run on the training device.

Augmentation happens inside the training step, not in the data loader, for two
reasons: the random spatial transform of every view is kept (as an affine
``theta``), so dense tasks know which pixel of one view corresponds to which pixel
of another; and one batched ``grid_sample`` on the accelerator is much cheaper
than per-sample work in loader processes. All randomness comes from torch's global
RNG, which Accelerate checkpoints, so a resumed run draws the same views.

There is no RGB colour jitter: slices are single-channel intensities, so the
intensity transforms are contrast, brightness, gamma, blur and noise.

Mirror flips happen only along the in-plane axes the data allows (``flip_axes``, the
cache's declaration, :mod:`ssmtl.data.laterality`): 0 = rows, 1 = columns. Every
caller passes them; the default ``()`` flips nothing, the safe side for lateralised
anatomy. The column decision is drawn whether or not columns may flip (where the stream
always drew it), and the row decision last, only where rows may flip: a seed gives the same
rotations, crops and intensities as before flips were declared, and whether columns may flip
changes nothing else.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import torch
from torch.nn import functional as F

from ssmtl.api.geometry import apply_affine
from ssmtl.training.augment_config import AugmentConfig


def _uniform(n: int, lo: float, hi: float, device) -> torch.Tensor:
    return torch.rand(n, device=device) * (hi - lo) + lo


def random_affine(n: int, config: AugmentConfig, device, flip_axes: Sequence[int] = ()) -> torch.Tensor:
    """Random (n, 2, 3) affine matrices in ``affine_grid`` convention (output -> input coords).

    Each axis in ``flip_axes`` (0 = rows, 1 = columns) is mirrored with probability
    ``config.flip``, independently; no other axis ever is.
    """
    angle = _uniform(n, -config.rotate, config.rotate, device) * (math.pi / 180)
    scale = _uniform(n, *config.crop_scale, device)
    # the column mirror (x, axis 1) is decided whatever is allowed, where it always was in the
    # random stream, so a seed draws the same views as before flips were declared per axis
    keep = torch.ones(n, device=device)
    mirror_x = torch.rand(n, device=device) < config.flip
    fx = torch.where(mirror_x, -1.0, 1.0) if 1 in flip_axes else keep
    # keep the crop inside the slice: the shift is bounded by the unused margin
    margin = (1 - scale) + config.translate
    tx = _uniform(n, -1, 1, device) * margin
    ty = _uniform(n, -1, 1, device) * margin
    # the row mirror (y, axis 0), which no data allowed before: drawn last, and only when allowed
    fy = torch.where(torch.rand(n, device=device) < config.flip, -1.0, 1.0) if 0 in flip_axes else keep
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    # rotation-scale times diag(fx, fy): the output is mirrored first, then rotated
    theta = torch.stack(
        [torch.stack([cos * fx, -sin * fy, tx], dim=-1), torch.stack([sin * fx, cos * fy, ty], dim=-1)], dim=1
    )
    return theta


def flip_note(config: AugmentConfig, flip_axes: Sequence[int], section: str = "augment") -> str | None:
    """One line when ``{section}.flip > 0`` was set explicitly on data that allows no flip, else None."""
    if config.flip > 0 and "flip" in config.model_fields_set and not flip_axes:
        return (f"{section}.flip={config.flip:g} is off: the data declares no axis along which a mirrored slice is "
                "still plausible anatomy (the cache's flip_axes is [])")
    return None


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-sample separable blur of (n, 1, H, W) with per-sample sigma (n,)."""
    n = x.shape[0]
    radius = 3
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (offsets[None] / sigma[:, None].to(x.dtype)) ** 2)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # (n, 7)
    y = x.reshape(1, n, *x.shape[-2:])
    y = F.pad(y, (radius, radius, radius, radius), mode="replicate")
    y = F.conv2d(y, kernel.reshape(n, 1, 1, -1), groups=n)
    y = F.conv2d(y, kernel.reshape(n, 1, -1, 1), groups=n)
    return y.reshape_as(x)


def random_intensity(x: torch.Tensor, config: AugmentConfig) -> torch.Tensor:
    """Contrast, brightness, gamma, blur and noise on (n, 1, H, W), per sample."""
    n, device = x.shape[0], x.device
    shape = (n, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    std = x.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    span = (hi - lo).clamp_min(1e-6)
    gamma = _uniform(n, *config.gamma, device).view(shape)
    x = ((x - lo) / span).clamp(0, 1).pow(gamma) * span + lo
    contrast = _uniform(n, 1 - config.contrast, 1 + config.contrast, device).view(shape)
    shift = _uniform(n, -config.brightness, config.brightness, device).view(shape) * std
    x = (x - mean) * contrast + mean + shift
    if config.blur > 0:
        do_blur = torch.rand(n, device=device) < config.blur
        sigma = torch.where(do_blur, _uniform(n, 0.1, 1.5, device), torch.full((n,), 1e-3, device=device))
        x = _gaussian_blur(x, sigma)
    if config.noise > 0:
        x = x + torch.randn_like(x) * config.noise * std
    return x


def augment(x: torch.Tensor, config: AugmentConfig, group: int = 1,
            flip_axes: Sequence[int] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """Random view of (n, 1, H, W). Consecutive ``group`` samples share one transform.

    ``group=k`` keeps the k slices of a sequence spatially consistent (same crop,
    flip and rotation) so order and neighbour tasks see a coherent sequence.
    Mirror flips only along ``flip_axes`` (see :func:`random_affine`).
    Returns the view and its (n, 2, 3) ``theta``.
    """
    n = x.shape[0]
    if n % group:
        raise ValueError(f"batch of {n} is not a multiple of the group size {group}")
    theta = random_affine(n // group, config, x.device, flip_axes).repeat_interleave(group, dim=0)
    view = apply_affine(x, theta)
    return random_intensity(view, config), theta


def make_augmenter(config: AugmentConfig,
                   flip_axes: Sequence[int] = ()) -> Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]:
    """``augmenter(images, group)``: :func:`augment` with ``config``, mirroring only along
    ``flip_axes`` (what a :class:`~ssmtl.api.views.StepContext` draws its random views with)."""
    return functools.partial(_augment_group, config=config, flip_axes=tuple(flip_axes))


def _augment_group(x: torch.Tensor, group: int, *, config: AugmentConfig,
                   flip_axes: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    return augment(x, config, group=group, flip_axes=flip_axes)
