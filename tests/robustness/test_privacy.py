"""Issue 27, class 8: patient identity in files made to be shared.

A DICOM dataset whose series carry a known PatientID, PatientName and StudyDate (in their
headers and, as hospital exports have them, in their folder and label file names) goes through
the whole pipeline on the command line, with absolute paths: cache, pre-training, fine-tuning,
evaluation, every export format, the reports. Every file made to be shared is then searched as
bytes (UTF-8 and UTF-16, zip members and embedded images too) for the identifiers and for
absolute local paths: none may appear. With ``--identify-subjects`` the identifiers appear, on
purpose. DICOM identifiers do not even reach the runs' own records: they are pseudonymised as
they enter the cache, which alone keeps them (as each volume's local ``identity``).
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Iterator

import h5py
import pytest
from ingest_helpers import ct_phantom, save_nifti, write_dicom_series

from ssmtl.data.cache import SliceCache
from ssmtl.data.pseudonyms import assign_pseudonyms, Pseudonyms
from ssmtl.data.shareable import shareable
from ssmtl.testing.cli import SsmtlCli

#: PatientID -> (family name, given name, study date); every part is searched for
PATIENTS = {"PRIVPID0001": ("ZZFAMILYA", "ZZGIVENA", "19870214"),
            "PRIVPID0002": ("ZZFAMILYB", "ZZGIVENB", "19910623"),
            "PRIVPID0003": ("ZZFAMILYC", "ZZGIVENC", "20011130")}
TINY = ("--set", "model.base_channels=4", "--set", "model.depth=2", "--set", "data.num_workers=0")
FT_FORMATS = ("safetensors", "torchscript", "onnx", "monai-bundle")
PRE_FORMATS = ("safetensors", "torchscript", "onnx")


def _series_folder(root: Path, pid: str, n: int) -> Path:
    family, _, date = PATIENTS[pid]
    return root / "dicom" / f"{pid}_{family}" / date / f"ct{n}"


def _write_dataset(root: Path) -> None:
    """Three patients, one CT series each with its label; the first patient has a second, unlabeled series."""
    import pydicom

    from ssmtl.plugins.datasets.dicom_series import read_series, scan_dicom_folder

    for i, (pid, (family, given, date)) in enumerate(PATIENTS.items()):
        for n in (1, 2) if i == 0 else (1,):
            image, label = ct_phantom((32, 32, 8), seed=3 * i + n)
            folder = _series_folder(root, pid, n)
            for path in write_dicom_series(folder, image, patient_id=pid, pixel_spacing=(1.0, 1.0), step=2.0,
                                           series_number=n, description=f"{family} chest"):
                ds = pydicom.dcmread(path)
                ds.PatientName, ds.StudyDate = f"{family}^{given}", date
                ds.save_as(path)
            if n == 1:
                affine = read_series(scan_dicom_folder(folder).series[0])[2]
                save_nifti(root / "labels" / f"{pid}_{family}_{date}_ct1_seg.nii.gz", label, affine=affine)
                # the same scan converted to NIfTI, named by the patient as converters often name files
                save_nifti(root / "nifti" / f"{pid}_{family}_{date}.nii.gz", image, affine=affine)
                save_nifti(root / "nifti" / f"{pid}_{family}_{date}_seg.nii.gz", label, affine=affine)


def _ok(cli: SsmtlCli, *args) -> None:
    result = cli("--no-plugins", *args)
    assert result.exit_code == 0, f"ssmtl {' '.join(map(str, args))}: {result.stderr}"


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory) -> dict:
    """The whole pipeline once, on the command line with absolute paths: what it wrote, by kind."""
    root = tmp_path_factory.mktemp("privacy").absolute()
    _write_dataset(root)
    cli, cache, runs, hub = SsmtlCli(), root / "cache.h5", root / "runs", root / "hub"
    _ok(cli, "cache", "build", "--dataset", "dicom", "--path", root / "dicom", "--labels", root / "labels",
        "--out", cache, "--size", 32, "--test-fraction", 0.34)
    _ok(cli, "pretrain", "--data", cache, "--out", runs / "pre", "--task", "order", "--steps", 2, "--batch-size", 2, *TINY)
    _ok(cli, "finetune", "--data", cache, "--out", runs / "ft", "--init", runs / "pre", "--steps", 2, "--batch-size", 2,
        "--set", "labeled_volumes=1")
    _ok(cli, "evaluate", runs / "ft")
    shared = []
    for fmt in FT_FORMATS:
        _ok(cli, "export", runs / "ft", "--format", fmt, "--out", hub / f"ft-{fmt}")
        shared.append(hub / f"ft-{fmt}")
    for fmt in PRE_FORMATS:
        _ok(cli, "export", runs / "pre", "--format", fmt, "--out", hub / f"pre-{fmt}")
        shared.append(hub / f"pre-{fmt}")
    _ok(cli, "export", runs / "pre", "--format", "onnx", "--part", "encoder")  # the run's own place: RUN/hub/
    shared.append(runs / "pre" / "hub" / "encoder-onnx")
    _ok(cli, "report", runs / "ft", "--out", hub / "ft.html")
    _ok(cli, "report", runs / "pre")  # RUN/report.html
    shared += [hub / "ft.html", runs / "pre" / "report.html"]
    # file names are subject ids the dataset does not know to be identifying: the shareable files map them
    _ok(cli, "cache", "build", "--dataset", "nifti", "--images", root / "nifti", "--labels", root / "nifti",
        "--out", root / "nifti.h5", "--size", 32, "--test-fraction", 0.34)
    _ok(cli, "finetune", "--data", root / "nifti.h5", "--out", runs / "nifti-ft", "--init", "none", "--steps", 2,
        "--batch-size", 2, "--set", "labeled_volumes=1", *TINY[:4])
    _ok(cli, "evaluate", runs / "nifti-ft")
    _ok(cli, "export", runs / "nifti-ft", "--format", "onnx", "--out", hub / "nifti-onnx")
    _ok(cli, "report", runs / "nifti-ft", "--out", hub / "nifti.html")
    shared += [hub / "nifti-onnx", hub / "nifti.html"]
    internal = root / "internal"
    _ok(cli, "export", runs / "ft", "--out", internal / "ft-card", "--identify-subjects")
    _ok(cli, "report", runs / "ft", "--out", internal / "ft.html", "--identify-subjects")
    return {"root": root, "cache": cache, "runs": runs, "shared": shared, "internal": internal, "cli": cli}


def _identifiers() -> list[str]:
    found = []
    for pid, (family, given, date) in PATIENTS.items():
        found += [pid, family, given, f"{family}^{given}", date, f"{date[:4]}-{date[4:6]}-{date[6:]}"]
    return found


def _local_paths(root: Path) -> list[str]:
    """The session's temporary folder, the home directory, the installation and the checkout."""
    places = {root.parent, Path.home(), Path(sys.prefix), Path(__file__).resolve().parents[2]}
    return sorted({str(p) for place in places for p in (place, place.resolve()) if len(p.parts) > 1})


