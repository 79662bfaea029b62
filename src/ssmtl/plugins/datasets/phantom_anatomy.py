"""A procedural, deterministic 3D thorax phantom with a whole-heart label map.

Everything is drawn from analytic shapes (elliptic cylinders, ellipsoids, tubes and
a half torus) evaluated on a 3D grid with numpy broadcasting, so one 64x64x32
subject takes a few milliseconds and the same ``(seed, index, domain)`` always
gives the same arrays on every platform.

Geometry is drawn in millimetres with x growing towards the patient's left
(y: posterior -> anterior, z: inferior -> superior), origin at the centre of the
volume; :func:`render_subject` then mirrors x so the arrays it returns are in the
canonical RAS frame the cache builder expects (+x = the patient's right, as in
nibabel). The grid only decides how
finely the anatomy is sampled: the in-plane field of view and the cranio-caudal
extent are fixed per domain, so a larger ``size`` or ``num_slices`` renders the
same subject at a higher resolution.

Two maps are rendered:

* a *tissue* map (air, fat, soft tissue, lung, bone, liver, muscle, left/right
  heart blood, CSF) that decides the intensities, and
* the *label* map with the MM-WHS structures of :data:`CLASS_NAMES`.

They differ on purpose: following the MM-WHS convention, class 1 is the **left
ventricular** myocardium only. The thin walls of the right ventricle and of the
atria are rendered with muscle intensity but labelled background, like the
pericardial fat around the heart, so a model must learn shape and context and not
just threshold intensities.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage

Domain = Literal["ct", "mr"]

CLASS_NAMES: dict[int, str] = {
    0: "background",
    1: "myocardium",
    2: "left_atrium",
    3: "left_ventricle",
    4: "right_atrium",
    5: "right_ventricle",
    6: "aorta",
}
MYOCARDIUM, LEFT_ATRIUM, LEFT_VENTRICLE, RIGHT_ATRIUM, RIGHT_VENTRICLE, AORTA = range(1, 7)

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

# In-plane field of view and cranio-caudal extent of the volume, in mm.
FIELD_OF_VIEW_MM = {"ct": 300.0, "mr": 320.0}
EXTENT_MM = {"ct": 160.0, "mr": 160.0}
# CT and MR subjects with the same index are different virtual patients (MM-WHS CT
# and MR are unpaired too), so a model cannot shortcut cross-domain transfer.
_DOMAIN_KEY = {"ct": 0, "mr": 1}

# The LV wall must stay at least this many pixels thick in-plane to survive sampling.
_MIN_WALL_PIXELS = 2.2
_THIN_WALL_MM = 3.5  # RV and atrial walls
_PERICARDIAL_FAT_MM = 7.0  # fat layer around the whole heart


@dataclass(frozen=True)
class PhantomSubject:
    """One rendered subject: the intensity image, the two maps and the voxel size."""

    image: np.ndarray  # float32 (X, Y, Z)
    label: np.ndarray  # uint8 (X, Y, Z), class ids of CLASS_NAMES
    tissue: np.ndarray  # uint8 (X, Y, Z), tissue ids of TISSUES
    spacing: tuple[float, float, float]


@dataclass(frozen=True)
class _Grid:
    """Open (broadcastable) coordinate axes in mm: x (X,1,1), y (1,Y,1), z (1,1,Z)."""

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    spacing: tuple[float, float, float]

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.x.shape[0], self.y.shape[1], self.z.shape[2])


@dataclass(frozen=True)
class _Ellipsoid:
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
class _Layout:
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
    chambers: dict[str, _Ellipsoid]  # heart frame (u, v, h), h towards the base
    aortic_root: np.ndarray  # (3,) heart frame
    ascending_radius: float
    descending_xy: tuple[float, float]
    descending_radius: float


def _make_grid(domain: Domain, size: int, num_slices: int) -> _Grid:
    """The sampling grid of a domain, centred on the volume centre."""
    sx = FIELD_OF_VIEW_MM[domain] / size
    sz = EXTENT_MM[domain] / num_slices
    xs = (np.arange(size, dtype=np.float32) - (size - 1) / 2) * sx
    zs = (np.arange(num_slices, dtype=np.float32) - (num_slices - 1) / 2) * sz
    return _Grid(
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


def _jittered(rng: np.random.Generator, center, radii, scale: float) -> _Ellipsoid:
    """A chamber with its own shape variation on top of the global heart scale."""
    center = np.asarray(center, dtype=float) * scale + rng.uniform(-3.0, 3.0, 3)
    radii = np.asarray(radii, dtype=float) * scale * rng.uniform(0.92, 1.08, 3)
    return _Ellipsoid(center=center, radii=radii)


def _sample_layout(rng: np.random.Generator) -> _Layout:
    """Draw the geometry of one subject: sizes, positions and the heart orientation."""
    body_scale = rng.uniform(0.9, 1.1)
    body_center = (rng.uniform(-4, 4), rng.uniform(-8, 0))
    body_radii = (130.0 * body_scale * rng.uniform(0.95, 1.05), 95.0 * body_scale)

    heart_scale = rng.uniform(0.85, 1.15)
    # Heart-frame chamber layout at scale 1 (u ~ left, v ~ anterior, h ~ superior):
    # ventricles around the long axis, the RV wrapping the septum on the right-anterior
    # side, the atria above them at the base, the LA posterior and the RA to the right.
    chambers = {
        "lv": _jittered(rng, (10, -2, -8), (30, 28, 50), heart_scale),
        "rv": _jittered(rng, (-22, 14, -6), (30, 20, 44), heart_scale),
        "la": _jittered(rng, (6, -28, 38), (25, 18, 19), heart_scale),
        "ra": _jittered(rng, (-30, -8, 32), (21, 21, 25), heart_scale),
    }
    lv = chambers["lv"]
    # The aortic root leaves the top of the LV slightly to the right and anterior.
    aortic_root = lv.center + np.array([-0.3, 0.3, 0.8]) * lv.radii

    spine_xy = (body_center[0] + rng.uniform(-3, 3), body_center[1] - 0.62 * body_radii[1])
    return _Layout(
        body_center=body_center,
        body_radii=body_radii,
        fat_mm=rng.uniform(8.0, 16.0),
        lung_x=0.48 * body_radii[0],
        lung_y=body_center[1] - 0.06 * body_radii[1],
        lung_radii=(0.36 * body_radii[0], 0.74 * body_radii[1]),
        diaphragm_z=rng.uniform(-62.0, -54.0),
        spine_xy=spine_xy,
        vertebra_radius=rng.uniform(15.0, 19.0),
        heart_center=np.array([12.0, 24.0, -2.0]) + rng.uniform(-8, 8, 3) * (1, 1, 0.75),
        heart_rotation=_heart_rotation(
            tilt=np.deg2rad(rng.uniform(22, 38)),
            azimuth=np.deg2rad(rng.uniform(20, 50)),
            spin=np.deg2rad(rng.uniform(-10, 10)),
        ),
        myocardium_mm=10.0 * heart_scale,
        chambers=chambers,
        aortic_root=aortic_root,
        ascending_radius=14.0 * rng.uniform(0.9, 1.1),
        descending_xy=(spine_xy[0] + rng.uniform(20, 26), spine_xy[1] + rng.uniform(14, 20)),
        descending_radius=11.0 * rng.uniform(0.9, 1.1),
    )


def _paint(array: np.ndarray, mask: np.ndarray, value: int) -> None:
    """Set ``value`` where the (broadcastable) mask is true; later paint wins."""
    np.copyto(array, np.uint8(value), where=mask)


def _ellipse(x, y, center, radii) -> np.ndarray:
    return ((x - center[0]) / radii[0]) ** 2 + ((y - center[1]) / radii[1]) ** 2 <= 1.0


def _diaphragm_height(grid: _Grid, layout: _Layout) -> np.ndarray:
    """Dome-shaped diaphragm, higher on the right (under the liver) and centrally."""
    ax, ay = layout.body_radii
    cy = layout.body_center[1]
    return (
        layout.diaphragm_z
        - 0.1 * grid.x
        - 20.0 * (grid.x / ax) ** 2
        - 15.0 * ((grid.y - cy) / ay) ** 2
    )


def _paint_torso(tissue: np.ndarray, grid: _Grid, layout: _Layout) -> None:
    """Body wall, lungs, diaphragm and liver, spine and sternum."""
    x, y, z = grid.x, grid.y, grid.z
    ax, ay = layout.body_radii
    cx, cy = layout.body_center
    # The thorax widens slightly towards the abdomen.
    widen = 1.0 - 0.04 * z / 80.0
    body = _ellipse(x, y, (cx, cy), (ax * widen, ay * widen))
    inner = _ellipse(x, y, (cx, cy), (ax * widen - layout.fat_mm, ay * widen - layout.fat_mm))
    _paint(tissue, body, FAT)
    _paint(tissue, inner, SOFT)

    diaphragm = _diaphragm_height(grid, layout)
    taper = 1.0 - 0.12 * (z - z.min()) / max(float(z.max() - z.min()), 1e-6)
    lung_radii = (layout.lung_radii[0] * taper, layout.lung_radii[1] * taper)
    for side in (-1.0, 1.0):
        lung = _ellipse(x, y, (cx + side * layout.lung_x, layout.lung_y), lung_radii)
        _paint(tissue, lung & (z > diaphragm), LUNG)

    # The liver fills the right upper abdomen under the (higher) right dome.
    liver = _ellipse(x, y, (cx - 0.3 * ax, cy), (0.7 * ax, 0.8 * ay))
    _paint(tissue, liver & (z < diaphragm - 4.0), LIVER)

    sx, sy = layout.spine_xy
    r = layout.vertebra_radius
    _paint(tissue, _ellipse(x, y, (sx, sy), (r, 0.9 * r)), BONE)
    _paint(tissue, _ellipse(x, y, (sx, sy - 1.6 * r), (0.55 * r, 0.8 * r)), BONE)
    _paint(tissue, _ellipse(x, y, (sx, sy - 1.5 * r), (0.35 * r, 0.35 * r)), CSF)
    sternum_y = cy + ay - layout.fat_mm - 10.0
    _paint(tissue, _ellipse(x, y, (cx, sternum_y), (14.0, 6.0)) & (z > -50.0), BONE)


def _heart_box(grid: _Grid, layout: _Layout, margin: float) -> tuple[slice, slice, slice]:
    """Index box of the grid that contains every chamber grown by ``margin`` mm.

    The heart fills a small part of the volume, so evaluating its ellipsoids only
    inside this box keeps large grids fast.
    """
    rotation = layout.heart_rotation
    low = np.full(3, np.inf)
    high = np.full(3, -np.inf)
    for ellipsoid in layout.chambers.values():
        center = layout.heart_center + rotation @ ellipsoid.center
        half = ellipsoid.half_extent(rotation) + margin
        low, high = np.minimum(low, center - half), np.maximum(high, center + half)
    box = []
    for axis, coords in enumerate((grid.x.ravel(), grid.y.ravel(), grid.z.ravel())):
        start, stop = np.searchsorted(coords, [low[axis], high[axis]])
        box.append(slice(int(start), int(max(stop, start))))
    return tuple(box)


def _heart_frame(grid: _Grid, layout: _Layout, box) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Heart-frame coordinates R^T (p - c) of the voxels in ``box``."""
    x, y, z = grid.x[box[0]], grid.y[:, box[1]], grid.z[:, :, box[2]]
    d = (x - float(layout.heart_center[0]), y - float(layout.heart_center[1]), z - float(layout.heart_center[2]))
    r = layout.heart_rotation
    return tuple(float(r[0, i]) * d[0] + float(r[1, i]) * d[1] + float(r[2, i]) * d[2] for i in range(3))


