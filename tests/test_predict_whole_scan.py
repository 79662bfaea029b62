"""Whole-scan inference: a scan wider than the cache's field of view is predicted all over, in sliding windows."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from ingest_helpers import invoke
from native_helpers import ball_scan, fixed_spacing_copy, grid_affine, save

from ssmtl.api import RawVolume
from ssmtl.api.datasets.arrays import from_slices
from ssmtl.data.native import InPlaneMap
from ssmtl.data.preprocess import preprocess_volume, PreprocessConfig
from ssmtl.downstream.predictor import allowed_flips, Predictor, Windows

#: The ball model's training caches are ~1.9 mm per pixel (32 px over 60 mm scans); the copy of
#: the run used here records that spacing as fixed, so its field of view is 32 x 1.9 = 60.8 mm.
CACHE_MM = 1.9
WIDE_SHAPE, WIDE_SPACING = (80, 80, 10), (1.5, 1.5, 4.0)  # 120 mm: twice the cache's field of view


class Tiled(torch.nn.Module):
    """A network whose logits depend on where a pixel sits in its window (zero-padded convolution) and
    on the window's content, so that windows, blending and flips all show in the result."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.conv = torch.nn.Conv2d(1, 3, 5, padding=2)

    def forward(self, x):
        return self.conv(x) + x.mean(dim=(2, 3), keepdim=True)


@pytest.mark.parametrize("modality", ["ct", "mr"])
def test_the_whole_field_of_view_holds_the_cached_pixels_exactly(modality):
    rng = np.random.default_rng(0)
    image = (rng.normal(size=(70, 45, 5)) * 300 + 100).astype(np.float32)
    raw = RawVolume(image=image, spacing=(1.3, 1.7, 3.0), modality=modality, affine=np.diag([1.3, 1.7, 3.0, 1.0]))
    config = PreprocessConfig(size=32, spacing=1.5)
    crop, whole = preprocess_volume(raw, config), preprocess_volume(raw, config, field_of_view="whole")
    rows, cols = whole.transform.rows, whole.transform.cols
    assert whole.image.shape == (5, 51, 60) and (rows.kept, cols.kept) == (rows.resampled_length, cols.resampled_length)
    assert rows.scale == crop.transform.rows.scale and rows.pad_start == 0 and rows.crop_start == 0
    inside = whole.image[:, crop.transform.rows.source_window, crop.transform.cols.source_window]
    # MR z-scores with the crop's statistics, so even MR intensities are the cached ones
    np.testing.assert_array_equal(inside, crop.image[:, crop.transform.rows.cache_window, crop.transform.cols.cache_window])
    # a scan the cache holds whole (rows pad, nothing crops) is the same array and grid either way
    small = RawVolume(image=image[:20, :18], spacing=(1.3, 1.7, 3.0), modality=modality, affine=np.diag([1.3, 1.7, 3.0, 1.0]))
    a, b = preprocess_volume(small, config), preprocess_volume(small, config, field_of_view="whole")
    np.testing.assert_array_equal(a.image, b.image)
    assert (a.transform.rows, a.transform.cols) == (b.transform.rows, b.transform.cols)


