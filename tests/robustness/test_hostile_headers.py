"""#15 class 3: hostile headers and hostile config values, generated with hypothesis.

A volume header may claim any size; reading it either gives the volume it describes or one
InputFileError naming the file, never a MemoryError or another exception, and nothing is
allocated for a claim the file cannot hold. A config value may be any number; it is either
refused with a ConfigError naming the field, or it is finite and in range.
"""

from __future__ import annotations

import gzip
import math
import struct
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from robustness.harness import Case, assert_all_held, run_cases, ssmtl_cli

from ssmtl.api import ConfigError, InputFileError, MAX_SEED
from ssmtl.plugins.datasets import nifti_io
from ssmtl.host.registry import get_registry

HYPOTHESIS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
DTYPES = {2: np.uint8, 4: np.int16, 16: np.float32, 64: np.float64}


def hostile_nifti(path: Path, dims: tuple[int, int, int], code: int, payload: int, compressed: bool) -> Path:
    """A NIfTI-1 file whose header claims ``dims`` voxels of ``DTYPES[code]`` followed by ``payload`` bytes."""
    header = nib.Nifti1Header()
    header.set_data_dtype(DTYPES[code])
    raw = bytearray(header.binaryblock)
    struct.pack_into("<8h", raw, 40, 3, *dims, 1, 1, 1, 1)  # dim[0..7], written as a hostile tool would
    struct.pack_into("<f", raw, 108, 352.0)  # vox_offset
    data = bytes(raw) + b"\0" * 4 + bytes(payload)
    path.write_bytes(gzip.compress(data) if compressed else data)
    return path


@HYPOTHESIS
@given(dims=st.tuples(*[st.one_of(st.integers(1, 8), st.integers(1, 32767))] * 3), code=st.sampled_from(sorted(DTYPES)),
       payload=st.integers(0, 4096), compressed=st.booleans())
def test_any_claimed_size_is_read_or_refused_naming_the_file(monkeypatch, dims, code, payload, compressed):
    monkeypatch.setenv("SSMTL_MAX_VOXELS", str(200_000))  # a compressed claim under it is decoded: keep that small
    with tempfile.TemporaryDirectory() as folder:
        path = hostile_nifti(Path(folder) / ("scan.nii.gz" if compressed else "scan.nii"), dims, code, payload, compressed)
        needed = math.prod(dims) * np.dtype(DTYPES[code]).itemsize
        try:
            array, *_ = nifti_io.load_image(path)
        except InputFileError as exc:
            assert str(path) in str(exc)
            assert needed > payload or math.prod(dims) > 200_000, str(exc)  # refused only what it cannot hold
        else:
            assert needed <= payload and array.size == math.prod(dims)


def test_a_huge_header_on_a_tiny_file_is_one_line(tmp_path):
    nii = tmp_path / "nii"
    gz = tmp_path / "gz"
    mha = tmp_path / "mha"
    for folder in (nii, gz, mha):
        folder.mkdir()
    hostile_nifti(nii / "a.nii", (30000, 30000, 1000), 4, 100, compressed=False)
    hostile_nifti(gz / "a.nii.gz", (30000, 30000, 1000), 4, 100, compressed=True)
    small = hostile_nifti(tmp_path / "small.nii", (1000, 1000, 100), 4, 100, compressed=False)
    (tmp_path / "small-folder").mkdir()
    small.rename(tmp_path / "small-folder" / "a.nii")
    (mha / "a.mha").write_bytes(b"ObjectType = Image\nNDims = 3\nDimSize = 30000 30000 1000\nElementType = MET_SHORT\n"
                                b"ElementDataFile = LOCAL\n" + bytes(100))
    def build(name, dataset, folder, message, env=None):
        out = tmp_path / f"out-{name.replace(' ', '-')}.h5"  # one output per case: cases run two at a time, and a build locks its output
        return Case(name, ssmtl_cli("cache", "build", "--dataset", dataset, "--images", folder, "--modality", "ct", "--out", out),
                    message=message, inputs=[folder], absent=[out], watch=[tmp_path], env=env or {})

    cases = [
        build("nii", "nifti", nii, "30000x30000x1000 = 900,000,000,000 voxels, more than the limit"),
        build("nii.gz", "nifti", gz, "30000x30000x1000 = 900,000,000,000 voxels, more than the limit"),
        build("mha", "itk", mha, "30000x30000x1000 = 900,000,000,000 voxels, more than the limit"),
        build("claim over the file", "nifti", tmp_path / "small-folder", "but the file holds 452 bytes"),
        build("cap from the environment", "nifti", tmp_path / "small-folder", "more than the limit of 1,000",
              env={"SSMTL_MAX_VOXELS": "1e3"}),
        build("bad cap", "nifti", nii, "SSMTL_MAX_VOXELS='lots'", env={"SSMTL_MAX_VOXELS": "lots"}),
    ]
    assert_all_held(run_cases(cases))


NUMBERS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(2**70), 2**70),
                    st.sampled_from(["inf", "-inf", ".nan", "1e400", "-.inf", "nan"]))


@HYPOTHESIS
@given(lr=NUMBERS, weight=NUMBERS, rotate=NUMBERS, seed=NUMBERS)
def test_any_number_in_a_config_is_refused_or_finite_and_in_range(ssmtl_tiny_cache, lr, weight, rotate, seed):
    from ssmtl.pretraining.config import resolve_pretrain_config

    sets = [f"train.lr={lr!r}" if not isinstance(lr, str) else f"train.lr={lr}",
            f"tasks.order.weight={weight!r}" if not isinstance(weight, str) else f"tasks.order.weight={weight}",
            f"augment.rotate={rotate!r}" if not isinstance(rotate, str) else f"augment.rotate={rotate}",
            f"seed={seed!r}" if not isinstance(seed, str) else f"seed={seed}"]
    try:
        config = resolve_pretrain_config(registry=get_registry(), flags={"data.path": ssmtl_tiny_cache}, tasks=["order"], sets=sets, environ={})
    except ConfigError as exc:
        assert any(field in str(exc) for field in ("train.lr", "tasks.order.weight", "augment.rotate", "seed")), str(exc)
        return
    assert all(math.isfinite(v) for v in (config.train.lr, config.tasks["order"].weight, config.augment.rotate))
    assert 0 <= config.seed <= MAX_SEED


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e999"])
def test_a_non_finite_task_weight_flag_is_refused(value):
    from ssmtl.pretraining.config import parse_task_flags

    with pytest.raises(ConfigError, match=f"order:{value}"):
        parse_task_flags([f"order:{value}"])


def test_a_dicom_series_over_the_cap_is_refused_before_it_is_allocated(tmp_path, monkeypatch):
    from ingest_helpers import write_dicom_series

    from ssmtl.plugins.datasets.dicom_series import read_series, scan_dicom_folder

    write_dicom_series(tmp_path / "s", np.zeros((6, 5, 3), dtype=np.float32))
    [series] = scan_dicom_folder(tmp_path / "s").series
    monkeypatch.setenv("SSMTL_MAX_VOXELS", "89")  # 6 x 5 x 3 = 90 voxels
    with pytest.raises(InputFileError, match="6x5x3 = 90 voxels, more than the limit of 89") as info:
        read_series(series)
    assert str(tmp_path / "s") in str(info.value)
    monkeypatch.setenv("SSMTL_MAX_VOXELS", "90")
    assert read_series(series)[0].shape == (6, 5, 3)
