"""The contract between dataset plugins and the cache builder.

A dataset plugin turns its configuration into a :class:`VolumeSource`: a list of
:class:`VolumeItem` objects plus the class names. Each item loads lazily, so the
builder holds one volume per worker in memory whatever the dataset size, and
items are plain picklable objects so they can be loaded in worker processes.

``load()`` returns a :class:`RawVolume` whose arrays are already in the
**canonical RAS orientation** with axes (x, y, z), slices along z; labels are
already mapped to contiguous class ids (0 = background).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

Modality = Literal["ct", "mr"]
#: The subject-level splits a dataset may preset (``VolumeSource.split``) and a cache stores.
SPLITS = ("train", "val", "test")


class DatasetConfig(BaseModel):
    """Base class for dataset plugin configs. Subclasses add their own fields."""

    model_config = ConfigDict(extra="forbid")
    name: str


@dataclass
class RawVolume:
    """One volume in canonical orientation, before resampling and normalisation.

    Attributes:
        image: float array (X, Y, Z) in native units (HU for CT).
        spacing: voxel size (sx, sy, sz) in mm.
        modality: "ct" or "mr".
        label: uint8 class ids (X, Y, Z) or None.
        affine: the 4x4 voxel-to-world matrix of the canonical array.
    """

    image: np.ndarray
    spacing: tuple[float, float, float]
    modality: Modality
    label: np.ndarray | None = None
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))


@dataclass
class VolumeItem(ABC):
    """A lazily loaded volume. Subclass and implement :meth:`load`."""

    subject: str
    source: str

    @abstractmethod
    def load(self) -> RawVolume:
        """Read the volume; raise :class:`~ssmtl.api.errors.InputFileError` on bad input."""


@dataclass
class VolumeSource:
    """What a dataset plugin's factory returns."""

    items: list[VolumeItem]
    class_names: dict[int, str]
    description: str = ""
