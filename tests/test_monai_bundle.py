"""``ssmtl export --format monai-bundle``: MONAI alone (``monai.bundle``, offline, in a process that
never imports ssmtl) segments NIfTI scans and writes the label maps ``ssmtl predict`` writes,
voxel for voxel, on each scan's own grid: CT and MR intensities, a scan coarser than the
cache (linear way back) and one finer (nearest), an oblique axis-permuted grid, and scans twice
as wide as the cache's field of view (sliding windows over the whole scan, as predict)."""

from __future__ import annotations

import json
import subprocess
import sys
import types
import zipfile

import nibabel as nib
import numpy as np
import pytest
import torch
from ingest_helpers import invoke
from native_helpers import ball_scan, balls_scan, fixed_spacing_copy, grid_affine, save, world_coordinates

from ssmtl.host.registry import get_registry
from ssmtl.publish.hub import export_run

#: an oblique, axis-permuted grid finer than the 32-pixel cache (the way back is linear) and a
#: flipped coarse one (nearest)
SCANS = {
    "oblique": ((34, 44, 10), grid_affine((1.7, 1.3, 4.5), angle_deg=25.0, axes=(1, 0, 2), flips=(True, False, False),
                                          origin=(12.0, -40.0, -20.0))),
    "coarse": ((16, 14, 8), grid_affine((3.0, 3.0, 4.0), flips=(True, False, False), origin=(5.0, -8.0, 0.0))),
}

RUN_BUNDLE = """
import sys
from monai.bundle import run
bundle, scans, out, modality = sys.argv[1:]
overrides = {} if modality == "auto" else {"slices#modality": modality}
run(config_file=f"{bundle}/configs/inference.json", meta_file=f"{bundle}/configs/metadata.json", bundle_root=bundle,
    dataset_dir=scans, output_dir=out, **overrides)
assert not any(name == "ssmtl" or name.startswith("ssmtl.") for name in sys.modules), "the bundle imported ssmtl"
"""


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bundle_scans")
    rng = np.random.default_rng(3)
    for name, (shape, affine) in SCANS.items():
        centre = affine[:3, :3] @ (np.asarray(shape) / 2 - 0.5) + affine[:3, 3]
        image, _ = ball_scan(shape, affine, centre + rng.uniform(-4, 4, 3), 10.0, rng)
        save(folder / f"{name}.nii.gz", image, affine)
    return folder


@pytest.fixture(scope="module")
def bundle(ball_run, tmp_path_factory):
    _, _, run = ball_run
    out = tmp_path_factory.mktemp("bundle") / "balls-bundle"
    export_run(run, "monai-bundle", out=out, registry=get_registry())
    return out


def _run_bundle(bundle, scans, out, modality: str) -> None:
    # outside the repository (its scripts/ folder would shadow the bundle's) and without ssmtl on the path
    proc = subprocess.run([sys.executable, "-c", RUN_BUNDLE, str(bundle), str(scans), str(out), modality],
                          capture_output=True, text=True, cwd=out.parent, timeout=600,
                          env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "NO_PROXY": "*"})
    assert proc.returncode == 0, proc.stderr[-3000:]


def _bundle_and_predict(bundle, run, scans, tmp_path, modality: str, table: dict):
    """Run the bundle and ``ssmtl predict`` on the same scans; return predict's predictions.json and,
    per scan of ``table`` (name -> (shape, affine)), predict's label map and the bundle's, both
    checked for shape, dtype and affine."""
    _run_bundle(bundle, scans, tmp_path / "bundle-out", modality)
    args = ("--modality", "ct") if modality == "ct" else ()
    result = invoke("predict", str(run), "--input", str(scans), "--out", str(tmp_path / "predict-out"), *args)
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "predict-out" / "predictions.json").read_text())
    maps = {}
    for name, (shape, affine) in table.items():
        ours = nib.load(str(tmp_path / "predict-out" / f"{name}.nii.gz"))
        theirs = nib.load(str(tmp_path / "bundle-out" / f"{name}_seg.nii.gz"))
        expected, got = np.asarray(ours.dataobj), np.asarray(theirs.dataobj)
        assert got.shape == expected.shape == shape and got.dtype == np.uint8
        np.testing.assert_allclose(theirs.affine, affine, atol=1e-4)
        maps[name] = (expected, got)
    return record, maps