def test_sliding_windows_with_constant_blend_are_the_mean_of_the_windows():
    """A hand-written reference: windows of 16 at overlap 0.5 start every 8 pixels; each pixel is the
    mean of the logits of the windows that hold it."""
    model = Tiled().eval()
    image = np.random.default_rng(1).normal(size=(2, 40, 24)).astype(np.float32)
    predictor = Predictor(model, torch.device("cpu"), batch_size=3, window=16, windows=Windows(0.5, "constant"))
    with torch.no_grad():
        got = predictor._logits(image, 0, 2)
        total, count = torch.zeros(2, 3, 40, 24), torch.zeros(1, 1, 40, 24)
        for r in (0, 8, 16, 24):
            for c in (0, 8):
                window = torch.from_numpy(image[:, None, r:r + 16, c:c + 16])
                total[..., r:r + 16, c:c + 16] += model(window)
                count[..., r:r + 16, c:c + 16] += 1
    torch.testing.assert_close(got, total / count, atol=1e-5, rtol=1e-5)
    # Gaussian weights: still a convex combination of the windows, and a pixel only one window sees is that window's
    gaussian = Predictor(model, torch.device("cpu"), window=16)._logits(image, 0, 2).detach()
    with torch.no_grad():
        corner = model(torch.from_numpy(image[:, None, :16, :16]))
    torch.testing.assert_close(gaussian[..., :8, :8], corner[..., :8, :8], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(gaussian, got)  # the blends differ where windows overlap


def test_test_time_flips_average_the_mirrored_predictions():
    model = Tiled().eval()
    image = np.random.default_rng(2).normal(size=(1, 16, 16)).astype(np.float32)
    x = torch.from_numpy(image[:, None])
    with torch.no_grad():
        rows = Predictor(model, torch.device("cpu"), window=16, windows=Windows(flip_axes=(0,)))._logits(image, 0, 1)
        both = Predictor(model, torch.device("cpu"), window=16, windows=Windows(flip_axes=(0, 1)))._logits(image, 0, 1)
        f = model
        expected_rows = (f(x) + f(x.flip(-2)).flip(-2)) / 2
        expected_both = (f(x) + f(x.flip(-2)).flip(-2) + f(x.flip(-1)).flip(-1) + f(x.flip(-2, -1)).flip(-2, -1)) / 4
    torch.testing.assert_close(rows, expected_rows)
    torch.testing.assert_close(both, expected_both)


def test_tta_is_only_along_the_axes_the_data_allows():
    lines = []
    assert allowed_flips({"flip_axes": [1]}, True, lines.append) == (1,) and lines == []
    assert allowed_flips({"flip_axes": [0, 1]}, False, lines.append) == () and lines == []  # not asked
    for run in ({}, {"flip_axes": []}, {"flip_axes": None}):  # the heart: no mirrored slice is plausible anatomy
        lines.clear()
        assert allowed_flips(run, True, lines.append) == ()
        assert len(lines) == 1 and lines[0].startswith("warning: --tta:") and "without test-time augmentation" in lines[0]
    with pytest.raises(Exception, match="--overlap 1.0"):
        Windows(overlap=1.0)
    with pytest.raises(Exception, match="--blend 'box'"):
        Windows(blend="box")


@pytest.fixture(scope="module")
def fixed_spacing_run(ball_run, tmp_path_factory):
    """A copy of the ball model whose run.json records a fixed cache spacing (60.8 mm field of view)."""
    return fixed_spacing_copy(ball_run[2], tmp_path_factory.mktemp("fixed") / "run", CACHE_MM)


def test_a_ball_outside_the_old_centre_crop_is_found(fixed_spacing_run, tmp_path):
    """The ball lies 42 mm right of the centre of a 120 mm scan: outside the 60.8 mm centre crop,
    where predict used to write background. Sliding windows find it, on the scan's own grid."""
    affine = grid_affine(WIDE_SPACING, origin=(-60.0, -60.0, -20.0))
    centre = affine[:3, :3] @ (np.asarray(WIDE_SHAPE) / 2 - 0.5) + affine[:3, 3]
    image, truth = ball_scan(WIDE_SHAPE, affine, centre + np.array([42.0, 0.0, 0.0]), 11.0, np.random.default_rng(5))
    scan = save(tmp_path / "wide.nii.gz", image, affine)
    result = invoke("predict", str(fixed_spacing_run), "--input", str(scan), "--out", str(tmp_path / "pred"),
                    "--modality", "ct")
    assert result.exit_code == 0, result.output
    out = nib.load(str(tmp_path / "pred" / "wide.nii.gz"))
    assert out.shape == WIDE_SHAPE
    np.testing.assert_allclose(out.affine, affine, atol=1e-5)
    labels = np.asarray(out.dataobj)

    # the old centre crop, on the same scan: everything outside the 32-pixel window is background
    config = PreprocessConfig(size=32, spacing=CACHE_MM)
    raw = RawVolume(image=image, spacing=WIDE_SPACING, modality="ct", label=truth, affine=affine)
    crop = preprocess_volume(raw, config).transform
    plane = InPlaneMap(crop)
    outside = ~from_slices(np.broadcast_to(plane.inside, (WIDE_SHAPE[2], *plane.native_shape)))
    assert truth[outside].sum() > 0.9 * truth.sum()  # the ball is (almost all) outside the old crop
    dice_outside = 2 * np.sum((labels == 1) & (truth == 1) & outside) / (np.sum((labels == 1) & outside) + np.sum(truth[outside]))
    assert dice_outside > 0.7

    record = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    [item] = record["predictions"]
    assert item["inference_grid"] == [63, 63] and item["shape"] == list(WIDE_SHAPE)  # 120 mm at 1.9 mm per pixel
    assert record["inference"] == {"window": 32, "overlap": 0.5, "blend": "gaussian", "tta_flip_axes": []}


def test_a_scan_the_cache_holds_whole_is_predicted_as_on_the_cache_grid(ball_run):
    """Where nothing is cropped the whole field of view is the cache image: one plain pass, the same labels."""
    from ssmtl.downstream.model import load_finetuned
    from ssmtl.host.registry import build_registry

    _, _, run = ball_run
    model, record = load_finetuned(run, build_registry(external=False))
    affine = grid_affine((1.8, 1.8, 4.0))
    image, _ = ball_scan((36, 36, 8), affine, affine[:3, 3] + np.array([30.0, 30.0, 14.0]), 10.0, np.random.default_rng(6))
    raw = RawVolume(image=image, spacing=(1.8, 1.8, 4.0), modality="ct", affine=affine)
    config = PreprocessConfig.model_validate(record["preprocess"])
    whole = preprocess_volume(raw, config, field_of_view="whole")
    assert whole.image.shape[1:] == (32, 32)
    windowed = Predictor(model, torch.device("cpu"), window=32).native(whole.image, whole.transform)
    plain = Predictor(model, torch.device("cpu")).native(whole.image, whole.transform)
    np.testing.assert_array_equal(windowed.labels, plain.labels)
    assert windowed.labels.any()


def test_native_evaluation_predicts_the_whole_scan_where_the_cache_cropped_it(ball_run, tmp_path):
    """A 48 mm cache of 60 mm scans: evaluation reads each test image again, checks that its crop is the
    cached image, and scores the whole scan; a changed image file is refused like a changed label."""
    from ssmtl.data.build import build_cache
    from ssmtl.data.cache import SliceCache
    from ssmtl.downstream.config import FinetuneConfig
    from ssmtl.downstream.evaluate import evaluate_run
    from ssmtl.downstream.finetune import run_finetune
    from ssmtl.downstream.native_eval import NativeReferences, NoWayBack
    from ssmtl.host.registry import build_registry

    root, _, _ = ball_run
    images = shutil.copytree(root / "images", tmp_path / "images")
    registry = build_registry(external=False)
    cache = build_cache(dataset="nifti", dataset_options={"images": images, "labels": root / "labels", "modality": "ct"},
                        preprocess=PreprocessConfig(size=24, spacing=2.0), out=tmp_path / "crop.h5", registry=registry,
                        test_fraction=0.34)
    opened = SliceCache(cache)
    reference = NativeReferences(opened, registry).get(0)
    transform = reference.transform
    assert transform.cols.kept < transform.cols.resampled_length  # the cache cropped it
    rows, cols = reference.whole_transform.rows, reference.whole_transform.cols
    assert reference.whole_image.shape[1:] == (rows.size, cols.size) and cols.size == transform.cols.resampled_length > 24
    cached, _ = opened.read_volume(0)
    inside = reference.whole_image[:, rows.pad_start + transform.rows.crop_start:][:, :transform.rows.kept,
                                   cols.pad_start + transform.cols.crop_start:][:, :, :transform.cols.kept]
    np.testing.assert_allclose(inside, cached[:, transform.rows.cache_window, transform.cols.cache_window], atol=1e-6)

    config = FinetuneConfig.model_validate(
        dict(data=cache, out=tmp_path / "run", labeled_volumes=2, validation="none", model={"base_channels": 4, "depth": 2},
             train={"steps": 2, "batch_size": 2, "log_every": 1, "checkpoint_every": 2}), context={"registry": registry})
    run_finetune(config, registry=registry, progress=False)
    results = evaluate_run(tmp_path / "run", registry=registry, space="native")
    assert results["space"] == "native" and results["inference"]["window"] == [24, 24]
    for volume in results["per_volume"]:
        assert volume["shape"][:2] != [24, 24] and "cache_grid" in volume  # scored on the scan's own grid

    source = opened.volumes[0].source
    changed = nib.load(source)
    nib.save(nib.Nifti1Image(np.asarray(changed.dataobj) + 50.0, changed.affine), source)
    with pytest.raises(NoWayBack, match="image file's content differs from the cached image"):
        NativeReferences(SliceCache(cache), registry).get(0)


def test_cache_build_warns_once_when_its_crop_cuts_scans(tmp_path):
    from ssmtl.data.transform import crop_warning

    result = invoke("cache", "build", "--dataset", "phantom", "--subjects", "2", "--size", "32", "--num-slices", "4",
                    "--spacing", "6", "--out", str(tmp_path / "c.h5"))
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "the cache field of view (192 mm) keeps less than 90% of the in-plane extent of 2 of 2 scans" in warnings[0]
    fits = invoke("cache", "build", "--dataset", "phantom", "--subjects", "2", "--size", "32", "--num-slices", "4",
                  "--out", str(tmp_path / "d.h5"))  # the default spacing fits every scan
    assert fits.exit_code == 0 and "warning:" not in fits.stderr

    # one scan: named, with its share and extent, from the recorded numbers
    record = preprocess_volume(RawVolume(image=np.zeros((100, 40, 3), np.float32), spacing=(2.0, 2.0, 3.0), modality="ct",
                                         affine=np.diag([2.0, 2.0, 3.0, 1.0])), PreprocessConfig(size=32, spacing=4.0)).transform
    line = crop_warning([("big", record.to_json()), ("other", None)])
    assert line.startswith("scan big: the cache field of view (128 mm) keeps 64% of its 200 mm left-right extent")
