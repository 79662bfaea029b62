"""``ssmtl cache verify``: recompute every checksum recorded when the cache was built.

Each volume group records the SHA-256 of its ``image`` (and ``label``) data as
written (``sha256_image``, ``sha256_label``); the root ``fingerprint`` is the
SHA-256 of those checksums in index order. Verification re-reads every dataset
one slice at a time (memory stays at one slice whatever the volume size),
recomputes its digest, then recomputes the fingerprint from the recorded
checksums, so it detects flipped bytes in the data, an edited checksum attribute,
and volumes added, removed or reordered after the build.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import h5py

from ssmtl.data.cache import SliceCache, sha256_array
from ssmtl.api.errors import InputFileError


@dataclass(frozen=True)
class VerifyReport:
    """What a successful verification checked."""

    path: Path
    volumes: int
    datasets: int
    fingerprint: str


def _digest(path: Path, group: h5py.Group, volume: str, key: str) -> str:
    try:
        return sha256_array(group[key])
    except (OSError, ValueError) as exc:  # a corrupted compressed chunk fails to decode
        raise InputFileError(path, f"volume {volume}: {key} data cannot be read ({exc})") from None


def verify_cache(path: Path, on_volume: Callable[[int, int, str], None] | None = None) -> VerifyReport:
    """Check every dataset and the fingerprint; raise :class:`InputFileError` naming the first mismatch."""
    path = Path(path)
    cache = SliceCache(path)  # validates the format and reads the index
    checksums: list[str] = []
    datasets = 0
    try:
        f = h5py.File(path, "r", locking=False)
    except OSError as exc:
        raise InputFileError(path, f"cannot read cache ({exc})") from None
    with f:
        for i, meta in enumerate(cache.volumes):
            group = f["volumes"][meta.name]
            recorded = ""
            for key in ("image", "label"):
                if key not in group:
                    continue
                expected = group.attrs.get(f"sha256_{key}")
                if expected is None:
                    raise InputFileError(path, f"volume {meta.name}: no {key} checksum was recorded at build time")
                expected = expected.decode() if isinstance(expected, bytes) else str(expected)
                actual = _digest(path, group, meta.name, key)
                if actual != expected:
                    raise InputFileError(
                        path,
                        f"volume {meta.name} (subject {meta.subject}): {key} data do not match the checksum "
                        f"recorded at build time (sha256 {actual[:12]}..., recorded {expected[:12]}...)",
                    )
                recorded += expected
                datasets += 1
            checksums.append(recorded)
            if on_volume is not None:
                on_volume(i + 1, len(cache.volumes), meta.name)
    fingerprint = hashlib.sha256("".join(checksums).encode()).hexdigest()
    if fingerprint != cache.fingerprint:
        raise InputFileError(
            path,
            f"the fingerprint {cache.fingerprint[:12]}... does not match the volumes' checksums "
            f"({fingerprint[:12]}...): volumes or checksums were changed after the build",
        )
    return VerifyReport(path=path, volumes=len(cache.volumes), datasets=datasets, fingerprint=fingerprint)
