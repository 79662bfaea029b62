"""Label maps: raw values -> contiguous class ids, and the class-name table.

The mapping every dataset uses: ``label_values[i]`` becomes class ``i + 1`` and 0
stays background (class 0). Without configured ``label_values``, the sorted
non-zero values found over all label files are used (:func:`collect_label_values`
reads only the labels). Class ids are stored as uint8, so at most
:data:`MAX_CLASSES` label values are supported. A value in a label map that is
not in the mapping is an error naming the file, never silently background.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ssmtl.api.errors import ConfigError, InputFileError

#: Class ids are stored as uint8 (0 is background), so at most 255 label values.
MAX_CLASSES = 255

#: Reads one label file: ``read(path) -> (integer values, 4x4 affine)``, both in canonical orientation.
LabelReader = Callable[[Path], tuple[np.ndarray, np.ndarray]]


def check_label_values(values: Sequence[int]) -> Sequence[int]:
    """``values`` if it is a usable mapping; else ValueError.

    A mapping is non-empty, has no 0 (background is always class 0), no duplicates
    and at most :data:`MAX_CLASSES` values.
    """
    if not values:
        raise ValueError("label_values must not be empty")
    if 0 in values:
        raise ValueError("label_values must not contain 0 (background is always class 0)")
    if len(set(values)) != len(values):
        raise ValueError(f"label_values has duplicates: {list(values)}")
    if len(values) > MAX_CLASSES:
        raise ValueError(f"at most {MAX_CLASSES} label values are supported, got {len(values)}")
    return values


def check_class_names(class_names: Sequence[str], label_values: Sequence[int]) -> None:
    """ValueError unless there is exactly one class name per label value."""
    if len(class_names) != len(label_values):
        raise ValueError(
            f"class_names has {len(class_names)} names but there are {len(label_values)} "
            f"label values {list(label_values)}"
        )


def class_name_table(label_values: Sequence[int], class_names: Sequence[str] | None = None) -> dict[int, str]:
    """Class id -> name, background included: ``{0: "background", 1: ..., n: ...}``.

    Without ``class_names`` the default names show the raw value (``label_205``).

    Raises:
        ConfigError: ``class_names`` does not have one name per label value (the
            values may have been collected from the files, after the config was validated).
    """
    if class_names is not None:
        try:
            check_class_names(class_names, label_values)
        except ValueError as exc:
            raise ConfigError(str(exc), rows=[("class_names", str(exc))]) from exc
        names = list(class_names)
    else:
        names = [f"label_{value}" for value in label_values]
    return {0: "background", **{i: name for i, name in enumerate(names, start=1)}}


def integer_labels(values: np.ndarray, path: Path | str) -> np.ndarray:
    """A label array as integers: float labels (some tools save them so) are rounded to int64.

    Raises:
        InputFileError: the labels hold NaN, infinite or complex values.
    """
    if np.issubdtype(values.dtype, np.integer):
        return values
    if np.iscomplexobj(values) or not (np.isfinite(values.min()) and np.isfinite(values.max())):
        raise InputFileError(path, "label map contains NaN, infinite or complex values")
    return np.rint(values).astype(np.int64)


def collect_label_values(label_paths: Sequence[Path], read: LabelReader) -> tuple[int, ...]:
    """The sorted non-zero values over all label files, read one at a time with ``read``.

    Raises:
        InputFileError: more than :data:`MAX_CLASSES` distinct values (naming the first
            file's folder), or whatever ``read`` raises for an unreadable file.
    """
    found: set[int] = set()
    for path in label_paths:
        values, _ = read(path)
        found.update(int(v) for v in np.unique(values))
    found.discard(0)
    if len(found) > MAX_CLASSES:
        raise InputFileError(
            Path(label_paths[0]).parent, f"{len(found)} distinct label values found; at most {MAX_CLASSES} are supported"
        )
    return tuple(sorted(found))


def map_labels(values: np.ndarray, label_values: Sequence[int], path: Path | str) -> np.ndarray:
    """Raw label values -> uint8 class ids: ``label_values[i]`` -> ``i + 1``, 0 -> 0.

    Raises:
        InputFileError: ``values`` holds a non-zero value outside ``label_values``;
            the message names ``path`` and the unknown values.
    """
    present = np.unique(values)
    unknown = sorted(set(present.tolist()) - set(label_values) - {0})
    if unknown:
        raise InputFileError(
            path, f"label values {unknown} are not in the label mapping {list(label_values)} (0 is background)"
        )
    mapped = np.zeros(values.shape, dtype=np.uint8)
    for class_id, value in enumerate(label_values, start=1):
        if value in present:
            mapped[values == value] = class_id
    return mapped
