"""What a benchmark's shareable outputs may say about subjects and files.

results.json and results.md are made to be published. Subject and volume names can be
patient identifiers (a DICOM PatientID, a hospital's file naming), so they are written as
stable pseudonyms, ``subject-001`` ..., numbered in the sorted order of the fine-tuning
cache's subjects: the same subject has the same pseudonym in every cell, draw and re-run of
a benchmark on that cache, and results.md prints counts. A number carries nothing of the
name (a hash of a low-entropy id such as a PatientID could be reversed by trying them all).
``identify_subjects`` (``--identify-subjects``) keeps the real names, for internal use.

Paths are written as file names: an absolute local path says who ran it and where. The
fingerprints identify the data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Sequence

from ssmtl.api.errors import SsmtlError

SUBJECT = "subject-{:03d}"


class Shareable:
    """Maps subject and volume names of one cache to what the shareable outputs print."""

    def __init__(self, volumes: Iterable[tuple[str, str]], identify: bool = False):
        """``volumes``: ``(volume name, subject)`` of every volume of the fine-tuning cache."""
        self.identify = identify
        by_subject: dict[str, list[str]] = {}
        for volume, subject in volumes:
            by_subject.setdefault(subject, []).append(volume)
        self._subjects = {s: SUBJECT.format(i) for i, s in enumerate(sorted(by_subject), start=1)}
        self._volumes: dict[str, str] = {}
        for subject, names in by_subject.items():
            names = sorted(set(names))
            for j, name in enumerate(names, start=1):
                alias = self._subjects[subject]
                self._volumes[name] = alias if len(names) == 1 else f"{alias}-{j}"

    def subject(self, name: str) -> str:
        if self.identify:
            return name
        try:
            return self._subjects[name]
        except KeyError:
            raise SsmtlError(f"subject {name!r} is not in the fine-tuning cache; it cannot be pseudonymised") from None

    def subjects(self, names: Sequence[str] | None) -> list[str] | None:
        return None if names is None else [self.subject(n) for n in names]

    def volume(self, name: str) -> str:
        if self.identify:
            return name
        try:
            return self._volumes[name]
        except KeyError:
            raise SsmtlError(f"volume {name!r} is not in the fine-tuning cache; it cannot be pseudonymised") from None

    def cell(self, record: dict[str, Any]) -> dict[str, Any]:
        """A cell record with every subject and volume name replaced."""
        out = dict(record)
        for key in ("labeled_subjects", "validation_subjects", "test_subjects"):
            out[key] = self.subjects(record.get(key))
        out["per_volume"] = [{**row, "subject": self.subject(row["subject"]) if row.get("subject") else row.get("subject"),
                              "volume": self.volume(row["volume"]) if row.get("volume") else row.get("volume")}
                             for row in record.get("per_volume") or []]
        return out


def file_name(path: Any) -> str | list[str] | None:
    """A path (or list of paths) as the file names alone."""
    if path is None:
        return None
    if isinstance(path, (list, tuple)):
        return [Path(str(p)).name for p in path]
    return Path(str(path)).name


def data_summary(record: dict[str, Any]) -> dict[str, Any]:
    """A run's data record (:func:`ssmtl.data.cache_set.data_record`) without directories."""
    out = {"file": file_name(record.get("path")), "fingerprint": record.get("fingerprint")}
    if record.get("caches"):
        out["caches"] = [{"file": file_name(c.get("path")), "fingerprint": c.get("fingerprint")} for c in record["caches"]]
    return out
