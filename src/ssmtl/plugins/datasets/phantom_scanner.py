"""The phantom's tissues, and how a CT or MR scanner images them.

:func:`acquire` turns a tissue map into a scanner-like image: per-subject tissue
intensities, an in-plane point spread function, a smooth bias or shading field and
noise (Gaussian for CT, Rician for MR).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ssmtl.plugins.datasets.phantom_layout import Domain, Grid
from ssmtl.plugins.datasets.phantom_variability import SubjectVariation

TISSUES: dict[int, str] = {
    0: "air",
    1: "fat",
    2: "soft_tissue",
    3: "lung",
    4: "bone",
    5: "liver",
    6: "muscle",  # cardiac muscle: LV myocardium and the thin RV / atrial walls
    7: "blood_left",  # oxygenated: LV, LA, aorta
    8: "blood_right",  # deoxygenated: RV, RA (less contrast than the left heart in CTA)
    9: "csf",
}
AIR, FAT, SOFT, LUNG, BONE, LIVER, MUSCLE, BLOOD_LEFT, BLOOD_RIGHT, CSF = range(10)

# Mean tissue intensities, indexed by tissue id.
# CT: Hounsfield units of a contrast-enhanced (arterial phase) cardiac CT.
CT_INTENSITY = np.array([-1000, -100, 45, -850, 700, 70, 100, 340, 300, 15], dtype=np.float32)
# MR: arbitrary units of a balanced SSFP acquisition, whose T2/T1 weighting makes blood,
# fat and CSF bright and muscle, lung and cortical bone dark: the contrast between
# blood, myocardium and fat is reversed or compressed compared with CT, which is what
# makes CT <-> MR transfer non-trivial.
MR_INTENSITY = np.array([0, 420, 110, 20, 60, 150, 130, 520, 500, 450], dtype=np.float32)


def _sample_intensities(rng: np.random.Generator, domain: Domain) -> np.ndarray:
    """Per-subject tissue intensities: the domain means, each varied by up to +-10%."""
    base = CT_INTENSITY if domain == "ct" else MR_INTENSITY
    values = base * rng.uniform(0.9, 1.1, base.shape).astype(np.float32)
    values[AIR] = base[AIR]  # air is the physical reference (-1000 HU / no signal)
    return values


def _smooth_field(rng: np.random.Generator, grid: Grid) -> np.ndarray:
    """A random quadratic polynomial over the volume, scaled to [-1, 1]."""
    nx, ny, nz = (c / max(float(np.abs(c).max()), 1e-6) for c in (grid.x, grid.y, grid.z))
    terms = (nx, ny, nz, nx * ny, nx * nz, ny * nz, nx**2, ny**2, nz**2)
    coefs = rng.normal(0.0, 1.0, len(terms))
    field = sum(float(c) * t for c, t in zip(coefs, terms))
    field = np.broadcast_to(field, grid.shape).astype(np.float32)
    field -= field.mean()
    return field / max(float(np.abs(field).max()), 1e-6)


def acquire(tissue: np.ndarray, rng: np.random.Generator, grid: Grid, domain: Domain,
            variation: SubjectVariation | None = None) -> np.ndarray:
    """Turn the tissue map into a scanner-like image: PSF blur, bias field, noise.

    ``variation`` (the realistic setting) gives the subject's intensities, through-plane
    blur, shading and noise; without it they are drawn here as the original phantom did
    (the same draws in the same order, so ``variability="low"`` is unchanged).
    """
    low = variation is None
    values = _sample_intensities(rng, domain) if low else variation.intensities
    image = values[tissue]
    # A small in-plane point spread function gives partial-volume edges; the realistic
    # setting adds the slice sensitivity profile through-plane.
    sigma_z = 0.0 if low else variation.through_plane_sigma
    image = ndimage.gaussian_filter(image, sigma=(0.5, 0.5, sigma_z), mode="nearest")
    field = _smooth_field(rng, grid)
    if domain == "ct":
        # CT is nearly quantitative: a weak additive shading (beam hardening, scatter).
        image += (rng.uniform(5.0, 20.0) if low else variation.shading) * field
        noise = rng.standard_normal(grid.shape, dtype=np.float32)
        image += noise * (rng.uniform(15.0, 25.0) if low else variation.noise)
        return image
    # MR: strong multiplicative coil-sensitivity bias and Rician noise
    # (the magnitude of a complex signal with Gaussian noise in both channels).
    image *= 1.0 + (rng.uniform(0.15, 0.3) if low else variation.shading) * field
    sigma = rng.uniform(10.0, 20.0) if low else variation.noise
    real = image + sigma * rng.standard_normal(grid.shape, dtype=np.float32)
    imag = sigma * rng.standard_normal(grid.shape, dtype=np.float32)
    return np.sqrt(real * real + imag * imag)
