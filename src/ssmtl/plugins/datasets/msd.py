"""The ``msd`` dataset: a Medical Segmentation Decathlon task folder, read through its ``dataset.json``.

Layout (``--path Task02_Heart``)::

    Task02_Heart/
        dataset.json        modality, labels, training, test, numTraining, numTest
        imagesTr/la_003.nii.gz   labelsTr/la_003.nii.gz
        imagesTs/la_001.nii.gz
        imagesTr/._la_003.nii.gz    (macOS resource forks: never read)

``dataset.json`` is authoritative: the volumes are exactly those its ``training``
(``{"image": "./imagesTr/la_003.nii.gz", "label": "./labelsTr/la_003.nii.gz"}``) and
``test`` (``"./imagesTs/la_001.nii.gz"``) lists name, relative to the file's folder, so
the ``._`` files the Decathlon's archives carry are never seen. A listed file that is
missing is an error naming it. The subject is the image's file stem (``la_003``).

* ``modality`` (``{"0": "MRI"}``) gives the modality (``CT`` -> ct; ``MRI``, ``T2``,
  ``FLAIR``... -> mr; else detected), unless ``--modality`` says it. Tasks with several
  modalities store 4D images (X, Y, Z, channel; Task01_BrainTumour: FLAIR, T1w, t1gd,
  T2w): ssmtl's networks take one channel per volume, so such a task is refused unless
  ``--channel N`` picks one, which is then read from every image.
* ``labels`` (``{"0": "background", "1": "left atrium"}``): each non-zero value is a
  class, named as declared; an undeclared value in a label map is an error naming the file.
* ``numTraining`` / ``numTest``, when present, must match the lists.

Test images are unlabeled volumes (``--no-include-test`` leaves them out).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from ssmtl.api import check_directory, ConfigError, DatasetConfig, DatasetSpec, hookimpl, InputFileError, VolumeSource

from ssmtl.plugins.datasets.dataset_json import (
    channel_modality,
    channel_table,
    choose_channel,
    count_field,
    FILE_NAME,
    label_table,
    read_dataset_json,
)
from ssmtl.plugins.datasets.nifti import NiftiItem
from ssmtl.plugins.datasets.nifti_io import load_channel


class MsdConfig(DatasetConfig):
    """Options of the ``msd`` dataset."""

    name: Literal["msd"] = Field("msd", description="Dataset plugin name.")
    path: Path | None = Field(
        None, description="Medical Segmentation Decathlon task folder (Task02_Heart/) holding dataset.json. Required.")
    channel: int | None = Field(
        None, ge=0, description="The modality to cache from the 4D images of a multi-modal task (a key of "
                                "dataset.json's modality). None: the task must have one modality.")
    include_test: bool = Field(True, description="Also cache the test images (unlabeled).")
    modality: Literal["ct", "mr"] | None = Field(
        None, description="Imaging modality. None: from dataset.json's modality name (CT -> ct; MRI, T2, FLAIR... "
                          "-> mr), else detected per volume.")


@dataclass
class MsdChannelItem(NiftiItem):
    """A volume that is one channel of a 4D Decathlon image (``channel`` of ``channels``)."""

    channel: int = 0
    channels: int = 1

    def read_image(self):
        array, spacing, affine, geometry = load_channel(self.image_path, self.channel, self.channels)
        return array, spacing, affine, None, geometry


def _listed(root: Path, entry: Any, path: Path, where: str) -> Path:
    """The file a list entry names, relative to the dataset.json folder; it must exist."""
    if not isinstance(entry, str) or not entry.strip():
        raise InputFileError(path, f"{where}: expected a file path, got {entry!r}")
    file = root / entry.strip()
    if not file.is_file():
        raise InputFileError(file, f"file not found (listed in {where} of {path})")
    return file


def list_files(root: Path, data: dict[str, Any], path: Path, include_test: bool) -> list[tuple[Path, Path | None]]:
    """(image, label or None) for every training entry, then every test entry when ``include_test``."""
    training, test = data.get("training"), data.get("test", [])
    if not isinstance(training, list) or not training:
        raise InputFileError(path, 'training: expected a list of {"image": ..., "label": ...} entries')
    if not isinstance(test, list):
        raise InputFileError(path, "test: expected a list of image paths")
    count_field(data, path, "numTraining", len(training), "the training list")
    count_field(data, path, "numTest", len(test), "the test list")
    files: list[tuple[Path, Path | None]] = []
    for number, entry in enumerate(training, start=1):
        where = f"training entry {number}"
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            raise InputFileError(path, f'{where}: expected {{"image": ..., "label": ...}}, got {entry!r}')
        files.append((_listed(root, entry["image"], path, where), _listed(root, entry["label"], path, where)))
    if include_test:
        files += [(_listed(root, entry, path, f"test entry {n}"), None) for n, entry in enumerate(test, start=1)]
    return files


def subject_of(image: Path) -> str:
    """The file name without ``.nii.gz`` / ``.nii`` (``la_003``)."""
    name = image.name
    for ending in (".nii.gz", ".nii"):
        if name.lower().endswith(ending):
            return name[: -len(ending)]
    return image.stem


def build_source(config: MsdConfig) -> VolumeSource:
    """Read dataset.json and list the volumes it names. Volumes load lazily."""
    if config.path is None:
        raise ConfigError("the msd dataset needs the Decathlon task folder (--path DIR)", rows=[("path", "required")])
    root = check_directory(config.path)
    path = root / FILE_NAME
    data = read_dataset_json(path)
    channels = channel_table(data, path, "modality")
    channel = choose_channel(channels, config.channel, path, "modality")
    label_values, class_names = label_table(data, path)
    modality = config.modality or channel_modality(channels[channel])
    files = list_files(root, data, path, config.include_test)
    seen: dict[str, Path] = {}
    items = []
    for image, label in files:
        subject = subject_of(image)
        if subject in seen:
            raise InputFileError(path, f"two images for subject {subject!r}: {seen[subject]} and {image}")
        seen[subject] = image
        common = dict(subject=subject, source=str(image), image_path=image, label_path=label, modality=modality,
                      label_values=label_values)
        items.append(MsdChannelItem(**common, channel=channel, channels=len(channels)) if len(channels) > 1
                     else NiftiItem(**common))
    labeled = sum(label is not None for _, label in files)
    name = data.get("name") if isinstance(data.get("name"), str) else root.name
    picked = f", modality {channel} {channels[channel]}" if len(channels) > 1 else ""
    description = (f"{len(items)} Decathlon volumes of {name} from {root} ({labeled} labeled, "
                   f"{len(items) - labeled} test{picked})")
    return VolumeSource(items=items, class_names=class_names, description=description)


@hookimpl
def ssmtl_register_datasets():
    return [
        DatasetSpec(
            name="msd",
            config_model=MsdConfig,
            factory=build_source,
            description="Medical Segmentation Decathlon task folder, read from its dataset.json (training/test lists)",
        )
    ]