def _files(paths) -> list[Path]:
    return sorted(f for p in map(Path, paths) for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file())


def _blobs(path: Path) -> Iterator[tuple[str, bytes]]:
    """The file's bytes, each zip member's (TorchScript), and each image embedded in a page."""
    data = path.read_bytes()
    yield path.name, data
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                yield f"{path.name}:{member}", archive.read(member)
    if path.suffix == ".html":
        for i, png in enumerate(re.findall(rb'data:image/png;base64,([A-Za-z0-9+/=]+)', data)):
            yield f"{path.name}:image{i}", base64.b64decode(png)


def _found(paths, needles: list[str]) -> list[str]:
    """``file: needle`` for every needle found in any blob, as UTF-8 or UTF-16, whatever its case."""
    hits = []
    for path in _files(paths):
        for where, blob in _blobs(path):
            lower = blob.lower()
            for needle in needles:
                forms = {needle.lower().encode(c) for c in ("utf-8", "utf-16-le", "utf-16-be")}
                if any(form in lower for form in forms):
                    hits.append(f"{where}: {needle}")
    return hits


def test_nothing_made_to_be_shared_names_a_patient_or_a_local_path(pipeline):
    shared = _files(pipeline["shared"])
    names = {p.name for p in shared}
    assert {"README.md", "config.json", "model.safetensors", "model.pt", "model.onnx", "model.ts", "metadata.json",
            "inference.json", "ft.html", "report.html", "ssmtl-export.json", "LICENSE"} <= names
    assert _found(shared, _identifiers() + _local_paths(pipeline["root"])) == []


