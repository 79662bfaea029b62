"""Random views and their pixel correspondence."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from ssmtl.training.augment import AugmentConfig, augment, random_affine, random_intensity

from ssmtl.api.geometry import apply_affine, correspondence

SIZE = 32
NO_INTENSITY = dict(contrast=0.0, brightness=0.0, gamma=(1.0, 1.0), blur=0.0, noise=0.0)


def to_normalised(col: float, row: float, size: int = SIZE) -> tuple[float, float]:
    """Pixel centre -> affine_grid coordinates (align_corners=False): x along columns, y along rows."""
    return (2 * col + 1) / size - 1, (2 * row + 1) / size - 1


def to_pixels(x: float, y: float, size: int = SIZE) -> tuple[float, float]:
    return ((x + 1) * size - 1) / 2, ((y + 1) * size - 1) / 2


def dot_image(col: float, row: float, sigma: float = 1.2) -> torch.Tensor:
    rows, cols = torch.meshgrid(torch.arange(SIZE, dtype=torch.float64), torch.arange(SIZE, dtype=torch.float64), indexing="ij")
    return torch.exp(-((rows - row) ** 2 + (cols - col) ** 2) / (2 * sigma**2))[None, None]


def locate(view: torch.Tensor) -> tuple[float, float, float] | None:
    """Intensity centroid (col, row) of the dot, or None if it touches the border (partly cut off)."""
    v = view[0].double().numpy()
    peak = v.max()
    mask = v > 0.1 * peak
    rows, cols = np.nonzero(mask)
    if peak < 0.5 or rows.min() < 1 or cols.min() < 1 or rows.max() > SIZE - 2 or cols.max() > SIZE - 2:
        return None
    w = v * mask
    return float((w * np.arange(SIZE)[None, :]).sum() / w.sum()), float((w * np.arange(SIZE)[:, None]).sum() / w.sum())


def apply_map(theta: torch.Tensor, x: float, y: float) -> tuple[float, float]:
    out = theta.double() @ torch.tensor([x, y, 1.0], dtype=torch.float64)
    return float(out[0]), float(out[1])


# -- correspondence -----------------------------------------------------------------------


def test_correspondence_tracks_a_bright_dot():
    torch.manual_seed(0)
    config = AugmentConfig(rotate=30.0, flip=0.5, crop_scale=(0.6, 1.0), translate=0.1)
    n = 40
    theta_a, theta_b = random_affine(n, config, "cpu", (0, 1)), random_affine(n, config, "cpu", (0, 1))
    source = dot_image(15.3, 16.6).float()
    view_a = apply_affine(source.expand(n, -1, -1, -1).contiguous(), theta_a)
    view_b = apply_affine(source.expand(n, -1, -1, -1).contiguous(), theta_b)
    corr = correspondence(theta_a, theta_b)
    assert corr.shape == (n, 2, 3)
    checked, flips = 0, 0
    for i in range(n):
        a, b = locate(view_a[i]), locate(view_b[i])
        if a is None or b is None:
            continue
        mapped = to_pixels(*apply_map(corr[i], *to_normalised(*a)))
        assert math.dist(mapped, b) < 1.0, (i, a, b, mapped)
        checked += 1
        flips += bool(torch.det(theta_a[i, :, :2]) < 0) != bool(torch.det(theta_b[i, :, :2]) < 0)
    assert checked >= n // 2  # most draws keep the dot inside both views
    assert flips >= 1  # a flipped/unflipped pair was among the checked ones


def test_correspondence_composes_with_theta_b_to_theta_a():
    """theta_b(corr(p)) == theta_a(p): both views sample the same source point."""
    torch.manual_seed(1)
    config = AugmentConfig(rotate=90.0)
    theta_a, theta_b = random_affine(16, config, "cpu").double(), random_affine(16, config, "cpu").double()
    corr = correspondence(theta_a, theta_b)
    points = torch.cat([torch.rand(16, 2, 5, dtype=torch.float64) * 2 - 1, torch.ones(16, 1, 5, dtype=torch.float64)], dim=1)
    in_b = torch.cat([corr @ points, torch.ones(16, 1, 5, dtype=torch.float64)], dim=1)
    torch.testing.assert_close(theta_b @ in_b, theta_a @ points)


def test_correspondence_of_a_view_with_itself_is_identity():
    theta = random_affine(4, AugmentConfig(), "cpu")
    identity = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).expand(4, 2, 3)
    torch.testing.assert_close(correspondence(theta, theta), identity, atol=1e-5, rtol=0)


def test_correspondence_by_hand():
    # view a: identity; view b: zoom x2 into the centre (theta_b = 0.5 I) shifted right by 0.2
    theta_a = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    theta_b = torch.tensor([[[0.5, 0.0, 0.2], [0.0, 0.5, 0.0]]])
    corr = correspondence(theta_a, theta_b)
    # source point (0.2, 0) is the centre of view b; a point (0.7, 0.5) of a is (1.0, 1.0) in b
    assert apply_map(corr[0], 0.2, 0.0) == pytest.approx((0.0, 0.0), abs=1e-6)
    assert apply_map(corr[0], 0.7, 0.5) == pytest.approx((1.0, 1.0), abs=1e-6)


# -- random_affine ---------------------------------------------------------------------------


def test_random_affine_respects_ranges():
    torch.manual_seed(2)
    config = AugmentConfig(rotate=20.0, crop_scale=(0.7, 0.9), flip=0.5, translate=0.05)
    theta = random_affine(500, config, "cpu", flip_axes=(1,))
    linear = theta[:, :, :2]
    scale = torch.sqrt(torch.abs(torch.det(linear)))
    assert scale.min() >= 0.7 - 1e-5 and scale.max() <= 0.9 + 1e-5
    flipped = torch.det(linear) < 0
    assert 0.35 < flipped.float().mean() < 0.65
    # angle from the second column (-sin, cos) * scale, which a column flip leaves alone
    angle = torch.rad2deg(torch.atan2(-linear[:, 0, 1], linear[:, 1, 1]))
    assert angle.abs().max() <= 20.0 + 1e-3
    margin = (1 - scale) + 0.05
    assert (theta[:, :, 2].abs() <= margin[:, None] + 1e-5).all()


def test_no_augmentation_config_is_identity():
    config = AugmentConfig(flip=0.0, rotate=0.0, crop_scale=(1.0, 1.0), translate=0.0, **NO_INTENSITY)
    x = torch.rand(3, 1, SIZE, SIZE)
    view, theta = augment(x, config)
    torch.testing.assert_close(theta, torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(3, 2, 3))
    torch.testing.assert_close(view, x, atol=1e-5, rtol=0)


FLIP_ONLY = dict(flip=1.0, rotate=0.0, crop_scale=(1.0, 1.0), translate=0.0, **NO_INTENSITY)


@pytest.mark.parametrize("flip_axes, dims", [((1,), [3]), ((0,), [2]), ((0, 1), [2, 3])])
def test_flip_mirrors_exactly_the_allowed_axes(flip_axes, dims):
    """Axis 1 = columns (the last tensor dim), axis 0 = rows; both = a 180 degree turn."""
    x = torch.rand(2, 1, SIZE, SIZE)
    view, theta = augment(x, AugmentConfig(**FLIP_ONLY), flip_axes=flip_axes)
    torch.testing.assert_close(view, torch.flip(x, dims=dims), atol=1e-5, rtol=0)
    assert (torch.det(theta[:, :, :2]) * (-1) ** len(flip_axes) > 0).all()


def test_no_flip_where_the_data_allows_none():
    """flip=1 asked for, no axis allowed (the default): the view is the slice itself."""
    x = torch.rand(3, 1, SIZE, SIZE)
    for flip_axes in ((), []):
        view, theta = augment(x, AugmentConfig(**FLIP_ONLY), flip_axes=flip_axes)
        torch.testing.assert_close(view, x, atol=1e-5, rtol=0)
    torch.manual_seed(0)
    theta = random_affine(2000, AugmentConfig(flip=1.0, rotate=180.0), "cpu")
    assert (torch.det(theta[:, :, :2]) > 0).all()  # rotations and crops only: never a mirror image


def test_allowed_flips_do_not_change_the_other_random_draws():
    """The same seed gives the same rotations, crops and shifts whichever flips are allowed."""
    config = AugmentConfig(flip=0.5, rotate=40.0)
    torch.manual_seed(5)
    none = random_affine(64, config, "cpu", ())
    torch.manual_seed(5)
    both = random_affine(64, config, "cpu", (0, 1))
    torch.testing.assert_close(both[:, :, 2], none[:, :, 2])  # shifts
    torch.testing.assert_close(both[:, :, :2].abs(), none[:, :, :2].abs())  # a flip only changes signs
    assert not torch.equal(both, none)


def test_flip_note_only_for_an_explicit_flip_on_data_without_axes():
    from ssmtl.training.augment import flip_note

    assert flip_note(AugmentConfig(), ()) is None  # the default, not asked for
    assert flip_note(AugmentConfig(flip=0.3), (1,)) is None  # allowed somewhere
    assert flip_note(AugmentConfig(flip=0.0), ()) is None
    note = flip_note(AugmentConfig(flip=0.3), (), section="augment")
    assert note.startswith("augment.flip=0.3 is off") and "flip_axes is []" in note


# -- augment -----------------------------------------------------------------------------------


@pytest.mark.parametrize("group", [1, 3])
def test_augment_shapes(group):
    torch.manual_seed(3)
    x = torch.rand(6, 1, SIZE, SIZE)
    view, theta = augment(x, AugmentConfig(), group=group)
    assert view.shape == x.shape and view.dtype == x.dtype
    assert theta.shape == (6, 2, 3)
    assert torch.isfinite(view).all()


def test_group_shares_the_spatial_transform():
    torch.manual_seed(4)
    k, groups = 3, 4
    x = torch.rand(k * groups, 1, SIZE, SIZE)
    _, theta = augment(x, AugmentConfig(), group=k)
    per_group = theta.view(groups, k, 2, 3)
    for g in range(groups):
        for i in range(1, k):
            assert torch.equal(per_group[g, i], per_group[g, 0])
    for g in range(1, groups):
        assert not torch.allclose(per_group[g, 0], per_group[0, 0])


def test_group_views_of_identical_slices_are_identical_without_intensity_jitter():
    torch.manual_seed(5)
    config = AugmentConfig(**NO_INTENSITY)
    slice_ = torch.rand(1, 1, SIZE, SIZE)
    x = slice_.repeat(6, 1, 1, 1)
    view, theta = augment(x, config, group=3)
    torch.testing.assert_close(view[0], view[1])
    torch.testing.assert_close(view[0], view[2])
    assert not torch.allclose(view[0], view[3])
    # the view is exactly the warp given by the returned theta
    torch.testing.assert_close(view, apply_affine(x, theta), atol=1e-5, rtol=0)


def test_group_must_divide_batch():
    with pytest.raises(ValueError, match="multiple"):
        augment(torch.rand(5, 1, SIZE, SIZE), AugmentConfig(), group=2)


# -- intensity -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.rand(4, 1, SIZE, SIZE),
        lambda: torch.zeros(4, 1, SIZE, SIZE),  # constant slices: std 0
        lambda: torch.full((4, 1, SIZE, SIZE), -1000.0),
        lambda: torch.randn(4, 1, SIZE, SIZE) * 1e3,
    ],
)
def test_intensity_keeps_values_finite(make):
    torch.manual_seed(6)
    config = AugmentConfig(contrast=1.0, brightness=2.0, gamma=(0.2, 3.0), blur=1.0, noise=1.0)
    out = random_intensity(make(), config)
    assert out.shape == (4, 1, SIZE, SIZE)
    assert torch.isfinite(out).all()


def test_intensity_changes_values_per_sample():
    torch.manual_seed(7)
    x = torch.rand(1, 1, SIZE, SIZE).repeat(2, 1, 1, 1)
    out = random_intensity(x, AugmentConfig(blur=0.0, noise=0.0))
    assert not torch.allclose(out, x)
    assert not torch.allclose(out[0], out[1])  # independent draws per sample


def test_intensity_identity_settings_keep_input():
    x = torch.rand(3, 1, SIZE, SIZE)
    torch.testing.assert_close(random_intensity(x, AugmentConfig(**NO_INTENSITY)), x, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kwargs", [{"crop_scale": (0.9, 0.5)}, {"crop_scale": (0.0, 1.0)}, {"gamma": (2.0, 1.0)}, {"flip": 1.5}])
def test_config_rejects_bad_ranges(kwargs):
    with pytest.raises(ValidationError):
        AugmentConfig(**kwargs)


def _affine_before_flip_axes(n: int, config: AugmentConfig) -> torch.Tensor:
    """random_affine as it was before flips were declared per axis (columns only, always drawn):
    the reference for the random stream a seed draws."""
    import math

    def uniform(lo, hi):
        return torch.rand(n) * (hi - lo) + lo

    angle = uniform(-config.rotate, config.rotate) * (math.pi / 180)
    scale = uniform(*config.crop_scale)
    flip = torch.where(torch.rand(n) < config.flip, -1.0, 1.0)
    margin = (1 - scale) + config.translate
    tx, ty = uniform(-1, 1) * margin, uniform(-1, 1) * margin
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    return torch.stack([torch.stack([cos * flip, -sin, tx], -1), torch.stack([sin * flip, cos, ty], -1)], 1)


def test_a_seed_draws_the_views_it_drew_before_flips_were_declared():
    config = AugmentConfig()
    torch.manual_seed(0)
    expected = _affine_before_flip_axes(64, config)
    after_expected = torch.rand(5)
    torch.manual_seed(0)
    assert torch.equal(random_affine(64, config, "cpu", flip_axes=(1,)), expected)
    assert torch.equal(torch.rand(5), after_expected)  # the stream after it is the same too
    torch.manual_seed(0)
    unflipped = random_affine(64, config, "cpu")  # lateralised data: the same draws, no mirror
    assert torch.equal(torch.rand(5), after_expected)
    assert torch.equal(unflipped[:, :, 1:], expected[:, :, 1:]) and torch.equal(unflipped[:, :, 0].abs(), expected[:, :, 0].abs())
