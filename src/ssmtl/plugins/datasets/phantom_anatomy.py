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

Two maps are rendered (the geometry they are painted from is drawn in
:mod:`~ssmtl.plugins.datasets.phantom_layout`):

* a *tissue* map (air, fat, soft tissue, lung, bone, liver, muscle, left/right
  heart blood, CSF) that decides the intensities
  (:mod:`~ssmtl.plugins.datasets.phantom_scanner`), and
* the *label* map with the MM-WHS structures of :data:`CLASS_NAMES`.

They differ on purpose: following the MM-WHS convention, class 1 is the **left
ventricular** myocardium only. The thin walls of the right ventricle and of the
atria are rendered with muscle intensity but labelled background, like the
pericardial fat around the heart, so a model must learn shape and context and not
just threshold intensities.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ssmtl.plugins.datasets.phantom_layout import Domain, Grid, Layout, LOW_SPREAD, make_grid, sample_layout
from ssmtl.plugins.datasets.phantom_variability import (
    REALISTIC_SPREAD,
    sample_variation,
    slice_grid,
    SubjectVariation,
    Variability,
    VENOUS_CONTRAST,
)
from ssmtl.plugins.datasets.phantom_scanner import (
    acquire,
    BLOOD_LEFT,
    BLOOD_RIGHT,
    BONE,
    CSF,
    FAT,
    LIVER,
    LUNG,
    MUSCLE,
    SOFT,
)

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


def _paint(array: np.ndarray, mask: np.ndarray, value: int) -> None:
    """Set ``value`` where the (broadcastable) mask is true; later paint wins."""
    np.copyto(array, np.uint8(value), where=mask)


def _ellipse(x, y, center, radii) -> np.ndarray:
    return ((x - center[0]) / radii[0]) ** 2 + ((y - center[1]) / radii[1]) ** 2 <= 1.0


def _diaphragm_height(grid: Grid, layout: Layout) -> np.ndarray:
    """Dome-shaped diaphragm, higher on the right (under the liver) and centrally."""
    ax, ay = layout.body_radii
    cy = layout.body_center[1]
    return (
        layout.diaphragm_z
        - 0.1 * grid.x
        - 20.0 * (grid.x / ax) ** 2
        - 15.0 * ((grid.y - cy) / ay) ** 2
    )


def _paint_torso(tissue: np.ndarray, grid: Grid, layout: Layout) -> None:
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


def _heart_bounds(layout: Layout, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) corners in mm of the patient-frame box around every chamber grown by ``margin``."""
    rotation = layout.heart_rotation
    low = np.full(3, np.inf)
    high = np.full(3, -np.inf)
    for ellipsoid in layout.chambers.values():
        center = layout.heart_center + rotation @ ellipsoid.center
        half = ellipsoid.half_extent(rotation) + margin
        low, high = np.minimum(low, center - half), np.maximum(high, center + half)
    return low, high


def _heart_box(grid: Grid, layout: Layout, margin: float) -> tuple[slice, slice, slice]:
    """Index box of the grid that contains every chamber grown by ``margin`` mm.

    The heart fills a small part of the volume, so evaluating its ellipsoids only
    inside this box keeps large grids fast.
    """
    low, high = _heart_bounds(layout, margin)
    box = []
    for axis, coords in enumerate((grid.x.ravel(), grid.y.ravel(), grid.z.ravel())):
        start, stop = np.searchsorted(coords, [low[axis], high[axis]])
        box.append(slice(int(start), int(max(stop, start))))
    return tuple(box)


def _heart_frame(grid: Grid, layout: Layout, box) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Heart-frame coordinates R^T (p - c) of the voxels in ``box``."""
    x, y, z = grid.x[box[0]], grid.y[:, box[1]], grid.z[:, :, box[2]]
    d = (x - float(layout.heart_center[0]), y - float(layout.heart_center[1]), z - float(layout.heart_center[2]))
    r = layout.heart_rotation
    return tuple(float(r[0, i]) * d[0] + float(r[1, i]) * d[1] + float(r[2, i]) * d[2] for i in range(3))


def _myocardium_thickness(grid: Grid, layout: Layout) -> float:
    """Anatomical LV wall thickness, widened on coarse grids so the ring stays closed."""
    lv = layout.chambers["lv"]
    thickness = max(layout.myocardium_mm, _MIN_WALL_PIXELS * grid.spacing[0])
    return min(thickness, 0.45 * float(lv.radii.min()))


def _septal_wall_thickness(grid: Grid) -> float:
    """The thin walls of the realistic setting: anatomical, but at least one in-plane pixel.

    The phantom samples tissue at voxel centres, so a wall thinner than a pixel would
    vanish on some rows; a scanner's partial volume would still show it as a dimmer line.
    """
    return max(_THIN_WALL_MM, grid.spacing[0])


def _paint_heart(tissue: np.ndarray, label: np.ndarray, grid: Grid, layout: Layout, *,
                 walled_septa: bool = False) -> None:
    """Pericardial fat, chamber walls, the four chambers and the LV myocardium.

    ``walled_septa`` (the realistic setting) keeps a wall between touching chambers: each
    chamber's wall is painted over the chambers painted before it, so the RA meets the LA
    across an interatrial septum and the RV across an atrioventricular wall, as in a
    heart. Without it (the original phantom) all walls are painted first and then all the
    blood, so touching chambers meet blood to blood and their label boundary is invisible.
    """
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
    # Walled septa: each chamber's wall and then its blood, so the wall covers the chambers
    # painted before it; the original phantom paints all walls first and then all the blood.
    wall_mm = _septal_wall_thickness(grid) if walled_septa else _THIN_WALL_MM
    for group in ([chamber] for chamber in others) if walled_septa else [others]:
        for name, _, _ in group:
            wall = ch[name].inside(coords, grow=wall_mm)
            _paint(tissue, wall, MUSCLE)
            _paint(label, wall, 0)
        for name, blood, cls in group:
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