def _myocardium_thickness(grid: _Grid, layout: _Layout) -> float:
    """Anatomical LV wall thickness, widened on coarse grids so the ring stays closed."""
    lv = layout.chambers["lv"]
    thickness = max(layout.myocardium_mm, _MIN_WALL_PIXELS * grid.spacing[0])
    return min(thickness, 0.45 * float(lv.radii.min()))


def _paint_heart(tissue: np.ndarray, label: np.ndarray, grid: _Grid, layout: _Layout) -> None:
    """Pericardial fat, chamber walls, the four chambers and the LV myocardium."""
    box = _heart_box(grid, layout, margin=_PERICARDIAL_FAT_MM)
    coords = _heart_frame(grid, layout, box)
    tissue, label = tissue[box], label[box]  # views: painting them paints the volume
    ch = layout.chambers
    others = (("ra", BLOOD_RIGHT, RIGHT_ATRIUM), ("la", BLOOD_LEFT, LEFT_ATRIUM), ("rv", BLOOD_RIGHT, RIGHT_VENTRICLE))

    envelope = np.zeros(tissue.shape, dtype=bool)
    for ellipsoid in ch.values():
        envelope |= ellipsoid.inside(coords, grow=_PERICARDIAL_FAT_MM)
    _paint(tissue, envelope, FAT)
    _paint(label, envelope, 0)
    # Thin RV and atrial walls: muscle intensity, background label (MM-WHS convention).
    for name, _, _ in others:
        _paint(tissue, ch[name].inside(coords, grow=_THIN_WALL_MM), MUSCLE)
    for name, blood, cls in others:
        chamber = ch[name].inside(coords)
        _paint(tissue, chamber, blood)
        _paint(label, chamber, cls)

    # The LV is painted last so its myocardium closes around the cavity everywhere,
    # carving the septum out of the RV and turning the RV into a crescent.
    lv = ch["lv"]
    myocardium = lv.inside(coords)
    cavity = lv.inside(coords, grow=-_myocardium_thickness(grid, layout))
    _paint(tissue, myocardium, MUSCLE)
    _paint(label, myocardium, MYOCARDIUM)
    _paint(tissue, cavity, BLOOD_LEFT)
    _paint(label, cavity, LEFT_VENTRICLE)