def test_the_bundle_is_a_monai_bundle(bundle):
    from monai.bundle import ConfigParser, verify_net_in_out

    names = sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file())
    assert {"configs/inference.json", "configs/metadata.json", "configs/logging.conf", "models/model.ts",
            "scripts/__init__.py", "scripts/ssmtl_slices.py", "docs/README.md", "LICENSE", "README.md"} <= set(names)
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    for key in ("schema", "version", "changelog", "monai_version", "pytorch_version", "numpy_version", "task",
                "description", "authors", "copyright", "network_data_format"):
        assert metadata[key], key
    image = metadata["network_data_format"]["inputs"]["image"]
    assert image["spatial_shape"] == [32, 32] and image["num_channels"] == 1
    assert metadata["network_data_format"]["outputs"]["pred"]["num_channels"] == 2
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    preparation = parser.config["preprocessing"]["transforms"][-1]
    assert parser.config["slices"]["size"] == 32 and parser.config["slices"]["ct_window"] == [-250.0, 750.0]
    assert preparation["_target_"] == "scripts.ssmtl_slices.SsmtlSlicesd"
    inferer = parser.config["inferer"]
    assert inferer["_target_"] == "SlidingWindowInferer" and inferer["roi_size"] == ["@slices#size"] * 2
    assert (inferer["overlap"], inferer["mode"], inferer["sigma_scale"]) == (0.5, "gaussian", 0.125)  # ssmtl predict's
    assert parser.config["slices"]["field_of_view"] == "whole"
    # MONAI's own check: the network built from the config takes the declared input and gives the declared classes
    verify_net_in_out(net_id="network_def", meta_file=str(bundle / "configs" / "metadata.json"),
                      config_file=str(bundle / "configs" / "inference.json"), bundle_root=str(bundle), device="cpu")
    extra = {"metadata.json": "", "inference.json": ""}
    torch.jit.load(str(bundle / "models" / "model.ts"), _extra_files=extra)
    assert json.loads(extra["metadata.json"]) == metadata  # MONAI's TorchScript convention: the metadata inside
    with zipfile.ZipFile(bundle / "models" / "model.ts") as archive:
        assert not [n for n in archive.namelist() if n.endswith(".debug_pkl")]


@pytest.mark.parametrize("modality", ["ct", "auto"])  # auto: the ball scans have no air, so they are taken for MR
def test_monai_writes_the_label_maps_ssmtl_predict_writes(ball_run, bundle, scans, tmp_path, modality):
    _, _, run = ball_run
    record, maps = _bundle_and_predict(bundle, run, scans, tmp_path, modality, SCANS)
    seen = {(p["modality"], p["resample"]) for p in record["predictions"]}
    assert seen == {(modality if modality == "ct" else "mr", "linear"), (modality if modality == "ct" else "mr", "nearest")}
    for name, (expected, got) in maps.items():
        assert expected.any(), f"{name}: nothing segmented; the comparison would be empty"
        assert np.array_equal(got, expected), f"{name}: {int((got != expected).sum())} voxels differ"


def test_the_bundles_plan_is_ssmtls_plan():
    """The bundle's copy of the slice geometry (it runs without ssmtl) against ssmtl's own, over many grids."""
    from ssmtl.data.preprocess import whole_axis
    from ssmtl.data.transform import plan_axis as ssmtl_plan
    from ssmtl.publish.bundle_slices import _covering, plan_axis

    rng = np.random.default_rng(0)
    for _ in range(300):
        length, spacing, size = int(rng.integers(5, 300)), float(rng.uniform(0.3, 5)), int(rng.choice([16, 32, 64, 128]))
        target = float(rng.uniform(0.3, 5))
        ours, theirs = plan_axis(length, spacing, target, size), ssmtl_plan(length, spacing, target, size)
        assert (ours["scale"], ours["resampled"], ours["crop_start"], ours["pad_start"], ours["kept"], ours["size"]) == \
            (theirs.scale, theirs.resampled_length, theirs.crop_start, theirs.pad_start, theirs.kept, theirs.size)
        assert np.array_equal(_covering(ours), theirs.covering_cache_index())
        ours, theirs = plan_axis(length, spacing, target, size, crop=False), whole_axis(theirs)
        assert (ours["scale"], ours["resampled"], ours["crop_start"], ours["pad_start"], ours["kept"], ours["size"]) == \
            (theirs.scale, theirs.resampled_length, theirs.crop_start, theirs.pad_start, theirs.kept, theirs.size)
        assert np.array_equal(_covering(ours), theirs.covering_cache_index())


