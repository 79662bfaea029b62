"""#27 class 10 (inputs): metadata that is not true. ``--size 0`` is refused, not read as the
default; a complex-valued scan is refused naming the file (its imaginary part was dropped with only
a numpy warning); every environment-variable error names the variable."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from ingest_helpers import save_itk, save_nifti
from robustness.harness import Case, assert_all_held, run_cases, ssmtl_cli

from ssmtl.api import InputFileError, RawVolume, check_finite, check_real
from ssmtl.data.preprocess import PreprocessConfig, preprocess_volume

COMPLEX = "complex-valued voxels (complex64) are not supported"


def complex_volume() -> np.ndarray:
    real = np.linspace(-100, 300, 12 * 10 * 4, dtype=np.float32).reshape(12, 10, 4)
    return (real + 1j * real[::-1]).astype(np.complex64)


def test_bad_metadata_is_one_line(tmp_path):
    save_nifti(tmp_path / "nifti" / "scan.nii.gz", complex_volume())
    save_itk(tmp_path / "itk" / "scan.nrrd", complex_volume())
    save_nifti(tmp_path / "good" / "scan.nii.gz", complex_volume().real.copy())

    def build(name, dataset, folder, *extra, message):
        out = tmp_path / f"{name.replace(' ', '-')}.h5"
        return Case(name, ssmtl_cli("cache", "build", "--dataset", dataset, "--images", folder, "--modality", "ct",
                                    "--out", out, *extra),
                    message=message, inputs=[folder], absent=[out], watch=[tmp_path])

    cases = [
        build("complex NIfTI", "nifti", tmp_path / "nifti", message=f"{tmp_path / 'nifti' / 'scan.nii.gz'}: {COMPLEX}"),
        build("complex NRRD", "itk", tmp_path / "itk", message=f"{tmp_path / 'itk' / 'scan.nrrd'}: {COMPLEX}"),
        build("size 0", "nifti", tmp_path / "good", "--size", "0", message="preprocess.size: Input should be greater than or equal to 16 (got 0)"),
        build("size -3", "nifti", tmp_path / "good", "--size", "-3", message="preprocess.size"),
        Case("phantom size 0", ssmtl_cli("cache", "build", "--dataset", "phantom", "--size", "0", "--out", tmp_path / "p.h5"),
             message="size", absent=[tmp_path / "p.h5"], watch=[tmp_path]),
        build("spacing 0", "nifti", tmp_path / "good", "--spacing", "0", message="preprocess.spacing"),
        Case("no task in SSMTL_TASKS", ssmtl_cli("config", "show"), env={"SSMTL_TASKS": " , "},
             message="environment variable SSMTL_TASKS=' , ': names no task"),
    ]
    assert_all_held(run_cases(cases))


@pytest.mark.parametrize("suffix, reason", [
    (".nii.gz", COMPLEX),
    (".nrrd", COMPLEX),
    (".mha", "expected one value per voxel, got 2"),  # MetaImage stores complex voxels as 2-vectors
])
def test_a_complex_scan_is_refused_before_its_imaginary_part_is_dropped(tmp_path, suffix, reason):
    """Refused from the header's voxel type, as predict and the cache builder read it, with numpy's
    ComplexWarning an error: the voxels are never cast to real."""
    from ssmtl.data.ingest import Failure, load_and_preprocess
    from ssmtl.plugins.datasets.volume_files import scan_item

    path = tmp_path / f"scan{suffix}"
    (save_nifti if suffix == ".nii.gz" else save_itk)(path, complex_volume())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = load_and_preprocess(scan_item(path), PreprocessConfig(size=16))
    assert isinstance(result, Failure) and result.path == str(path) and result.reason.startswith(reason)


def test_the_toolkit_refuses_complex_voxels_whoever_read_them():
    check_real(np.float32, "a.nii")
    check_real(np.dtype("int16"), "a.nii")
    for dtype in (np.complex64, np.complex128):
        with pytest.raises(InputFileError, match=f"a.nii: complex-valued voxels \\({np.dtype(dtype)}\\)"):
            check_real(dtype, "a.nii")
        with pytest.raises(InputFileError, match="complex-valued"):
            check_finite(np.ones((2, 2, 2), dtype=dtype), "a.nii")
    raw = RawVolume(image=complex_volume(), spacing=(1.0, 1.0, 1.0), modality="ct")
    with pytest.raises(InputFileError, match=f"plugin-scan: {COMPLEX.replace('(', '[(]').replace(')', '[)]')}"):
        preprocess_volume(raw, PreprocessConfig(size=16), source="plugin-scan")
