"""The contract between dataset plugins and the cache builder.

A dataset plugin turns its configuration into a :class:`VolumeSource`: a list of
:class:`VolumeItem` objects plus the class names. Each item loads lazily, so the
builder holds one volume per worker in memory whatever the dataset size, and
items are plain picklable objects so they can be loaded in worker processes.

``load()`` returns a :class:`RawVolume` whose arrays are already in the
**canonical RAS orientation** with axes (x, y, z), slices along z; labels are
already mapped to contiguous class ids (0 = background). A volume read from a file
also says where it came from (:class:`SourceGeometry`: the array shape and
voxel-to-world matrix as stored in the file, before reorientation), which is how
``ssmtl predict`` and native-resolution evaluation find the way back to the scan.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field, field_validator

from ssmtl.api.rules import CONFIG_RULES

Modality = Literal["ct", "mr"]
#: The subject-level splits a dataset may preset (``VolumeSource.split``) and a cache stores.
SPLITS = ("train", "val", "test")
#: The in-plane axes of a cached slice: 0 = rows (anterior -> posterior after ssmtl's
#: canonical reorientation), 1 = columns (the patient's right -> left).
SLICE_AXES = (0, 1)


def check_flip_axes(axes: Iterable[int]) -> tuple[int, ...]:
    """``axes`` as a sorted tuple of distinct in-plane axes (0 = rows, 1 = columns).

    Raises:
        ValueError: an axis other than 0 or 1, or one given twice.
    """
    values = list(axes)
    bad = [a for a in values if isinstance(a, bool) or not isinstance(a, int) or a not in SLICE_AXES]
    if bad:
        raise ValueError(f"flip_axes {values}: each axis must be 0 (rows: anterior-posterior) or 1 "
                         f"(columns: right-left), got {bad[0]!r}")
    if len(set(values)) != len(values):
        raise ValueError(f"flip_axes {values}: an axis is named twice")
    return tuple(sorted(values))


class DatasetConfig(BaseModel):
    """Base class for dataset plugin configs. Subclasses add their own fields.

    ``flip_axes`` is every dataset's: the user's declaration of the mirror flips the
    data allows, which overrides the plugin's own (``VolumeSource.flip_axes``).
    """

    model_config = CONFIG_RULES
    name: str
    flip_axes: list[int] | None = Field(
        None,
        description=(
            "In-plane axes of the cached slices along which a mirrored slice is still plausible anatomy: "
            "0 = rows (anterior-posterior), 1 = columns (the patient's right-left). Every random view "
            "(pre-training tasks, MoCo's two views, fine-tuning) flips only along these. [] = no flips "
            "(a lateralised organ such as the heart: a mirrored heart is another anatomy). None: the "
            "dataset plugin's own declaration (no flips for every built-in dataset)."
        ),
    )

    @field_validator("flip_axes")
    @classmethod
    def _valid_flip_axes(cls, axes: list[int] | None) -> list[int] | None:
        return None if axes is None else list(check_flip_axes(axes))


@dataclass(frozen=True)
class SourceGeometry:
    """The voxel grid of a volume as its file stores it, before reorientation to canonical RAS.

    Attributes:
        shape: the array shape (i, j, k) in the file's own axis order (a DICOM
            series: columns, rows, slices sorted along the slice normal).
        affine: the 4x4 voxel (i, j, k) -> world matrix of that array, in **RAS**
            millimetres (an LPS matrix from DICOM/ITK is converted with ``LPS_TO_RAS``).
        format: the file format, e.g. ``"nifti"``, ``"nrrd"``, ``"mha"``, ``"dicom"``:
            ``ssmtl predict --format same`` writes its output in it where it can.
        convention: the world convention the format itself uses, ``"RAS"`` (NIfTI) or
            ``"LPS"`` (DICOM, NRRD, MetaImage): how direction and origin are shown.

    Reorientation only permutes and flips axes, so the canonical array and this one
    hold the same voxels; :mod:`ssmtl.data.transform` derives the permutation from the
    two affines.
    """

    shape: tuple[int, int, int]
    affine: np.ndarray
    format: str = ""
    convention: Literal["RAS", "LPS"] = "RAS"


@dataclass
class RawVolume:
    """One volume in canonical orientation, before resampling and normalisation.

    Attributes:
        image: float array (X, Y, Z) in native units (HU for CT).
        spacing: voxel size (sx, sy, sz) in mm.
        modality: "ct" or "mr".
        label: uint8 class ids (X, Y, Z) or None.
        affine: the 4x4 voxel-to-world matrix of the canonical array.
        source_geometry: the file's own voxel grid (:class:`SourceGeometry`), or None
            for a volume without a file (generated data) or from a reader that does
            not report it. Without it the cache cannot map predictions back to the
            file's array layout; evaluation at native resolution still works.
    """

    image: np.ndarray
    spacing: tuple[float, float, float]
    modality: Modality
    label: np.ndarray | None = None
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    source_geometry: SourceGeometry | None = None


@dataclass
class VolumeItem(ABC):
    """A lazily loaded volume. Subclass and implement :meth:`load`."""

    subject: str
    source: str
    #: True/False when the listing knows whether the volume has a label map without loading it
    #: (``cache build --shard`` computes the split over the whole listing from it); None: unknown.
    #: A class attribute, not a dataclass field: subclasses set it or define a property.
    has_label = None
    #: True when the subject and volume names identify a person (a DICOM PatientID, the folder
    #: names of a hospital export): the cache builder then stores pseudonyms in their place
    #: (``subject-007``) and keeps the real names only as the volume's local ``identity``.
    #: Grouping is unchanged: items with one subject still share a split. A class attribute.
    identifying_names = False

    @abstractmethod
    def load(self) -> RawVolume:
        """Read the volume; raise :class:`~ssmtl.api.errors.InputFileError` on bad input."""


@dataclass
class VolumeSource:
    """What a dataset plugin's factory returns."""

    items: list[VolumeItem]
    class_names: dict[int, str]
    description: str = ""
    #: The plugin's declaration of the in-plane axes (0 = rows, 1 = columns of a cached
    #: slice) along which a mirrored slice is still plausible anatomy; used when the
    #: config's ``flip_axes`` is None. Empty (the default): no mirror flips, the safe
    #: choice for lateralised anatomy. The cache stores the result as ``flip_axes``.
    flip_axes: tuple[int, ...] = ()
