"""The HDF5 slice cache: one file, one group per volume.

Layout (format version 2)::

    /                       attrs: format, format_version, ssmtl_version, created,
                                   dataset, dataset_config, preprocess, class_names,
                                   fingerprint, num_volumes, num_slices, split,
                                   class_voxels, skipped, flip_axes
    /volumes/<name>/image   float32 (D, H, W), chunks=(1, H, W)
    /volumes/<name>/label   uint8   (D, H, W), chunks=(1, H, W)   (optional)
                            attrs: subject, source, modality, split, spacing (z, y, x mm),
                                   original_spacing, original_shape, class_voxels,
                                   transform, sha256_image, sha256_label,
                                   pseudonym, identity (optional)
    /index/volume, /index/slice, /index/position     one row per slice (side table)
    /index/names            volume group names in build order

``transform`` (JSON, new in format 2) is the way from the source file to the cache
grid and back: the source file's array shape, affine and format, the reorientation
to canonical RAS, the in-plane resampling factors, the crop/pad offsets and the
slice layout (:class:`~ssmtl.data.transform.VolumeTransform`). Format 1 caches have
no ``transform``: they train as before, and evaluation scores them on the cache grid.

JSON-valued root attributes: ``split`` (how the stored split was chosen),
``class_voxels`` (voxels per class id over the cache, in total and per modality,
computed at build time so ``cache info`` reads no voxel), ``skipped`` (inputs left
out by ``--skip-bad``: path and reason), ``flip_axes`` (the in-plane axes, 0 = rows,
1 = columns, along which a mirrored slice is still plausible anatomy, as the dataset
declared them; absent in caches built before it existed, which read as ``[]``: see
:mod:`ssmtl.data.laterality`). ``fingerprint`` is the SHA-256 of the
volumes' checksums in index order; ``ssmtl cache verify`` recomputes all of them.

``pseudonym`` (absent in caches built before it) is the subject's name in files made to be shared, and
``identity`` (JSON ``{"subject", "volume"}``) the real names of a volume whose names were
pseudonymised as it entered the cache (a DICOM series: its ``subject`` is the pseudonym of its
PatientID); see :mod:`ssmtl.data.pseudonyms`. A cache is local: it holds images, source paths
and these identities, and is never shared.

``chunks=(1, H, W)`` is set explicitly: one chunk per slice makes random slice
reads cheap (auto-chunking was ~40x slower for random reads).

Writes go to a hidden temporary file next to ``out`` (``.ssmtl-tmp-<pid>-...``)
and are renamed over it only when complete (``os.replace`` is atomic on POSIX), so
an interrupted build, even one killed with ``kill -9``, never leaves a file at
``out`` and never damages an older cache there. Without ``force`` the new file is
hard-linked into place, which fails if ``out`` appeared meanwhile: only ``force``
replaces a cache. Temporaries of dead writers are deleted by the next build in
that directory.

Readers open the file lazily and never pickle an open handle, so a
:class:`SliceCache` can be handed to forked or spawned data-loader workers.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np

from ssmtl.api.datasets.files import check_regular_file, file_kind
from ssmtl.api.errors import InputFileError
from ssmtl.data.cache_checks import check_cache_contents, check_label_values
from ssmtl.data.transform import summarise_transforms

FORMAT = "ssmtl-slice-cache"
#: 2: volumes record their ``transform`` (the way back to the source file). Format 1 is still read.
FORMAT_VERSION = 2


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def sha256_array(array) -> str:
    """SHA-256 of the array's C-order bytes, fed one leading-axis slice at a time.

    The digest equals ``sha256(array.tobytes())`` without materialising that copy,
    and works as well on an h5py dataset (read one slice at a time).
    """
    digest = hashlib.sha256()
    if getattr(array, "ndim", 0) == 0:
        digest.update(np.ascontiguousarray(array[()]))
    else:
        for i in range(array.shape[0]):
            digest.update(np.ascontiguousarray(array[i]))
    return digest.hexdigest()


def group_name(subject: str, taken: set[str]) -> str:
    """An HDF5-safe, unique group name for a subject id."""
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", subject).strip("._") or "volume"
    name, i = base, 1
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    return name


@dataclass(frozen=True)
class VolumeMeta:
    index: int
    name: str
    subject: str
    num_slices: int
    shape: tuple[int, int, int]
    modality: str
    has_label: bool
    spacing: tuple[float, float, float]
    source: str
    split: str
    original_spacing: tuple[float, ...] | None = None
    transform: dict[str, Any] | None = None  # VolumeTransform.to_json(); None in format 1 caches
    pseudonym: str | None = None  # the subject's name in shareable files (:mod:`ssmtl.data.pseudonyms`); None: older cache
    identity: dict[str, str] | None = None  # the real subject and volume names of a volume pseudonymised at entry

    @property
    def source_key(self) -> str:
        """The volume's source file as a short one-way key (16 hex digits of its SHA-256): the same
        scan in two caches, or under a cache set's ``cache/`` prefix, has the same key, and a
        run manifest that lists keys names no local path."""
        return hashlib.sha256(self.source.encode()).hexdigest()[:16]


def _spacing_attr(value: Any) -> tuple[float, ...] | None:
    if value is None:
        return None
    values = json.loads(value) if isinstance(value, (str, bytes)) else value
    return tuple(float(v) for v in values)


def _stats(values: np.ndarray) -> dict[str, float | None]:
    if values.size == 0:
        return {"min": None, "median": None, "max": None}
    return {"min": float(values.min()), "median": float(np.median(values)), "max": float(values.max())}


class SliceCache:
    """Read access to a cache. Metadata is read eagerly; the data handle lazily per process."""

    def __init__(self, path: Path, rdcc_mb: int = 16):
        self.path = Path(path)
        self.rdcc_nbytes = rdcc_mb * 1024 * 1024
        self._handle: h5py.File | None = None
        self._pid: int | None = None
        kind = file_kind(self.path)  # from stat alone: a FIFO is never opened
        if kind == "missing":
            raise InputFileError(self.path, "cache file not found (build one with `ssmtl cache build`)")
        if kind != "file":
            check_regular_file(self.path)  # a folder, a FIFO, a device, a broken link: says which
        try:
            with h5py.File(self.path, "r", locking=False) as f:
                if f.attrs.get("format") != FORMAT:
                    raise InputFileError(self.path, "not an ssmtl slice cache")
                if int(f.attrs.get("format_version", 0)) > FORMAT_VERSION:
                    raise InputFileError(self.path, f"cache format {int(f.attrs['format_version'])} is newer than this "
                                         f"ssmtl reads ({FORMAT_VERSION}); upgrade ssmtl")
                self.attrs = {k: _decode_attr(v) for k, v in f.attrs.items()}
                names = [n.decode() if isinstance(n, bytes) else str(n) for n in f["index/names"][()]]
                check_cache_contents(self.path, f, names, self.attrs)
                self.volumes = [self._meta(i, n, f[f"volumes/{n}"]) for i, n in enumerate(names)]
        except InputFileError:
            raise
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise InputFileError(self.path, f"cannot read cache ({exc})") from None
        raw_names = self.attrs.get("class_names") or {}
        try:
            self.class_names = {int(k): str(v) for k, v in dict(raw_names).items()}
        except (TypeError, ValueError):
            raise InputFileError(self.path, f"class_names {raw_names!r} is not a table of class id -> name") from None

    @staticmethod
    def _meta(i: int, name: str, group: h5py.Group) -> VolumeMeta:
        a = group.attrs
        spacing = _spacing_attr(a.get("spacing"))
        return VolumeMeta(
            index=i,
            name=name,
            subject=str(a.get("subject", name)),
            num_slices=int(group["image"].shape[0]),
            shape=tuple(int(s) for s in group["image"].shape),
            modality=str(a.get("modality", "unknown")),
            has_label="label" in group,
            spacing=spacing,
            source=str(a.get("source", "")),
            split=str(a.get("split", "")),
            original_spacing=_spacing_attr(a.get("original_spacing")),
            transform=_decode_attr(a["transform"]) if "transform" in a else None,
            pseudonym=str(_decode_attr(a["pseudonym"])) if "pseudonym" in a else None,
            identity=_identity(a.get("identity")),
        )

    # -- lazy per-process handle --------------------------------------------------------
    def _file(self) -> h5py.File:
        if self._handle is None or self._pid != os.getpid():
            self._handle = h5py.File(self.path, "r", locking=False, rdcc_nbytes=self.rdcc_nbytes)
            self._pid = os.getpid()
        return self._handle

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handle"] = None  # never pickle an open HDF5 handle
        state["_pid"] = None
        return state

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    # -- reads ----------------------------------------------------------------------------
    def read_slices(self, volume: int, indices: np.ndarray) -> np.ndarray:
        """(k, H, W) float32 slices of one volume. ``indices`` must be increasing."""
        dset = self._file()[f"volumes/{self.volumes[volume].name}/image"]
        lo, hi = int(indices[0]), int(indices[-1]) + 1
        if len(indices) == hi - lo:
            return dset[lo:hi]
        return dset[np.asarray(indices)]

    def read_label_slice(self, volume: int, index: int) -> np.ndarray:
        """(H, W) uint8 label of one slice; raises KeyError for an unlabeled volume."""
        name = self.volumes[volume].name
        return check_label_values(self.path, name, self._file()[f"volumes/{name}/label"][int(index)], self.num_classes)

    def read_label(self, volume: int) -> np.ndarray | None:
        """(slices, H, W) uint8 label map of one volume; None for an unlabeled volume."""
        name = self.volumes[volume].name
        group = self._file()[f"volumes/{name}"]
        return check_label_values(self.path, name, group["label"][()], self.num_classes) if "label" in group else None

    def read_volume(self, volume: int) -> tuple[np.ndarray, np.ndarray | None]:
        image = self._file()[f"volumes/{self.volumes[volume].name}/image"][()]
        return image, self.read_label(volume)

    def iter_volumes(self) -> Iterator[VolumeMeta]:
        return iter(self.volumes)

    @property
    def fingerprint(self) -> str:
        return str(self.attrs.get("fingerprint", ""))

    @property
    def slice_shape(self) -> tuple[int, int]:
        return self.volumes[0].shape[1:] if self.volumes else (0, 0)

    @property
    def num_classes(self) -> int:
        return max(self.class_names) + 1 if self.class_names else 0

    def split_counts(self) -> dict[str, int]:
        """Subjects per stored split (empty when the cache has no split)."""
        subjects: dict[str, set[str]] = {}
        for v in self.volumes:
            if v.split:
                subjects.setdefault(v.split, set()).add(v.subject)
        return {k: len(v) for k, v in sorted(subjects.items())}

    def split_by_modality(self) -> dict[str, dict[str, int]]:
        """Subjects per stored split and modality (a subject with CT and MR volumes counts in both)."""
        subjects: dict[str, dict[str, set[str]]] = {}
        for v in self.volumes:
            if v.split:
                subjects.setdefault(v.split, {}).setdefault(v.modality, set()).add(v.subject)
        return {k: {m: len(s) for m, s in sorted(by.items())} for k, by in sorted(subjects.items())}

    def spacing_statistics(self) -> dict[str, Any]:
        """min / median / max voxel spacing (mm) per axis: cached (slice, row, col) and original (x, y, z)."""
        cached = np.array([v.spacing for v in self.volumes if v.spacing], dtype=np.float64).reshape(-1, 3)
        original = np.array([v.original_spacing for v in self.volumes if v.original_spacing is not None],
                            dtype=np.float64).reshape(-1, 3)
        return {
            "cached": {axis: _stats(cached[:, i]) for i, axis in enumerate(("slice", "row", "col"))},
            "original": {axis: _stats(original[:, i]) for i, axis in enumerate(("x", "y", "z"))},
        }

    def class_voxels(self) -> dict[str, Any]:
        """Voxels per class over the cache, total and per modality, as recorded at build time."""
        recorded = self.attrs.get("class_voxels") or {}
        total, by_modality = recorded.get("total") or {}, recorded.get("by_modality") or {}
        return {
            str(k): {
                "name": name,
                "total": int(total.get(str(k), 0)),
                "by_modality": {m: int(counts.get(str(k), 0)) for m, counts in sorted(by_modality.items())},
            }
            for k, name in sorted(self.class_names.items())
        } if recorded else {}

    def summary(self) -> dict[str, Any]:
        """What `ssmtl cache info` shows."""
        modalities: dict[str, int] = {}
        for v in self.volumes:
            modalities[v.modality] = modalities.get(v.modality, 0) + 1
        spacings = np.array([v.spacing for v in self.volumes]) if self.volumes else np.zeros((0, 3))
        return {
            "path": str(self.path),
            "format_version": int(self.attrs.get("format_version", 0)),
            "dataset": self.attrs.get("dataset"),
            "volumes": len(self.volumes),
            "labeled_volumes": sum(v.has_label for v in self.volumes),
            "slices": sum(v.num_slices for v in self.volumes),
            "slice_shape": list(self.slice_shape),
            "modalities": modalities,
            "classes": {str(k): v for k, v in sorted(self.class_names.items())},
            "class_voxels": self.class_voxels(),
            "spacing_mm": {
                "z_min": float(spacings[:, 0].min()) if len(spacings) else None,
                "z_max": float(spacings[:, 0].max()) if len(spacings) else None,
                "in_plane": float(spacings[:, 1].mean()) if len(spacings) else None,
            },
            "spacing_stats_mm": self.spacing_statistics(),
            "split": self.split_counts(),
            "split_by_modality": self.split_by_modality(),
            "split_info": self.attrs.get("split") or {},
            "skipped": self.attrs.get("skipped") or [],
            "fingerprint": self.fingerprint,
            "created": self.attrs.get("created"),
            "preprocess": self.attrs.get("preprocess"),
            "flip_axes": self.attrs.get("flip_axes"),  # None: built before caches declared it (no flips)
            "way_back": summarise_transforms([v.transform for v in self.volumes]),
            "subjects": [
                {"name": v.name, "subject": v.subject, "pseudonym": v.pseudonym, "identity": v.identity,
                 "slices": v.num_slices, "modality": v.modality,
                 "labeled": v.has_label, "split": v.split, "spacing": list(v.spacing),
                 "original_spacing": list(v.original_spacing) if v.original_spacing else None, "source": v.source,
                 "transform": v.transform}
                for v in self.volumes
            ],
        }


def _identity(value: Any) -> dict[str, str] | None:
    """The ``identity`` attribute: ``{"subject": ..., "volume": ...}``, or None (absent or not that)."""
    decoded = _decode_attr(value) if value is not None else None
    if not isinstance(decoded, dict):
        return None
    return {k: str(decoded[k]) for k in ("subject", "volume") if isinstance(decoded.get(k), str)} or None


def _decode_attr(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and value[:1] in "{[":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    if isinstance(value, np.generic):
        return value.item()
    return value