def test_the_whole_field_of_view_is_kept_for_a_sliding_window():
    """``field_of_view: whole`` (for a sliding window over a scan larger than the slice size) keeps every
    pixel the crop would cut, and its way back finds every voxel again; ``crop`` labels them background."""
    from monai.data import MetaTensor

    from ssmtl.publish.bundle_slices import SsmtlSlicesd

    image = MetaTensor(torch.randn(1, 40, 30, 3, generator=torch.Generator().manual_seed(0)) * 100,
                       affine=torch.eye(4, dtype=torch.float64))
    for field_of_view, plane in (("crop", (16, 16)), ("whole", (30, 40))):
        transform = SsmtlSlicesd("image", size=16, spacing=1.0, ct_window=(-250, 750), mr_percentiles=(1, 99),
                                 modality="ct", field_of_view=field_of_view)
        prepared = transform({"image": image})["image"]
        assert tuple(prepared.shape) == (1, 3, *plane)
        classes = (torch.arange(plane[0])[:, None] + torch.arange(plane[1])[None, :]) % 2 + 1  # 1 and 2 on the slices
        one_hot = torch.nn.functional.one_hot(classes.expand(3, *plane), 3).permute(3, 0, 1, 2).float()
        pred = MetaTensor(one_hot, meta=dict(prepared.meta), applied_operations=list(prepared.applied_operations))
        inverted = transform.inverse({"image": pred})["image"]
        assert torch.equal(inverted.affine, torch.eye(4, dtype=torch.float64))  # the canonical grid again
        back = inverted.argmax(0)  # canonical (X, Y, Z)
        assert tuple(back.shape) == (40, 30, 3)
        if field_of_view == "whole":  # at 1 mm on a 1 mm scan the way back is exact: from_slices of the slice classes
            assert torch.equal(back, torch.flip(classes.expand(3, *plane).permute(2, 1, 0), dims=(0, 1)))
        else:  # the 16 x 16 centre the crop kept, and background around it
            assert int((back > 0).sum()) == 16 * 16 * 3


# -- scans wider than the cache's field of view ------------------------------------------------

#: the ball model's fitted caches are about 1.9 mm per pixel; a copy of the run recording that spacing
#: as fixed has a 32 x 1.9 = 60.8 mm field of view
CACHE_MM = 1.9
#: two scans more than twice as wide (126 and 130 mm left-right; 66 and 68 px at the cache spacing), each
#: with a ball left and right outside the old centre crop and one inside it: an oblique, axis-permuted one
#: coarser than the cache spacing (linear way back) and one finer (nearest)
WIDE_SCANS = {
    "wide_oblique": ((44, 84, 5), grid_affine((1.5, 1.5, 4.0), angle_deg=15.0, axes=(1, 0, 2), flips=(False, True, False),
                                              origin=(70.0, -30.0, -10.0))),
    "wide_fine": ((52, 30, 5), grid_affine((2.5, 2.5, 4.0), flips=(True, False, False), origin=(60.0, -40.0, 0.0))),
}
#: ball centres relative to the scan's centre, world mm: 42-46 mm off-centre lies outside the 30.4 mm half crop
BALL_OFFSETS = ((-44.0, 4.0, 0.0), (0.0, -6.0, 2.0), (45.0, 8.0, -2.0))
BALL_MM = 10.0


@pytest.fixture(scope="module")
def wide_scans(tmp_path_factory):
    """The scans and, per scan, the voxels of the balls the old centre crop cut away."""
    folder = tmp_path_factory.mktemp("wide_scans")
    rng = np.random.default_rng(7)
    outside = {}
    for name, (shape, affine) in WIDE_SCANS.items():
        centre = affine[:3, :3] @ (np.asarray(shape) / 2 - 0.5) + affine[:3, 3]
        image, label = balls_scan(shape, affine, [centre + np.asarray(o) for o in BALL_OFFSETS], BALL_MM, rng)
        central = np.linalg.norm(world_coordinates(shape, affine) - (centre + np.asarray(BALL_OFFSETS[1])), axis=-1) <= BALL_MM
        outside[name] = (label == 1) & ~central
        save(folder / f"{name}.nii.gz", image, affine)
    return folder, outside


@pytest.fixture(scope="module")
def wide_run_and_bundle(ball_run, tmp_path_factory):
    copy = fixed_spacing_copy(ball_run[2], tmp_path_factory.mktemp("fixed") / "run", CACHE_MM)
    out = tmp_path_factory.mktemp("bundle") / "fixed-bundle"
    export_run(copy, "monai-bundle", out=out, registry=get_registry())
    return copy, out


