"""What a benchmark's shareable outputs may say about subjects and files.

results.json and results.md are made to be published. Subject and volume names can be
patient identifiers (a DICOM PatientID, a hospital's file naming), so they are written as the
fine-tuning cache's pseudonyms (:mod:`ssmtl.data.pseudonyms`: ``subject-001`` ..., the same
names the model cards and reports of those runs show), and results.md prints counts.
``identify_subjects`` (``--identify-subjects``) keeps the real names, for internal use.

Paths are written as file names: an absolute local path says who ran it and where. The
fingerprints identify the data.
"""

from __future__ import annotations

from typing import Any, Sequence

from ssmtl.api.errors import SsmtlError
from ssmtl.data.pseudonyms import WITHHELD, Pseudonyms
from ssmtl.data.shareable import path_name


class Shareable:
    """Maps the subject and volume names of the fine-tuning cache to what the shareable outputs print.

    Unlike a report (which withholds a name it cannot look up), a benchmark refuses one: every
    name in its records comes from the fine-tuning cache, so an unknown one is a bug to name.
    """

    def __init__(self, names: Pseudonyms):
        self.names = names

    @classmethod
    def of(cls, cache, identify: bool = False) -> "Shareable":
        return cls(Pseudonyms.of(cache, identify))

    def _shown(self, kind: str, name: str, shown: str) -> str:
        if shown == WITHHELD and not self.names.identify:
            raise SsmtlError(f"{kind} {name!r} is not in the fine-tuning cache; it cannot be pseudonymised")
        return shown

    def subject(self, name: str) -> str:
        return self._shown("subject", name, self.names.subject(name))

    def subjects(self, names: Sequence[str] | None) -> list[str] | None:
        return None if names is None else [self.subject(n) for n in names]

    def volume(self, name: str) -> str:
        return self._shown("volume", name, self.names.volume(name))

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
        return [path_name(str(p)) for p in path]
    return path_name(str(path))


def data_summary(record: dict[str, Any]) -> dict[str, Any]:
    """A run's data record (:func:`ssmtl.data.cache_set.data_record`) without directories."""
    out = {"file": file_name(record.get("path")), "fingerprint": record.get("fingerprint")}
    if record.get("caches"):
        out["caches"] = [{"file": file_name(c.get("path")), "fingerprint": c.get("fingerprint")} for c in record["caches"]]
    return out
