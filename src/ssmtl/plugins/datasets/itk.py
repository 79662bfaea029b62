"""The ``itk`` dataset: a folder of NRRD / MetaImage volumes (``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd``).

Read with SimpleITK (why SimpleITK and not pynrrd: see
:mod:`~ssmtl.plugins.datasets.itk_io`). Options and pairing rules are exactly
those of the ``nifti`` dataset (``images``, ``labels``, ``modality``,
``label_values``, ``class_names``; ``brain1_image.nrrd`` pairs with
``brain1_label.nrrd``, ``case.mha`` with ``labels/case.mha`` or ``case_seg.mha``),
because both are the toolkit's :func:`ssmtl.api.folder_source`. Detached data
files (``.raw``, ``.zraw``) sit beside their headers and are not volumes
themselves, so they are ignored like any other file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from ssmtl.api import DatasetSpec, folder_source, FolderDatasetConfig, hookimpl, VolumeSource

from ssmtl.plugins.datasets.itk_io import ITK_FILES
from ssmtl.plugins.datasets.volume_files import scan_item, VolumeFileItem


class ItkConfig(FolderDatasetConfig):
    """Options of the ``itk`` dataset: those of ``nifti``, for NRRD and MetaImage files."""

    name: Literal["itk"] = Field("itk", description="Dataset plugin name.")
    images: Path | None = Field(
        None, description="Directory of image volumes (.nrrd, .nhdr, .mha, .mhd). Required."
    )


def open_scan(path: Path) -> VolumeFileItem | None:
    """One NRRD or MetaImage file for ``ssmtl predict``; None for anything else."""
    return scan_item(path) if ITK_FILES.claims(path) else None


def build_source(config: ItkConfig) -> VolumeSource:
    """List and pair the files; collect label values if needed. Volumes load lazily."""
    return folder_source(config, ITK_FILES, VolumeFileItem, "NRRD/MetaImage")


@hookimpl
def ssmtl_register_datasets():
    return [
        DatasetSpec(
            name="itk",
            config_model=ItkConfig,
            factory=build_source,
            description="NRRD and MetaImage volumes (.nrrd/.nhdr/.mha/.mhd) via SimpleITK, with optional label maps",
            open_scan=open_scan,
        )
    ]
