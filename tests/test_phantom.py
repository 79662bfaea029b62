"""The built-in phantom dataset: determinism, anatomy, intensities and the plugin hook."""

from __future__ import annotations

import time

import numpy as np
import pytest
from pydantic import ValidationError
from scipy import ndimage

from ssmtl.api.specs import DatasetSpec
from ssmtl.api.volumes import RawVolume, VolumeSource
from ssmtl.plugins.datasets import phantom
from ssmtl.plugins.datasets.phantom_anatomy import (
    AORTA,
    CLASS_NAMES,
    FAT,
    LEFT_ATRIUM,
    LEFT_VENTRICLE,
    MUSCLE,
    MYOCARDIUM,
    RIGHT_ATRIUM,
    RIGHT_VENTRICLE,
    generate_subject,
    render_subject,
)

SIZE, SLICES = 64, 32
SUBJECTS = range(6)
HEART_CLASSES = (1, 2, 3, 4, 5)


def _subject(index: int, domain: str = "ct", seed: int = 0, variability: str = "low"):
    return render_subject(index, seed=seed, domain=domain, size=SIZE, num_slices=SLICES, variability=variability)


@pytest.fixture(scope="module", params=[("ct", "low"), ("mr", "low"), ("ct", "realistic"), ("mr", "realistic")],
                ids=lambda p: "-".join(p))
def subjects(request):
    domain, variability = request.param
    return domain, [_subject(i, domain, variability=variability) for i in SUBJECTS]


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / max(int(a.sum() + b.sum()), 1)


def _class_mean(subject, cls: int) -> float:
    return float(subject.image[subject.label == cls].mean())


def _tissue_mean(subject, tissue: int) -> float:
    return float(subject.image[subject.tissue == tissue].mean())


# -- determinism, shapes --------------------------------------------------------------


@pytest.mark.parametrize("domain", ["ct", "mr"])
def test_same_seed_and_index_give_identical_arrays(domain):
    a = generate_subject(3, seed=7, domain=domain, size=SIZE, num_slices=SLICES)
    b = generate_subject(3, seed=7, domain=domain, size=SIZE, num_slices=SLICES)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[2] == b[2]


@pytest.mark.parametrize("domain", ["ct", "mr"])
def test_different_index_or_seed_gives_different_subjects(domain):
    base = generate_subject(0, seed=0, domain=domain, size=SIZE, num_slices=SLICES)
    for other in (
        generate_subject(1, seed=0, domain=domain, size=SIZE, num_slices=SLICES),
        generate_subject(0, seed=1, domain=domain, size=SIZE, num_slices=SLICES),
    ):
        assert not np.array_equal(base[1], other[1])
        assert not np.allclose(base[0], other[0])


def test_ct_and_mr_subjects_are_unpaired():
    ct = generate_subject(0, seed=0, domain="ct", size=SIZE, num_slices=SLICES)
    mr = generate_subject(0, seed=0, domain="mr", size=SIZE, num_slices=SLICES)
    assert not np.array_equal(ct[1], mr[1])


@pytest.mark.parametrize("domain", ["ct", "mr"])
@pytest.mark.parametrize("size,num_slices", [(64, 32), (48, 20), (16, 4)])
def test_shapes_dtypes_and_spacing(domain, size, num_slices):
    image, label, spacing = generate_subject(2, seed=0, domain=domain, size=size, num_slices=num_slices)
    assert image.shape == label.shape == (size, size, num_slices)
    assert image.dtype == np.float32 and label.dtype == np.uint8
    assert np.isfinite(image).all()
    assert len(spacing) == 3 and all(isinstance(s, float) and s > 0 for s in spacing)
    assert spacing[0] == spacing[1]
    assert set(np.unique(label)) <= set(CLASS_NAMES)


def test_grid_resolution_changes_sampling_not_the_subject():
    # Same subject on a finer grid: the LV volume in mm^3 stays about the same.
    volumes = []
    for size, slices in ((64, 32), (128, 64)):
        _, label, spacing = generate_subject(4, seed=0, domain="ct", size=size, num_slices=slices)
        volumes.append((label == LEFT_VENTRICLE).sum() * np.prod(spacing))
    assert volumes[1] == pytest.approx(volumes[0], rel=0.2)


def test_negative_seed_is_rejected():
    with pytest.raises(ValueError):
        generate_subject(0, seed=-1, domain="ct", size=SIZE, num_slices=SLICES)