def _paint_aorta(tissue: np.ndarray, label: np.ndarray, grid: _Grid, layout: _Layout) -> None:
    """Ascending aorta from the LV, the arch at the top, the descending aorta by the spine.

    The arch is a half torus in the vertical plane through both vertical segments,
    placed so its crest touches the top of the volume.
    """
    x, y, z = grid.x, grid.y, grid.z
    root = layout.heart_center + layout.heart_rotation @ layout.aortic_root
    ax_, ay_ = float(root[0]), float(root[1])
    dx, dy = layout.descending_xy
    ra, rd = layout.ascending_radius, layout.descending_radius

    half_span = 0.5 * float(np.hypot(dx - ax_, dy - ay_))
    arch_z = max(float(z.max()) - half_span - 0.3 * rd, float(root[2]) + 5.0)
    ascending = (((x - ax_) ** 2 + (y - ay_) ** 2) <= ra**2) & (z >= root[2]) & (z <= arch_z)
    descending = (((x - dx) ** 2 + (y - dy) ** 2) <= rd**2) & (z <= arch_z)

    ex, ey = (dx - ax_) / (2 * half_span), (dy - ay_) / (2 * half_span)
    mx, my = (ax_ + dx) / 2, (ay_ + dy) / 2
    along = (x - mx) * ex + (y - my) * ey
    across = -(x - mx) * ey + (y - my) * ex
    up = z - arch_z
    # The tube radius tapers from the ascending to the descending calibre along the arch.
    radius = ra + (rd - ra) * np.clip((along / half_span + 1) / 2, 0, 1)
    arch = ((np.sqrt(along**2 + up**2) - half_span) ** 2 + across**2 <= radius**2) & (up >= 0)

    aorta = ascending | descending | arch
    _paint(tissue, aorta, BLOOD_LEFT)
    _paint(label, aorta, AORTA)


