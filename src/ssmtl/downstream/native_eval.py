"""The reference labels of evaluation at native resolution: the original label files, read again.

``ssmtl evaluate`` scores at native resolution when every evaluated volume has a way
back, and falls back to the cache grid (saying why) when one has not. A volume's
native reference is found as follows:

* The cache must record the volume's transform (format 2; :mod:`ssmtl.data.transform`).
* When the transform is the identity (the cache grid *is* the canonical grid, e.g. a
  phantom cached at its own size), the cached label is the native label, voxel for voxel.
* Otherwise the dataset that built the cache is asked again, with the configuration
  stored in the cache: the same plugin reads the same label file with the same label
  mapping (``ImageLabelItem.load_label`` reads the label only; other items load whole).
  The item is matched by subject and file (or series folder) name.
* The label read must be the one that was cached: its shape and affine must be the
  recorded canonical ones, and taken through the recorded transform it must equal the
  cached label exactly (a file changed since the build is refused, not scored).

Predictions reach the native grid through :class:`~ssmtl.downstream.predictor.Predictor`,
exactly as ``ssmtl predict`` writes them. Where the cache cropped the scan, the image is read
again too and preprocessed over its whole field of view (:mod:`~ssmtl.downstream.whole_scan`),
so the whole scan is predicted in sliding windows, as ``ssmtl predict`` does; inside the crop
it must equal the cached image (a changed image file is refused like a changed label).
Metrics are computed on the canonical array, which holds the file's voxels in another axis
order: Dice and HD95 do not depend on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ssmtl.api.datasets.grids import AFFINE_TOLERANCE_MM
from ssmtl.api.errors import SsmtlError
from ssmtl.settings.sources import validate_model
from ssmtl.data.build import volume_name
from ssmtl.data.cache import group_name
from ssmtl.data.native import labels_to_cache
from ssmtl.data.preprocess import PreprocessConfig, preprocess_volume, whole_axis
from ssmtl.data.transform import VolumeTransform

#: How far a re-read image may differ from the cached one (normalised units; float32 round-off).
IMAGE_TOLERANCE = 1e-4

SPACES = ("auto", "native", "cache")


class NoWayBack(Exception):
    """A volume cannot be scored at native resolution; the message says why (shown to the user)."""


@dataclass
class NativeReference:
    """A volume's reference label on its native (canonical) grid."""

    label: np.ndarray  # uint8 (X, Y, Z)
    transform: VolumeTransform
    origin: str  # "cache (identical grid)" or "the label file, re-read by the dataset"
    #: where the cache cropped the scan: the image over its whole field of view (D, H', W') and its transform
    whole_image: np.ndarray | None = None
    whole_transform: VolumeTransform | None = None

    def image_and_grid(self, cached_image: np.ndarray) -> tuple[np.ndarray, VolumeTransform]:
        """What to predict and the grid it is on: the whole scan where the cache cropped it, else the cached image."""
        if self.whole_image is not None:
            return self.whole_image, self.whole_transform
        return cached_image, self.transform


