"""Bad inputs and killed builds: a clear error naming the file, never a traceback, never a partial cache.

Property-based: hypothesis draws a reader (the ``nifti`` and ``itk`` folder
datasets, the ``manifest`` dataset, the ``dicom`` dataset) and a way to break one
of two inputs; the build must either fail cleanly (exit 2, an ``error:`` line
naming the bad file, no traceback, no file at ``--out``, no temporary) or, for
inputs a folder dataset is right to ignore (a text file, a folder named like a
volume, a broken symbolic link), succeed with the good volume only.

Tests run as root, where ``chmod 000`` does not stop reads, so unreadable files
are a directory named like a file and a broken symbolic link instead.

The kill test runs ``ssmtl cache build`` in a subprocess and ``kill -9``s it at
random moments: afterwards nothing is visible at ``--out`` but the older cache,
byte-identical, and the next build removes the dead build's temporary.
"""

from __future__ import annotations

import gzip
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ingest_helpers import cache_files, ct_phantom, edit_dicom, invoke, save_nifti, sha, write_dicom_series

from ssmtl.data.cache_writer import LOCK_SUFFIX, TMP_PREFIX

SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SHAPE = (8, 7, 4)
IGNORABLE = {"non_image_file", "dir_named_like_file", "broken_symlink"}
IMAGE_KINDS = ["truncated", "garbage", "nan", "inf", "2d", "4d", "zero_length"]
LABEL_KINDS = ["label_outside_mapping", "label_shape", "label_affine"]
OTHER_KINDS = sorted(IGNORABLE)


