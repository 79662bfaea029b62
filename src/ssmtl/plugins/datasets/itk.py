"""The ``itk`` dataset: a folder of NRRD / MetaImage volumes (``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd``).

Read with SimpleITK (why SimpleITK and not pynrrd: see
:mod:`~ssmtl.plugins.datasets.itk_io`). Options and pairing rules are exactly
those of the ``nifti`` dataset (``images``, ``labels``, ``modality``,
``label_values``, ``class_names``; ``brain1_image.nrrd`` pairs with
``brain1_label.nrrd``, ``case.mha`` with ``labels/case.mha`` or ``case_seg.mha``),
and they are the nifti dataset's own functions: each file is presented to them
under its NIfTI-style name (``brain1_image.nii``), a name that is matched, never
opened. Detached data files (``.raw``, ``.zraw``) sit beside their headers and are
not volumes themselves, so they are ignored like any other file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from ssmtl.api import ConfigError, DatasetSpec, hookimpl, InputFileError, VolumeSource
from ssmtl.plugins.datasets import nifti
from ssmtl.plugins.datasets.itk_io import ITK_EXTENSIONS, is_itk_file, itk_stem
from ssmtl.plugins.datasets.volume_files import VolumeFileItem, collect_label_values


class ItkConfig(nifti.NiftiConfig):
    """Options of the ``itk`` dataset: those of ``nifti``, for NRRD and MetaImage files."""

    name: Literal["itk"] = Field("itk", description="Dataset plugin name.")
    images: Path | None = Field(
        None, description="Directory of image volumes (.nrrd, .nhdr, .mha, .mhd). Required."
    )


def list_itk(directory: Path) -> list[Path]:
    """The ITK-format files in ``directory``, sorted; raises if it is missing or has none."""
    if not directory.exists():
        raise InputFileError(directory, "directory not found")
    if not directory.is_dir():
        raise InputFileError(directory, "not a directory")
    files = sorted(p for p in directory.iterdir() if is_itk_file(p))
    if not files:
        raise InputFileError(directory, f"no NRRD or MetaImage files ({', '.join(ITK_EXTENSIONS)}) found")
    return files


def _by_nifti_name(files: list[Path], directory: Path) -> dict[Path, Path]:
    """NIfTI-style name -> real file, so the nifti pairing rules apply unchanged."""
    names: dict[Path, Path] = {}
    for path in files:
        name = path.with_name(itk_stem(path) + ".nii")
        if name in names:
            raise InputFileError(directory, f"two volumes named {itk_stem(path)!r}: {names[name].name} and {path.name}")
        names[name] = path
    return names


def pair_files(images_dir: Path, labels_dir: Path | None) -> list[tuple[Path, Path | None]]:
    """(image, label or None) pairs by the nifti dataset's rules, as NIfTI-style names."""
    images = _by_nifti_name(list_itk(images_dir), images_dir)
    image_names, same_folder_labels = nifti._split_same_folder(list(images))
    if labels_dir is None:
        return [(name, None) for name in image_names]
    same_folder = labels_dir.exists() and labels_dir.resolve() == images_dir.resolve()
    labels = same_folder_labels if same_folder else list(_by_nifti_name(list_itk(labels_dir), labels_dir))
    index = nifti._LabelIndex.build(labels, labels_dir)
    pairs = [(name, index.find(name)) for name in image_names]
    if not any(label is not None for _, label in pairs):
        example = images[image_names[0]].name
        raise InputFileError(
            labels_dir,
            f"no label file matches any of the {len(pairs)} images; expected e.g. {example} or "
            f"{itk_stem(images[image_names[0]])}_label{Path(example).suffix} for image {example}",
        )
    return pairs


def build_source(config: ItkConfig) -> VolumeSource:
    """List and pair the files; collect label values if needed. Volumes load lazily."""
    if config.images is None:
        raise ConfigError("the itk dataset needs an images directory (--images DIR)", rows=[("images", "required")])
    real = _by_nifti_name(list_itk(config.images), config.images)
    if config.labels is not None and config.labels.exists() and config.labels.resolve() != config.images.resolve():
        real.update(_by_nifti_name(list_itk(config.labels), config.labels))
    named_pairs = pair_files(config.images, config.labels)
    subjects = nifti._unique_subjects(named_pairs, config.images)
    pairs = [(real[image], real[label] if label is not None else None) for image, label in named_pairs]
    return nifti.source_from_pairs(config, pairs, subjects, VolumeFileItem, "NRRD/MetaImage", collect_label_values)


@hookimpl
def ssmtl_register_datasets():
    return [
        DatasetSpec(
            name="itk",
            config_model=ItkConfig,
            factory=build_source,
            description="NRRD and MetaImage volumes (.nrrd/.nhdr/.mha/.mhd) via SimpleITK, with optional label maps",
        )
    ]
