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
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ssmtl.api.datasets.files import FileKind
from ssmtl.api.errors import InputFileError

#: Marks a label map's stem: ``_label``, ``_labels``, ``_seg``, ``_segmentation``, ``_gt``, ``_mask`` (or ``-``).
LABEL_SUFFIX = re.compile(r"[_-](label|labels|seg|segmentation|gt|mask)$", re.IGNORECASE)
#: Marks an image's stem: ``_image`` or ``_img`` (or ``-``).
IMAGE_SUFFIX = re.compile(r"[_-](image|img)$", re.IGNORECASE)


def subject_name(stem: str) -> str:
    """The subject an image stem names: the stem without an image suffix, case kept (``ct_1001_image`` -> ``ct_1001``)."""
    return IMAGE_SUFFIX.sub("", stem)


def image_key(stem: str) -> str:
    """Pairing key of an image stem: its subject name, lower-case."""
    return subject_name(stem).lower()


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

    def find(self, image: Path) -> Path | None:
        """The label of ``image``: the same stem first, then the same stem with label/image suffixes removed."""
        stem = self.kind.stem(image).lower()
        key = image_key(self.kind.stem(image))
        for table, name in ((self.exact, stem), (self.stripped, stem), (self.stripped, key), (self.exact, key)):
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
    are still left out), the images folder itself, or another folder.

    Raises:
        InputFileError: a folder is missing or empty, two labels answer to one image,
            or no image has a label although ``labels_dir`` is given.
    """
    images, same_folder_labels = split_same_folder(kind.list_in(images_dir), kind)
    if labels_dir is None:
        return [(image, None) for image in images]
    same_folder = labels_dir.exists() and labels_dir.resolve() == images_dir.resolve()
    labels = same_folder_labels if same_folder else kind.list_in(labels_dir)
    index = LabelIndex.build(labels, kind, labels_dir)
    pairs = [(image, index.find(image)) for image in images]
    if not any(label is not None for _, label in pairs):
        example = images[0]
        raise InputFileError(
            labels_dir,
            f"no label file matches any of the {len(images)} images; expected e.g. {example.name} or "
            f"{kind.stem(example)}_label{kind.extension(example)} for image {example.name}",
        )
    return pairs


def unique_subjects(images: list[Path], kind: FileKind, directory: Path) -> list[str]:
    """The subject of each image (:func:`subject_name` of its stem), in order.

    Raises:
        InputFileError: two images name one subject (``a.nii`` and ``a_image.nii.gz``);
            the message names ``directory`` and both files.
    """
    subjects: dict[str, Path] = {}
    for image in images:
        subject = subject_name(kind.stem(image))
        if subject in subjects:
            raise InputFileError(
                directory, f"two images for subject {subject!r}: {subjects[subject].name} and {image.name}"
            )
        subjects[subject] = image
    return list(subjects)
