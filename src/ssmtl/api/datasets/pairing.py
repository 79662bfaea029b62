"""Pairing images with label maps by file name, and naming subjects.

The rules (all comparisons ignore case):

* A label pairs with an image when it has the same stem (``case01.nii.gz`` <->
  ``labels/case01.nii.gz``) or the same stem plus a label suffix (:data:`LABEL_SUFFIX`:
  ``_label``, ``_labels``, ``_seg``, ``_segmentation``, ``_gt``, ``_mask``, or the same
  with ``-``). The image may itself carry an image suffix (:data:`IMAGE_SUFFIX`:
  ``_image``, ``_img``): ``ct_1001_image.nii.gz`` <-> ``ct_1001_label.nii.gz``.
* Two label files that answer to one image are ambiguous: an error naming both.
* When images and labels share one folder, a file is a label if it carries a label
  suffix and its stem without the suffix is the key of another file there
  (:func:`split_same_folder`); everything else is an image.
* Images without a label are unlabeled volumes; but when a labels folder is given and
  no image at all has a label, that is an error (almost always a naming mismatch).
* The subject of an image is its stem without an image suffix; two images of one
  subject in one folder are an error (:func:`unique_subjects`).
* nnU-Net's channel naming (``case000_0000.nii.gz``: channel 0 of case ``case000``,
  whose label is ``case000.nii.gz``) is recognised per folder (:func:`channel_cases`):
  the case is then the image's subject and pairing key, and a file of another channel
  (``case000_0001``) is an error, since a volume is one channel.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ssmtl.api.datasets.files import FileKind
from ssmtl.api.errors import InputFileError

#: Marks a label map's stem: ``_label``, ``_labels``, ``_seg``, ``_segmentation``, ``_gt``, ``_mask`` (or ``-``).
LABEL_SUFFIX = re.compile(r"[_-](label|labels|seg|segmentation|gt|mask)$", re.IGNORECASE)
#: Marks an image's stem: ``_image`` or ``_img`` (or ``-``).
IMAGE_SUFFIX = re.compile(r"[_-](image|img)$", re.IGNORECASE)
#: nnU-Net's channel suffix ending an image stem: ``_`` and four digits (``case000_0001``: channel 1 of ``case000``).
CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def subject_name(stem: str) -> str:
    """The subject an image stem names: the stem without an image suffix, case kept (``ct_1001_image`` -> ``ct_1001``)."""
    return IMAGE_SUFFIX.sub("", stem)


def image_key(stem: str) -> str:
    """Pairing key of an image stem: its subject name, lower-case."""
    return subject_name(stem).lower()


def split_channel(stem: str) -> tuple[str, int] | None:
    """(case, channel) of a stem ending in nnU-Net's channel suffix (``case000_0001`` -> ``("case000", 1)``);
    None for any other stem."""
    match = CHANNEL_SUFFIX.match(stem)
    return (match["case"], int(match["channel"])) if match else None


def channel_cases(stems: Sequence[str], label_stems: Iterable[str] = ()) -> dict[str, tuple[str, int]]:
    """stem -> (case, channel) when one folder's image stems follow nnU-Net's channel naming; else ``{}``.

    A four-digit ending alone is ambiguous (``amos_0001`` is a case; ``scan_0000`` ..
    ``scan_0009`` may be ten scans), so the naming is recognised only when every stem
    carries a channel suffix, every case has its channel 0, and one of:

    * every stem is channel 0 (``case000_0000``, ``case001_0000``: single-channel);
    * at least two cases have the same channels (``a_0000 a_0001 b_0000 b_0001``);
    * a label stem (``label_stems``, any case) is a case and none is an image stem
      (``case000_0000``, ``case000_0001`` beside the label ``case000``).
    """
    split = {stem: split_channel(stem) for stem in stems}
    if not split or any(value is None for value in split.values()):
        return {}
    channels: dict[str, set[int]] = {}
    for case, channel in split.values():  # type: ignore[misc]
        channels.setdefault(case.lower(), set()).add(channel)
    if any(0 not in found for found in channels.values()):
        return {}
    labels = {stem.lower() for stem in label_stems}
    single = all(found == {0} for found in channels.values())
    shared = len(channels) >= 2 and len({frozenset(found) for found in channels.values()}) == 1
    named = bool(labels & set(channels)) and not labels & {stem.lower() for stem in split}
    return split if single or shared or named else {}  # type: ignore[return-value]


def image_cases(images: Sequence[Path], kind: FileKind, label_stems: Iterable[str] = ()) -> dict[Path, str]:
    """image -> its case name, for a folder of images in nnU-Net's channel naming (:func:`channel_cases`); else ``{}``.

    Raises:
        InputFileError: an image of a channel other than 0 (a multi-channel case),
            naming that file, its case and the case's channel-0 file.
    """
    stems = {image: kind.stem(image) for image in images}
    cases = channel_cases(list(stems.values()), label_stems)
    if not cases:
        return {}
    zero = {cases[stem][0].lower(): image for image, stem in stems.items() if cases[stem][1] == 0}
    for image, stem in stems.items():
        case, channel = cases[stem]
        if channel != 0:
            raise InputFileError(
                image,
                f"channel {channel} of the nnU-Net case {case!r} (its channel 0 is {zero[case.lower()].name}); "
                "ssmtl's networks take one channel per volume: keep one channel's files (_0000) in the folder",
            )
    return {image: cases[stem][0] for image, stem in stems.items()}


def label_key(stem: str) -> str | None:
    """Pairing key of a stem carrying a label suffix (the stem without it, lower-case), else None."""
    return LABEL_SUFFIX.sub("", stem).lower() if LABEL_SUFFIX.search(stem) else None


@dataclass
class LabelIndex:
    """Label files by exact stem and by stem without a label suffix (all lower-case).

    Build it with :meth:`build`, then ask :meth:`find` for each image.
    """

    kind: FileKind
    exact: dict[str, Path]
    stripped: dict[str, Path]

    @classmethod
    def build(cls, labels: list[Path], kind: FileKind, directory: Path) -> "LabelIndex":
        """Index ``labels``; two files answering to one key raise InputFileError naming ``directory`` and both."""
        index = cls(kind, {}, {})
        for path in labels:
            stem = kind.stem(path)
            index._add(index.exact, stem.lower(), path, directory)
            key = label_key(stem)
            if key is not None:
                index._add(index.stripped, key, path, directory)
        return index

    @staticmethod
    def _add(table: dict[str, Path], key: str, path: Path, directory: Path) -> None:
        if key in table:
            raise InputFileError(directory, f"ambiguous label files for {key!r}: {table[key].name} and {path.name}")
        table[key] = path

    def find(self, image: Path, case: str | None = None) -> Path | None:
        """The label of ``image``: the same stem first, then the same stem with label/image suffixes removed,
        then the image's nnU-Net ``case`` if it has one (:func:`image_cases`), with or without a label suffix."""
        stem = self.kind.stem(image).lower()
        key = image_key(self.kind.stem(image))
        lookups = [(self.exact, stem), (self.stripped, stem), (self.stripped, key), (self.exact, key)]
        if case is not None:
            lookups += [(self.exact, case.lower()), (self.stripped, case.lower())]
        for table, name in lookups:
            if name in table:
                return table[name]
        return None


