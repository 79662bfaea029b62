"""The ``png-stack`` dataset: file order, orientation, intensities, errors, and a cache build."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssmtl.api import ConfigError, InputFileError, to_slices
from ssmtl.testing import cache_summary
from ssmtl_rotation import plugin
from ssmtl_rotation.png_stack import PngStackConfig, build_source


def write_stack(folder: Path, slices: list[np.ndarray], names: list[str] | None = None) -> Path:
    """Save slices with Pillow: uint16 as 16-bit PNG (or TIFF by name), float32 as float TIFF."""
    folder.mkdir(parents=True, exist_ok=True)
    names = names or [f"slice_{i:03d}.png" for i in range(len(slices))]
    for array, name in zip(slices, names):
        Image.fromarray(array).save(folder / name)
    return folder


def constant(value: float, size: int = 8, dtype=np.uint16) -> np.ndarray:
    return np.full((size, size), value, dtype=dtype)


def load(root: Path, **options):
    source = build_source(PngStackConfig(images=root, **options))
    return source, [item.load() for item in source.items]


def test_slices_are_sorted_by_name_and_rescaled(tmp_path):
    write_stack(tmp_path / "p1", [constant(30), constant(10), constant(20)], names=["c.png", "a.png", "b.png"])
    source, [volume] = load(tmp_path, modality="ct", rescale_slope=2.0, rescale_intercept=-1024)
    assert [item.subject for item in source.items] == ["p1"]
    stack = to_slices(volume.image)  # back to the cache's (D, H, W) layout
    assert stack.shape == (3, 8, 8)
    assert [float(s.mean()) for s in stack] == [10 * 2 - 1024, 20 * 2 - 1024, 30 * 2 - 1024]
    assert volume.modality == "ct" and volume.label is None


def test_image_rows_and_columns_keep_their_place(tmp_path):
    marked = constant(0)
    marked[0, 1] = 500  # top row, second column
    write_stack(tmp_path / "p1", [marked, constant(0)])
    _, [volume] = load(tmp_path, pixel_spacing=0.5, slice_spacing=2.5)
    stack = to_slices(volume.image)
    assert stack[0, 0, 1] == 500 and stack.sum() == 500
    assert volume.spacing == (0.5, 0.5, 2.5)


def test_float_tiff_and_8bit_png(tmp_path):
    write_stack(tmp_path / "a", [constant(-3.5, dtype=np.float32), constant(1.25, dtype=np.float32)], names=["0.tif", "1.tiff"])
    write_stack(tmp_path / "b", [constant(7, dtype=np.uint8), constant(9, dtype=np.uint8)])
    source, (a, b) = load(tmp_path)
    assert [item.subject for item in source.items] == ["a", "b"]
    assert [float(s.mean()) for s in to_slices(a.image)] == [-3.5, 1.25]
    assert [float(s.mean()) for s in to_slices(b.image)] == [7, 9]


def test_hidden_and_other_files_are_ignored(tmp_path):
    folder = write_stack(tmp_path / "p1", [constant(1), constant(2)])
    (folder / "notes.txt").write_text("not a slice")
    (folder / ".hidden.png").write_bytes(b"junk")
    (tmp_path / "empty").mkdir()
    source, [volume] = load(tmp_path)
    assert len(source.items) == 1 and to_slices(volume.image).shape[0] == 2


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="--images"):
        build_source(PngStackConfig())
    with pytest.raises(InputFileError, match="not found"):
        build_source(PngStackConfig(images=tmp_path / "missing"))
    with pytest.raises(InputFileError, match="no sub-folder"):
        build_source(PngStackConfig(images=tmp_path))
    write_stack(tmp_path / "p1", [constant(1, size=8), constant(1, size=6)])
    with pytest.raises(InputFileError, match="different shapes"):
        load(tmp_path)
    (tmp_path / "p1" / "slice_000.png").write_bytes(b"not a png")
    with pytest.raises(InputFileError, match="cannot read"):
        load(tmp_path)


def test_cache_build_through_the_cli(ssmtl_cli, tmp_path):
    rng = np.random.default_rng(0)
    for subject in ("s1", "s2"):
        write_stack(tmp_path / "images" / subject, [rng.integers(0, 2000, (40, 40)).astype(np.uint16) for _ in range(6)])
    out = tmp_path / "stack.h5"
    result = ssmtl_cli("cache", "build", "--dataset", "png-stack", "--images", tmp_path / "images", "--modality", "ct",
                       "--set", "dataset.rescale_intercept=-1024", "--out", out, "--size", "32", plugins=[plugin])
    assert result.exit_code == 0, result.output
    summary = cache_summary(out)
    assert summary["volumes"] == 2 and summary["slices"] == 12
    assert list(summary["slice_shape"]) == [32, 32] and summary["modalities"] == {"ct": 2}
