"""The ``nifti`` dataset: a folder of NIfTI volumes, optionally with label maps.

Layouts supported (files other than ``.nii`` / ``.nii.gz`` are ignored, as are
hidden files such as macOS ``._name`` resource forks):

* ``--images DIR`` alone: every NIfTI in DIR is an unlabeled volume (label files
  that pair with an image in the same folder, see below, are left out).
* ``--images IMG --labels LAB``: a label pairs with an image when it has the same
  file name (``case01.nii.gz`` <-> ``case01.nii.gz``) or the same stem plus a
  label suffix (``_label``, ``_labels``, ``_seg``, ``_segmentation``, ``_gt``,
  ``_mask`` or the same with ``-``); the image may itself carry ``_image`` /
  ``_img`` (``ct_1001_image.nii.gz`` <-> ``ct_1001_label.nii.gz``). Images
  without a label are loaded unlabeled; if no image at all has a label, that is
  an error (almost certainly a naming mismatch).
* ``--images DIR --labels DIR`` (the same folder): label files are recognised by
  their suffix and excluded from the images.
* nnU-Net's raw naming (``imagesTr/case000_0000.nii.gz`` with ``labelsTr/case000.nii.gz``):
  in a folder where every image ends in ``_0000`` the channel suffix is dropped, for
  pairing and for the subject (``case000``); a second channel (``case000_0001``) is an
  error, since a volume is one channel (see :func:`ssmtl.api.channel_cases`).

Labels are mapped to contiguous class ids: ``label_values[i]`` becomes class
``i + 1`` and 0 stays background. Without ``label_values`` the sorted non-zero
values found over all label files (a first pass reading only the labels) are used.

All of this is the public dataset toolkit (:func:`ssmtl.api.folder_source`); this
module only says how a NIfTI file is read (:mod:`~ssmtl.plugins.datasets.nifti_io`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field

from ssmtl.api import DatasetSpec, folder_source, FolderDatasetConfig, hookimpl, ImageLabelItem, VolumeSource

from ssmtl.plugins.datasets.nifti_io import load_image, NIFTI_FILES, read_label_values
from ssmtl.plugins.datasets.volume_files import scan_item


class NiftiConfig(FolderDatasetConfig):
    """Options of the ``nifti`` dataset."""

    name: Literal["nifti"] = Field("nifti", description="Dataset plugin name.")
    images: Path | None = Field(None, description="Directory of image volumes (.nii / .nii.gz). Required.")


@dataclass
class NiftiItem(ImageLabelItem):
    """One NIfTI image, optionally with its NIfTI label map; loads lazily (see :class:`ssmtl.api.ImageLabelItem`)."""

    def read_image(self):
        array, spacing, affine, geometry = load_image(self.image_path)
        return array, spacing, affine, None, geometry

    read_label = staticmethod(read_label_values)


def open_scan(path: Path) -> NiftiItem | None:
    """One NIfTI file for ``ssmtl predict``; None for anything else."""
    return scan_item(path, NiftiItem) if NIFTI_FILES.claims(path) else None


def build_source(config: NiftiConfig) -> VolumeSource:
    """List and pair the files; collect label values if needed. Volumes load lazily."""
    return folder_source(config, NIFTI_FILES, NiftiItem, "NIfTI")


@hookimpl
def ssmtl_register_datasets():
    return [
        DatasetSpec(
            name="nifti",
            config_model=NiftiConfig,
            factory=build_source,
            description="NIfTI volumes (.nii/.nii.gz) from a folder, with optional label maps",
            open_scan=open_scan,
        )
    ]