def test_the_metadata_fields_of_every_format_are_clean(pipeline):
    import onnx
    import torch
    from safetensors import safe_open

    needles = _identifiers() + _local_paths(pipeline["root"])
    texts = []
    for path in _files(pipeline["shared"]):
        if path.suffix == ".safetensors":
            with safe_open(str(path), "pt") as f:
                texts.append(json.dumps(f.metadata()))
        elif path.suffix == ".onnx":
            model = onnx.load(str(path))
            texts += [model.doc_string, model.producer_name, model.graph.doc_string,
                      *(f"{p.key}={p.value}" for p in model.metadata_props), *(n.doc_string for n in model.graph.node)]
        elif path.suffix in (".pt", ".ts"):
            extra = {"metadata.json": "", "inference.json": ""}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                torch.jit.load(str(path), _extra_files=extra)
            texts += [v.decode() if isinstance(v, bytes) else v for v in extra.values()]
    assert len(texts) > 10 and [n for n in needles if any(n.lower() in t.lower() for t in texts)] == []


def test_shareable_files_name_subjects_by_stable_pseudonyms(pipeline):
    cache = SliceCache(pipeline["cache"])
    run = json.loads((pipeline["runs"] / "ft" / "run.json").read_text())
    tested = json.loads((pipeline["runs"] / "ft" / "eval.json").read_text())["test_subjects"]
    assert [s for s in run["labeled_subjects"] + tested if not s.startswith("subject-")] == []
    card = (pipeline["root"] / "hub" / "ft-onnx" / "README.md").read_text()
    page = (pipeline["root"] / "hub" / "ft.html").read_text()
    assert f"fine-tuned on 1 labeled subject(s) ({run['labeled_subjects'][0]})" in card
    assert f"labeled subjects</td><td>{run['labeled_subjects'][0]}</td>" in page
    volume = next(v for v in cache.volumes if v.subject == tested[0])
    assert f"subject(s) ({tested[0]})" in card and f"<td>{Pseudonyms.of(cache).volume(volume.name)}</td>" in page
    # the same pseudonyms from a rebuild and from the two shards of a sharded build
    first = {v.identity["volume"]: (v.subject, v.name) for v in cache.volumes}
    built = []
    for shard in (None, "1/2", "2/2"):
        out = pipeline["root"] / "again" / (f"shard-{shard.replace('/', '-')}.h5" if shard else "all.h5")
        _ok(pipeline["cli"], "cache", "build", "--dataset", "dicom", "--path", pipeline["root"] / "dicom", "--labels",
            pipeline["root"] / "labels", "--out", out, "--size", 32, "--test-fraction", 0.34, *(["--shard", shard] if shard else []))
        built.append({v.identity["volume"]: (v.subject, v.name) for v in SliceCache(out).volumes})
    assert built[0] == first and {**built[1], **built[2]} == first and len(built[1]) + len(built[2]) == len(first)


def test_dicom_identifiers_stay_in_the_cache_as_local_identities(pipeline):
    cache = SliceCache(pipeline["cache"])
    by_patient: dict[str, set] = {}
    for v in cache.volumes:
        pid = v.identity["subject"]
        assert v.identity["volume"].startswith(f"{pid}_{PATIENTS[pid][0]}/") and v.pseudonym == v.subject
        by_patient.setdefault(pid, set()).add((v.subject, v.split))
    # one subject (and one split) per patient, whose two series are subject-00N-v1 and -v2
    assert sorted(by_patient) == sorted(PATIENTS) and all(len(s) == 1 for s in by_patient.values())
    assert sorted(v.name for v in cache.volumes if v.identity["subject"] == "PRIVPID0001")[-1].endswith("-v2")
    # the runs' own records (local files: configs, splits, checkpoints, metrics) name no patient either
    records = [f for f in _files([pipeline["runs"] / "pre", pipeline["runs"] / "ft"])
               if "hub" not in f.parts and f.name != "report.html"]
    assert len(records) > 10 and _found(records, _identifiers()) == []
    # where names come from file names, the run's records (local) keep them, as the user named the files
    assert "PRIVPID" in (pipeline["runs"] / "nifti-ft" / "run.json").read_text()


