"""Cache builds split across machines: ``cache build --shard I/N`` and the completeness check.

Shard I of N holds the subjects at positions ``I-1, I-1+N, I-1+2N, ...`` of the
*sorted* subject listing (round robin: the parts differ by at most one subject, and
all volumes of a subject stay in one part). The split (train/val/test) is computed
over the full listing, exactly as a full build computes it, so every shard agrees
with a full build and with the other shards. Each shard records ``shard: [I, N]``,
the digest of the full listing (``shard_listing``) and the listing itself
(``shard_subjects``), which is what lets ``ssmtl cache verify`` name the missing
subjects of an incomplete set without the dataset at hand.

Shards are one build only if they were built with the same options: the listing digest
says only that the subject *names* agree, and builds of a phantom with ``--seed 0`` and
``--seed 9``, or of one dataset with another ``--ct-window``, ``--split-seed`` or
``--test-fraction``, name the same subjects. :func:`build_options` is what must agree
(the dataset and its options, preprocessing, class names, the split's recipe, the number of
shards, the cache format); :func:`option_differences` names what does not. Two files holding
the same shard are told apart by their contents' digests (the cache fingerprints): identical
copies, or two different builds of that shard.

The split needs to know which subjects are labeled before any volume is loaded:
dataset items say so with ``has_label`` (image/label file items know from their
label path, generated phantoms always are).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

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


#: the cache attributes every shard of one build shares (``split`` without its counts)
BUILD_OPTIONS = ("dataset", "dataset_config", "preprocess", "class_names", "split", "format_version")


def build_options(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """What a shard was built with, as dotted keys (``preprocess.ct_window``, ``split.seed``,
    ``shards``): the options every shard of one build shares."""
    options: dict[str, Any] = {"shards": (attrs.get("shard") or [None, None])[1]}

    def flatten(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping) and value:
            for key, item in value.items():
                flatten(f"{prefix}.{key}", item)
        else:  # lists and numbers as JSON, so 0 and 0.0, (1, 2) and [1, 2] compare as written
            options[prefix] = json.dumps(value.tolist() if hasattr(value, "tolist") else value, sort_keys=True, default=str)

    for name in BUILD_OPTIONS:
        flatten(name, attrs.get(name))
    return options


def option_differences(attrs: Mapping[str, Any], reference: Mapping[str, Any], limit: int = 3) -> list[str]:
    """``key value (not reference)`` for each build option that differs, at most ``limit`` and a count."""
    mine, theirs = build_options(attrs), build_options(reference)
    keys = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
    shown = [f"{k} {mine.get(k, 'unset')} (not {theirs.get(k, 'unset')})" for k in keys[:limit]]
    return shown + ([f"{len(keys) - limit} more"] if len(keys) > limit else [])


def check_same_build(caches: Sequence) -> tuple[Any, Any, list[str]] | None:
    """The first shard of a build whose options differ from the first shard's, that first shard and
    the differences; None when the sharded caches among ``caches`` agree within each listing."""
    first: dict[str, Any] = {}
    for cache in caches:
        if not cache.attrs.get("shard"):
            continue
        listing = str(cache.attrs.get("shard_listing", ""))
        reference = first.setdefault(listing, cache)
        differences = option_differences(cache.attrs, reference.attrs)
        if differences:
            return cache, reference, differences
    return None


def describe_shard(cache) -> str:
    index, count = cache.attrs["shard"]
    return f"{cache.path} (shard {int(index)}/{int(count)})"


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
    other_builds: list[str] = field(default_factory=list)  # shards built with other options than the first
    fingerprints: dict[str, str] = field(default_factory=dict)  # file -> its contents' digest

    @property
    def complete(self) -> bool:
        return not (self.missing_shards or self.duplicated_shards or self.missing_subjects or self.duplicated_subjects
                    or self.other_builds)

    def problems(self) -> list[str]:
        lines = [f"not one build: {line}" for line in self.other_builds]
        if self.missing_shards:
            lines.append(f"missing shard(s) {', '.join(f'{i}/{self.count}' for i in self.missing_shards)}")
        for i, files in self.duplicated_shards.items():
            same = len({self.fingerprints.get(f) for f in files}) == 1
            how = "identical copies" if same else "different contents: two builds of that shard"
            lines.append(f"shard {i}/{self.count} given twice ({how}): {', '.join(files)}")
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
            differences = option_differences(cache.attrs, members[0].attrs)
            if differences:
                check.other_builds.append(f"{describe_shard(cache)} was built with {'; '.join(differences)}, "
                                          f"unlike {describe_shard(members[0])}")
            check.fingerprints[str(cache.path)] = str(cache.attrs.get("fingerprint", ""))
            check.present.setdefault(int(cache.attrs["shard"][0]), []).append(str(cache.path))
            for subject in sorted({v.subject for v in cache.volumes}):
                seen[subject] = seen.get(subject, 0) + 1
        check.missing_shards = [i for i in range(1, count + 1) if i not in check.present]
        check.duplicated_shards = {i: files for i, files in sorted(check.present.items()) if len(files) > 1}
        check.missing_subjects = [s for s in listing if s not in seen]
        check.duplicated_subjects = sorted(s for s, n in seen.items() if n > 1)
        checks.append(check)
    return checks