def _write(fmt: str, path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """Save ``data`` as NIfTI (nibabel) or gzip-compressed NRRD (SimpleITK; its origin from ``affine``)."""
    if fmt == "nifti":
        return save_nifti(path, data, affine)
    import SimpleITK as sitk

    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(np.ascontiguousarray(data.T), isVector=False)
    if affine is not None and data.ndim == 3:
        image.SetOrigin([float(v) for v in affine[:3, 3] * [-1, -1, 1]])  # RAS -> LPS
    sitk.WriteImage(image, str(path), useCompression=True)
    return path


def _ext(fmt: str) -> str:
    return ".nii.gz" if fmt == "nifti" else ".nrrd"


def _break_image(kind: str, fmt: str, path: Path, rng: np.random.Generator, fraction: float) -> Path:
    """Write a broken image at ``path``; returns the file the error must name."""
    image, _ = ct_phantom(SHAPE)
    if kind == "truncated":
        _write(fmt, path, image)
        blob = path.read_bytes()
        path.write_bytes(blob[: max(1, int(len(blob) * fraction))])
    elif kind == "garbage":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(gzip.compress(rng.bytes(200)) if rng.random() < 0.5 else rng.bytes(300))
    elif kind in ("nan", "inf"):
        bad = image.copy()
        index = tuple(int(rng.integers(0, n)) for n in SHAPE)
        bad[index] = np.nan if kind == "nan" else rng.choice([np.inf, -np.inf])
        _write(fmt, path, bad)
    elif kind == "2d":
        _write(fmt, path, image[:, :, 0])
    elif kind == "4d":
        _write(fmt, path, np.stack([image, image], axis=-1))
    elif kind == "zero_length":
        if fmt == "nifti":
            save_nifti(path, np.zeros((8, 7, 0), np.float32))
        else:
            path.write_text("NRRD0004\ntype: float\ndimension: 3\nsizes: 8 7 0\nendian: little\nencoding: raw\n\n")
    return path


def _break_label(kind: str, fmt: str, image_path: Path, label_path: Path) -> Path:
    """A good image with a label that does not fit it; returns the label path."""
    image, label = ct_phantom(SHAPE)
    _write(fmt, image_path, image)
    if kind == "label_outside_mapping":
        bad = label.copy()
        bad[0, 0, 0] = 3  # the mapping is label_values=[1]
        _write(fmt, label_path, bad)
    elif kind == "label_shape":
        _write(fmt, label_path, label[:, :-1, :].copy())
    elif kind == "label_affine":
        affine = np.eye(4)
        affine[:3, 3] = [4.0, 0.0, 0.0]
        _write(fmt, label_path, label, affine)
    return label_path


def _add_other(kind: str, folder: Path, name: str) -> Path:
    if kind == "non_image_file":
        path = folder / "notes.txt"
        path.write_text("a text file beside the volumes")
    elif kind == "dir_named_like_file":
        path = folder / name
        path.mkdir()
        (path / "inside.txt").write_text("x")
    else:  # broken_symlink
        path = folder / name
        path.symlink_to(folder / "does-not-exist" / name)
    return path


def _assert_clean_failure(result, needle: str, out_dir: Path) -> None:
    text = result.stderr if result.stderr else result.output
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert "Traceback" not in result.output and "Traceback" not in text
    first = [line for line in text.splitlines() if line.strip()][0]
    assert first.startswith("error:"), text
    assert needle in " ".join(text.split()), (needle, text)
    assert cache_files(out_dir) == []


@SETTINGS
@given(
    fmt=st.sampled_from(["nifti", "itk", "manifest-nifti", "manifest-itk"]),
    kind=st.sampled_from(IMAGE_KINDS + LABEL_KINDS + OTHER_KINDS),
    seed=st.integers(0, 2**16),
    fraction=st.floats(0.02, 0.95),
)
def test_bad_file_fails_cleanly_or_is_ignored(fmt, kind, seed, fraction):
    rng = np.random.default_rng(seed)
    file_fmt = "itk" if fmt.endswith("itk") else "nifti"
    ext = _ext(file_fmt)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data, out_dir = root / "data", root / "out"
        data.mkdir(), out_dir.mkdir()
        image, label = ct_phantom(SHAPE, seed=1)
        _write(file_fmt, data / f"a{ext}", image)
        _write(file_fmt, data / f"a_seg{ext}", label)
        bad_image, bad_label = data / f"b{ext}", data / f"b_seg{ext}"
        if kind in IMAGE_KINDS:
            culprit = _break_image(kind, file_fmt, bad_image, rng, fraction)
            _write(file_fmt, bad_label, label)
        elif kind in LABEL_KINDS:
            culprit = _break_label(kind, file_fmt, bad_image, bad_label)
        else:
            culprit = _add_other(kind, data, bad_image.name)
        if fmt.startswith("manifest"):
            image_cell = bad_image.name if kind in LABEL_KINDS else culprit.name
            label_cell = bad_label.name if bad_label.exists() else ""
            manifest = data / "volumes.csv"
            manifest.write_text(f"image,label\na{ext},a_seg{ext}\n{image_cell},{label_cell}\n")
            args = ["--dataset", "manifest", "--path", str(manifest)]
        else:
            args = ["--dataset", fmt, "--images", str(data), "--labels", str(data)]
        result = invoke("cache", "build", *args, "--out", str(out_dir / "c.h5"), "--size", "16",
                        "--set", "dataset.label_values=[1]")
        if kind in IGNORABLE and not fmt.startswith("manifest"):
            assert result.exit_code == 0, result.output  # a folder dataset ignores what is not a volume
            assert [p.name for p in out_dir.iterdir()] == ["c.h5"]
        else:
            _assert_clean_failure(result, str(culprit), out_dir)


@SETTINGS
@given(
    kind=st.sampled_from(["truncated_slice", "garbage_dcm", "notes", "missing_slice", "orientation", "no_position"]),
    seed=st.integers(0, 2**16),
    fraction=st.floats(0.05, 0.95),
)
def test_bad_dicom_fails_cleanly_or_is_ignored(kind, seed, fraction):
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        series, out_dir = root / "series", root / "out"
        out_dir.mkdir()
        image, _ = ct_phantom((8, 7, 5))
        files = write_dicom_series(series, image)  # files[k] holds slice k
        victim = files[int(rng.integers(1, len(files) - 1))]  # an interior slice
        # the message names the series folder or, when one file is unreadable, that file inside it
        culprit: Path | None = series
        if kind == "truncated_slice":
            blob = victim.read_bytes()
            victim.write_bytes(blob[: max(200, int(len(blob) * fraction))])
        elif kind in ("garbage_dcm", "notes"):
            junk = series / ("junk.dcm" if kind == "garbage_dcm" else "notes.txt")
            junk.write_bytes(rng.bytes(400) if kind == "garbage_dcm" else b"not DICOM")
            culprit = None  # ignored (not DICOM), or an error naming it
        elif kind == "missing_slice":
            victim.unlink()
        elif kind == "orientation":
            edit_dicom(victim, ImageOrientationPatient=["0", "1", "0", "1", "0", "0"])
        elif kind == "no_position":
            import pydicom

            ds = pydicom.dcmread(str(victim))
            del ds.ImagePositionPatient
            ds.save_as(str(victim), enforce_file_format=True)
        result = invoke("cache", "build", "--dataset", "dicom", "--path", str(series), "--out", str(out_dir / "c.h5"),
                        "--size", "16")
        if culprit is None and result.exit_code == 0:
            assert [p.name for p in out_dir.iterdir()] == ["c.h5"]
        else:
            _assert_clean_failure(result, str(culprit or junk), out_dir)


# -- kill -9 --------------------------------------------------------------------------------------

BUILD = [sys.executable, "-m", "ssmtl", "--no-plugins", "cache", "build", "--dataset", "phantom",
         "--subjects", "20", "--size", "64", "--set", "dataset.num_slices=48"]


def _descendants(pid: int) -> set[int]:
    """Process ids below ``pid``, from /proc (children of children included)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
def test_killed_builds_leave_the_old_cache_byte_identical(tmp_path):
    out = tmp_path / "cache.h5"
    started = time.monotonic()
    subprocess.run([*BUILD, "--out", str(out)], check=True, capture_output=True, timeout=300)
    duration = time.monotonic() - started
    before = sha(out)
    rng = random.Random(4)
    killed = 0
    for attempt, workers in enumerate(["0", "0", "0", "2"]):
        delay = rng.uniform(0.1, 0.9) * duration
        process = subprocess.Popen([*BUILD, "--out", str(out), "--force", "--workers", workers],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if workers != "0":  # kill while the pool runs: its workers must not outlive the build
            deadline = time.monotonic() + 60
            while len(_descendants(process.pid)) < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
            delay = rng.uniform(0.0, 0.5)
        time.sleep(delay)
        children = _descendants(process.pid)
        assert children or workers == "0", "the worker pool never started"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        if process.returncode == -signal.SIGKILL:
            killed += 1
            assert sha(out) == before, f"kill {attempt} after {delay:.2f}s changed the old cache"
        visible = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
        assert visible == ["cache.h5"], visible
        # the killed build's temporary, and its lock file (a later build removes both)
        hidden = [p.name for p in tmp_path.iterdir() if p.name.startswith(".") and p.name != f".{out.name}{LOCK_SUFFIX}"]
        assert all(name.startswith(f"{TMP_PREFIX}{process.pid}-") for name in hidden), hidden
        deadline = time.monotonic() + 10  # orphaned workers notice their parent is gone and exit
        while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_alive(pid) for pid in children), "worker processes outlived the killed build"
    assert killed >= 3, f"only {killed} of 4 builds were still running when killed"
    # the next build in the directory removes the dead builds' temporaries
    result = invoke("cache", "build", "--dataset", "phantom", "--out", str(tmp_path / "next.h5"),
                    "--subjects", "1", "--size", "32", "--set", "dataset.num_slices=4")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache.h5", "next.h5"]
    assert sha(out) == before


@pytest.mark.slow
def test_killed_first_build_leaves_no_file(tmp_path):
    out = tmp_path / "fresh.h5"
    process = subprocess.Popen([*BUILD, "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # kill while the temporary file is being written (a fixed sleep let a fast machine finish first)
    deadline = time.monotonic() + 60
    while not any(p.name.startswith(TMP_PREFIX) for p in tmp_path.iterdir()):
        assert process.poll() is None and time.monotonic() < deadline, "the build ended before it could be killed"
        time.sleep(0.01)
    process.kill()
    assert process.wait(timeout=60) == -9
    assert not out.exists()
    assert all(p.name.startswith(TMP_PREFIX) or p.name == f".{out.name}{LOCK_SUFFIX}" for p in tmp_path.iterdir())
