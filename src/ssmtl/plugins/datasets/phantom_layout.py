"""The geometry of one phantom subject: the sampling grid and the randomly drawn layout.

Geometry is in millimetres with x growing towards the patient's left (y: posterior
-> anterior, z: inferior -> superior), origin at the centre of the volume. The
layout (:func:`sample_layout`) is drawn from its own random stream and does not
depend on the grid, so one subject can be rendered at any resolution
(:func:`make_grid`). Painting it is :mod:`~ssmtl.plugins.datasets.phantom_anatomy`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

Domain = Literal["ct", "mr"]

# In-plane field of view and cranio-caudal extent of the volume, in mm.
FIELD_OF_VIEW_MM = {"ct": 300.0, "mr": 320.0}
EXTENT_MM = {"ct": 160.0, "mr": 160.0}


@dataclass(frozen=True)
class Grid:
    """Open (broadcastable) coordinate axes in mm: x (X,1,1), y (1,Y,1), z (1,1,Z)."""

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    spacing: tuple[float, float, float]

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.x.shape[0], self.y.shape[1], self.z.shape[2])


@dataclass(frozen=True)
class Ellipsoid:
    """An axis-aligned ellipsoid in the frame its coordinates are given in."""

    center: np.ndarray  # (3,)
    radii: np.ndarray  # (3,)

    def inside(self, coords: tuple[np.ndarray, ...], grow: float = 0.0) -> np.ndarray:
        """Voxels inside the ellipsoid whose radii are enlarged by ``grow`` mm."""
        total = 0.0
        for c, center, radius in zip(coords, self.center, self.radii):
            # Python floats keep the float32 coordinates in float32 (NumPy 2 promotion).
            total = total + ((c - float(center)) * (1.0 / (float(radius) + grow))) ** 2
        return total <= 1.0

    def half_extent(self, rotation: np.ndarray) -> np.ndarray:
        """Half-size of the axis-aligned box around the ellipsoid after ``rotation``."""
        return np.sqrt(((rotation * self.radii) ** 2).sum(axis=1))


@dataclass(frozen=True)
class Layout:
    """The sampled geometry of one subject, in mm (independent of the grid)."""

    body_center: tuple[float, float]
    body_radii: tuple[float, float]
    fat_mm: float
    lung_x: float
    lung_y: float
    lung_radii: tuple[float, float]
    diaphragm_z: float
    spine_xy: tuple[float, float]
    vertebra_radius: float
    heart_center: np.ndarray  # (3,) patient frame
    heart_rotation: np.ndarray  # (3,3): columns are the heart axes in the patient frame
    myocardium_mm: float
    chambers: dict[str, Ellipsoid]  # heart frame (u, v, h), h towards the base
    aortic_root: np.ndarray  # (3,) heart frame
    ascending_radius: float
    descending_xy: tuple[float, float]
    descending_radius: float


def make_grid(domain: Domain, size: int, num_slices: int, field_of_view_mm: float | None = None,
              extent_mm: float | None = None) -> Grid:
    """The sampling grid, centred on the volume centre: the domain's field of view and
    cranio-caudal extent unless given (a subject's own, see phantom_variability)."""
    sx = (field_of_view_mm or FIELD_OF_VIEW_MM[domain]) / size
    sz = (extent_mm or EXTENT_MM[domain]) / num_slices
    xs = (np.arange(size, dtype=np.float32) - (size - 1) / 2) * sx
    zs = (np.arange(num_slices, dtype=np.float32) - (num_slices - 1) / 2) * sz
    return Grid(
        x=xs.reshape(-1, 1, 1),
        y=xs.reshape(1, -1, 1),
        z=zs.reshape(1, 1, -1),
        spacing=(float(sx), float(sx), float(sz)),
    )


def _rotation(axis: str, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def _heart_rotation(tilt: float, azimuth: float, spin: float) -> np.ndarray:
    """Rotation taking the heart frame to the patient frame.

    The long axis (heart-frame h, pointing to the base) is tilted by ``tilt`` from
    the vertical so the apex points left-anterior-inferior along ``azimuth``; the
    ``Rz(-azimuth)`` term keeps the short axes roughly aligned with x and y, so the
    chamber layout below reads like an axial slice.
    """
    return (
        _rotation("z", azimuth)
        @ _rotation("y", -tilt)
        @ _rotation("z", -azimuth)
        @ _rotation("z", spin)
    )


@dataclass(frozen=True)
class LayoutSpread:
    """The (low, high) ranges the layout's random draws are uniform in (see :func:`sample_layout`).

    :data:`LOW_SPREAD` is the original phantom's; the realistic ranges and their sources
    are in :mod:`~ssmtl.plugins.datasets.phantom_variability`.
    """

    body_scale: tuple[float, float] = (0.9, 1.1)
    fat_mm: tuple[float, float] = (8.0, 16.0)
    heart_scale: tuple[float, float] = (0.85, 1.15)
    chamber_shift_mm: tuple[float, float] = (-3.0, 3.0)
    chamber_radii: tuple[float, float] = (0.92, 1.08)
    diaphragm_z: tuple[float, float] = (-62.0, -54.0)
    heart_shift_mm: tuple[float, float] = (-8.0, 8.0)  # in-plane; 0.75 of it along z
    tilt_deg: tuple[float, float] = (22.0, 38.0)
    azimuth_deg: tuple[float, float] = (20.0, 50.0)
    spin_deg: tuple[float, float] = (-10.0, 10.0)
    vessel_radius: tuple[float, float] = (0.9, 1.1)


LOW_SPREAD = LayoutSpread()


def _jittered(rng: np.random.Generator, center, radii, scale: float, spread: LayoutSpread) -> Ellipsoid:
    """A chamber with its own shape variation on top of the global heart scale."""
    center = np.asarray(center, dtype=float) * scale + rng.uniform(*spread.chamber_shift_mm, 3)
    radii = np.asarray(radii, dtype=float) * scale * rng.uniform(*spread.chamber_radii, 3)
    return Ellipsoid(center=center, radii=radii)


def sample_layout(rng: np.random.Generator, spread: LayoutSpread = LOW_SPREAD) -> Layout:
    """Draw the geometry of one subject: sizes, positions and the heart orientation.

    The number and order of draws do not depend on ``spread``, so the same stream gives
    the same subject, only more or less varied.
    """
    body_scale = rng.uniform(*spread.body_scale)
    body_center = (rng.uniform(-4, 4), rng.uniform(-8, 0))
    body_radii = (130.0 * body_scale * rng.uniform(0.95, 1.05), 95.0 * body_scale)

    heart_scale = rng.uniform(*spread.heart_scale)
    # Heart-frame chamber layout at scale 1 (u ~ left, v ~ anterior, h ~ superior):
    # ventricles around the long axis, the RV wrapping the septum on the right-anterior
    # side, the atria above them at the base, the LA posterior and the RA to the right.
    chambers = {
        "lv": _jittered(rng, (10, -2, -8), (30, 28, 50), heart_scale, spread),
        "rv": _jittered(rng, (-22, 14, -6), (30, 20, 44), heart_scale, spread),
        "la": _jittered(rng, (6, -28, 38), (25, 18, 19), heart_scale, spread),
        "ra": _jittered(rng, (-30, -8, 32), (21, 21, 25), heart_scale, spread),
    }
    lv = chambers["lv"]
    # The aortic root leaves the top of the LV slightly to the right and anterior.
    aortic_root = lv.center + np.array([-0.3, 0.3, 0.8]) * lv.radii

    spine_xy = (body_center[0] + rng.uniform(-3, 3), body_center[1] - 0.62 * body_radii[1])
    return Layout(
        body_center=body_center,
        body_radii=body_radii,
        fat_mm=rng.uniform(*spread.fat_mm),
        lung_x=0.48 * body_radii[0],
        lung_y=body_center[1] - 0.06 * body_radii[1],
        lung_radii=(0.36 * body_radii[0], 0.74 * body_radii[1]),
        diaphragm_z=rng.uniform(*spread.diaphragm_z),
        spine_xy=spine_xy,
        vertebra_radius=rng.uniform(15.0, 19.0),
        heart_center=np.array([12.0, 24.0, -2.0]) + rng.uniform(*spread.heart_shift_mm, 3) * (1, 1, 0.75),
        heart_rotation=_heart_rotation(
            tilt=np.deg2rad(rng.uniform(*spread.tilt_deg)),
            azimuth=np.deg2rad(rng.uniform(*spread.azimuth_deg)),
            spin=np.deg2rad(rng.uniform(*spread.spin_deg)),
        ),
        myocardium_mm=10.0 * heart_scale,
        chambers=chambers,
        aortic_root=aortic_root,
        ascending_radius=14.0 * rng.uniform(*spread.vessel_radius),
        descending_xy=(spine_xy[0] + rng.uniform(20, 26), spine_xy[1] + rng.uniform(14, 20)),
        descending_radius=11.0 * rng.uniform(*spread.vessel_radius),
    )
