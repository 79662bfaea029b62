"""Building a slice cache from a dataset plugin: list -> load + preprocess -> write, volume by volume.

What a dataset plugin may add to the :class:`~ssmtl.api.volumes.VolumeSource`
contract (both optional, read with ``getattr``):

* ``item.volume_id``: the cache group name of the volume when a subject has
  several (ACDC's ``patient001_ED`` / ``patient001_ES``); default: the subject.
* ``source.split``: ``{subject: "train" | "val" | "test"}`` chosen by the data
  (a manifest's split column); it is stored instead of a random split.
* ``item.identifying_names``: True when the item's subject and volume names identify a
  person (a DICOM PatientID, the folders of a hospital export): the cache stores their
  pseudonyms instead and keeps the real names only in the volume's local ``identity``
  attribute (:func:`~ssmtl.data.pseudonyms.pseudonymise_items`). Every volume records its
  subject's ``pseudonym``, the name files made to be shared use.

The cache's ``flip_axes`` attribute (the in-plane axes along which a mirrored slice is
still plausible anatomy; see :func:`declared_flip_axes`) is the dataset config's
``flip_axes`` when the user set it, else the plugin's ``source.flip_axes``.

Guarantees:

* Nothing appears at ``out`` unless the whole build succeeds; an older file there
  is replaced only with ``force`` and stays byte-identical until the new one is
  complete (see :class:`~ssmtl.data.cache_writer.CacheWriter`), even after ``kill -9``.
* A bad input stops the build with an :class:`InputFileError` naming the file;
  with ``skip_bad`` it is left out and recorded (path and reason) in the cache's
  ``skipped`` attribute instead.
* Peak memory is about one volume per worker whatever the number of volumes
  (see :mod:`~ssmtl.data.ingest`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ssmtl._version import __version__
from ssmtl.data.cache_writer import CacheWriter, check_output_path
from ssmtl.host.plugin_calls import plugin_call, plugin_label, refuse
from ssmtl.storage.outputs import refuse_overlap
from ssmtl.settings.sources import validate_model
from ssmtl.api.rules import MAX_SEED
from ssmtl.api.errors import InputFileError, SsmtlError
from ssmtl.data.ingest import Failure, iter_processed, release_freed_memory
from ssmtl.data.preprocess import PreprocessConfig, ProcessedVolume
from ssmtl.data.pseudonyms import pseudonymise_items
from ssmtl.data.shards import listed_labels, listing_digest, shard_items
from ssmtl.data.splits import SPLITS, make_split
from ssmtl.api.volumes import VolumeItem, VolumeSource, check_flip_axes


@dataclass
class _Tally:
    """What the builder learns while writing: subjects, labels, class voxels, skipped inputs."""

    num_classes: int
    subjects: list[str] = field(default_factory=list)
    labeled: set[str] = field(default_factory=set)
    voxels: dict[str, np.ndarray] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)

    def count_classes(self, label: np.ndarray, modality: str) -> np.ndarray:
        counts = np.bincount(label.ravel(), minlength=self.num_classes).astype(np.int64)
        self.voxels[modality] = self.voxels.get(modality, np.zeros_like(counts)) + counts
        return counts

    def class_voxels(self) -> dict[str, Any]:
        if not self.voxels:
            return {}
        total = sum(self.voxels.values())
        as_dict = (lambda counts: {str(k): int(n) for k, n in enumerate(counts)})
        return {"total": as_dict(total), "by_modality": {m: as_dict(c) for m, c in sorted(self.voxels.items())}}


def _unknown_labels(processed: ProcessedVolume, class_names: dict[int, str], item: VolumeItem) -> Failure | None:
    if processed.label is None:
        return None
    unknown = set(np.unique(processed.label).tolist()) - set(class_names)
    return Failure(item.source, f"label values {sorted(unknown)} have no class name") if unknown else None


def volume_name(item: VolumeItem) -> str:
    """The cache group name an item asks for: its ``volume_id`` if it has one, else its subject."""
    return getattr(item, "volume_id", None) or item.subject


def preset_split(source: VolumeSource) -> dict[str, str]:
    """A split chosen by the data (``source.split``), checked; empty if the source has none."""
    preset = dict(getattr(source, "split", None) or {})
    bad = {s: v for s, v in preset.items() if v not in SPLITS}
    if bad:
        subject, value = next(iter(bad.items()))
        raise SsmtlError(f"the dataset assigns subject {subject!r} to split {value!r}; expected {', '.join(SPLITS)}")
    return preset


def declared_flip_axes(config, source: VolumeSource, dataset: str, registry) -> list[int]:
    """The mirror flips the data allows: the config's ``flip_axes`` when set, else the plugin's own."""
    configured = getattr(config, "flip_axes", None)
    if configured is not None:
        return list(check_flip_axes(configured))
    try:
        return list(check_flip_axes(getattr(source, "flip_axes", ()) or ()))
    except (TypeError, ValueError) as exc:
        raise refuse("dataset", dataset, "the factory", f"declared {exc}", registry) from None


def absolute_paths(config):
    """``config`` with its top-level path fields made absolute.

    The cache records the dataset config so that evaluation can read the original
    label files again (at native resolution); absolute paths keep them reachable
    from any working directory.
    """
    update = {name: Path(value).absolute() for name, value in config if isinstance(value, Path)}
    return config.model_copy(update=update) if update else config


def build_cache(
    *,
    dataset: str,
    dataset_options: dict[str, Any],
    preprocess: PreprocessConfig,
    out: Path,
    force: bool = False,
    compression: str = "gzip",
    registry,
    on_volume: Callable[[int, int, str], None] | None = None,
    split_seed: int = 0,
    test_fraction: float = 0.3,
    val_fraction: float = 0.0,
    workers: int = 0,
    skip_bad: bool = False,
    shard: tuple[int, int] | None = None,
) -> Path:
    """Build ``out`` from the named dataset plugin. Nothing is written at ``out`` unless it all succeeds.

    A subject-level split is stored with the cache (``split`` attribute per volume).
    If the dataset provides one (a manifest's split column) it is stored as given;
    otherwise ``test_fraction`` of the labeled subjects, drawn with ``split_seed``,
    are held out for testing, so pre-training (``data.split=train``) and
    fine-tuning never see them. ``test_fraction=0`` stores no held-out subjects.

    Args:
        workers: processes that load and preprocess volumes (0: this process).
        skip_bad: leave out inputs that fail to load and record them in the
            cache's ``skipped`` attribute, instead of stopping at the first one.
        shard: ``(I, N)``: build only the I-th of N parts (:mod:`ssmtl.data.shards`);
            the split is the full build's.
    """
    if workers < 0:
        raise SsmtlError(f"--workers {workers}: expected 0 (load in this process) or more")
    if not 0 <= split_seed <= MAX_SEED:
        raise SsmtlError(f"--split-seed {split_seed}: a seed must be between 0 and {MAX_SEED} (2**32 - 1)")
    if not (0 <= test_fraction < 1 and 0 <= val_fraction < 1 and test_fraction + val_fraction < 1):
        raise SsmtlError(f"--test-fraction {test_fraction} and val_fraction {val_fraction}: each must be in [0, 1) "
                         "and together below 1")
    spec = registry.dataset(dataset)
    check_output_path(Path(out), force)  # before any slow work
    config = absolute_paths(validate_model(spec.config_model, {"name": dataset, **dataset_options}, prefix=dataset))
    with plugin_call("dataset", dataset, "its factory", registry):
        source: VolumeSource = spec.factory(config)
    if not isinstance(source, VolumeSource):
        raise refuse("dataset", dataset, "the factory", f"returned {type(source).__name__}, not a VolumeSource", registry)
    if not source.items:
        where = dataset_options.get("path") or dataset_options.get("images") or dataset
        raise InputFileError(where, "the dataset has no volumes")
    refuse_overlap(Path(out), _inputs(config, source))
    listing, pseudonyms, renamed = pseudonymise_items(source.items)  # before anything records a subject
    preset = {renamed.get(s, s): v for s, v in preset_split(source).items()}
    listed: tuple[list[str], set[str]] | None = None  # a shard's split is the full listing's
    items = listing
    if shard is not None:
        items, shard_listing = shard_items(listing, shard)
        listed = (shard_listing, listed_labels(listing))
    attrs = {
        "ssmtl_version": __version__,
        "dataset": dataset,
        "dataset_config": config.model_dump(mode="json"),
        "preprocess": preprocess.model_dump(mode="json"),
        "class_names": {str(k): v for k, v in source.class_names.items()},
        "flip_axes": declared_flip_axes(config, source, dataset, registry),
    }
    if shard is not None:
        attrs.update(shard=list(shard), shard_listing=listing_digest(listed[0]), shard_subjects=listed[0])
    tally = _Tally(num_classes=max(source.class_names) + 1 if source.class_names else 1)
    total = len(items)
    with CacheWriter(Path(out), force=force, attrs=attrs, compression=compression) as writer:
        if on_volume is not None:
            on_volume(0, total, "")
        for done, (item, result) in enumerate(iter_processed(items, preprocess, workers), start=1):
            failure = result if isinstance(result, Failure) else _unknown_labels(result, source.class_names, item)
            if failure is not None and failure.in_plugin:  # name the plugin whose load() raised, and its package
                failure = Failure(failure.path, f"{plugin_label('dataset', dataset, registry)} failed in load: {failure.reason}")
            if failure is not None:
                if not skip_bad:
                    raise InputFileError(failure.path, failure.reason)
                tally.skipped.append({"path": failure.path, "reason": failure.reason})
            else:
                _write(writer, item, result, tally, pseudonyms[item.subject])
            del result
            release_freed_memory()
            if on_volume is not None:
                on_volume(done, total, item.subject)
        if not writer.names:
            first = tally.skipped[0]
            raise InputFileError(first["path"], f"{first['reason']} (and all {total} inputs were bad; nothing to cache)")
        subjects, labeled = listed or (tally.subjects, tally.labeled)
        writer.set_split(*_subject_split(subjects, labeled, preset, split_seed, test_fraction, val_fraction))
        writer.attrs["class_voxels"] = tally.class_voxels()
        writer.attrs["skipped"] = tally.skipped
    return Path(out)


def _inputs(config, source: VolumeSource) -> list[tuple[str, Path]]:
    """What the build reads: the dataset config's paths (``--path``, ``--images``...) and each volume's file."""
    paths = [(f"--{name.replace('_', '-')}", value) for name, value in config if isinstance(value, Path)]
    for item in source.items:
        for part in (item.source, getattr(item, "image_path", None), getattr(item, "label_path", None)):
            if isinstance(part, (str, Path)) and "://" not in str(part):
                paths.append(("volume", Path(part)))
    return paths


def _write(writer: CacheWriter, item: VolumeItem, processed: ProcessedVolume, tally: _Tally, pseudonym: str) -> None:
    attrs: dict[str, Any] = {
        "source": item.source,
        "pseudonym": pseudonym,
        "modality": processed.modality,
        "spacing": np.asarray(processed.spacing, dtype=np.float64),
        "original_spacing": np.asarray(processed.original_spacing, dtype=np.float64),
        "original_shape": np.asarray(processed.original_shape, dtype=np.int64),
        "orientation": "RAS",
        "transform": processed.transform.to_json(),
    }
    if getattr(item, "identity", None):
        attrs["identity"] = item.identity
    if processed.label is not None:
        attrs["class_voxels"] = tally.count_classes(processed.label, processed.modality)
        tally.labeled.add(item.subject)
    writer.add_volume(item.subject, processed.image, processed.label, attrs, name=volume_name(item))
    tally.subjects.append(item.subject)


def _subject_split(subjects: list[str], labeled: set[str], preset: dict[str, str], seed: int, test_fraction: float,
                   val_fraction: float) -> tuple[dict[str, str], dict[str, Any]]:
    """subject -> split over ``subjects`` (those written, or a shard's full listing), and a record
    of how it was chosen. Too few labeled subjects: all train."""
    present = {s: v for s, v in preset.items() if s in set(subjects)}  # skipped subjects drop out
    if present:
        # Stored as given: whether it leaves enough subjects to fine-tune is for fine-tuning to say.
        # Only labeled subjects can be evaluated; one whose labeled volumes were all skipped trains.
        moved = sorted(s for s, v in present.items() if v != "train" and s not in labeled)
        split_of = {s: "train" if s in moved else present.get(s, "train") for s in set(subjects)}
        meta = {"source": "dataset", "held_out": sum(v != "train" for v in split_of.values())}
        return split_of, {**meta, "moved_to_train_unlabeled": moved} if moved else meta
    meta = {"source": "random", "seed": seed, "test_fraction": test_fraction, "val_fraction": val_fraction}
    if test_fraction <= 0 and val_fraction <= 0 or len(labeled) < 2:
        return {}, {**meta, "held_out": 0}
    split = make_split(subjects, labeled, seed=seed, test_fraction=test_fraction, val_fraction=val_fraction)
    split_of = {s: name for name in SPLITS for s in split[name]}
    return split_of, {**meta, "held_out": len(split["test"]) + len(split["val"])}