def _paint_aorta(tissue: np.ndarray, label: np.ndarray, grid: Grid, layout: Layout) -> None:
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


def _paint_heart_lookalikes(tissue: np.ndarray, label: np.ndarray, grid: Grid, layout: Layout,
                            variation: SubjectVariation) -> None:
    """Blood-filled neighbours labelled background: the pulmonary trunk and the superior vena cava.

    Painted last and only outside the labelled structures, so they never change a label.
    """
    x, y, z = grid.x, grid.y, grid.z
    rv, ra = layout.chambers["rv"], layout.chambers["ra"]
    rotation, center = layout.heart_rotation, layout.heart_center
    # The trunk leaves the top of the RV (its outflow, anterior and to the left) and runs
    # up, back and to the left for about 45 mm.
    root = center + rotation @ (rv.center + np.array([0.5, 0.3, 0.85]) * rv.radii)
    rise = np.clip(z - root[2], 0.0, None)
    lean_x, lean_y = variation.pulmonary_lean
    cx, cy = root[0] + 0.7 * lean_x * rise, root[1] + 0.7 * lean_y * rise
    trunk = ((x - cx) ** 2 + (y - cy) ** 2 <= variation.pulmonary_radius ** 2) & (z >= root[2]) & (z <= root[2] + 45.0)
    # The SVC comes down from the top of the volume into the top of the RA, behind and to its right.
    top = center + rotation @ (ra.center + np.array([-0.2, -0.2, 0.8]) * ra.radii)
    svc = ((x - top[0]) ** 2 + (y - top[1]) ** 2 <= variation.svc_radius ** 2) & (z >= top[2])
    outside = label == 0
    _paint(tissue, trunk & outside, BLOOD_RIGHT)
    _paint(tissue, svc & outside, VENOUS_CONTRAST)


def _subject_rngs(index: int, seed: int, domain: Domain) -> tuple[np.random.Generator, ...]:
    """Independent streams for anatomy, acquisition and the realistic setting's extra draws.

    Keeping the anatomy on its own stream means it does not depend on the grid size
    (the noise draws do), so the same subject can be rendered at any resolution. The
    first two streams are those of the original phantom (spawning a third child leaves
    them unchanged).
    """
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be non-negative, got seed={seed}, index={index}")
    children = np.random.SeedSequence([seed, index, _DOMAIN_KEY[domain]]).spawn(3)
    return tuple(np.random.default_rng(c) for c in children)


def render_subject(index: int, *, seed: int, domain: Domain, size: int, num_slices: int,
                   variability: Variability = "low") -> PhantomSubject:
    """Render subject ``index`` of the phantom with the tissue map (for tests and plots).

    ``variability="realistic"`` draws the subject from the wider ranges of
    :mod:`~ssmtl.plugins.datasets.phantom_variability`, including its own field of view and
    slice grid (``num_slices`` is then the nominal count over 160 mm).
    """
    if domain not in _DOMAIN_KEY:
        raise ValueError(f"domain must be 'ct' or 'mr', got {domain!r}")
    if variability not in ("low", "realistic"):
        raise ValueError(f"variability must be 'low' or 'realistic', got {variability!r}")
    anatomy_rng, acquisition_rng, variation_rng = _subject_rngs(index, seed, domain)
    realistic = variability == "realistic"
    layout = sample_layout(anatomy_rng, REALISTIC_SPREAD if realistic else LOW_SPREAD)
    variation = sample_variation(variation_rng, domain, num_slices) if realistic else None
    if variation is None:
        grid = make_grid(domain, size, num_slices)
    else:
        layout = replace(layout, myocardium_mm=variation.myocardium_mm)
        low, high = _heart_bounds(layout, margin=0.0)
        slices, extent = slice_grid(variation, float(max(-low[2], high[2])))
        grid = make_grid(domain, size, slices, variation.field_of_view_mm, extent)
    tissue = np.zeros(grid.shape, dtype=np.uint8)
    label = np.zeros(grid.shape, dtype=np.uint8)
    _paint_torso(tissue, grid, layout)
    _paint_heart(tissue, label, grid, layout, walled_septa=realistic)
    _paint_aorta(tissue, label, grid, layout)
    if variation is not None:
        _paint_heart_lookalikes(tissue, label, grid, layout, variation)
    image = acquire(tissue, acquisition_rng, grid, domain, variation).astype(np.float32, copy=False)
    # drawn with x towards the patient's left; RAS has +x towards the patient's right
    mirror = (slice(None, None, -1),)
    return PhantomSubject(
        image=np.ascontiguousarray(image[mirror]),
        label=np.ascontiguousarray(label[mirror]),
        tissue=np.ascontiguousarray(tissue[mirror]),
        spacing=grid.spacing,
    )


def generate_subject(
    index: int, *, seed: int, domain: Domain, size: int, num_slices: int, variability: Variability = "low"
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Generate one subject: ``(image float32, label uint8, spacing)``, arrays (X, Y, Z).

    Deterministic in ``(index, seed, domain, variability)``; ``size`` and ``num_slices``
    only set the sampling grid (``size`` x ``size`` in-plane, ``num_slices`` along z, the
    nominal count when ``variability="realistic"``).
    """
    subject = render_subject(index, seed=seed, domain=domain, size=size, num_slices=num_slices,
                             variability=variability)
    return subject.image, subject.label, subject.spacing
