"""The ``nnunet`` dataset: an nnU-Net raw dataset folder (v2, and v1's ``labels`` spelling).

Layout (``--path Dataset001_Heart``)::

    Dataset001_Heart/
        dataset.json        channel_names, labels, numTraining, file_ending
        imagesTr/case000_0000.nii.gz   labelsTr/case000.nii.gz
        imagesTs/case100_0000.nii.gz   labelsTs/case100.nii.gz   (both optional)

A case is ``CASE_NNNN<file_ending>``: the case id, then the four-digit channel. The
case id is the subject. ``dataset.json`` says:

* ``channel_names``: the channels (``{"0": "CT"}``). ssmtl's networks take one channel
  per volume: a dataset with several is refused unless ``--channel N`` picks one, and a
  case file of an undeclared channel is an error. The channel's name gives the modality
  (``CT`` -> ct; ``MRI``, ``T1``, ``T2``, ``FLAIR``, ``ADC``... -> mr; anything else,
  such as ``noNorm``: detected), unless ``--modality`` says it.
* ``labels``: name -> value (v1's value -> name also read); each non-zero value is a
  class, named as declared. A value in a label map that is not declared is an error
  naming the file. Region-based labels (a name mapped to a list of values) and the
  ``ignore`` label are refused.
* ``file_ending``: which files are images and labels (``.nii.gz``, ``.nii``, ``.nrrd``,
  ``.nhdr``, ``.mha``, ``.mhd``; 2D formats are refused). Default ``.nii.gz``.
* ``numTraining``: must be the number of cases in ``imagesTr``.

Every training case needs its label; a label without a case is an error. Test cases
(``imagesTs``, with ``--include-test``, the default) are unlabeled, or labeled where
``labelsTs`` has their label; labeled test cases are stored as the cache's test split.
Without ``dataset.json`` the folders are still read: every supported format, one
channel, labels from the values found (``label_<value>``), modality detected.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from ssmtl.api import (
    check_directory,
    collect_label_values,
    ConfigError,
    DatasetConfig,
    DatasetSpec,
    FileKind,
    hookimpl,
    InputFileError,
    is_hidden,
    Modality,
    split_channel,
    VolumeItem,
    VolumeSource,
)

from ssmtl.plugins.datasets.dataset_json import (
    channel_modality,
    channel_table,
    choose_channel,
    count_field,
    describe_channels,
    FILE_NAME,
    label_table,
    read_dataset_json,
)
from ssmtl.plugins.datasets.volume_files import read_label, VOLUME_FILES, VolumeFileItem

DEFAULT_ENDING = ".nii.gz"


class NnunetConfig(DatasetConfig):
    """Options of the ``nnunet`` dataset."""

    name: Literal["nnunet"] = Field("nnunet", description="Dataset plugin name.")
    path: Path | None = Field(
        None, description="nnU-Net raw dataset folder (Dataset001_Heart/) holding dataset.json, imagesTr/, labelsTr/, "
                          "optionally imagesTs/ and labelsTs/. Required.")
    channel: int | None = Field(
        None, ge=0, description="The input channel to cache (NNNN in CASE_NNNN) when cases have several. "
                                "None: the dataset must have one channel.")
    include_test: bool = Field(
        True, description="Also cache imagesTs/: unlabeled, or labeled from labelsTs/ and then the cache's test split.")
    modality: Literal["ct", "mr"] | None = Field(
        None, description="Imaging modality. None: from the channel's name in dataset.json (CT -> ct; MRI, T1, T2, "
                          "FLAIR, ADC... -> mr), else detected per volume.")


@dataclass
class Layout:
    """What ``dataset.json`` (or, without it, the files) says about the dataset."""

    kind: FileKind
    channels: dict[int, str] | None  # None: no dataset.json
    channel: int
    chosen: bool  # --channel given
    modality: Modality | None
    label_values: tuple[int, ...] | None  # None: collect from the label files
    class_names: dict[int, str] | None


@dataclass
class NnunetSource(VolumeSource):
    """A :class:`VolumeSource` whose labeled test cases (``labelsTs``) are the stored test split."""

    split: dict[str, str] = field(default_factory=dict)


def read_layout(root: Path, config: NnunetConfig) -> tuple[Layout, dict[str, Any] | None]:
    """The layout from ``root/dataset.json``, or the defaults of a folder without one; and the parsed file."""
    path = root / FILE_NAME
    if not path.exists():
        channel = 0 if config.channel is None else config.channel
        return Layout(VOLUME_FILES, None, channel, config.channel is not None, config.modality, None, None), None
    data = read_dataset_json(path)
    if "dataset" in data:
        raise InputFileError(path, "dataset: cases listed by path are not read; ssmtl reads imagesTr/ and labelsTr/")
    if "channel_names" not in data and "modality" in data:
        raise InputFileError(path, "has modality but no channel_names: a Medical Segmentation Decathlon (or nnU-Net "
                                   "v1) dataset.json; read it with --dataset msd")
    channels = channel_table(data, path, "channel_names")
    channel = choose_channel(channels, config.channel, path, "channel_names")
    ending = data.get("file_ending", DEFAULT_ENDING)
    if not isinstance(ending, str) or ending.lower() not in VOLUME_FILES.extensions:
        raise InputFileError(path, f"file_ending: {ending!r} is not a volume format ssmtl reads "
                                   f"({', '.join(VOLUME_FILES.extensions)})")
    values, class_names = label_table(data, path)
    modality = config.modality or channel_modality(channels[channel])
    kind = FileKind("files of file_ending", (ending,))
    return Layout(kind, channels, channel, config.channel is not None, modality, values, class_names), data


def list_cases(folder: Path, layout: Layout) -> dict[str, Path]:
    """case id -> its image of the chosen channel, for every case in ``folder`` (sorted by case id).

    Raises:
        InputFileError: a file of the dataset's format not named ``CASE_NNNN``, a channel
            not declared (or, without dataset.json, a second channel and no ``--channel``),
            or a case without the chosen channel.
    """
    check_directory(folder)
    cases: dict[str, dict[int, Path]] = {}
    for path in sorted(folder.iterdir()):
        if is_hidden(path) or not layout.kind.matches(path):
            continue
        stem = layout.kind.stem(path)
        parsed = split_channel(stem)
        if parsed is None:
            raise InputFileError(path, f"not named CASE_NNNN{layout.kind.extension(path)}: nnU-Net's images end in "
                                       f"their four-digit channel, e.g. {stem}_0000{layout.kind.extension(path)}")
        case, channel = parsed
        if layout.channels is not None and channel not in layout.channels:
            raise InputFileError(path, f"channel {channel} of case {case!r}, but {FILE_NAME} declares channel_names "
                                       f"{describe_channels(layout.channels)}")
        if layout.channels is None and channel != layout.channel and not layout.chosen:
            raise InputFileError(path, f"channel {channel} of case {case!r}; ssmtl's networks take one channel per "
                                       "volume: choose one with --channel N")
        cases.setdefault(case, {})[channel] = path
    if not cases:
        raise InputFileError(folder, f"no nnU-Net images found: no {layout.kind.describe()}")
    images = {}
    for case, channels in sorted(cases.items()):
        if layout.channel not in channels:
            example = next(iter(channels.values()))
            expected = folder / f"{case}_{layout.channel:04d}{layout.kind.extension(example)}"
            raise InputFileError(expected, f"file not found: channel {layout.channel} of case {case!r}")
        images[case] = channels[layout.channel]
    return images


def list_labels(folder: Path, layout: Layout) -> dict[str, Path]:
    """case id -> label file in ``folder``."""
    labels = {}
    for path in sorted(check_directory(folder).iterdir()):
        if not is_hidden(path) and layout.kind.matches(path):
            stem = layout.kind.stem(path)
            if stem in labels:
                raise InputFileError(folder, f"two label files for case {stem!r}: {labels[stem].name} and {path.name}")
            labels[stem] = path
    return labels


def pair_training(root: Path, layout: Layout) -> list[tuple[str, Path, Path]]:
    """(case, image, label) of every training case; each case needs its label, each label its case."""
    images = list_cases(root / "imagesTr", layout)
    labels = list_labels(root / "labelsTr", layout)
    for case, image in images.items():
        if case not in labels:
            ending = layout.kind.extension(image)
            raise InputFileError(root / "labelsTr" / f"{case}{ending}",
                                 f"file not found: the label of training case {case!r} ({image.name})")
    orphans = sorted(set(labels) - set(images))
    if orphans:
        case, label = orphans[0], labels[orphans[0]]
        expected = f"{case}_{layout.channel:04d}{layout.kind.extension(label)}"
        raise InputFileError(label, f"label of case {case!r}, which has no image in imagesTr (expected {expected})")
    return [(case, image, labels[case]) for case, image in images.items()]


def pair_test(root: Path, layout: Layout) -> list[tuple[str, Path, Path | None]]:
    """(case, image, label or None) of every test case in ``imagesTs`` (none without the folder)."""
    if not (root / "imagesTs").exists():
        return []
    images = list_cases(root / "imagesTs", layout)
    labels = list_labels(root / "labelsTs", layout) if (root / "labelsTs").exists() else {}
    return [(case, image, labels.get(case)) for case, image in images.items()]


def build_source(config: NnunetConfig) -> NnunetSource:
    """Read dataset.json, list the cases and pair them with their labels. Volumes load lazily."""
    if config.path is None:
        raise ConfigError("the nnunet dataset needs the nnU-Net dataset folder (--path DIR)", rows=[("path", "required")])
    root = check_directory(config.path)
    layout, data = read_layout(root, config)
    training = pair_training(root, layout)
    if data is not None:
        count_field(data, root / FILE_NAME, "numTraining", len(training), "imagesTr")
    test = pair_test(root, layout) if config.include_test else []
    seen = {case: image for case, image, _ in training}
    for case, image, _ in test:
        if case in seen:
            raise InputFileError(image, f"case {case!r} is also a training case ({seen[case]})")
    cases = training + test
    label_paths = [label for _, _, label in cases if label is not None]
    values = layout.label_values if layout.label_values is not None else collect_label_values(label_paths, read_label)
    class_names = layout.class_names or {0: "background", **{i: f"label_{v}" for i, v in enumerate(values, start=1)}}
    items: list[VolumeItem] = [
        VolumeFileItem(subject=case, source=str(image), image_path=image, label_path=label, modality=layout.modality,
                       label_values=values)
        for case, image, label in cases
    ]
    split = {case: "test" for case, _, label in test if label is not None}
    channel = "" if layout.channels is None else f", channel {layout.channel} {layout.channels[layout.channel]}"
    description = (f"{len(items)} nnU-Net cases from {root} ({len(training)} training, {len(test)} test, "
                   f"{len(label_paths)} labeled{channel})")
    return NnunetSource(items=items, class_names=class_names, description=description, split=split)


@hookimpl
def ssmtl_register_datasets():
    return [
        DatasetSpec(
            name="nnunet",
            config_model=NnunetConfig,
            factory=build_source,
            description="nnU-Net raw dataset folder: dataset.json, imagesTr/CASE_0000 + labelsTr/CASE, imagesTs",
        )
    ]
