"""Pseudonyms: how files made to be shared name the subjects and volumes of a cache.

Subject ids are often patient identifiers (a DICOM ``PatientID``, a file name holding a
medical record number), so nothing made to leave the machine (an export, its model card, a
report page, a benchmark's results) names a subject by its id. It names it by its
**pseudonym**, ``subject-007``, and a volume by its subject's pseudonym (``subject-007``, or
``subject-007-v2`` for the second volume of a subject with several).

**The rule** (:func:`assign_pseudonyms`): the subjects of the cache's full listing are
numbered in the order of ``HMAC-SHA256(key, subject)``, the key being the SHA-256 of the
whole sorted listing. So:

* the number says nothing about the id, not even its order among the others, and cannot be
  brute-forced from a short id: computing the key takes knowing every id of the listing
  already (unlike a plain hash of a 10-digit PatientID, which a laptop inverts in minutes);
* it is stable: one listing gives the same pseudonyms in every command, every run, a rebuild
  of the cache and every shard of a sharded build (each shard sees the full listing); a
  dataset with a subject more is another listing and is numbered afresh;
* nothing secret is stored: there is no key file to lose or to leak.

The cache builder stores each volume's subject pseudonym (the ``pseudonym`` attribute; caches
built before it get theirs from the same rule when read). Dataset items whose names identify
people (``VolumeItem.identifying_names``: the ``dicom`` dataset) are pseudonymised **as they
enter the cache** (:func:`pseudonymise_items`): their subject and volume name *are* the
pseudonyms, and the real ones are kept only in the volume's local ``identity`` attribute.

:class:`Pseudonyms` is the table a writer of shareable files asks: ``names.subject(id)``,
``names.volume(name)``; built with ``identify=True`` (``--identify-subjects``) it answers the
real names instead, for files meant to stay inside the institution.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Sequence

from ssmtl.api.errors import SsmtlError
from ssmtl.api.volumes import VolumeItem

PREFIX = "subject-"
#: what a shareable file shows for a subject or volume it cannot look up (the cache is gone)
WITHHELD = "withheld"


def assign_pseudonyms(subjects: Iterable[str]) -> dict[str, str]:
    """``{subject: "subject-NNN"}`` over the listing ``subjects`` (see the module doc for the rule).

    >>> assign_pseudonyms(["PID7", "PID3", "PID7"]) == assign_pseudonyms(["PID3", "PID7"])
    True
    >>> sorted(assign_pseudonyms(["PID7", "PID3"]).values())
    ['subject-001', 'subject-002']
    """
    listing = sorted({str(s) for s in subjects})
    key = hashlib.sha256("\n".join(listing).encode()).digest()
    order = sorted(listing, key=lambda s: hmac.new(key, s.encode(), hashlib.sha256).digest())
    width = max(3, len(str(len(order))))
    return {subject: f"{PREFIX}{n:0{width}d}" for n, subject in enumerate(order, start=1)}


def volume_pseudonyms(volumes: Sequence[tuple[str, str]], pseudonyms: dict[str, str]) -> dict[str, str]:
    """``{volume: name}`` for ``(volume, subject)`` pairs in listing order: the subject's pseudonym,
    with ``-v1``, ``-v2``... when the subject has several volumes."""
    counts = Counter(subject for _, subject in volumes)
    seen: Counter[str] = Counter()
    names = {}
    for volume, subject in volumes:
        seen[subject] += 1
        names[volume] = pseudonyms[subject] + (f"-v{seen[subject]}" if counts[subject] > 1 else "")
    return names


def pseudonymise_items(items: Sequence[VolumeItem]) -> tuple[list[VolumeItem], dict[str, str], dict[str, str]]:
    """What the cache builder writes: ``(items, pseudonym of each stored subject, renamed subjects)``.

    Items whose names identify people (``identifying_names``) come back as copies whose
    ``subject`` and ``volume_id`` are pseudonyms and whose ``identity`` holds the real ones
    (``{"subject": ..., "volume": ...}``), which the cache keeps as a local attribute; the
    others come back unchanged. The pseudonyms are assigned over every item's subject (the full
    listing: a shard's too). ``renamed`` maps a renamed subject's real id to its pseudonym (a
    split the dataset presets names real ids)."""
    pseudonyms = assign_pseudonyms(item.subject for item in items)
    identifying = {i for i, item in enumerate(items) if getattr(item, "identifying_names", False)}
    volumes = volume_pseudonyms([(str(i), items[i].subject) for i in sorted(identifying)], pseudonyms)
    renamed: dict[str, str] = {}
    out: list[VolumeItem] = []
    for i, item in enumerate(items):
        if i not in identifying:
            out.append(item)
            continue
        real = item.subject
        clone = copy.copy(item)
        clone.identity = {"subject": real, "volume": getattr(item, "volume_id", None) or real}
        clone.subject = renamed[real] = pseudonyms[real]
        clone.volume_id = volumes[str(i)]
        out.append(clone)
    stored = {renamed.get(subject, subject): name for subject, name in pseudonyms.items()}
    return out, stored, renamed


class Pseudonyms:
    """How a shareable file names the subjects and volumes of one cache (or set of caches).

    ``subject(id)`` and ``volume(name)`` take the names run records use (``run.json``,
    ``eval.json``: the cache's subject ids and volume names) and give the pseudonym, or with
    ``identify`` the real name (a DICOM volume's ``identity``, else the name itself). A name
    the table does not know (a cache that is gone, another cache) is :data:`WITHHELD`, or itself
    with ``identify``.
    """

    def __init__(self, subjects: dict[str, str] | None = None, volumes: dict[str, str] | None = None, *,
                 identify: bool = False, known: bool = True):
        self._subjects = dict(subjects or {})
        self._volumes = dict(volumes or {})
        self.identify = identify
        #: False: the cache could not be read; shareable files then name nobody
        self.known = known

    @classmethod
    def of(cls, cache, identify: bool = False) -> "Pseudonyms":
        """The table of an open :class:`~ssmtl.data.cache.SliceCache` or
        :class:`~ssmtl.data.cache_set.CacheSet` (whose names are ``LABEL/...``)."""
        parts = list(zip(cache.labels, cache.caches)) if hasattr(cache, "caches") else [(None, cache)]
        subjects: dict[str, str] = {}
        volumes: dict[str, str] = {}
        for label, part in parts:
            prefix = f"{label}/" if label is not None else ""
            own_subjects, own_volumes = _cache_table(part, identify)
            subjects.update({prefix + k: prefix + v for k, v in own_subjects.items()})
            volumes.update({prefix + k: prefix + v for k, v in own_volumes.items()})
        return cls(subjects, volumes, identify=identify)

    @classmethod
    def of_data(cls, path: Any, fingerprint: str | None = None, identify: bool = False) -> "Pseudonyms":
        """The table of the cache(s) at ``path`` (a path or a list, as run records hold it), when
        they are readable and still the data of ``fingerprint``; else an empty table (names withheld)."""
        from ssmtl.data.cache_set import open_caches

        if not path:
            return cls(identify=identify, known=False)
        try:
            cache = open_caches([Path(p) for p in path] if isinstance(path, list) else Path(path))
        except SsmtlError:
            return cls(identify=identify, known=False)
        if fingerprint is not None and cache.fingerprint != fingerprint:
            return cls(identify=identify, known=False)
        return cls.of(cache, identify)

    def subject(self, name: str) -> str:
        return self._subjects.get(name, name if self.identify else WITHHELD)

    def volume(self, name: str) -> str:
        return self._volumes.get(name, name if self.identify else WITHHELD)

    def subjects(self, names: Iterable[str]) -> list[str]:
        """The shown names of ``names``, sorted (a list of pseudonyms in record order would
        follow the ids' order)."""
        return sorted(self.subject(n) for n in names)


def _cache_table(cache, identify: bool) -> tuple[dict[str, str], dict[str, str]]:
    """``({subject: shown}, {volume: shown})`` of one cache file."""
    if identify:
        subjects = {v.subject: (v.identity or {}).get("subject") or v.subject for v in cache.volumes}
        return subjects, {v.name: (v.identity or {}).get("volume") or v.name for v in cache.volumes}
    stored = {v.subject: v.pseudonym for v in cache.volumes if v.pseudonym}
    if len(stored) < len({v.subject for v in cache.volumes}):  # built before pseudonyms were stored
        stored = assign_pseudonyms(cache.attrs.get("shard_subjects") or [v.subject for v in cache.volumes])
    derived = volume_pseudonyms([(v.name, v.subject) for v in cache.volumes], stored)
    # a volume pseudonymised as it entered the cache is named by its pseudonym already
    return stored, {v.name: v.name if v.identity else derived[v.name] for v in cache.volumes}
