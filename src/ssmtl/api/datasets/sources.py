"""Items and sources for image files with optional label maps.

:class:`ImageLabelItem` is the lazily loaded volume of every file-based dataset:
a subclass says how to read one image and one label file, and :meth:`~ImageLabelItem.load`
applies the shared rules (finite voxels, modality, label on the image's grid, label
mapping). :func:`folder_source` is a whole folder dataset built from it.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ssmtl.api.datasets.arrays import check_finite
from ssmtl.api.datasets.config import FolderDatasetConfig
from ssmtl.api.datasets.files import FileKind
from ssmtl.api.datasets.grids import check_same_grid
from ssmtl.api.datasets.labels import map_labels
from ssmtl.api.datasets.modality import detect_modality
from ssmtl.api.datasets.pairing import pair_files, unique_subjects
from ssmtl.api.errors import ConfigError, InputFileError
from ssmtl.api.volumes import Modality, RawVolume, SourceGeometry, VolumeItem, VolumeSource


@dataclass
class ImageLabelItem(VolumeItem):
    """An image with an optional label map on its grid; nothing is read before :meth:`load`.

    Subclasses implement :meth:`read_image` and :meth:`read_label`; both return
    arrays in canonical RAS orientation with their affine.

    Attributes:
        image_path: the image file (or folder, for a DICOM series).
        label_path: its label map, or None.
        modality: ``"ct"``, ``"mr"``, or None: the file's own (``read_image``), else
            detected from the intensities (:func:`~ssmtl.api.detect_modality`).
        label_values: raw label values mapped to class ids 1..n in order.
        volume_id: the volume's group name in the cache (None: the subject).
    """

    image_path: Path
    label_path: Path | None = None
    modality: Modality | None = None
    label_values: tuple[int, ...] = ()
    volume_id: str | None = None

    @property
    def has_label(self) -> bool:
        """Whether the item has a label map, known from the listing (``cache build --shard`` splits on it)."""
        return self.label_path is not None

    @abstractmethod
    def read_image(self) -> tuple[np.ndarray, tuple[float, float, float], np.ndarray, Modality | None]:
        """The image as (float array (X, Y, Z), spacing in mm, 4x4 affine, modality the file states or None).

        A fifth element, the file's own voxel grid (:class:`~ssmtl.api.SourceGeometry`),
        is optional: readers that return it let ``ssmtl predict`` write label maps in the
        file's array layout. Four elements keep working (the volume then has no source
        geometry).
        """

    @staticmethod
    @abstractmethod
    def read_label(path: Path) -> tuple[np.ndarray, np.ndarray]:
        """A label file as (integer array (X, Y, Z), 4x4 affine).

        A static method, because label files are also read before any item exists,
        to collect the label values of a dataset (:meth:`~ssmtl.api.LabeledDatasetConfig.label_mapping`).
        """

    def load(self) -> RawVolume:
        """Read the image (refusing NaN/inf), pick the modality, and read, check and map the label.

        Raises:
            InputFileError: unreadable files, non-finite voxels, a label off the image's
                grid, or a label value outside ``label_values``.
        """
        image, spacing, affine, file_modality, *rest = self.read_image()
        geometry: SourceGeometry | None = rest[0] if rest else None
        check_finite(image, str(self.image_path))
        modality = self.modality or file_modality or detect_modality(image)
        label = None
        if self.label_path is not None:
            values, label_affine = self.read_label(self.label_path)
            check_same_grid(self.image_path, image.shape, affine, self.label_path, values.shape, label_affine)
            label = map_labels(values, self.label_values, self.label_path)
        return RawVolume(image=image, spacing=spacing, modality=modality, label=label, affine=affine,
                         source_geometry=geometry)

    def load_label(self) -> tuple[np.ndarray, np.ndarray]:
        """Only the label map, mapped to class ids: (uint8 (X, Y, Z), its 4x4 affine); the image is not read.

        Evaluation at native resolution reads the reference this way, so a large CT is
        not decoded just to score its segmentation.

        Raises:
            InputFileError: the item has no label, the file cannot be read, or it holds a
                value outside ``label_values``.
        """
        if self.label_path is None:
            raise InputFileError(self.image_path, "has no label map")
        values, label_affine = self.read_label(self.label_path)
        return map_labels(values, self.label_values, self.label_path), label_affine


def folder_source(
    config: FolderDatasetConfig, kind: FileKind, item_class: type[ImageLabelItem], what: str
) -> VolumeSource:
    """The source of a folder dataset: ``config.images`` paired with ``config.labels`` by name.

    Files of ``kind`` are paired by :func:`~ssmtl.api.pair_files`, named by
    :func:`~ssmtl.api.unique_subjects` and mapped by ``config.label_mapping`` (which
    reads the labels with ``item_class.read_label``). ``what`` names the format in the
    description (``"12 NIfTI volumes from imgs/ (10 labeled)"``). Volumes load lazily.

    Raises:
        ConfigError: ``config.images`` is not set.
        InputFileError: see :func:`~ssmtl.api.pair_files` and :func:`~ssmtl.api.unique_subjects`.
    """
    if config.images is None:
        raise ConfigError(
            f"the {config.name} dataset needs an images directory (--images DIR)", rows=[("images", "required")]
        )
    pairs = pair_files(config.images, config.labels, kind)
    subjects = unique_subjects([image for image, _ in pairs], kind, config.images)
    label_paths = [label for _, label in pairs if label is not None]
    label_values, class_names = config.label_mapping(label_paths, item_class.read_label)
    items: list[VolumeItem] = [
        item_class(
            subject=subject,
            source=str(image),
            image_path=image,
            label_path=label,
            modality=config.modality,
            label_values=label_values,
        )
        for subject, (image, label) in zip(subjects, pairs)
    ]
    description = f"{len(items)} {what} volumes from {config.images} ({len(label_paths)} labeled)"
    return VolumeSource(items=items, class_names=class_names, description=description)
