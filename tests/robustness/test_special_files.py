"""#27 class 7: special files. Only regular files and folders are read: a FIFO, a device or a socket
is refused by its ``stat`` before anything opens it (opening a FIFO blocks until someone writes), a
symbolic link loop is one line (not Python's ``RuntimeError``), and a MetaImage header is refused by
what it claims when its data file is missing, or a FIFO.

Each FIFO here has a writer waiting on it (:func:`fifo`): if ssmtl ever opened one, the open would
return at once and read an empty file, so a regression fails on its message instead of hanging."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
from ingest_helpers import save_nifti
from robustness.harness import Case, assert_all_held, run_cases, ssmtl_cli

from ssmtl.api import FileKind, InputFileError, check_regular_file, file_kind, read_regular_file, walk_files


@pytest.fixture
def fifo():
    """``make(path)``: a FIFO at ``path`` with a writer thread waiting for a reader (see the module doc);
    the writers are released at teardown."""
    made: list[Path] = []

    def make(path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkfifo(path)
        threading.Thread(target=lambda: open(path, "wb").close(), daemon=True).start()
        made.append(path)
        return path

    yield make
    for path in made:  # release a writer still waiting: a non-blocking reader opens and closes
        for name in (path, path.with_name("." + path.name)):  # (a test may have hidden it)
            if name.exists():
                os.close(os.open(name, os.O_RDONLY | os.O_NONBLOCK))


def link_loop(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(path.name + ".other", path)
    os.symlink(path.name, path.with_name(path.name + ".other"))
    return path


def metaimage(path: Path, data_file: str, dims: str = "4 4 4") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"ObjectType = Image\nNDims = 3\nDimSize = {dims}\nElementType = MET_SHORT\nElementDataFile = {data_file}\n")
    return path


def test_special_files_are_refused_through_the_command_line(tmp_path, fifo):
    fifo(tmp_path / "fifo-folder" / "a.nii.gz")
    link_loop(tmp_path / "loop")
    link_loop(tmp_path / "loop-folder" / "a.nii.gz")
    (tmp_path / "device-folder").mkdir()
    os.symlink("/dev/null", tmp_path / "device-folder" / "a.nii.gz")
    metaimage(tmp_path / "mhd-fifo" / "a.mhd", "a.raw")
    fifo(tmp_path / "mhd-fifo" / "a.raw")
    metaimage(tmp_path / "mhd-missing" / "a.mhd", "a.raw", dims="800 800 800")
    (tmp_path / "mha-huge").mkdir()
    huge = (b"ObjectType = Image\nNDims = 3\nDimSize = 800 800 800\nElementType = MET_SHORT\nElementDataFile = LOCAL\n"
            + bytes(64))
    (tmp_path / "mha-huge" / "a.mha").write_bytes(huge)
    config_fifo = fifo(tmp_path / "config" / "run.yaml")
    device_config = tmp_path / "config" / "device.yaml"
    os.symlink("/dev/zero", device_config)
    manifest_fifo = fifo(tmp_path / "manifest" / "m.csv")

    def build(name, dataset, flag, path, message):
        out = tmp_path / f"out-{name.replace(' ', '-')}.h5"
        return Case(name, ssmtl_cli("cache", "build", "--dataset", dataset, flag, path, "--modality", "ct", "--out", out),
                    message=message, absent=[out], watch=[tmp_path])

    cases = [
        build("fifo in a folder", "nifti", "--images", tmp_path / "fifo-folder",
              f"{tmp_path / 'fifo-folder' / 'a.nii.gz'}: is a FIFO (named pipe), not a regular file"),
        build("loop as the folder", "nifti", "--images", tmp_path / "loop", f"{tmp_path / 'loop'}: is a symbolic link loop"),
        build("loop in a folder", "nifti", "--images", tmp_path / "loop-folder", "a.nii.gz: is a symbolic link loop"),
        build("device in a folder", "nifti", "--images", tmp_path / "device-folder", "a.nii.gz: is a character device"),
        build("metaimage data file is a fifo", "itk", "--images", tmp_path / "mhd-fifo",
              f"{tmp_path / 'mhd-fifo' / 'a.mhd'}: its data file a.raw is a FIFO (named pipe)"),
        build("metaimage claims 800^3 without data", "itk", "--images", tmp_path / "mhd-missing",
              "a.mhd: the header claims 800x800x800 voxels (1.0 GB) in a.raw, which cannot be found"),
        build("metaimage claims 800^3 in its own file", "itk", "--images", tmp_path / "mha-huge",
              f"a.mha: the header claims 800x800x800 voxels (1.0 GB) but the file holds {len(huge)} bytes"),
        Case("config is a fifo", ssmtl_cli("config", "show", "--config", config_fifo), message=f"{config_fifo}: cannot read config: is a FIFO"),
        Case("config is a device", ssmtl_cli("config", "show", "--config", device_config),
             message=f"{device_config}: cannot read config: is a character device"),
        Case("manifest is a fifo", ssmtl_cli("cache", "build", "--dataset", "manifest", "--path", manifest_fifo, "--out", tmp_path / "m.h5"),
             message=f"{manifest_fifo}: is a FIFO (named pipe)", absent=[tmp_path / "m.h5"]),
    ]
    assert_all_held(run_cases(cases))


def test_a_cache_that_is_not_a_regular_file_says_what_it_is(tmp_path, fifo):
    """Once, a FIFO or a link loop given as a cache was "cache file not found" (a folder is a folder of caches)."""
    cache_fifo = fifo(tmp_path / "fifo.h5")
    folder = tmp_path / "folder.h5"
    folder.mkdir()
    loop = link_loop(tmp_path / "loop.h5")
    out = tmp_path / "run"
    cases = [
        Case(f"pretrain --data {name}", ssmtl_cli("pretrain", "--data", path, "--out", out, "--steps", "1"),
             message=f"{path}: {message}", absent=[out], watch=[tmp_path])
        for name, path, message in [("fifo", cache_fifo, "is a FIFO (named pipe), not a regular file"),
                                    ("folder", folder, "the folder holds no *.h5 cache"),
                                    ("loop", loop, "is a symbolic link loop")]
    ]
    cases.append(Case("cache info on a missing cache", ssmtl_cli("cache", "info", tmp_path / "gone.h5"),
                      message=f"{tmp_path / 'gone.h5'}: cache file not found (build one with `ssmtl cache build`)"))
    assert_all_held(run_cases(cases))


def test_a_link_loop_in_a_manifest_is_a_bad_input_that_skip_bad_skips(tmp_path):
    save_nifti(tmp_path / "good.nii.gz", np.linspace(-100, 300, 16 * 16 * 4, dtype=np.float32).reshape(16, 16, 4))
    link_loop(tmp_path / "loop.nii.gz")
    manifest = tmp_path / "m.csv"
    manifest.write_text("image,modality\ngood.nii.gz,ct\nloop.nii.gz,ct\n")
    out, skipped = tmp_path / "out.h5", tmp_path / "skipped.h5"
    cases = [
        Case("loop in a manifest", ssmtl_cli("cache", "build", "--dataset", "manifest", "--path", manifest, "--out", out,
                                             "--size", "16"),
             message=f"{tmp_path / 'loop.nii.gz'}: is a symbolic link loop", inputs=[manifest], absent=[out], watch=[tmp_path]),
        Case("loop in a manifest, --skip-bad", ssmtl_cli("cache", "build", "--dataset", "manifest", "--path", manifest,
                                                         "--out", skipped, "--size", "16", "--skip-bad"),
             exit_code=0, inputs=[manifest], watch=[tmp_path]),
    ]
    outcomes = run_cases(cases)
    assert_all_held(outcomes)
    from ssmtl.data.cache import SliceCache

    cache = SliceCache(skipped)
    assert [v.subject for v in cache.volumes] == ["good"]
    assert [entry["path"] for entry in cache.attrs["skipped"]] == [str(tmp_path / "loop.nii.gz")]
    assert "symbolic link loop" in outcomes[1].stderr


def test_predict_lists_special_inputs_as_errors_and_goes_on(tmp_path, fifo):
    """What ``ssmtl predict --input`` gets for each kind: an error for that input, nothing opened."""
    from ssmtl.data.ingest import Failure, load_and_preprocess
    from ssmtl.data.preprocess import PreprocessConfig
    from ssmtl.downstream.predict_inputs import list_scans, scan_openers
    from ssmtl.host.registry import get_registry

    good = save_nifti(tmp_path / "good.nii.gz", np.linspace(-100, 300, 16 * 16 * 4, dtype=np.float32).reshape(16, 16, 4))
    pipe = fifo(tmp_path / "pipe.nii.gz")
    loop = link_loop(tmp_path / "loop.nii.gz")
    folder = tmp_path / "folder"
    fifo(folder / "b.nii.gz")
    loop_no_extension = link_loop(tmp_path / "scan")
    header = metaimage(tmp_path / "meta" / "c.mhd", "c.raw")
    fifo(tmp_path / "meta" / "c.raw")
    scans = list_scans([good, pipe, loop, folder, loop_no_extension, header], scan_openers(get_registry()))
    by_path = {s.path: s for s in scans}
    assert [s.path for s in scans] == [good, pipe, loop, folder / "b.nii.gz", loop_no_extension, header]
    assert by_path[good].error is None
    assert by_path[pipe].error.startswith("is a FIFO (named pipe), not a regular file")
    assert by_path[loop].error.startswith("is a symbolic link loop")
    assert by_path[folder / "b.nii.gz"].error.startswith("is a FIFO")
    assert "symbolic link loop" in by_path[loop_no_extension].error
    # the header names a FIFO: refused when the scan is read, as predict reads it, before SimpleITK opens it
    result = load_and_preprocess(by_path[header].item, PreprocessConfig(size=16))
    assert isinstance(result, Failure) and result.path == str(header)
    assert result.reason.startswith("its data file c.raw is a FIFO (named pipe)")
    assert not isinstance(load_and_preprocess(by_path[good].item, PreprocessConfig(size=16)), Failure)


def test_the_toolkit_checks_kinds_by_stat(tmp_path, fifo):
    regular = tmp_path / "a.nii.gz"
    regular.write_bytes(b"x")
    pipe = fifo(tmp_path / "p.nii.gz")
    loop = link_loop(tmp_path / "l.nii.gz")
    os.symlink("missing", tmp_path / "broken.nii.gz")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp_path / "s.nii.gz"))
    try:
        assert file_kind(regular) == "file" and file_kind(tmp_path) == "directory"
        assert file_kind(pipe) == "a FIFO (named pipe)" and file_kind(loop) == "link loop"
        assert file_kind(tmp_path / "s.nii.gz") == "a socket" and file_kind("/dev/null") == "a character device"
        assert file_kind(tmp_path / "broken.nii.gz") == "broken link" and file_kind(tmp_path / "none") == "missing"
        assert check_regular_file(regular) == regular
        for path, message in ((pipe, "is a FIFO"), (loop, "is a symbolic link loop"), (tmp_path, "is a directory"),
                              (tmp_path / "s.nii.gz", "is a socket"), (tmp_path / "broken.nii.gz", "is a broken symbolic link")):
            with pytest.raises(InputFileError, match=message):
                check_regular_file(path)
        assert read_regular_file(regular, 1) == b"x"
        with pytest.raises(InputFileError, match="more than the limit of 0 bytes"):
            read_regular_file(regular, 0)
        kind = FileKind("NIfTI files", (".nii", ".nii.gz"))
        with pytest.raises(InputFileError, match="l.nii.gz: is a symbolic link loop"):  # the first special name
            kind.list_in(tmp_path)
        with pytest.raises(InputFileError, match="l.nii.gz: is a symbolic link loop"):
            list(walk_files(tmp_path))
        pipe.rename(tmp_path / "a0.nii.gz")  # now the first
        with pytest.raises(InputFileError, match="a0.nii.gz: is a FIFO"):
            kind.list_in(tmp_path)
        (tmp_path / "a0.nii.gz").rename(pipe)
        assert kind.claims(regular) and not kind.claims(tmp_path / "other.txt") and not kind.claims(tmp_path / "none.nii")
        with pytest.raises(InputFileError, match="is a socket"):
            kind.claims(tmp_path / "s.nii.gz")
    finally:
        server.close()
    # hidden special files are never volumes, so never refused
    for path in (pipe, loop, tmp_path / "s.nii.gz", tmp_path / "l.nii.gz.other"):
        path.rename(path.with_name("." + path.name))
    assert [p.name for p in walk_files(tmp_path)] == ["a.nii.gz", "broken.nii.gz"]
    assert kind.list_in(tmp_path) == [regular]
