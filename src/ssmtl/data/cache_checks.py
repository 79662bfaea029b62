"""What a cache must hold before anything trains on it, checked when it is opened.

A cache is a file other tools can write or damage. Its volumes are checked from the HDF5
metadata alone (dtypes and shapes, no voxel is read), so opening stays cheap however large
the cache is:

* images are float16 or float32 (an int64 image would be trained on silently, a string one
  fails deep inside torch), 3-D ``(slices, H, W)``, with the in-plane size the cache
  declares (``preprocess.size``; every volume alike when it declares none);
* labels are integers, with the image's shape;
* the slice index (``/index``) counts each volume's slices as its image has them.

Label *values* are checked where labels are read (:func:`check_label_values`): reading every
label of a large cache at open would cost seconds that pre-training, which reads none,
does not need.

Every problem is one :class:`~ssmtl.api.InputFileError` naming the cache file and the volume.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import h5py
import numpy as np

from ssmtl.api.errors import InputFileError

IMAGE_DTYPES = (np.dtype("float16"), np.dtype("float32"))
REBUILD = "rebuild it with `ssmtl cache build`"


def _declared_size(attrs: dict[str, Any]) -> int | None:
    preprocess = attrs.get("preprocess")
    size = preprocess.get("size") if isinstance(preprocess, dict) else None
    return int(size) if isinstance(size, (int, np.integer)) and not isinstance(size, bool) else None


def check_cache_contents(path: Path, f: h5py.File, names: Sequence[str], attrs: dict[str, Any]) -> None:
    """Refuse a cache whose volumes or index are not what ssmtl writes (see the module doc)."""
    size = _declared_size(attrs)
    first: tuple[int, ...] | None = None
    for name in names:
        group = f.get(f"volumes/{name}")
        image = group.get("image") if isinstance(group, h5py.Group) else None
        if not isinstance(image, h5py.Dataset):
            raise InputFileError(path, f"volume {name!r} has no image dataset; {REBUILD}")
        where = f"volume {name!r}"
        if image.dtype not in IMAGE_DTYPES:
            raise InputFileError(path, f"{where}: image dtype {image.dtype} (a cache stores float32 images); {REBUILD}")
        if image.ndim != 3 or min(image.shape) < 1:
            raise InputFileError(path, f"{where}: image shape {image.shape}, expected (slices, height, width); {REBUILD}")
        plane = tuple(image.shape[1:])
        expected = (size, size) if size is not None else first
        if expected is not None and plane != expected:
            declared = f"the cache's slice size {size}x{size}" if size is not None else f"the first volume's {expected}"
            raise InputFileError(path, f"{where}: slices of {plane[0]}x{plane[1]} pixels, not {declared}; {REBUILD}")
        first = first or plane
        label = group.get("label")
        if label is None:
            continue
        if not isinstance(label, h5py.Dataset) or not np.issubdtype(label.dtype, np.integer):
            kind = label.dtype if isinstance(label, h5py.Dataset) else type(label).__name__
            raise InputFileError(path, f"{where}: label dtype {kind}, expected integer class ids; {REBUILD}")
        if label.shape != image.shape:
            raise InputFileError(path, f"{where}: label shape {label.shape} differs from the image's {image.shape}; {REBUILD}")
    _check_index(path, f, names)


def _check_index(path: Path, f: h5py.File, names: Sequence[str]) -> None:
    index = f.get("index/volume")
    if index is None:
        return  # the readers use the volumes' own shapes; an absent index is not used
    volume = np.asarray(index[()])
    if volume.ndim != 1 or not np.issubdtype(volume.dtype, np.integer):
        raise InputFileError(path, f"the slice index is {volume.dtype} of shape {volume.shape}; {REBUILD}")
    if volume.size and (volume.min() < 0 or volume.max() >= len(names)):
        raise InputFileError(path, f"the slice index names volume {int(volume.max())} of {len(names)}; {REBUILD}")
    counts = np.bincount(volume, minlength=len(names)) if volume.size else np.zeros(len(names), dtype=np.int64)
    for i, name in enumerate(names):
        slices = f[f"volumes/{name}/image"].shape[0]
        if counts[i] != slices:
            raise InputFileError(path, f"volume {name!r}: the slice index lists {int(counts[i])} slices, the image has {slices}; {REBUILD}")


def check_label_values(path: Path, name: str, label: np.ndarray, num_classes: int) -> np.ndarray:
    """``label`` (any shape), or an error when it holds a class id the cache does not name."""
    if label.size and num_classes > 0:
        low, high = int(label.min()), int(label.max())
        if low < 0 or high >= num_classes:
            bad = low if low < 0 else high
            raise InputFileError(path, f"volume {name!r}: label value {bad} outside the cache's {num_classes} classes "
                                 f"(0..{num_classes - 1}); {REBUILD}")
    return label