# -- anatomy --------------------------------------------------------------------------


def test_every_subject_has_all_classes(subjects):
    _, subs = subjects
    for s in subs:
        assert set(np.unique(s.label)) == set(CLASS_NAMES)


def test_myocardium_surrounds_the_left_ventricle(subjects):
    _, subs = subjects
    for s in subs:
        lv_slices = np.nonzero((s.label == LEFT_VENTRICLE).any(axis=(0, 1)))[0]
        for k in (s.label.shape[2] // 2, (lv_slices[0] + lv_slices[-1]) // 2):
            section = s.label[:, :, k]
            lv = section == LEFT_VENTRICLE
            assert lv.any()
            # Default structuring element = 4-neighbourhood in 2D.
            neighbours = section[ndimage.binary_dilation(lv)]
            assert np.isin(neighbours, [LEFT_VENTRICLE, MYOCARDIUM]).all()
            # The wall is at least 2 pixels thick: eroding it once leaves a ring.
            ring = ndimage.binary_fill_holes(lv | (section == MYOCARDIUM)) & ~ndimage.binary_dilation(lv)
            assert ring.sum() >= 0.5 * (section == MYOCARDIUM).sum()


def test_right_ventricle_lies_right_of_the_left_ventricle(subjects):
    # RAS: x grows towards the patient's right, so the RV (patient right) has the larger x.
    _, subs = subjects
    for s in subs:
        x_lv = np.nonzero(s.label == LEFT_VENTRICLE)[0].mean()
        x_rv = np.nonzero(s.label == RIGHT_VENTRICLE)[0].mean()
        assert x_rv > x_lv


def test_heart_fills_the_middle_of_the_stack(subjects):
    _, subs = subjects
    for s in subs:
        heart = np.isin(s.label, HEART_CLASSES).any(axis=(0, 1))
        assert 0.3 <= heart.mean() <= 0.9  # realistic: a small heart in a long scan, or a tightly planned one
        assert not heart[0] and not heart[-1]


def test_consecutive_heart_slices_are_continuous(subjects):
    _, subs = subjects
    for s in subs:
        heart = np.isin(s.label, HEART_CLASSES)
        area = heart.sum(axis=(0, 1))
        core = np.nonzero(area >= 0.25 * area.max())[0]
        pairs = range(core[0], core[-1])
        foreground = [_dice(heart[:, :, k], heart[:, :, k + 1]) for k in pairs]
        per_class = [
            np.mean(
                [
                    _dice(s.label[:, :, k] == c, s.label[:, :, k + 1] == c)
                    for c in range(1, 7)
                    if (s.label[:, :, k : k + 2] == c).any()
                ]
            )
            for k in pairs
        ]
        assert min(foreground) > 0.5
        assert np.mean(foreground) > 0.8
        assert np.mean(per_class) > 0.7


def test_aorta_runs_through_most_slices(subjects):
    _, subs = subjects
    for s in subs:
        assert (s.label == AORTA).any(axis=(0, 1)).mean() >= 0.8


def test_subjects_differ_in_lv_volume(subjects):
    _, subs = subjects
    volumes = np.array([(s.label == LEFT_VENTRICLE).sum() for s in subs])
    assert len(set(volumes.tolist())) == len(volumes)
    assert volumes.max() / volumes.min() > 1.2


def _hash(domain: str, variability: str) -> str:
    import hashlib

    h = hashlib.sha256()
    for i in range(3):
        image, label, spacing = generate_subject(i, seed=5, domain=domain, size=48, num_slices=20, variability=variability)
        h.update(np.ascontiguousarray(image).tobytes())
        h.update(np.ascontiguousarray(label).tobytes())
        h.update(np.asarray(spacing).tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("domain,digest", [
    ("ct", "e45560015d9be8e6e5787988b6750d43020a9bf4ba0ac7fe311cab4f07a92c12"),
    ("mr", "e25e3f7e2c02b39e637857e56e0903c84030d744986278245f1c07ff8e657262"),
])
def test_low_variability_is_the_original_phantom_bit_for_bit(domain, digest):
    """Digests of the phantom before the realistic setting existed (main at 362025c, this platform's numpy)."""
    assert _hash(domain, "low") == digest


def test_realistic_subjects_vary_in_grid_and_acquisition():
    subs = [_subject(i, "ct", variability="realistic") for i in range(8)]
    slices = {s.label.shape[2] for s in subs}
    spacings = {round(s.spacing[0], 3) for s in subs}
    assert len(slices) >= 4 and len(spacings) == 8  # own coverage, slice spacing and field of view
    lv = np.array([(s.label == LEFT_VENTRICLE).sum() * np.prod(s.spacing) for s in subs])
    assert lv.max() / lv.min() > 1.5  # mm^3: wider than the low setting's heart sizes
    blood = [_class_mean(s, LEFT_VENTRICLE) for s in subs]
    assert max(blood) - min(blood) > 80  # contrast phase and bolus timing (HU)


def test_realistic_heart_lookalikes_are_background():
    """Blood outside every labelled structure: the pulmonary trunk and the superior vena cava."""
    for i in range(4):
        s = _subject(i, "ct", variability="realistic")
        blood_outside = np.isin(s.tissue, (7, 8, 10)) & (s.label == 0)
        assert blood_outside.sum() * np.prod(s.spacing) > 5000  # mm^3, well beyond partial-volume rims
        assert (s.tissue == 10).any()  # the contrast-filled SVC


def _touching_faces(label: np.ndarray, a: int, b: int) -> int:
    """Voxel faces where label ``a`` meets label ``b`` directly (no wall between them)."""
    faces = 0
    for axis in range(3):
        first, second = np.moveaxis(label, axis, 0)[:-1], np.moveaxis(label, axis, 0)[1:]
        faces += int((((first == a) & (second == b)) | ((first == b) & (second == a))).sum())
    return faces


def test_realistic_chambers_are_separated_by_walls():
    """RA/RV and RA/LA meet across a wall (muscle, background label), never blood to blood.

    The original phantom paints all walls before all blood, so touching chambers share a
    boundary no image can show; ``variability=low`` keeps it (it is the original, bit for bit).
    """
    pairs = ((RIGHT_ATRIUM, RIGHT_VENTRICLE), (RIGHT_ATRIUM, LEFT_ATRIUM))
    realistic = [_subject(i, "ct", variability="realistic") for i in SUBJECTS]
    low = [_subject(i, "ct") for i in SUBJECTS]
    for a, b in pairs:
        assert sum(_touching_faces(s.label, a, b) for s in realistic) == 0
        assert sum(_touching_faces(s.label, a, b) for s in low) > 50
    for s in realistic:
        # what lies between them is mostly cardiac muscle: the atrioventricular wall or,
        # where the LV reaches, its myocardium (the aorta passes close by in a few voxels)
        ra = s.label == RIGHT_ATRIUM
        rv = ndimage.binary_dilation(s.label == RIGHT_VENTRICLE, iterations=2)
        between = ndimage.binary_dilation(ra) & rv & ~ra & (s.label != RIGHT_VENTRICLE)
        assert between.sum() > 0
        assert (s.tissue[between] == MUSCLE).mean() > 0.5


def test_realistic_subject_does_not_depend_on_the_grid():
    a = render_subject(3, seed=0, domain="mr", size=48, num_slices=32, variability="realistic")
    b = render_subject(3, seed=0, domain="mr", size=96, num_slices=32, variability="realistic")
    assert a.label.shape[2] == b.label.shape[2]  # same coverage and slice spacing
    assert a.spacing[0] == pytest.approx(2 * b.spacing[0])  # same field of view, finer sampling
    volumes = [(s.label == LEFT_VENTRICLE).sum() * np.prod(s.spacing) for s in (a, b)]
    assert volumes[1] == pytest.approx(volumes[0], rel=0.2)


# -- intensities ----------------------------------------------------------------------


def test_ct_intensities_are_in_hounsfield_ranges():
    for s in (_subject(i, "ct") for i in SUBJECTS):
        assert 60 < _class_mean(s, MYOCARDIUM) < 150
        for blood in (2, 3, 4, 5, 6):
            assert 220 < _class_mean(s, blood) < 400
        assert _tissue_mean(s, 0) < -950  # air
        assert -950 < _tissue_mean(s, 3) < -700  # lung
        assert -200 < _tissue_mean(s, FAT) < -50
        assert _tissue_mean(s, 4) > 450  # bone
        # Noise of about 20 HU, from neighbour differences in air well outside the body
        # (differences cancel the smooth bias field; the erosion avoids blurred edges).
        air = ndimage.binary_erosion(s.tissue == 0, iterations=3)
        pairs = air[:-1] & air[1:]
        noise = np.diff(s.image, axis=0)[pairs].std() / np.sqrt(2)
        assert 12 < noise < 30


def test_mr_contrast_differs_from_ct():
    for ct, mr in ((_subject(i, "ct"), _subject(i, "mr")) for i in SUBJECTS):
        for s in (ct, mr):
            assert _class_mean(s, MYOCARDIUM) < 0.6 * _class_mean(s, LEFT_VENTRICLE)
        # Fat: darker than myocardium in CT, brighter in bSSFP MR.
        assert _tissue_mean(ct, FAT) < _class_mean(ct, MYOCARDIUM)
        assert _tissue_mean(mr, FAT) > 1.5 * _class_mean(mr, MYOCARDIUM)
        # MR: blood in the hundreds of a.u., lungs and air dark, no negative values.
        assert 350 < _class_mean(mr, LEFT_VENTRICLE) < 700
        assert _tissue_mean(mr, 3) < 80
        assert mr.image.min() >= 0


def test_mr_has_a_strong_bias_field():
    # The same tissue varies much more across an MR volume than across a CT volume.
    def spread(s, tissue):
        values = ndimage.gaussian_filter(s.image, 2.0)[ndimage.binary_erosion(s.tissue == tissue, iterations=2)]
        return np.percentile(values, 95) / np.percentile(values, 5)

    for i in SUBJECTS:
        assert spread(_subject(i, "mr"), 2) > 1.15


def test_generation_is_fast():
    start = time.perf_counter()
    for i in range(16):
        generate_subject(i, seed=0, domain="mr", size=64, num_slices=32)
    assert time.perf_counter() - start < 2.0


# -- plugin ---------------------------------------------------------------------------


def test_hook_returns_a_dataset_spec():
    (spec,) = phantom.ssmtl_register_datasets()
    assert isinstance(spec, DatasetSpec)
    assert spec.name == "phantom"
    assert spec.config_model is phantom.PhantomConfig
    assert spec.description


def test_config_defaults_validation_and_descriptions():
    config = phantom.PhantomConfig()
    assert (config.name, config.subjects, config.domain, config.size, config.num_slices, config.seed,
            config.variability) == ("phantom", 16, "ct", 64, 32, 0, "realistic")
    for field in phantom.PhantomConfig.model_fields.values():
        assert field.description
    for bad in ({"subjects": 0}, {"domain": "pet"}, {"size": 8}, {"num_slices": 2}, {"unknown": 1},
                {"variability": "high"}):
        with pytest.raises(ValidationError):
            phantom.PhantomConfig(**bad)


@pytest.mark.parametrize("variability", ["low", "realistic"])
@pytest.mark.parametrize("domain", ["ct", "mr"])
def test_factory_builds_loadable_items(domain, variability):
    (spec,) = phantom.ssmtl_register_datasets()
    config = spec.config_model(subjects=3, domain=domain, size=32, num_slices=12, seed=5, variability=variability)
    source = spec.factory(config)
    assert isinstance(source, VolumeSource)
    assert source.class_names == CLASS_NAMES
    assert [item.subject for item in source.items] == [f"phantom_{domain}_{i:03d}" for i in range(3)]
    suffix = "" if variability == "low" else ":variability=realistic"
    assert source.items[2].source == f"phantom:{domain}:seed=5:index=2{suffix}"

    volume = source.items[1].load()
    assert isinstance(volume, RawVolume)
    assert volume.modality == domain
    assert volume.image.shape[:2] == volume.label.shape[:2] == (32, 32)
    if variability == "low":
        assert volume.image.shape[2] == 12
    np.testing.assert_allclose(np.diag(volume.affine), [*volume.spacing, 1.0])
    expected = generate_subject(1, seed=5, domain=domain, size=32, num_slices=12, variability=variability)
    np.testing.assert_array_equal(volume.image, expected[0])
    np.testing.assert_array_equal(volume.label, expected[1])


def test_items_are_picklable():
    import pickle

    source = phantom.build_source(phantom.PhantomConfig(subjects=2, size=32, num_slices=8))
    item = pickle.loads(pickle.dumps(source.items[0]))
    np.testing.assert_array_equal(item.load().label, source.items[0].load().label)