class NativeReferences:
    """Finds the native reference labels of a cache's volumes (lazily: the dataset is listed once, if needed)."""

    def __init__(self, cache, registry):
        self.cache = cache
        self.registry = registry
        self._items: dict[tuple[str, str], list[Any]] | None = None
        self._per_cache: dict[Any, NativeReferences] = {}

    def transform(self, index: int) -> VolumeTransform:
        meta = self.cache.volumes[index]
        if meta.transform is None:
            version = self.cache.attrs.get("format_version", 1)
            raise NoWayBack(f"the cache (format {version}) does not record the way back to the source files; "
                            "rebuild it with this ssmtl version to evaluate at native resolution")
        return VolumeTransform.from_json(meta.transform)

    def _dataset_items(self) -> dict[tuple[str, str], list[Any]]:
        if self._items is None:
            name = self.cache.attrs.get("dataset")
            try:
                spec = self.registry.dataset(str(name))
                config = validate_model(spec.config_model, dict(self.cache.attrs.get("dataset_config") or {}), prefix=str(name))
                source = spec.factory(config)
            except SsmtlError as exc:  # includes ConfigError and InputFileError: moved or deleted files
                raise NoWayBack(f"the {name} dataset that built the cache cannot be read again ({exc})") from None
            # by subject and file name: a dataset folder moved (and its cache's config updated) still matches;
            # that it is the same label is checked on its content
            self._items = {}
            for item in source.items:
                self._items.setdefault((item.subject, Path(item.source).name), []).append(item)
        return self._items

    def _read(self, index: int, image: bool) -> tuple[np.ndarray, np.ndarray, Any]:
        """(label, affine, the whole raw volume when ``image`` or when the item loads whole, else None)."""
        meta = self.cache.volumes[index]
        candidates = self._dataset_items().get((meta.subject, Path(meta.source).name), [])
        # several series of one folder share a source: the volume's group name tells them apart
        item = next((i for i in candidates if group_name(volume_name(i), set()) == meta.name), None) or \
            (candidates[0] if len(candidates) == 1 else None)
        if item is None:
            raise NoWayBack(f"volume {meta.name}: the dataset no longer lists {meta.source}")
        try:
            if hasattr(item, "load_label") and not image:
                return (*item.load_label(), None)
            raw = item.load()
        except SsmtlError as exc:
            raise NoWayBack(f"volume {meta.name}: cannot read its {'image and label' if image else 'label'} again ({exc})") from None
        if raw.label is None:
            raise NoWayBack(f"volume {meta.name}: the dataset loads it without a label now")
        return raw.label, raw.affine, raw

    def _whole(self, index: int, raw, transform: VolumeTransform) -> tuple[np.ndarray, VolumeTransform]:
        """The scan over its whole field of view, preprocessed as the cache was; its crop must be the cached image."""
        name = self.cache.volumes[index].name
        try:
            config = PreprocessConfig.model_validate(self.cache.attrs.get("preprocess") or {})
            processed = preprocess_volume(raw, config, source=name, field_of_view="whole")
        except (SsmtlError, ValueError) as exc:
            raise NoWayBack(f"volume {name}: cannot preprocess its image again ({exc})") from None
        grid = processed.transform
        expected = whole_axis(transform.rows), whole_axis(transform.cols)
        if (grid.rows, grid.cols) != expected:
            raise NoWayBack(f"volume {name}: the image file now resamples to another grid; rebuild the cache")
        cached, _ = self.cache.read_volume(index)
        windows = [slice(w.pad_start + a.crop_start, w.pad_start + a.crop_start + a.kept)
                   for w, a in zip(expected, (transform.rows, transform.cols))]
        inside = processed.image[:, windows[0], windows[1]]
        kept = cached[:, transform.rows.cache_window, transform.cols.cache_window]
        if inside.shape != kept.shape or not np.allclose(inside, kept, atol=IMAGE_TOLERANCE, rtol=0):
            raise NoWayBack(f"volume {name}: the image file's content differs from the cached image; rebuild the cache")
        return processed.image, grid

    def get(self, index: int) -> NativeReference:
        """The reference of cache volume ``index``; :class:`NoWayBack` when there is none."""
        if hasattr(self.cache, "locate"):  # a set of caches: each volume's own cache knows its dataset
            cache, local = self.cache.locate(index)
            if cache.path not in self._per_cache:
                self._per_cache[cache.path] = NativeReferences(cache, self.registry)
            return self._per_cache[cache.path].get(local)
        transform = self.transform(index)
        cached = self.cache.read_label(index)
        if transform.is_identity():
            from ssmtl.data.native import labels_to_canonical

            return NativeReference(labels_to_canonical(cached, transform), transform, "cache (identical grid)")
        cropped = any(axis.kept < axis.resampled_length for axis in (transform.rows, transform.cols))
        label, affine, raw = self._read(index, image=cropped)
        name = self.cache.volumes[index].name
        if tuple(label.shape) != tuple(transform.canonical_shape):
            raise NoWayBack(f"volume {name}: the label file's grid {tuple(label.shape)} is not the cached volume's "
                            f"{tuple(transform.canonical_shape)}; was it replaced after the cache was built?")
        if float(np.max(np.abs(np.asarray(affine) - transform.canonical_affine))) > AFFINE_TOLERANCE_MM:
            raise NoWayBack(f"volume {name}: the label file's position in space differs from the cached volume's")
        if not np.array_equal(labels_to_cache(label, transform), cached):
            raise NoWayBack(f"volume {name}: the label file's content differs from the cached label; rebuild the cache")
        reference = NativeReference(np.ascontiguousarray(label, dtype=np.uint8), transform, "the label file, re-read by the dataset")
        if cropped:
            reference.whole_image, reference.whole_transform = self._whole(index, raw, transform)
        return reference
