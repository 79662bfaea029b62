"""Tests for ssmtl.data.preprocess: slice layout, resampling, crop/pad, normalisation."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from ssmtl.api.errors import InputFileError
from ssmtl.data.preprocess import (
    PreprocessConfig,
    ProcessedVolume,
    from_slices,
    preprocess_volume,
    to_slices,
)
from ssmtl.api.volumes import RawVolume

SOURCE = "/data/case01.nii.gz"


def ct_volume(shape=(40, 30, 8), spacing=(1.0, 1.0, 2.0), background=-1000.0) -> np.ndarray:
    """A CT-like volume of air with a bright cube (750 HU, the window top) in the middle, and its label."""
    image = np.full(shape, background, dtype=np.float32)
    label = np.zeros(shape, dtype=np.uint8)
    x, y = shape[0] // 2, shape[1] // 2
    image[x - 8 : x + 8, y - 6 : y + 6, :] = 750.0
    label[x - 8 : x + 8, y - 6 : y + 6, :] = 1
    return image, label


# -- config -----------------------------------------------------------------------


def test_config_defaults_and_descriptions():
    config = PreprocessConfig()
    assert config.size == 128 and config.spacing is None
    assert config.ct_window == (-250.0, 750.0) and config.mr_percentiles == (1.0, 99.0)
    assert all(f.description for f in PreprocessConfig.model_fields.values())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ct_window": (750.0, -250.0)},
        {"ct_window": (0.0, 0.0)},
        {"mr_percentiles": (50.0, 10.0)},
        {"mr_percentiles": (-1.0, 99.0)},
        {"mr_percentiles": (1.0, 101.0)},
        {"size": 8},
        {"spacing": 0.0},
        {"unknown": 1},
    ],
)
def test_config_rejects_invalid_values(kwargs):
    with pytest.raises(ValidationError):
        PreprocessConfig(**kwargs)


# -- slice layout ------------------------------------------------------------------


def test_to_slices_is_radiological():
    """Patient right-anterior (high x, high y in RAS) lands at row 0, column 0."""
    volume = np.zeros((5, 4, 3))
    volume[4, 3, 2] = 1.0  # most right, most anterior, top slice
    volume[0, 0, 1] = 2.0  # most left, most posterior
    slices = to_slices(volume)
    assert slices.shape == (3, 4, 5)
    assert slices[2, 0, 0] == 1.0
    assert slices[1, 3, 4] == 2.0


def test_from_slices_inverts_to_slices():
    volume = np.random.default_rng(0).normal(size=(5, 4, 3))
    assert np.array_equal(from_slices(to_slices(volume)), volume)
    stack = np.random.default_rng(1).normal(size=(3, 4, 5))
    assert np.array_equal(to_slices(from_slices(stack)), stack)


def test_orientation_survives_preprocessing():
    image = np.full((40, 30, 8), -1000.0, dtype=np.float32)
    image[30:, 22:, :] = 500.0  # patient right (high x) and anterior (high y)
    raw = RawVolume(image=image, spacing=(1.0, 1.0, 2.0), modality="ct")
    out = preprocess_volume(raw, PreprocessConfig(size=64, spacing=1.0), SOURCE)
    # 40x30 is padded into 64x64: columns start at 12, rows at 17.
    top_left = out.image[:, 17:20, 12:15]
    bottom_right = out.image[:, 44:47, 49:52]
    assert np.allclose(top_left, 0.75) and np.all(bottom_right == 0.0)


# -- resampling and crop/pad --------------------------------------------------------


def test_spacing_equals_target():
    image, label = ct_volume()
    raw = RawVolume(image=image, spacing=(0.8, 1.2, 2.5), modality="ct", label=label)
    out = preprocess_volume(raw, PreprocessConfig(size=64, spacing=0.7), SOURCE)
    assert isinstance(out, ProcessedVolume)
    assert out.spacing == pytest.approx((2.5, 0.7, 0.7), rel=1e-9)
    assert out.original_spacing == (0.8, 1.2, 2.5)
    assert out.original_shape == (40, 30, 8)
    assert out.modality == "ct"


def test_fit_field_of_view_when_spacing_is_none():
    image = np.full((40, 30, 8), 100.0, dtype=np.float32)
    image[20, 15, 0] = -1000.0  # sets the pad value (volume minimum)
    raw = RawVolume(image=image, spacing=(1.0, 1.0, 2.0), modality="ct")
    out = preprocess_volume(raw, PreprocessConfig(size=64), SOURCE)
    # The 40 mm x-extent fills the 64 columns; 30 mm of y become 48 rows, padded 8+8.
    assert out.spacing == pytest.approx((2.0, 40 / 64, 40 / 64))
    assert np.all(out.image[:, :8, :] == 0.0) and np.all(out.image[:, 56:, :] == 0.0)
    assert np.median(out.image[1:, 8:56, :]) == pytest.approx(350 / 1000)


@pytest.mark.parametrize(
    "shape, spacing, size",
    [
        ((40, 30, 8), 0.25, 32),  # upsampled then cropped
        ((40, 30, 8), 4.0, 32),  # downsampled then padded
        ((40, 30, 8), None, 16),  # fitted
        ((17, 61, 3), 0.9, 48),  # odd sizes, crop in y and pad in x
        ((50, 50, 1), 1.0, 50),  # exact fit, single slice
    ],
)
def test_output_shape_is_depth_size_size(shape, spacing, size):
    image, label = ct_volume(shape=shape)
    raw = RawVolume(image=image, spacing=(1.0, 1.0, 3.0), modality="ct", label=label)
    out = preprocess_volume(raw, PreprocessConfig(size=size, spacing=spacing), SOURCE)
    assert out.image.shape == (shape[2], size, size) and out.image.dtype == np.float32
    assert out.label.shape == (shape[2], size, size) and out.label.dtype == np.uint8
    assert np.isfinite(out.image).all()


def test_no_resampling_at_native_spacing_is_exact():
    rng = np.random.default_rng(2)
    image = rng.uniform(-250, 750, size=(32, 32, 4)).astype(np.float32)
    raw = RawVolume(image=image, spacing=(1.0, 1.0, 1.0), modality="ct")
    out = preprocess_volume(raw, PreprocessConfig(size=32, spacing=1.0), SOURCE)
    expected = (to_slices(image) + 250.0) / 1000.0
    np.testing.assert_allclose(out.image, expected, atol=1e-6)


@pytest.mark.parametrize("target", [0.6, 1.0, 1.7, 2.9])
def test_label_stays_aligned_with_image(target):
    image, label = ct_volume(shape=(48, 40, 6))
    raw = RawVolume(image=image, spacing=(1.0, 1.0, 2.0), modality="ct", label=label)
    out = preprocess_volume(raw, PreprocessConfig(size=96, spacing=target), SOURCE)
    inside, outside = out.image[out.label == 1], out.image[out.label == 0]
    assert inside.size > 0
    assert inside.mean() > 0.8 and outside.mean() < 0.1
    # The labelled area keeps its physical size (16 x 12 mm per slice), up to a pixel border.
    area_mm2 = (out.label[0] == 1).sum() * target**2
    assert area_mm2 == pytest.approx(16 * 12, rel=0.35)


def test_labels_keep_class_ids():
    image, label = ct_volume()
    label[label == 1] = 2
    label[:3] = 1
    raw = RawVolume(image=image, spacing=(1.0, 1.0, 2.0), modality="ct", label=label)
    out = preprocess_volume(raw, PreprocessConfig(size=64, spacing=0.75), SOURCE)
    assert set(np.unique(out.label)) == {0, 1, 2}


def test_large_volume_is_processed_in_chunks():
    """More slices than one resampling chunk holds still fill every slice."""
    image = np.zeros((512, 512, 70), dtype=np.float32)
    image[..., ::2] = 750.0
    raw = RawVolume(image=image, spacing=(0.7, 0.7, 1.0), modality="ct")
    out = preprocess_volume(raw, PreprocessConfig(size=64), SOURCE)
    assert out.image.shape == (70, 64, 64)
    assert np.allclose(out.image[::2], 1.0) and np.allclose(out.image[1::2], 0.25)


# -- intensity normalisation --------------------------------------------------------


def test_ct_window_maps_to_unit_interval():
    image = np.linspace(-1500, 2000, 40 * 30 * 8, dtype=np.float32).reshape(40, 30, 8)
    image[:, :, 4] = 250.0  # the middle of the default window
    raw = RawVolume(image=image, spacing=(1.0, 1.0, 1.0), modality="ct")
    out = preprocess_volume(raw, PreprocessConfig(size=48, spacing=1.0), SOURCE)
    assert out.image.min() == 0.0 and out.image.max() == 1.0
    assert np.allclose(out.image[4, 9:39, 4:44], 0.5)


def test_custom_ct_window():
    image = np.full((20, 20, 2), 40.0, dtype=np.float32)
    raw = RawVolume(image=image, spacing=(1.0, 1.0, 1.0), modality="ct")
    out = preprocess_volume(raw, PreprocessConfig(size=20, spacing=1.0, ct_window=(-160.0, 240.0)), SOURCE)
    assert np.allclose(out.image, 0.5)


def test_mr_zscore_and_percentile_clipping():
    rng = np.random.default_rng(3)
    image = rng.gamma(4.0, 100.0, size=(40, 30, 8)).astype(np.float32)
    image[:5] = 0.0  # background outside the body
    image[20, 15, 4] = 1e6  # a single hot voxel must not dominate the scale
    raw = RawVolume(image=image, spacing=(1.0, 1.0, 2.0), modality="mr")
    out = preprocess_volume(raw, PreprocessConfig(size=48, spacing=1.0), SOURCE)
    assert out.image.dtype == np.float32
    assert float(out.image.mean()) == pytest.approx(0.0, abs=1e-4)
    assert float(out.image.std()) == pytest.approx(1.0, abs=1e-4)
    assert out.image.max() < 5.0


def test_mr_constant_volume_gives_zeros():
    """Downsampling makes float32 round-off; it must not be blown up to unit variance."""
    raw = RawVolume(image=np.full((20, 20, 3), 7.0, dtype=np.float32), spacing=(1.0, 1.0, 1.0), modality="mr")
    out = preprocess_volume(raw, PreprocessConfig(size=16), SOURCE)
    assert np.all(out.image == 0.0)


def test_integer_input_is_accepted():
    image = np.full((20, 20, 3), 100, dtype=np.int16)
    raw = RawVolume(image=image, spacing=(1.0, 1.0, 1.0), modality="ct")
    out = preprocess_volume(raw, PreprocessConfig(size=16), SOURCE)
    assert out.image.dtype == np.float32 and np.allclose(out.image, 0.35)


# -- bad input ----------------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_voxels_raise_input_file_error(bad):
    image, _ = ct_volume()
    image[3, 4, 5] = bad
    raw = RawVolume(image=image, spacing=(1.0, 1.0, 2.0), modality="ct")
    with pytest.raises(InputFileError, match="NaN or infinite") as info:
        preprocess_volume(raw, PreprocessConfig(), SOURCE)
    assert SOURCE in str(info.value)


def test_label_shape_mismatch_raises():
    image, label = ct_volume()
    raw = RawVolume(image=image, spacing=(1.0, 1.0, 2.0), modality="ct", label=label[:, :, :4])
    with pytest.raises(InputFileError, match=r"\(40, 30, 4\).*\(40, 30, 8\)") as info:
        preprocess_volume(raw, PreprocessConfig(), SOURCE)
    assert SOURCE in str(info.value)


@pytest.mark.parametrize(
    "image, spacing, message",
    [
        (np.zeros((0, 30, 8), np.float32), (1.0, 1.0, 1.0), "empty"),
        (np.zeros((40, 30), np.float32), (1.0, 1.0, 1.0), "3D"),
        (np.zeros((40, 30, 8), np.float32), (1.0, 0.0, 1.0), "spacing"),
        (np.zeros((40, 30, 8), np.float32), (1.0, float("nan"), 1.0), "spacing"),
    ],
)
def test_malformed_volumes_raise(image, spacing, message):
    raw = RawVolume(image=image, spacing=spacing, modality="ct")
    with pytest.raises(InputFileError, match=message) as info:
        preprocess_volume(raw, PreprocessConfig(), SOURCE)
    assert info.value.path == SOURCE
