"""Cache builds split across machines: ``cache build --shard I/N`` and the completeness check.

Shard I of N holds the subjects at positions ``I-1, I-1+N, I-1+2N, ...`` of the
*sorted* subject listing (round robin: the parts differ by at most one subject, and
all volumes of a subject stay in one part). The split (train/val/test) is computed
over the full listing, exactly as a full build computes it, so every shard agrees
with a full build and with the other shards. Each shard records ``shard: [I, N]``,
the digest of the full listing (``shard_listing``) and the listing itself
(``shard_subjects``), which is what lets ``ssmtl cache verify`` name the missing
subjects of an incomplete set without the dataset at hand.

The split needs to know which subjects are labeled before any volume is loaded:
dataset items say so with ``has_label`` (image/label file items know from their
label path, generated phantoms always are).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Sequence

from ssmtl.api.errors import SsmtlError
from ssmtl.api.volumes import VolumeItem

_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with ``1 <= I <= N``; one clear error otherwise."""
    match = _SHARD.match(str(text))
    if match:
        index, count = int(match.group(1)), int(match.group(2))
        if 1 <= index <= count:
            return index, count
    raise SsmtlError(f"--shard {text}: expected I/N with 1 <= I <= N (e.g. --shard 2/4: the second of four parts)")


def listing_digest(subjects: Sequence[str]) -> str:
    """SHA-256 of the sorted, unique subject listing: the identity of one sharded build."""
    return hashlib.sha256("\n".join(sorted(set(subjects))).encode()).hexdigest()


def listed_labels(items: Sequence[VolumeItem]) -> set[str]:
    """The labeled subjects, as the listing declares them (no volume is loaded)."""
    unknown = [item for item in items if getattr(item, "has_label", None) is None]
    if unknown:
        raise SsmtlError(f"--shard: the dataset does not say whether {unknown[0].subject!r} is labeled before loading it "
                         f"(its items have no has_label), so the shards cannot agree on a split; build it whole")
    return {item.subject for item in items if item.has_label}


def shard_items(items: Sequence[VolumeItem], shard: tuple[int, int]) -> tuple[list[VolumeItem], list[str]]:
    """The items of shard ``(I, N)`` (round robin over the sorted subjects) and the full sorted listing."""
    index, count = shard
    listing = sorted({item.subject for item in items})
    mine = set(listing[index - 1::count])
    if not mine:
        raise SsmtlError(f"--shard {index}/{count}: the dataset lists only {len(listing)} subject(s), so this shard "
                         "would be empty; use at most that many shards")
    return [item for item in items if item.subject in mine], listing


@dataclass
class ShardCheck:
    """What ``cache verify`` says about a set of shards of one build."""

    count: int  # N
    subjects: int  # in the full listing
    present: dict[int, list[str]] = field(default_factory=dict)  # shard index -> files holding it
    missing_shards: list[int] = field(default_factory=list)
    duplicated_shards: dict[int, list[str]] = field(default_factory=dict)
    missing_subjects: list[str] = field(default_factory=list)
    duplicated_subjects: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not (self.missing_shards or self.duplicated_shards or self.missing_subjects or self.duplicated_subjects)

    def problems(self) -> list[str]:
        lines = []
        if self.missing_shards:
            lines.append(f"missing shard(s) {', '.join(f'{i}/{self.count}' for i in self.missing_shards)}")
        for i, files in self.duplicated_shards.items():
            lines.append(f"shard {i}/{self.count} given twice: {', '.join(files)}")
        if self.missing_subjects:
            lines.append(f"{len(self.missing_subjects)} subject(s) missing: {_some(self.missing_subjects)}")
        if self.duplicated_subjects:
            lines.append(f"{len(self.duplicated_subjects)} subject(s) in two files: {_some(self.duplicated_subjects)}")
        return lines


def _some(names: list[str], limit: int = 8) -> str:
    return ", ".join(names[:limit]) + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def check_shards(caches: Sequence) -> list[ShardCheck]:
    """One :class:`ShardCheck` per build the sharded caches come from (caches without ``shard`` are ignored)."""
    builds: dict[str, list] = {}
    for cache in caches:
        if cache.attrs.get("shard"):
            builds.setdefault(str(cache.attrs.get("shard_listing", "")), []).append(cache)
    checks = []
    for members in builds.values():
        count = int(members[0].attrs["shard"][1])
        listing = list(members[0].attrs.get("shard_subjects") or [])
        check = ShardCheck(count=count, subjects=len(listing))
        seen: dict[str, int] = {}
        for cache in members:
            check.present.setdefault(int(cache.attrs["shard"][0]), []).append(str(cache.path))
            for subject in sorted({v.subject for v in cache.volumes}):
                seen[subject] = seen.get(subject, 0) + 1
        check.missing_shards = [i for i in range(1, count + 1) if i not in check.present]
        check.duplicated_shards = {i: files for i, files in sorted(check.present.items()) if len(files) > 1}
        check.missing_subjects = [s for s in listing if s not in seen]
        check.duplicated_subjects = sorted(s for s, n in seen.items() if n > 1)
        checks.append(check)
    return checks
