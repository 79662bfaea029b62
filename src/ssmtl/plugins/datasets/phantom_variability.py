"""How much phantom subjects differ: ``variability="low"`` (the original phantom) or ``"realistic"``.

The original phantom varies heart size and pose by about +-15 % and intensities by
+-10 %, on a fixed field of view and slice grid, without other bright structures near
the heart: with one labeled subject a U-Net from scratch already reached 0.87-0.89
mean Dice, leaving no room to show what pre-training adds. The realistic setting draws
every subject from the inter-subject variability of clinical cardiac CT / MR, each range
below chosen from anatomy and acquisition, not from the scores it leads to.

Anatomy (drawn on the anatomy stream, so the same draws as ``low``, only wider)
    ============================ ================ ==============================================
    quantity                     realistic        why
    ============================ ================ ==============================================
    heart scale (linear)         0.80 - 1.25      LV end-diastolic volume 86-214 mL in healthy
                                                  adults (Kawel-Boehm et al., JCMR 2015), a
                                                  linear ratio of 1.36; wider for the dilated
                                                  and small hearts of a clinical cohort
    chamber radii, each axis     x 0.80 - 1.20    atria vary more than ventricles (LA volume
                                                  index 16-34 mL/m^2 and more, Lang et al.,
                                                  JASE 2015)
    chamber offsets              +-6 mm
    heart position               +-15 mm (x, y),  position in the chest and scan planning
                                 +-11 mm (z)
    long-axis tilt / azimuth     15-50 / 15-65 deg  "vertical" (slim) to "horizontal" (obese,
                                                  high diaphragm) hearts
    spin about the long axis     +-20 deg
    body size / fat layer        0.85-1.20 / 5-35 mm  habitus, subcutaneous fat
    diaphragm dome height        -75 to -35 mm    liver dome reaching into the lower heart
                                                  slices (breath-hold level, habitus)
    great-vessel calibre         x 0.80 - 1.25
    ============================ ================ ==============================================

Anatomy added by the realistic setting (variability stream)
    LV wall thickness 6-15 mm (normal 6-11 mm, hypertrophy above 12, Lang et al. 2015),
    independent of heart size. Neighbours that look like heart and are labelled
    background: the **pulmonary trunk** (22-32 mm) leaving the RV outflow towards the left
    and back, and the **superior vena cava** (14-22 mm) entering the RA from above, both
    blood (MM-WHS labels the pulmonary artery separately; this phantom's 6 classes do not,
    so it is background here), the **liver** with myocardium-like attenuation in later
    contrast phases, and vertebral bone overlapping contrast blood in HU.

Acquisition (variability stream)
    ============================ ================ ==============================================
    field of view (in-plane)     CT 220-400 mm,   targeted cardiac reconstructions to whole-chest
                                 MR 280-400 mm    ones; MM-WHS CT is about 0.78 mm x 512 = 400 mm
                                                  (Zhuang et al., MedIA 2019). The cache fits
                                                  each field of view into ``size`` pixels, so
                                                  the heart's size in pixels varies too
    cranio-caudal coverage       130-200 mm, and  the whole heart, from the upper abdomen to
                                 at least the     (or short of) the aortic arch: a scan is
                                 heart + 1 slice  planned to cover the heart
    slice spacing                x 0.75-1.35 of   scanner protocols (MM-WHS CT 0.6-1.6 mm);
                                 160 mm /         the number of slices follows from coverage
                                 ``num_slices``   and spacing
    through-plane blur           0.3-0.7 voxels   slice sensitivity profile (partial volume)
    CT left-heart blood          200-550 HU       bolus timing and patient size (SCCT guidance
                                                  aims for >= 250 HU; Abbara et al., JCCT 2016)
    CT right/left blood ratio    0.40-1.05        arterial phase with saline chaser (dark RV) to
                                                  later phases (equal)
    CT SVC                       x 1.0-3.0 of     undiluted contrast arriving from an arm vein
                                 right blood
    CT myocardium / liver / bone 80-150 / 50-130 / 300-900 HU
    CT noise / shading           10-60 / 5-40 HU  dose and habitus
    MR blood / myocardium / fat  400-650 / 80-180 / 300-500 (bSSFP arbitrary units)
    MR marrow (vertebra)         150-400          bright fatty marrow in bSSFP
    MR coil bias amplitude       0.10-0.50        surface-coil inhomogeneity (Vovk et al.,
                                                  IEEE TMI 2007)
    MR blood SNR                 15-60            Rician noise sigma = blood / SNR
    ============================ ================ ==============================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from ssmtl.plugins.datasets.phantom_layout import Domain, LayoutSpread

Variability = Literal["low", "realistic"]

REALISTIC_SPREAD = LayoutSpread(
    body_scale=(0.85, 1.2),
    fat_mm=(5.0, 35.0),
    heart_scale=(0.8, 1.25),
    chamber_shift_mm=(-6.0, 6.0),
    chamber_radii=(0.8, 1.2),
    diaphragm_z=(-75.0, -35.0),
    heart_shift_mm=(-15.0, 15.0),
    tilt_deg=(15.0, 50.0),
    azimuth_deg=(15.0, 65.0),
    spin_deg=(-20.0, 20.0),
    vessel_radius=(0.8, 1.25),
)

FIELD_OF_VIEW_RANGE_MM = {"ct": (220.0, 400.0), "mr": (280.0, 400.0)}
COVERAGE_RANGE_MM = (130.0, 200.0)
NOMINAL_EXTENT_MM = 160.0  # num_slices is the count over this extent at the nominal spacing
SPACING_FACTOR = (0.75, 1.35)
MIN_SLICES = 8

# tissue ids of phantom_scanner.TISSUES, plus the contrast-filled superior vena cava
VENOUS_CONTRAST = 10


@dataclass(frozen=True)
class SubjectVariation:
    """What the realistic setting draws for one subject beyond the layout."""

    field_of_view_mm: float
    coverage_mm: float  # planned cranio-caudal coverage (widened to the heart by slice_grid)
    slice_spacing_mm: float
    through_plane_sigma: float  # voxels
    myocardium_mm: float
    pulmonary_radius: float
    pulmonary_lean: tuple[float, float]  # direction of the trunk in the axial plane (x, y), unit-ish
    svc_radius: float
    intensities: np.ndarray  # per tissue id, incl. VENOUS_CONTRAST
    noise: float  # CT: HU sigma; MR: Rician sigma
    shading: float  # CT: additive HU amplitude; MR: multiplicative bias amplitude


def _ct_intensities(rng: np.random.Generator) -> np.ndarray:
    left = rng.uniform(200.0, 550.0)
    right = left * rng.uniform(0.4, 1.05)
    # air, fat, soft tissue, lung, bone, liver, muscle, left blood, right blood, CSF, SVC
    return np.array([
        -1000.0, rng.uniform(-120.0, -80.0), rng.uniform(30.0, 60.0), rng.uniform(-900.0, -750.0),
        rng.uniform(300.0, 900.0), rng.uniform(50.0, 130.0), rng.uniform(80.0, 150.0), left, right,
        rng.uniform(0.0, 20.0), min(right * rng.uniform(1.0, 3.0), 1500.0),
    ], dtype=np.float32)


def _mr_intensities(rng: np.random.Generator) -> np.ndarray:
    blood = rng.uniform(400.0, 650.0)
    right = blood * rng.uniform(0.85, 1.05)
    return np.array([
        0.0, rng.uniform(300.0, 500.0), rng.uniform(80.0, 150.0), rng.uniform(10.0, 40.0),
        rng.uniform(150.0, 400.0), rng.uniform(100.0, 200.0), rng.uniform(80.0, 180.0), blood, right,
        rng.uniform(350.0, 550.0), right,
    ], dtype=np.float32)


def sample_variation(rng: np.random.Generator, domain: Domain, num_slices: int) -> SubjectVariation:
    """Draw one subject's acquisition and extra anatomy (a fixed number of draws, grid-independent)."""
    fov = rng.uniform(*FIELD_OF_VIEW_RANGE_MM[domain])
    coverage = rng.uniform(*COVERAGE_RANGE_MM)
    spacing = NOMINAL_EXTENT_MM / num_slices * rng.uniform(*SPACING_FACTOR)
    angle = np.deg2rad(rng.uniform(-80.0, -40.0))  # +x is the patient's left, +y anterior: left and back
    intensities = _ct_intensities(rng) if domain == "ct" else _mr_intensities(rng)
    if domain == "ct":
        noise, shading = rng.uniform(10.0, 60.0), rng.uniform(5.0, 40.0)
    else:
        noise, shading = float(intensities[7]) / rng.uniform(15.0, 60.0), rng.uniform(0.1, 0.5)
    return SubjectVariation(
        field_of_view_mm=float(fov),
        coverage_mm=float(coverage),
        slice_spacing_mm=float(spacing),
        through_plane_sigma=float(rng.uniform(0.3, 0.7)),
        myocardium_mm=float(rng.uniform(6.0, 15.0)),
        pulmonary_radius=float(rng.uniform(11.0, 16.0)),
        pulmonary_lean=(float(np.cos(angle)), float(np.sin(angle))),
        svc_radius=float(rng.uniform(7.0, 11.0)),
        intensities=intensities,
        noise=float(noise),
        shading=float(shading),
    )


def slice_grid(variation: SubjectVariation, heart_half_extent_mm: float) -> tuple[int, float]:
    """(number of slices, cranio-caudal extent in mm) of a subject's volume, centred on z = 0.

    The planned coverage, widened where needed so the heart (``heart_half_extent_mm``
    either side of z = 0) is inside with a slice to spare at both ends.
    """
    spacing = variation.slice_spacing_mm
    needed = 2.0 * (heart_half_extent_mm + 1.5 * spacing)
    slices = max(MIN_SLICES, int(np.ceil(max(variation.coverage_mm, needed) / spacing)))
    return slices, slices * spacing