def _sample_intensities(rng: np.random.Generator, domain: Domain) -> np.ndarray:
    """Per-subject tissue intensities: the domain means, each varied by up to +-10%."""
    base = CT_INTENSITY if domain == "ct" else MR_INTENSITY
    values = base * rng.uniform(0.9, 1.1, base.shape).astype(np.float32)
    values[AIR] = base[AIR]  # air is the physical reference (-1000 HU / no signal)
    return values


def _smooth_field(rng: np.random.Generator, grid: _Grid) -> np.ndarray:
    """A random quadratic polynomial over the volume, scaled to [-1, 1]."""
    nx, ny, nz = (c / max(float(np.abs(c).max()), 1e-6) for c in (grid.x, grid.y, grid.z))
    terms = (nx, ny, nz, nx * ny, nx * nz, ny * nz, nx**2, ny**2, nz**2)
    coefs = rng.normal(0.0, 1.0, len(terms))
    field = sum(float(c) * t for c, t in zip(coefs, terms))
    field = np.broadcast_to(field, grid.shape).astype(np.float32)
    field -= field.mean()
    return field / max(float(np.abs(field).max()), 1e-6)


def _acquire(tissue: np.ndarray, rng: np.random.Generator, grid: _Grid, domain: Domain) -> np.ndarray:
    """Turn the tissue map into a scanner-like image: PSF blur, bias field, noise."""
    image = _sample_intensities(rng, domain)[tissue]
    # A small in-plane point spread function gives partial-volume edges.
    image = ndimage.gaussian_filter(image, sigma=(0.5, 0.5, 0.0), mode="nearest")
    field = _smooth_field(rng, grid)
    if domain == "ct":
        # CT is nearly quantitative: a weak additive shading (beam hardening, scatter).
        image += rng.uniform(5.0, 20.0) * field
        image += rng.standard_normal(grid.shape, dtype=np.float32) * rng.uniform(15.0, 25.0)
        return image
    # MR: strong multiplicative coil-sensitivity bias in [0.7, 1.3] and Rician noise
    # (the magnitude of a complex signal with Gaussian noise in both channels).
    image *= 1.0 + rng.uniform(0.15, 0.3) * field
    sigma = rng.uniform(10.0, 20.0)
    real = image + sigma * rng.standard_normal(grid.shape, dtype=np.float32)
    imag = sigma * rng.standard_normal(grid.shape, dtype=np.float32)
    return np.sqrt(real * real + imag * imag)


