"""Several slice caches read as one dataset (``--data a.h5 --data b.h5``, or a folder of caches).

:func:`open_caches` returns a plain :class:`~ssmtl.data.cache.SliceCache` when the
paths name one file, so a one-cache run reads, samples and records exactly what it
did before. Several files give a :class:`CacheSet`, which answers the same questions
(``volumes``, ``read_slices``, ``class_names``, ``fingerprint``, ``summary`` ...).

Identity: every volume of a set is ``<label>/<name>`` and its subject
``<label>/<subject>``, the label being the cache's file stem (with as many parent
folders as it takes to tell two caches apart). A subject therefore never spans two
caches: subject ``p001`` of ``site_a.h5`` and ``p001`` of ``site_b.h5`` are two
subjects, and each cache's stored split stays as it was built. Shards of one build
(``cache build --shard I/N``) hold disjoint subjects by construction, and their
splits were computed over the full listing, so they read like the full build.

A set is refused when it is not what it claims: a cache given twice under two names (the
same fingerprint: every subject would be read twice), two files holding the same shard,
or shards that name the same subjects but were built with other options
(:func:`~ssmtl.data.shards.build_options`).

Agreement is checked where it matters, with a line naming the cache that disagrees:
slice shapes (sequences from two caches are stacked into one batch), and, for labeled
work, class names and each modality's intensity normalisation (one fine-tuned model,
one ``preprocess`` record for ``ssmtl predict``).
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ssmtl.api.datasets.files import real_path
from ssmtl.api.errors import InputFileError, SsmtlError
from ssmtl.data.cache import SliceCache, VolumeMeta
from ssmtl.data.shards import check_same_build, describe_shard

#: preprocess fields every cache of a labeled set must share, and those per modality
_SHARED_PREPROCESS = ("size", "spacing")
_MODALITY_PREPROCESS = {"ct": "ct_window", "mr": "mr_percentiles"}


def cache_files(paths: Path | str | Iterable[Path | str]) -> list[Path]:
    """The cache files named by ``paths``: files as given, folders as their ``*.h5`` files, sorted."""
    items = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not items:
        raise SsmtlError("no data: pass --data CACHE.h5 (repeatable) or a folder of caches")
    files: list[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            found = sorted(p for p in item.glob("*.h5") if p.is_file() and not p.name.startswith("."))
            if not found:
                raise InputFileError(item, "the folder holds no *.h5 cache")
            files += found
        else:
            files.append(item)
    seen: dict[Path, Path] = {}
    for f in files:
        key = real_path(f)
        if key in seen:
            raise InputFileError(f, f"the cache is named twice (also as {seen[key]})")
        seen[key] = f
    return files


def cache_labels(files: Sequence[Path]) -> list[str]:
    """Short unique names: the stems, with parent folders added until no two are equal."""
    parts = [list(real_path(f).with_suffix("").parts) for f in files]
    depth = 1
    while True:
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels) or depth >= max(len(p) for p in parts):
            return labels
        depth += 1


def open_caches(paths: Path | str | Iterable[Path | str]) -> SliceCache | "CacheSet":
    """One file: its :class:`SliceCache`, unchanged. Several: a :class:`CacheSet`."""
    files = cache_files(paths)
    return SliceCache(files[0]) if len(files) == 1 else CacheSet(files)


def shard_of(cache: SliceCache) -> tuple[int, int] | None:
    """``(I, N)`` of a cache built with ``--shard I/N``, else None."""
    shard = cache.attrs.get("shard")
    return (int(shard[0]), int(shard[1])) if shard else None


def check_repeated(caches: Sequence[SliceCache]) -> None:
    """The same cache under two names (a copy, a link) would read every subject twice, as two
    subjects: refused by the contents' digest, the fingerprint, naming both paths."""
    seen: dict[str, Path] = {}
    for cache in caches:
        fingerprint = cache.fingerprint
        if not fingerprint:  # no digest recorded: nothing to compare
            continue
        if fingerprint in seen:
            raise InputFileError(cache.path, f"holds exactly the volumes of {seen[fingerprint]} (the same fingerprint "
                                 f"{fingerprint[:12]}...): a copy read beside its original would count every subject "
                                 "twice; give each cache once")
        seen[fingerprint] = cache.path


def check_shard_builds(caches: Sequence[SliceCache]) -> None:
    """Shards that name the same subjects but were built with other options are not one build."""
    found = check_same_build(caches)
    if found is not None:
        cache, reference, differences = found
        index, count = shard_of(cache)
        raise InputFileError(cache.path, f"is shard {index}/{count} of a build with "
                             f"{'; '.join(differences)}, unlike {describe_shard(reference)}: not shards of one build; "
                             "rebuild it with the others' options")