def test_identify_subjects_puts_the_real_names_back_on_purpose(pipeline):
    cache = SliceCache(pipeline["cache"])
    real = {v.subject: v.identity["subject"] for v in cache.volumes}
    run = json.loads((pipeline["runs"] / "ft" / "run.json").read_text())
    evaluation = json.loads((pipeline["runs"] / "ft" / "eval.json").read_text())
    named = {real[s] for s in run["labeled_subjects"] + evaluation["test_subjects"]}
    card = (pipeline["internal"] / "ft-card" / "README.md").read_text()
    page = (pipeline["internal"] / "ft.html").read_text()
    for text in (card, page):
        assert "Internal use only" in text and all(pid in text for pid in named)
    tested = next(v for v in cache.volumes if v.subject == evaluation["test_subjects"][0])
    assert f"<td>{tested.identity['volume']}</td>" in page  # the volume by its series
    marker = json.loads((pipeline["internal"] / "ft-card" / "ssmtl-export.json").read_text())
    assert marker["identify_subjects"] is True
    # real names, but still no local path
    assert _found([pipeline["internal"]], _local_paths(pipeline["root"])) == []


def test_identified_exports_are_never_pushed(pipeline):
    out = pipeline["root"] / "never"
    result = pipeline["cli"]("--no-plugins", "export", pipeline["runs"] / "ft", "--out", out, "--identify-subjects",
                             "--push-to-hub", "someone/model")
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(errors) == 1 and "--identify-subjects" in errors[0]
    assert "Traceback" not in result.stderr and not out.exists()


def test_caches_built_before_pseudonyms_get_the_same_names(ssmtl_tiny_cache, tmp_path):
    old = tmp_path / "old.h5"
    shutil.copy(ssmtl_tiny_cache, old)
    with h5py.File(old, "r+") as f:
        for group in f["volumes"].values():
            del group.attrs["pseudonym"]
    assert SliceCache(old).volumes[0].pseudonym is None
    now, before = Pseudonyms.of(SliceCache(ssmtl_tiny_cache)), Pseudonyms.of(SliceCache(old))
    names = [v.name for v in SliceCache(old).volumes]
    assert [before.volume(n) for n in names] == [now.volume(n) for n in names]
    assert sorted(before.volume(n) for n in names) == sorted(assign_pseudonyms(v.subject for v in SliceCache(old).volumes).values())


def test_the_helper_makes_a_benchmark_record_shareable(pipeline):
    """What ``ssmtl benchmark`` writes goes through :func:`shareable` with the fine-tuning cache's table."""
    cache = SliceCache(pipeline["cache"])
    test = [v for v in cache.volumes if v.split == "test"][0]
    record = {"test_subjects": [test.subject], "finetune_data": {"path": str(pipeline["cache"])},
              "cells": [{"labeled_subjects": [cache.volumes[0].subject],
                         "per_volume": [{"subject": test.subject, "volume": test.name, "dice": 0.5}]}]}
    shown = shareable(record, Pseudonyms.of(cache))
    assert shown["finetune_data"]["path"] == "cache.h5" and shown["test_subjects"] == [test.pseudonym]
    assert shown["cells"][0]["per_volume"] == [{"subject": test.pseudonym, "volume": test.name, "dice": 0.5}]
    assert shareable(record)["test_subjects"] == 1  # without a table: a count
    keys = {"data": {"source_keys": [cache.volumes[0].source_key, test.source_key]}}  # hashes of local files
    assert shareable(keys)["data"]["source_keys"] == 2 == shareable(keys, Pseudonyms.of(cache))["data"]["source_keys"]
    identified = shareable(record, Pseudonyms.of(cache, identify=True))
    assert identified["test_subjects"] == [test.identity["subject"]]
    assert identified["cells"][0]["per_volume"][0]["volume"] == test.identity["volume"]
    assert Pseudonyms.of_data(pipeline["root"] / "gone.h5").subject(test.subject) == "withheld"
