#!/usr/bin/env python3
"""Fetch real sample volumes from registry source distributions into ``.sample-data/``.

Two sdists on PyPI ship real, openly licensed test volumes:

* ``totalsegmentator==2.18.0`` (Apache-2.0), ``tests/reference_files/``:
  a CT (``example_ct.nii.gz``, 3 mm) with its multi-class segmentation, a small CT
  and a small MR with theirs, a 20-slice DICOM CT series (``example_ct_dicom/``)
  with a segmentation NIfTI on its grid, and an arterial-phase contrast CT
  (``aorta_report/example_ct.nii.gz``, 1.5 mm) with a heart mask. The labels are
  TotalSegmentator outputs, not manual annotations.
* ``pyradiomics==3.1.0`` (BSD-3-Clause), ``data/``: NRRD CT and MR volumes
  with lesion masks (``brain1_image.nrrd`` + ``brain1_label.nrrd``, ...).

TotalSegmentator is fetched with ``pip download --no-deps --no-binary :all:``.
pyradiomics' sdist metadata disagree with its version, which makes pip refuse it,
so its file URL is read from the package index's simple page and the archive is
downloaded directly (its SHA-256 is checked against the index).

Idempotent: a source whose files are all present is skipped. Files are extracted
to a temporary folder and moved into place, so an interrupted run never leaves a
half-written file that a later run would take for complete. Exits 1 with a clear
message when the index cannot be reached.

Usage::

    python scripts/fetch_sample_data.py [--dest DIR] [--index-url URL]

Uses only the standard library and pip.
"""

from __future__ import annotations

import argparse
import hashlib
import html.parser
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path, PurePosixPath

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DEST = REPO / ".sample-data"
DEFAULT_INDEX = "https://pypi.org/simple/"
TIMEOUT_S = 120

TOTALSEG = "totalsegmentator==2.18.0"
TOTALSEG_PREFIX = "tests/reference_files/"
# paths relative to tests/reference_files/ (a trailing "/" takes the whole folder)
TOTALSEG_FILES = (
    "example_ct.nii.gz",
    "example_seg_fast_force_split.nii.gz",
    "example_ct_sm.nii.gz",
    "example_seg.nii.gz",
    "example_mr_sm.nii.gz",
    "example_seg_mr.nii.gz",
    "example_ct_dicom/",
    "example_seg_dicom.nii.gz",
    "aorta_report/example_ct.nii.gz",
    "pulmonary_report/models/heart.nii.gz",
)
RADIOMICS_PROJECT, RADIOMICS_SDIST = "pyradiomics", "pyradiomics-3.1.0.tar.gz"
RADIOMICS_CASES = ("brain1", "brain2", "breast1", "lung1", "lung2")
RADIOMICS_FILES = tuple(f"{case}_{kind}.nrrd" for case in RADIOMICS_CASES for kind in ("image", "label"))
# Where the extracted files go, under --dest.
TOTALSEG_DIR, RADIOMICS_DIR = "totalsegmentator", "pyradiomics"
DICOM_SLICES = 20


class FetchError(Exception):
    """A download or extraction failed; the message says what to do."""


def log(message: str) -> None:
    print(f"fetch_sample_data: {message}", file=sys.stderr, flush=True)


# -- archives -----------------------------------------------------------------------------


def _member_path(name: str) -> PurePosixPath:
    """Path of a member below the sdist's top folder (``pkg-1.0/``)."""
    return PurePosixPath(*PurePosixPath(name).parts[1:])


def extract(archive: Path, wanted, dest: Path) -> list[Path]:
    """Extract members for which ``wanted(relative path)`` returns a target path; return the targets.

    Each file is written under a temporary name and renamed into place.
    """
    written = []
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                target = wanted(_member_path(member.name))
                if target is None:
                    continue
                target = dest / target
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                partial = target.with_name(f".{target.name}.partial")
                with open(partial, "wb") as out:
                    shutil.copyfileobj(source, out)
                os.replace(partial, target)
                written.append(target)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise FetchError(f"cannot extract {archive.name}: {exc}") from exc
    return written


# -- TotalSegmentator -----------------------------------------------------------------------


def totalseg_targets(dest: Path) -> list[Path]:
    """The files expected under dest once TotalSegmentator's samples are in place (DICOM: the folder)."""
    return [dest / TOTALSEG_DIR / name.rstrip("/") for name in TOTALSEG_FILES]


def totalseg_present(dest: Path) -> bool:
    for target in totalseg_targets(dest):
        if target.name == "example_ct_dicom":
            if not target.is_dir() or len(list(target.iterdir())) < DICOM_SLICES:
                return False
        elif not target.is_file():
            return False
    return True


def _totalseg_member(relative: PurePosixPath) -> str | None:
    text = str(relative)
    if not text.startswith(TOTALSEG_PREFIX):
        return None
    inner = text[len(TOTALSEG_PREFIX):]
    for name in TOTALSEG_FILES:
        if inner == name or (name.endswith("/") and inner.startswith(name)):
            return f"{TOTALSEG_DIR}/{inner}"
    return None