def split_same_folder(files: list[Path], kind: FileKind) -> tuple[list[Path], list[Path]]:
    """Split one folder's files into (images, labels).

    A label carries a label suffix and, without it, names a file of the folder
    that carries none (by that file's stem or image key); every other file is an
    image, so ``patient_seg.nii.gz`` without a ``patient`` image stays an image.
    """
    stems = {path: kind.stem(path) for path in files}
    others = [p for p in files if label_key(stems[p]) is None]
    keys = {image_key(stems[p]) for p in others} | {stems[p].lower() for p in others}
    labels = [p for p in files if label_key(stems[p]) is not None and label_key(stems[p]) in keys]
    images = [p for p in files if p not in labels]
    return images, labels


def pair_files(images_dir: Path, labels_dir: Path | None, kind: FileKind) -> list[tuple[Path, Path | None]]:
    """(image, label or None) for every file of ``kind`` in ``images_dir``, sorted by image name.

    ``labels_dir`` may be None (all unlabeled; label maps lying next to their images
    are still left out), the images folder itself, or another folder. Images in
    nnU-Net's channel naming pair with the label of their case (:func:`image_cases`).

    Raises:
        InputFileError: a folder is missing or empty, two labels answer to one image,
            no image has a label although ``labels_dir`` is given, or an image is a
            second channel of an nnU-Net case.
    """
    images, same_folder_labels = split_same_folder(kind.list_in(images_dir), kind)
    if labels_dir is None:
        image_cases(images, kind)
        return [(image, None) for image in images]
    same_folder = labels_dir.exists() and labels_dir.resolve() == images_dir.resolve()
    labels = same_folder_labels if same_folder else kind.list_in(labels_dir)
    cases = image_cases(images, kind, [kind.stem(label) for label in labels])
    index = LabelIndex.build(labels, kind, labels_dir)
    pairs = [(image, index.find(image, cases.get(image))) for image in images]
    if not any(label is not None for _, label in pairs):
        example = images[0]
        stem = cases.get(example) or kind.stem(example)
        raise InputFileError(
            labels_dir,
            f"no label file matches any of the {len(images)} images; expected e.g. "
            f"{stem + kind.extension(example) if example in cases else example.name} or "
            f"{stem}_label{kind.extension(example)} for image {example.name}",
        )
    return pairs


def unique_subjects(images: list[Path], kind: FileKind, directory: Path) -> list[str]:
    """The subject of each image (:func:`subject_name` of its stem, or its nnU-Net case), in order.

    Raises:
        InputFileError: two images name one subject (``a.nii`` and ``a_image.nii.gz``);
            the message names ``directory`` and both files. An image of a second
            nnU-Net channel (:func:`image_cases`).
    """
    cases = image_cases(images, kind)
    subjects: dict[str, Path] = {}
    for image in images:
        subject = cases.get(image) or subject_name(kind.stem(image))
        if subject in subjects:
            raise InputFileError(
                directory, f"two images for subject {subject!r}: {subjects[subject].name} and {image.name}"
            )
        subjects[subject] = image
    return list(subjects)