def _subject_rngs(index: int, seed: int, domain: Domain) -> tuple[np.random.Generator, np.random.Generator]:
    """Independent streams for anatomy and acquisition.

    Keeping the anatomy on its own stream means it does not depend on the grid size
    (the noise draws do), so the same subject can be rendered at any resolution.
    """
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be non-negative, got seed={seed}, index={index}")
    anatomy, acquisition = np.random.SeedSequence([seed, index, _DOMAIN_KEY[domain]]).spawn(2)
    return np.random.default_rng(anatomy), np.random.default_rng(acquisition)


def render_subject(index: int, *, seed: int, domain: Domain, size: int, num_slices: int) -> PhantomSubject:
    """Render subject ``index`` of the phantom with the tissue map (for tests and plots)."""
    if domain not in _DOMAIN_KEY:
        raise ValueError(f"domain must be 'ct' or 'mr', got {domain!r}")
    anatomy_rng, acquisition_rng = _subject_rngs(index, seed, domain)
    layout = _sample_layout(anatomy_rng)
    grid = _make_grid(domain, size, num_slices)
    tissue = np.zeros(grid.shape, dtype=np.uint8)
    label = np.zeros(grid.shape, dtype=np.uint8)
    _paint_torso(tissue, grid, layout)
    _paint_heart(tissue, label, grid, layout)
    _paint_aorta(tissue, label, grid, layout)
    image = _acquire(tissue, acquisition_rng, grid, domain).astype(np.float32, copy=False)
    # drawn with x towards the patient's left; RAS has +x towards the patient's right
    mirror = (slice(None, None, -1),)
    return PhantomSubject(
        image=np.ascontiguousarray(image[mirror]),
        label=np.ascontiguousarray(label[mirror]),
        tissue=np.ascontiguousarray(tissue[mirror]),
        spacing=grid.spacing,
    )


def generate_subject(
    index: int, *, seed: int, domain: Domain, size: int, num_slices: int
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Generate one subject: ``(image float32, label uint8, spacing)``, arrays (X, Y, Z).

    Deterministic in ``(index, seed, domain)``; ``size`` and ``num_slices`` only set
    the sampling grid (``size`` x ``size`` in-plane, ``num_slices`` along z).
    """
    subject = render_subject(index, seed=seed, domain=domain, size=size, num_slices=num_slices)
    return subject.image, subject.label, subject.spacing