def check_shard_overlap(caches: Sequence[SliceCache]) -> None:
    """Two files holding the same shard of one build would train its subjects twice."""
    seen: dict[tuple[str, int], Path] = {}
    for cache in caches:
        shard = shard_of(cache)
        if shard is None:
            continue
        key = (str(cache.attrs.get("shard_listing", "")), shard[0])
        if key in seen:
            raise InputFileError(cache.path, f"holds shard {shard[0]}/{shard[1]} of the same build as {seen[key]}")
        seen[key] = cache.path


class CacheSet:
    """Several caches read as one: volumes renamed ``<label>/...``, reads routed to the owning file."""

    def __init__(self, files: Sequence[Path]):
        self.paths = [Path(f) for f in files]
        self.caches = [SliceCache(f) for f in self.paths]
        self.labels = cache_labels(self.paths)
        check_shard_overlap(self.caches)
        check_shard_builds(self.caches)
        check_repeated(self.caches)
        self.path = ", ".join(str(p) for p in self.paths)  # for messages: "a.h5, b.h5: ..."
        self.volumes: list[VolumeMeta] = []
        self._where: list[tuple[int, int]] = []  # global volume index -> (cache, local index)
        for c, (cache, label) in enumerate(zip(self.caches, self.labels)):
            for v in cache.volumes:
                self._where.append((c, v.index))
                self.volumes.append(replace(v, index=len(self.volumes), name=f"{label}/{v.name}",
                                            subject=f"{label}/{v.subject}",
                                            pseudonym=f"{label}/{v.pseudonym}" if v.pseudonym else None))

    # -- routing ---------------------------------------------------------------------------
    def cache_of(self, volume: int) -> int:
        """Which cache (position in ``paths``) holds global volume ``volume``."""
        return self._where[volume][0]

    def locate(self, volume: int) -> tuple[SliceCache, int]:
        """The file holding global volume ``volume`` and its index there."""
        c, local = self._where[volume]
        return self.caches[c], local

    def read_slices(self, volume: int, indices: np.ndarray) -> np.ndarray:
        cache, local = self.locate(volume)
        return cache.read_slices(local, indices)

    def read_label_slice(self, volume: int, index: int) -> np.ndarray:
        cache, local = self.locate(volume)
        return cache.read_label_slice(local, index)

    def read_label(self, volume: int) -> np.ndarray | None:
        cache, local = self.locate(volume)
        return cache.read_label(local)

    def read_volume(self, volume: int) -> tuple[np.ndarray, np.ndarray | None]:
        cache, local = self.locate(volume)
        return cache.read_volume(local)

    def iter_volumes(self):
        return iter(self.volumes)

    def close(self) -> None:
        for cache in self.caches:
            cache.close()

    # -- what the set is --------------------------------------------------------------------
    # The caches do not change while open: what the set is derives once, on first use.
    @cached_property
    def fingerprint(self) -> str:
        """SHA-256 of the caches' fingerprints in order: the set's identity."""
        return hashlib.sha256("\n".join(c.fingerprint for c in self.caches).encode()).hexdigest()

    def records(self) -> list[dict[str, str]]:
        """Every cache's path and fingerprint, as runs record them."""
        return [{"path": str(c.path), "fingerprint": c.fingerprint} for c in self.caches]

    def _labeled(self) -> list[SliceCache]:
        return [c for c in self.caches if any(v.has_label for v in c.volumes)] or self.caches

    @cached_property
    def class_names(self) -> dict[int, str]:
        """The class names the labeled caches share; an error names the first that differs."""
        labeled = self._labeled()
        first = labeled[0]
        for cache in labeled[1:]:
            if cache.class_names != first.class_names:
                raise InputFileError(cache.path, f"class names {_names(cache.class_names)} differ from "
                                     f"{_names(first.class_names)} in {first.path}; caches used together "
                                     "for labeled work must name the same classes")
        return first.class_names

    @property
    def num_classes(self) -> int:
        names = self.class_names
        return max(names) + 1 if names else 0

    @property
    def slice_shape(self) -> tuple[int, int]:
        check_slice_shapes(self)
        return self.volumes[0].shape[1:]

    def preprocess(self) -> dict[str, Any] | None:
        """One ``preprocess`` record for the labeled caches: shared fields and each modality's
        normalisation must agree (between caches holding that modality); an error names the cache."""
        merged: dict[str, Any] = {}
        owner: dict[str, Path] = {}
        for cache in self._labeled():
            recorded = cache.attrs.get("preprocess") or {}
            modalities = {v.modality for v in cache.volumes}
            keys = list(_SHARED_PREPROCESS) + [k for m, k in _MODALITY_PREPROCESS.items() if m in modalities]
            for key in keys:
                if key not in recorded:
                    continue
                if key in merged and merged[key] != recorded[key]:
                    raise InputFileError(cache.path, f"preprocess {key} {recorded[key]} differs from {merged[key]} "
                                         f"in {owner[key]}; rebuild one of them with the other's settings")
                merged.setdefault(key, recorded[key])
                owner.setdefault(key, cache.path)
            for key, value in recorded.items():  # a modality the cache does not hold: first one wins
                merged.setdefault(key, value)
        return merged or None

    @cached_property
    def attrs(self) -> dict[str, Any]:
        datasets = sorted({str(c.attrs.get("dataset")) for c in self.caches})
        return {
            "dataset": datasets[0] if len(datasets) == 1 else None,
            "format_version": min(int(c.attrs.get("format_version", 0)) for c in self.caches),
            "class_names": {str(k): v for k, v in self.class_names.items()},
            "preprocess": self.preprocess(),
            "fingerprint": self.fingerprint,
        }

    def split_counts(self) -> dict[str, int]:
        return SliceCache.split_counts(self)  # the same count over the renamed subjects

    def split_by_modality(self) -> dict[str, dict[str, int]]:
        return SliceCache.split_by_modality(self)

    def summary(self) -> dict[str, Any]:
        """The union, for ``ssmtl cache info a.h5 b.h5``: totals, then one summary per cache."""
        parts = [c.summary() for c in self.caches]
        modalities: dict[str, int] = {}
        for part in parts:
            for m, n in part["modalities"].items():
                modalities[m] = modalities.get(m, 0) + n
        shapes = sorted({tuple(p["slice_shape"]) for p in parts})
        return {
            "paths": [str(p) for p in self.paths],
            "caches": len(self.caches),
            "volumes": len(self.volumes),
            "labeled_volumes": sum(v.has_label for v in self.volumes),
            "slices": sum(v.num_slices for v in self.volumes),
            "slice_shapes": [list(s) for s in shapes],
            "modalities": modalities,
            "split": self.split_counts(),
            "split_by_modality": self.split_by_modality(),
            "fingerprint": self.fingerprint,
            "per_cache": [
                {"label": label, "path": p["path"], "dataset": p["dataset"], "volumes": p["volumes"],
                 "slices": p["slices"], "slice_shape": p["slice_shape"], "modalities": p["modalities"],
                 "classes": p["classes"], "split": p["split"], "fingerprint": p["fingerprint"],
                 "shard": list(shard) if (shard := shard_of(c)) else None}
                for label, p, c in zip(self.labels, parts, self.caches)
            ],
            "subjects": [
                {"name": v.name, "subject": v.subject, "slices": v.num_slices, "modality": v.modality,
                 "labeled": v.has_label, "split": v.split}
                for v in self.volumes
            ],
        }


