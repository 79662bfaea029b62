"""#27 class 6: degenerate volumes. A volume with fewer than 2 voxels along x or y (1x1x1, 1x1x10, a
single sagittal image) is one line naming the file, in ``cache build`` (skipped and listed with
``--skip-bad``) and where ``ssmtl predict`` reads a scan; a volume of one slice is a valid 2D scan:
it is cached, and a prediction on it maps back to the scan's own grid. (Before, every one of them
ended in torch's "negative strides" traceback.)"""

from __future__ import annotations

import numpy as np
import pytest
from ingest_helpers import save_itk, save_nifti
from robustness.harness import Case, assert_all_held, run_cases, ssmtl_cli

from ssmtl.api import InputFileError, RawVolume
from ssmtl.data.ingest import Failure, load_and_preprocess
from ssmtl.data.preprocess import PreprocessConfig, ProcessedVolume, preprocess_volume

TOO_SMALL = "too small to resample to the cache grid"


def volume(shape) -> np.ndarray:
    return np.linspace(-200, 400, int(np.prod(shape)), dtype=np.float32).reshape(shape)


def test_degenerate_volumes_are_one_line_or_skipped(tmp_path):
    shapes = {"point": (1, 1, 1), "line": (1, 1, 10), "sagittal": (1, 12, 8), "row": (12, 1, 8)}
    for name, shape in shapes.items():
        save_nifti(tmp_path / name / f"{name}.nii.gz", volume(shape))
    save_itk(tmp_path / "itk-point" / "point.mha", volume((1, 1, 1)))
    mixed = tmp_path / "mixed"
    for name, shape in {**shapes, "good": (12, 10, 6), "one_slice": (12, 10, 1)}.items():
        save_nifti(mixed / f"{name}.nii.gz", volume(shape))

    def build(name, dataset, folder, *extra, message=None, exit_code=2):
        out = tmp_path / f"{name.replace(' ', '-')}.h5"
        return Case(name, ssmtl_cli("cache", "build", "--dataset", dataset, "--images", folder, "--modality", "ct",
                                    "--size", "16", "--out", out, *extra),
                    message=message, exit_code=exit_code, inputs=[folder], absent=[out] if exit_code else [], watch=[tmp_path])

    cases = [
        build("1x1x1", "nifti", tmp_path / "point", message=f"{tmp_path / 'point' / 'point.nii.gz'}: 1x1x1 voxels: {TOO_SMALL}"),
        build("1x1x10", "nifti", tmp_path / "line", message=f"{tmp_path / 'line' / 'line.nii.gz'}: 1x1x10 voxels: {TOO_SMALL}"),
        build("one sagittal image", "nifti", tmp_path / "sagittal", message=f"1x12x8 voxels: {TOO_SMALL}"),
        build("1x1x1 MetaImage", "itk", tmp_path / "itk-point", message=f"point.mha: 1x1x1 voxels: {TOO_SMALL}"),
        build("skip bad", "nifti", mixed, "--skip-bad", exit_code=0),
    ]
    outcomes = run_cases(cases)
    assert_all_held(outcomes)

    from ssmtl.data.cache import SliceCache

    cache = SliceCache(tmp_path / "skip-bad.h5")
    assert sorted(v.subject for v in cache.volumes) == ["good", "one_slice"]
    assert {v.subject: v.shape for v in cache.volumes}["one_slice"] == (1, 16, 16)
    skipped = {entry["path"]: entry["reason"] for entry in cache.attrs["skipped"]}
    assert sorted(skipped) == sorted(str(mixed / f"{name}.nii.gz") for name in shapes)
    assert all(TOO_SMALL in reason for reason in skipped.values())
    assert "skipped 4 bad input(s)" in outcomes[-1].stderr


@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 1, 10), (1, 5, 5), (5, 1, 5)])
@pytest.mark.parametrize("suffix", [".nii.gz", ".mha"])
def test_where_predict_reads_a_scan_a_degenerate_one_is_a_clean_failure(tmp_path, shape, suffix):
    """``ssmtl predict`` loads and preprocesses each scan with ``load_and_preprocess`` (in its
    workers or in process); a degenerate scan must come back as a Failure naming the file."""
    from ssmtl.plugins.datasets.volume_files import scan_item

    path = tmp_path / f"scan{suffix}"
    (save_nifti if suffix == ".nii.gz" else save_itk)(path, volume(shape))
    result = load_and_preprocess(scan_item(path), PreprocessConfig(size=16))
    assert isinstance(result, Failure) and result.path == str(path) and not result.in_plugin
    assert result.reason.startswith(f"{'x'.join(map(str, shape))} voxels: {TOO_SMALL}")


@pytest.mark.parametrize("suffix", [".nii.gz", ".mha"])
def test_a_one_slice_scan_is_predicted_and_mapped_back_to_its_grid(tmp_path, suffix):
    from ssmtl.data.native import canonical_to_source, labels_to_canonical
    from ssmtl.plugins.datasets.volume_files import scan_item

    path = tmp_path / f"scan{suffix}"
    (save_nifti if suffix == ".nii.gz" else save_itk)(path, volume((12, 10, 1)))
    processed = load_and_preprocess(scan_item(path), PreprocessConfig(size=16))
    assert isinstance(processed, ProcessedVolume) and processed.image.shape == (1, 16, 16)
    assert np.isfinite(processed.image).all() and processed.image.std() > 0
    labels = (processed.image > np.median(processed.image)).astype(np.uint8)  # what a network would return
    native = canonical_to_source(labels_to_canonical(labels, processed.transform), processed.transform)
    assert native.shape == processed.transform.source.shape == (12, 10, 1)
    assert 0 < native.sum() < native.size


def test_preprocess_refuses_a_thin_volume_itself_whoever_loaded_it():
    """The check is in preprocessing, so a dataset plugin's own reader gets it too."""
    raw = RawVolume(image=np.zeros((1, 7, 3), dtype=np.float32), spacing=(1.0, 1.0, 1.0), affine=np.eye(4), modality="ct")
    with pytest.raises(InputFileError, match=f"plugin-volume: 1x7x3 voxels: {TOO_SMALL}"):
        preprocess_volume(raw, PreprocessConfig(size=16), source="plugin-volume")
    # 2 voxels each way is enough, whatever the numbers of slices
    for shape in [(2, 2, 1), (2, 3, 40)]:
        raw = RawVolume(image=volume(shape), spacing=(1.0, 1.0, 1.0), affine=np.eye(4), modality="mr")
        assert preprocess_volume(raw, PreprocessConfig(size=16)).image.shape == (shape[2], 16, 16)
