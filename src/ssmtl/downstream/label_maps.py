"""Label map files of any tool, and the label names of a ``dataset.json``, for scoring folders.

* :func:`read_label_map`: a NIfTI, NRRD or MetaImage label map, read with SimpleITK (as
  nnU-Net's own evaluation reads them), as integers on the canonical RAS grid, with its
  spacing and affine: two files that hold the same voxels in different axis orders
  (a prediction written RAS beside an LPS-stored reference) compare voxel for voxel.
* :func:`dataset_json_labels`: the ``labels`` of a ``dataset.json`` in either spelling,
  nnU-Net v2's name -> value (``{"background": 0, "left atrium": 1}``) or the Medical
  Segmentation Decathlon's (and nnU-Net v1's) value -> name (``{"0": "background"}``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ssmtl.api.datasets.files import FileKind
from ssmtl.api.datasets.grids import spatial_shape
from ssmtl.api.datasets.labels import integer_labels
from ssmtl.api.datasets.limits import check_claimed_size
from ssmtl.api.datasets.orientation import affine_from_geometry, lps_to_canonical
from ssmtl.api.errors import InputFileError

LABEL_MAP_FILES = FileKind("label maps", (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"))
#: nnU-Net v2's name of the label that marks unannotated voxels (left out of the scores).
IGNORE = "ignore"


@dataclass
class LabelMap:
    """A label map on its canonical RAS grid."""

    values: np.ndarray  # integer (X, Y, Z)
    spacing: tuple[float, float, float]  # mm along X, Y, Z
    affine: np.ndarray  # 4x4 canonical voxel -> RAS mm


def read_label_map(path: Path) -> LabelMap:
    """Read one label map file.

    Raises:
        InputFileError: naming ``path``: unreadable, not one 3D scalar volume, non-integer
            or negative values, or a geometry that cannot place voxels in space.
    """
    import SimpleITK as sitk

    path = Path(path)
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()  # the header first: a claimed size is checked before the voxels are read
        check_claimed_size(path, reader.GetSize(), 1, compressed=True)
        image = reader.Execute()
    except (MemoryError, InputFileError):
        raise
    except Exception as exc:  # SimpleITK raises RuntimeError for every reader failure
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise InputFileError(path, f"cannot read it as a label map ({lines[-1] if lines else type(exc).__name__})") from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputFileError(path, "expected one label per voxel, got a vector image")
    spatial_shape(image.GetSize(), path)  # a 4D file (class probabilities) is not a label map
    dimension = image.GetDimension()
    array = sitk.GetArrayFromImage(image)
    array = integer_labels(array.reshape(array.shape[-3:]).transpose(2, 1, 0), path)
    if array.size and int(array.min()) < 0:
        raise InputFileError(path, f"holds the negative label value {int(array.min())}")
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(dimension, dimension)[:3, :3]
    affine_lps = affine_from_geometry(direction, image.GetSpacing()[:3], image.GetOrigin()[:3])
    values, spacing, affine = lps_to_canonical(array, affine_lps, path)
    return LabelMap(np.ascontiguousarray(values), spacing, np.asarray(affine, dtype=np.float64))


def dataset_json_labels(path: Path) -> tuple[dict[int, str], int | None]:
    """(foreground value -> name, the ``ignore`` value or None) from a ``dataset.json``.

    Raises:
        InputFileError: naming the file and the field: unreadable, no ``labels`` object, a value
            that is not a non-negative integer, two names for one value, or nnU-Net's
            region-based labels (a list of values per name), which are not a label map's values.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise InputFileError(path, "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputFileError(path, f"cannot read it ({exc})") from None
    except json.JSONDecodeError as exc:
        raise InputFileError(path, f"not valid JSON (line {exc.lineno}: {exc.msg})") from None
    labels = data.get("labels") if isinstance(data, dict) else None
    if not isinstance(labels, dict) or not labels:
        raise InputFileError(path, "labels: expected an object of label names and values (nnU-Net or Decathlon dataset.json)")
    pairs: list[tuple[int, str]] = []
    by_value = all(str(k).strip().isdigit() for k in labels) and all(isinstance(v, str) for v in labels.values())
    for key, value in labels.items():
        number, name = (key, value) if by_value else (value, key)
        if isinstance(number, list):
            raise InputFileError(path, f"labels: {name!r} is a region ({number}); scoring needs one value per structure")
        try:
            number = int(str(number).strip()) if not isinstance(number, bool) else None
        except ValueError:
            number = None
        if number is None or number < 0:
            raise InputFileError(path, f"labels: {name!r} has the value {key if by_value else value!r}; expected an integer >= 0")
        pairs.append((number, str(name)))
    table: dict[int, str] = {}
    for number, name in pairs:
        if number in table:
            raise InputFileError(path, f"labels: the value {number} is named twice ({table[number]!r} and {name!r})")
        table[number] = name
    ignore = next((n for n, name in table.items() if name.lower() == IGNORE and n != 0), None)
    return {n: name for n, name in sorted(table.items()) if n != 0 and n != ignore}, ignore