def fetch_totalsegmentator(dest: Path, index_url: str, work: Path) -> None:
    if totalseg_present(dest):
        log(f"{TOTALSEG}: present in {dest / TOTALSEG_DIR}, skipped")
        return
    log(f"{TOTALSEG}: downloading the source distribution (about 40 MB) with pip")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
               "--disable-pip-version-check", "-d", str(work), TOTALSEG]
    if index_url != DEFAULT_INDEX:
        command[4:4] = ["--index-url", index_url]
    result = subprocess.run(command, capture_output=True, text=True)
    archives = sorted(work.glob("totalsegmentator-*.tar.gz"))
    if result.returncode != 0 or not archives:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise FetchError(
            f"pip could not download {TOTALSEG} ({detail[-1] if detail else 'no output'}); "
            "check the network connection or the package index"
        )
    written = extract(archives[0], _totalseg_member, dest)
    if not totalseg_present(dest):
        raise FetchError(f"{archives[0].name} does not hold the expected reference files (got {len(written)} files)")
    log(f"{TOTALSEG}: {len(written)} files in {dest / TOTALSEG_DIR}")


# -- pyradiomics ----------------------------------------------------------------------------


class _Links(html.parser.HTMLParser):
    """The ``<a href>`` links of a PEP 503 simple index page, by link text."""

    def __init__(self):
        super().__init__()
        self.links: dict[str, str] = {}
        self._href: str | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self._href = dict(attrs).get("href")

    def handle_data(self, data):
        if self._href is not None and data.strip():
            self.links[data.strip()] = self._href

    def handle_endtag(self, tag):
        if tag == "a":
            self._href = None


def _get(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            return response.read()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise FetchError(f"cannot download {url} ({reason}); check the network connection or use --index-url") from exc


def sdist_url(index_url: str, project: str, filename: str) -> tuple[str, str | None]:
    """(download URL, expected sha256 or None) of ``filename`` on the project's simple index page."""
    page_url = urllib.parse.urljoin(index_url.rstrip("/") + "/", f"{project}/")
    parser = _Links()
    parser.feed(_get(page_url).decode("utf-8", errors="replace"))
    if filename not in parser.links:
        raise FetchError(f"{filename} is not listed on {page_url}")
    url = urllib.parse.urljoin(page_url, parser.links[filename])
    fragment = urllib.parse.urlparse(url).fragment
    sha256 = fragment.split("=", 1)[1] if fragment.startswith("sha256=") else None
    return url.split("#", 1)[0], sha256


def radiomics_present(dest: Path) -> bool:
    return all((dest / RADIOMICS_DIR / name).is_file() for name in RADIOMICS_FILES)


def _radiomics_member(relative: PurePosixPath) -> str | None:
    if len(relative.parts) == 2 and relative.parts[0] == "data" and relative.name in RADIOMICS_FILES:
        return f"{RADIOMICS_DIR}/{relative.name}"
    return None


def fetch_pyradiomics(dest: Path, index_url: str, work: Path) -> None:
    if radiomics_present(dest):
        log(f"{RADIOMICS_SDIST}: present in {dest / RADIOMICS_DIR}, skipped")
        return
    url, sha256 = sdist_url(index_url, RADIOMICS_PROJECT, RADIOMICS_SDIST)
    log(f"{RADIOMICS_SDIST}: downloading {url} (about 35 MB)")
    data = _get(url)
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise FetchError(f"{RADIOMICS_SDIST}: SHA-256 differs from the index's; the download is corrupt, try again")
    archive = work / RADIOMICS_SDIST
    archive.write_bytes(data)
    written = extract(archive, _radiomics_member, dest)
    if not radiomics_present(dest):
        raise FetchError(f"{RADIOMICS_SDIST} does not hold the expected data/*.nrrd files (got {len(written)})")
    log(f"{RADIOMICS_SDIST}: {len(written)} files in {dest / RADIOMICS_DIR}")


# -- main -----------------------------------------------------------------------------------


def fetch(dest: Path, index_url: str = DEFAULT_INDEX) -> Path:
    """Fetch both sources into ``dest`` (skipping what is present); raise FetchError on failure."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ssmtl-fetch-") as tmp:
        fetch_totalsegmentator(dest, index_url, Path(tmp))
        fetch_pyradiomics(dest, index_url, Path(tmp))
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST, help=f"target folder (default {DEFAULT_DEST})")
    parser.add_argument("--index-url", default=os.environ.get("PIP_INDEX_URL", DEFAULT_INDEX),
                        help="package index (simple API); default $PIP_INDEX_URL or PyPI")
    args = parser.parse_args(argv)
    try:
        fetch(args.dest.resolve(), args.index_url)
    except FetchError as exc:
        log(f"error: {exc}")
        return 1
    log(f"sample data ready in {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
