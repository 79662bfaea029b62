"""``ssmtl export --format monai-bundle``: MONAI alone (``monai.bundle``, offline, in a process that
never imports ssmtl) segments NIfTI scans and writes the label maps ``ssmtl predict`` writes,
voxel for voxel, on each scan's own grid: CT and MR intensities, a scan coarser than the
cache (linear way back) and one finer (nearest), an oblique axis-permuted grid."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import nibabel as nib
import numpy as np
import pytest
import torch
from ingest_helpers import invoke
from native_helpers import ball_scan, grid_affine, save

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
    assert parser.config["inferer"]["_target_"] == "SliceInferer" and parser.config["inferer"]["roi_size"] == ["@slices#size"] * 2
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
    _run_bundle(bundle, scans, tmp_path / "bundle-out", modality)
    args = ("--modality", "ct") if modality == "ct" else ()
    result = invoke("predict", str(run), "--input", str(scans), "--out", str(tmp_path / "predict-out"), *args)
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "predict-out" / "predictions.json").read_text())
    seen = {(p["modality"], p["resample"]) for p in record["predictions"]}
    assert seen == {(modality if modality == "ct" else "mr", "linear"), (modality if modality == "ct" else "mr", "nearest")}
    for name, (shape, affine) in SCANS.items():
        ours = nib.load(str(tmp_path / "predict-out" / f"{name}.nii.gz"))
        theirs = nib.load(str(tmp_path / "bundle-out" / f"{name}_seg.nii.gz"))
        expected, got = np.asarray(ours.dataobj), np.asarray(theirs.dataobj)
        assert got.shape == expected.shape == shape and got.dtype == np.uint8
        np.testing.assert_allclose(theirs.affine, affine, atol=1e-4)
        assert expected.any(), f"{name}: nothing segmented; the comparison would be empty"
        assert np.array_equal(got, expected), f"{name}: {int((got != expected).sum())} voxels differ"


def test_the_bundles_plan_is_ssmtls_plan():
    """The bundle's copy of the slice geometry (it runs without ssmtl) against ssmtl's own, over many grids."""
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
