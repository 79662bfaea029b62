"""Config bases of labeled datasets: the label options, and a folder of images with labels.

Every dataset that maps label files the same way subclasses
:class:`LabeledDatasetConfig`, so ``label_values`` and ``class_names`` mean one
thing and are validated by one set of rules (:mod:`ssmtl.api.datasets.labels`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from ssmtl.api.datasets.labels import (
    check_class_names,
    check_label_values,
    class_name_table,
    collect_label_values,
    LabelReader,
)
from ssmtl.api.volumes import DatasetConfig


class LabeledDatasetConfig(DatasetConfig):
    """Base config of a dataset whose label maps are mapped by ``label_values`` / ``class_names``.

    Validation: ``label_values`` is non-empty, without 0 or duplicates, at most 255
    values; ``class_names``, when both are given, has one name per value. Names for
    values collected from the files are checked by :meth:`label_mapping`.
    """

    label_values: list[int] | None = Field(
        None,
        description=(
            "Raw label values mapped, in order, to class ids 1..n (0 is background). "
            "None: the sorted non-zero values found in the label files."
        ),
    )
    class_names: list[str] | None = Field(None, description="Names of classes 1..n, in order.")

    @field_validator("label_values")
    @classmethod
    def _valid_label_values(cls, values: list[int] | None) -> list[int] | None:
        return values if values is None else list(check_label_values(values))

    @model_validator(mode="after")
    def _one_name_per_value(self) -> "LabeledDatasetConfig":
        if self.class_names is not None and self.label_values is not None:
            check_class_names(self.class_names, self.label_values)
        return self

    def label_mapping(self, label_paths: Sequence[Path], read: LabelReader) -> tuple[tuple[int, ...], dict[int, str]]:
        """(label values, class-name table) for a dataset with these label files.

        The configured ``label_values``, else the values collected from the files with
        ``read``; no label files give ``((), {})`` (an unlabeled dataset has no classes).

        Raises:
            ConfigError: ``class_names`` does not have one name per collected value.
            InputFileError: a label file cannot be read.
        """
        if not label_paths:
            return (), {}
        values = tuple(self.label_values) if self.label_values else collect_label_values(label_paths, read)
        return values, class_name_table(values, self.class_names)


class FolderDatasetConfig(LabeledDatasetConfig):
    """Base config of a folder of image files with optional label maps paired by name.

    Pairing follows :mod:`ssmtl.api.datasets.pairing`; see :func:`~ssmtl.api.folder_source`.
    Subclasses set ``name`` (and may redescribe ``images`` with their extensions).
    """

    images: Path | None = Field(None, description="Directory of image volumes. Required.")
    labels: Path | None = Field(
        None,
        description="Directory of label maps paired with images by file name; may be the images directory.",
    )
    modality: Literal["ct", "mr"] | None = Field(
        None,
        description=(
            "Imaging modality. None: detect per volume, CT if the 0.5th percentile of the "
            "intensities is below -500 (air in HU), MR otherwise."
        ),
    )