@pytest.mark.parametrize("modality", ["ct", "auto"])  # auto: MR, z-scored with the statistics of the cache's crop
def test_on_scans_wider_than_the_cache_monai_writes_what_predict_writes(wide_run_and_bundle, wide_scans, tmp_path, modality):
    run, bundle = wide_run_and_bundle
    scans, outside = wide_scans
    record, maps = _bundle_and_predict(bundle, run, scans, tmp_path, modality, WIDE_SCANS)
    assert record["inference"] == {"window": 32, "overlap": 0.5, "blend": "gaussian", "tta_flip_axes": []}
    assert sorted(p["inference_grid"][1] for p in record["predictions"]) == [66, 68]  # more than two windows wide
    assert {p["resample"] for p in record["predictions"]} == {"linear", "nearest"}
    for name, (expected, got) in maps.items():
        # predict found the balls the old centre crop cut away: the comparison covers the whole scan
        assert expected[outside[name]].mean() > 0.5, f"{name}: predict missed the balls outside the old crop"
        assert np.array_equal(got, expected), f"{name}: {int((got != expected).sum())} voxels differ"


@pytest.mark.parametrize("modality", ["ct", "mr"])
def test_the_whole_field_of_view_is_prepared_as_predict_prepares_it(modality):
    """The bundle's slices over the whole field of view are predict's (``field_of_view="whole"``), pixel for
    pixel: MR is z-scored with the statistics of the cache's crop, not of the whole scan."""
    from monai.data import MetaTensor

    from ssmtl.api import RawVolume
    from ssmtl.data.preprocess import preprocess_volume, PreprocessConfig
    from ssmtl.publish.bundle_slices import SsmtlSlicesd

    rng = np.random.default_rng(4)
    image = (rng.normal(size=(90, 26, 3)) * 200 + 100).astype(np.float32)
    image[60:] += 900  # the part outside the crop is much brighter: whole-scan statistics would differ
    spacing = (1.3, 1.7, 3.0)
    raw = RawVolume(image=image, spacing=spacing, modality=modality, affine=np.diag([*spacing, 1.0]))
    predict = preprocess_volume(raw, PreprocessConfig(size=32, spacing=1.5), field_of_view="whole")
    transform = SsmtlSlicesd("image", size=32, spacing=1.5, ct_window=(-250, 750), mr_percentiles=(1, 99),
                             modality=modality, field_of_view="whole")
    prepared = transform({"image": MetaTensor(torch.from_numpy(image)[None], affine=torch.from_numpy(np.diag([*spacing, 1.0])))})
    assert predict.image.shape == (3, 32, 78)  # rows padded to the window, columns whole (78 > 2 x 32)
    np.testing.assert_array_equal(prepared["image"][0].numpy(), predict.image)


def test_the_bundles_windows_are_predicts_windows():
    """:func:`infer_slices` with the bundle's inferer gives ``Predictor``'s logits exactly: more slices than one
    batch, slices wider than the window (Gaussian-blended windows) and slices of the window's size (one pass)."""
    from monai.bundle import ConfigParser

    from ssmtl.downstream.predictor import Predictor
    from ssmtl.publish.bundle import inference_config
    from ssmtl.publish.bundle_slices import infer_slices

    class Tiled(torch.nn.Module):  # logits that depend on where a pixel sits in its window
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 3, 5, padding=2)

        def forward(self, x):
            return self.conv(x) + x.mean(dim=(2, 3), keepdim=True)

    torch.manual_seed(0)
    network = Tiled().eval()
    config = inference_config(types.SimpleNamespace(preprocess={"size": 16}), 16)
    parsed = ConfigParser({"slices": config["slices"], "inferer": config["inferer"]})
    inferer = parsed.get_parsed_content("inferer")
    predictor = Predictor(network, torch.device("cpu"), window=16)
    rng = np.random.default_rng(5)
    with torch.no_grad():
        for shape in ((35, 40, 24), (3, 16, 16)):
            image = rng.normal(size=shape).astype(np.float32)
            ours = torch.cat([predictor._logits(image, lo, min(shape[0], lo + 32)) for lo in range(0, shape[0], 32)])
            theirs = infer_slices(torch.from_numpy(image)[None], inferer, network, torch.device("cpu"))
            assert theirs.shape == (3, *shape)
            assert torch.equal(theirs.transpose(0, 1), ours)
        # windows blended otherwise give other numbers: the comparison sees the blending
        parsed["inferer"]["mode"] = "constant"
        constant = parsed.get_parsed_content("inferer", lazy=False)
        wide = torch.from_numpy(rng.normal(size=(2, 40, 24)).astype(np.float32))[None]
        assert not torch.allclose(infer_slices(wide, constant, network, torch.device("cpu")),
                                  infer_slices(wide, inferer, network, torch.device("cpu")))
