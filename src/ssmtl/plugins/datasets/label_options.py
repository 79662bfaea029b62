"""The label options shared by file-based datasets: ``label_values`` and ``class_names``.

They mean what they mean for the ``nifti`` dataset, and are validated by its
validators, so every dataset maps labels the same way: ``label_values[i]`` becomes
class ``i + 1``, 0 stays background, and without ``label_values`` the sorted
non-zero values found in the label files are used.
"""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from ssmtl.api import DatasetConfig
from ssmtl.plugins.datasets.nifti import NiftiConfig, _check_names_match


class LabeledDatasetConfig(DatasetConfig):
    """Base config of datasets whose label values are configurable."""

    label_values: list[int] | None = Field(None, description=NiftiConfig.model_fields["label_values"].description)
    class_names: list[str] | None = Field(None, description=NiftiConfig.model_fields["class_names"].description)

    @field_validator("label_values")
    @classmethod
    def _check_label_values(cls, values: list[int] | None) -> list[int] | None:
        return NiftiConfig._check_label_values(values)

    @model_validator(mode="after")
    def _check_class_names(self) -> "LabeledDatasetConfig":
        if self.class_names is not None and self.label_values is not None:
            _check_names_match(self.class_names, self.label_values)
        return self