def _names(names: dict[int, str]) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in sorted(names.items())) + "}"


def check_slice_shapes(cache: SliceCache | CacheSet, volumes: Iterable[int] | None = None) -> None:
    """Sequences of the chosen volumes are stacked into one batch: one slice shape, or an error
    naming the cache (of a set) or the volume whose shape differs."""
    chosen = [cache.volumes[i] for i in (range(len(cache.volumes)) if volumes is None else volumes)]
    if not chosen:
        return
    first = chosen[0]
    for v in chosen[1:]:
        if v.shape[1:] != first.shape[1:]:
            if isinstance(cache, CacheSet):
                odd, ref = cache.paths[cache.cache_of(v.index)], cache.paths[cache.cache_of(first.index)]
                raise InputFileError(odd, f"slices are {v.shape[1]}x{v.shape[2]} but {ref} has "
                                     f"{first.shape[1]}x{first.shape[2]}; build the caches with one --size")
            raise SsmtlError(f"{cache.path}: volumes have different slice shapes {sorted({u.shape[1:] for u in chosen})}; "
                             "rebuild the cache with one size")


def data_record(cache: SliceCache | CacheSet, path: Any) -> dict[str, Any]:
    """What a run records about its data: the path(s) as given and the fingerprint; a set adds
    every cache's path and fingerprint."""
    if isinstance(cache, CacheSet):
        return {"path": [str(p) for p in cache.paths], "fingerprint": cache.fingerprint, "caches": cache.records()}
    return {"path": str(path), "fingerprint": cache.fingerprint}
