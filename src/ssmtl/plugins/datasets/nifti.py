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

Labels are mapped to contiguous class ids: ``label_values[i]`` becomes class
``i + 1`` and 0 stays background. Without ``label_values`` the sorted non-zero
values found over all label files (a first pass reading only the labels) are used.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np
from pydantic import Field, field_validator, model_validator

from ssmtl.api import (
    check_finite,
    ConfigError,
    DatasetConfig,
    DatasetSpec,
    hookimpl,
    InputFileError,
    Modality,
    RawVolume,
    VolumeItem,
    VolumeSource,
)


NIFTI_EXTENSIONS = (".nii.gz", ".nii")
_LABEL_SUFFIX = re.compile(r"[_-](label|labels|seg|segmentation|gt|mask)$", re.IGNORECASE)
_IMAGE_SUFFIX = re.compile(r"[_-](image|img)$", re.IGNORECASE)

# CT air is about -1000 HU; MR intensities are (almost always) non-negative.
CT_DETECTION_PERCENTILE = 0.5
CT_DETECTION_THRESHOLD = -500.0
# Modality detection looks at a strided subsample of about this many voxels.
_DETECTION_SAMPLE = 2_000_000
# Label and image grids must agree to this precision (mm) after reorientation;
# it absorbs float32 round-off in headers written by different tools.
AFFINE_TOLERANCE_MM = 1e-3
_MAX_CLASSES = 255  # class ids are stored as uint8


class NiftiConfig(DatasetConfig):
    """Options of the ``nifti`` dataset."""

    name: Literal["nifti"] = Field("nifti", description="Dataset plugin name.")
    images: Path | None = Field(None, description="Directory of image volumes (.nii / .nii.gz). Required.")
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
    def _check_label_values(cls, values: list[int] | None) -> list[int] | None:
        if values is None:
            return values
        if not values:
            raise ValueError("label_values must not be empty")
        if 0 in values:
            raise ValueError("label_values must not contain 0 (background is always class 0)")
        if len(set(values)) != len(values):
            raise ValueError(f"label_values has duplicates: {values}")
        if len(values) > _MAX_CLASSES:
            raise ValueError(f"at most {_MAX_CLASSES} label values are supported, got {len(values)}")
        return values

    @model_validator(mode="after")
    def _check_class_names(self) -> "NiftiConfig":
        if self.class_names is not None and self.label_values is not None:
            _check_names_match(self.class_names, self.label_values)
        return self


def _check_names_match(class_names: list[str], label_values: list[int] | tuple[int, ...]) -> None:
    """One name per label value, or ValueError."""
    if len(class_names) != len(label_values):
        raise ValueError(
            f"class_names has {len(class_names)} names but there are {len(label_values)} "
            f"label values {list(label_values)}"
        )


# -- file names ---------------------------------------------------------------------


def nifti_stem(path: Path) -> str:
    """File name without the ``.nii`` / ``.nii.gz`` extension."""
    name = path.name
    for ext in NIFTI_EXTENSIONS:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def _is_nifti(path: Path) -> bool:
    name = path.name
    return not name.startswith(".") and name.lower().endswith(NIFTI_EXTENSIONS) and path.is_file()


def image_key(path: Path) -> str:
    """Pairing key of an image: its stem without an ``_image`` / ``_img`` suffix, lower-case."""
    return _IMAGE_SUFFIX.sub("", nifti_stem(path)).lower()


def label_key(path: Path) -> str | None:
    """Pairing key of a label carrying a label suffix (``_label``, ``_seg``...), else None."""
    stem = nifti_stem(path)
    return _LABEL_SUFFIX.sub("", stem).lower() if _LABEL_SUFFIX.search(stem) else None


def list_nifti(directory: Path) -> list[Path]:
    """The NIfTI files in ``directory``, sorted; raises if it is missing or has none."""
    if not directory.exists():
        raise InputFileError(directory, "directory not found")
    if not directory.is_dir():
        raise InputFileError(directory, "not a directory")
    files = sorted(p for p in directory.iterdir() if _is_nifti(p))
    if not files:
        raise InputFileError(directory, "no NIfTI files (.nii, .nii.gz) found")
    return files


@dataclass
class _LabelIndex:
    """Label files by exact stem and by stem without a label suffix (all lower-case)."""

    exact: dict[str, Path]
    stripped: dict[str, Path]

    @classmethod
    def build(cls, labels: list[Path], directory: Path) -> "_LabelIndex":
        exact: dict[str, Path] = {}
        stripped: dict[str, Path] = {}
        for path in labels:
            _add_unique(exact, nifti_stem(path).lower(), path, directory)
            key = label_key(path)
            if key is not None:
                _add_unique(stripped, key, path, directory)
        return cls(exact, stripped)

    def find(self, image: Path) -> Path | None:
        """Same file name first, then the same stem with label/image suffixes removed."""
        stem, key = nifti_stem(image).lower(), image_key(image)
        for table, name in ((self.exact, stem), (self.stripped, stem), (self.stripped, key), (self.exact, key)):
            if name in table:
                return table[name]
        return None


def _add_unique(table: dict[str, Path], key: str, path: Path, directory: Path) -> None:
    """Register ``path`` under ``key``; two files answering to one key make pairing ambiguous."""
    if key in table:
        raise InputFileError(directory, f"ambiguous label files for {key!r}: {table[key].name} and {path.name}")
    table[key] = path


def _split_same_folder(files: list[Path]) -> tuple[list[Path], list[Path]]:
    """Split one folder into (images, labels): labels carry a label suffix and match an image's key."""
    candidates = [p for p in files if label_key(p) is not None]
    others = [p for p in files if label_key(p) is None]
    image_keys = {image_key(p) for p in others} | {nifti_stem(p).lower() for p in others}
    labels = [p for p in candidates if label_key(p) in image_keys]
    images = [p for p in files if p not in labels]
    return images, labels


def pair_files(images_dir: Path, labels_dir: Path | None) -> list[tuple[Path, Path | None]]:
    """(image, label or None) pairs, sorted by image name. See the module docstring for the rules."""
    files = list_nifti(images_dir)
    images, same_folder_labels = _split_same_folder(files)
    if labels_dir is None:
        return [(image, None) for image in images]
    same_folder = labels_dir.exists() and labels_dir.resolve() == images_dir.resolve()
    labels = same_folder_labels if same_folder else list_nifti(labels_dir)
    index = _LabelIndex.build(labels, labels_dir)
    pairs = [(image, index.find(image)) for image in images]
    if not any(label is not None for _, label in pairs):
        example = images[0].name
        raise InputFileError(
            labels_dir,
            f"no label file matches any of the {len(images)} images; expected e.g. "
            f"{example} or {nifti_stem(images[0])}_label.nii.gz for image {example}",
        )
    return pairs


def _unique_subjects(pairs: list[tuple[Path, Path | None]], images_dir: Path) -> list[str]:
    """Subject ids (image stems without ``_image``); two images of one subject are an error."""
    subjects: dict[str, Path] = {}
    for image, _ in pairs:
        subject = _IMAGE_SUFFIX.sub("", nifti_stem(image))
        if subject in subjects:
            raise InputFileError(
                images_dir, f"two images for subject {subject!r}: {subjects[subject].name} and {image.name}"
            )
        subjects[subject] = image
    return list(subjects)


# -- reading ------------------------------------------------------------------------


def _load_header(path: Path) -> nib.spatialimages.SpatialImage:
    """``nib.load`` (reads the header only; voxel data stay on disk until asked for)."""
    try:
        return nib.load(str(path))
    except MemoryError:
        raise
    except Exception as exc:
        raise InputFileError(path, f"cannot read NIfTI header ({type(exc).__name__}: {exc})") from exc


def _spatial_shape(path: Path, shape: tuple[int, ...]) -> tuple[int, int, int]:
    """The 3D shape, allowing trailing singleton dimensions (X, Y, Z, 1); reject 2D and real 4D."""
    if len(shape) < 3:
        raise InputFileError(path, f"expected a 3D volume, got shape {tuple(shape)}")
    if any(n != 1 for n in shape[3:]):
        raise InputFileError(path, f"expected a 3D volume, got a {len(shape)}D image of shape {tuple(shape)}")
    if any(n == 0 for n in shape[:3]):
        raise InputFileError(path, f"volume has a zero-length axis, shape {tuple(shape)}")
    return tuple(int(n) for n in shape[:3])


def _read_data(path: Path, read):
    """Run ``read()`` (which decodes voxel data), rephrasing decoding failures as InputFileError."""
    try:
        return read()
    except MemoryError:
        raise
    except (EOFError, zlib.error, OSError) as exc:
        raise InputFileError(path, f"cannot read NIfTI (truncated or corrupt file: {exc})") from exc
    except Exception as exc:  # nibabel raises assorted errors on malformed data blocks
        raise InputFileError(path, f"cannot read NIfTI ({type(exc).__name__}: {exc})") from exc


def _canonical(img, data: np.ndarray):
    """Reorient ``data`` (3D, laid out like ``img``) to the closest canonical RAS orientation."""
    return nib.as_closest_canonical(img.__class__(data, img.affine, img.header))


def load_image(path: Path) -> tuple[np.ndarray, tuple[float, float, float], np.ndarray]:
    """Read an image as canonical float32 (X, Y, Z); returns (array, spacing, affine)."""
    img = _load_header(path)
    shape = _spatial_shape(path, img.shape)
    # Decode straight to float32: scaled integer data would otherwise become float64.
    data = _read_data(path, lambda: img.get_fdata(dtype=np.float32)).reshape(shape)
    canonical = _canonical(img, data)
    array = np.asanyarray(canonical.dataobj)
    spacing = tuple(float(z) for z in canonical.header.get_zooms()[:3])
    return array, spacing, canonical.affine


def read_label_values(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a label map as canonical integers; returns (array, affine)."""
    img = _load_header(path)
    shape = _spatial_shape(path, img.shape)
    data = _read_data(path, lambda: np.asanyarray(img.dataobj)).reshape(shape)
    if not np.issubdtype(data.dtype, np.integer):
        if not (np.isfinite(data.min()) and np.isfinite(data.max())):
            raise InputFileError(path, "label map contains NaN or infinite values")
        data = np.rint(data).astype(np.int64)  # labels saved as floats by some tools
    canonical = _canonical(img, data)
    return np.asanyarray(canonical.dataobj), canonical.affine


def detect_modality(image: np.ndarray) -> Modality:
    """CT if the 0.5th intensity percentile is below -500 (air in HU), else MR.

    A strided subsample keeps this cheap on large volumes; the percentile of a
    regular subsample is a close estimate of the full one.
    """
    step = max(1, round((image.size / _DETECTION_SAMPLE) ** (1 / 3)))
    sample = image[::step, ::step, ::step]
    low = float(np.percentile(sample, CT_DETECTION_PERCENTILE))
    return "ct" if low < CT_DETECTION_THRESHOLD else "mr"


def map_labels(values: np.ndarray, label_values: tuple[int, ...], path: Path) -> np.ndarray:
    """Raw label values -> uint8 class ids (``label_values[i]`` -> ``i + 1``, 0 -> 0)."""
    present = np.unique(values)
    unknown = sorted(set(present.tolist()) - set(label_values) - {0})
    if unknown:
        raise InputFileError(
            path, f"label values {unknown} are not in the label mapping {list(label_values)} (0 is background)"
        )
    mapped = np.zeros(values.shape, dtype=np.uint8)
    for class_id, value in enumerate(label_values, start=1):
        if value in present:
            mapped[values == value] = class_id
    return mapped


def _check_same_grid(image_path: Path, label_path: Path, image_shape, label_shape, image_affine, label_affine):
    if tuple(label_shape) != tuple(image_shape):
        raise InputFileError(
            label_path,
            f"label shape {tuple(label_shape)} does not match image shape {tuple(image_shape)} of {image_path}",
        )
    difference = float(np.max(np.abs(np.asarray(image_affine) - np.asarray(label_affine))))
    if difference > AFFINE_TOLERANCE_MM:
        raise InputFileError(
            label_path,
            f"label affine differs from the affine of {image_path} by up to {difference:.4g} mm "
            f"(tolerance {AFFINE_TOLERANCE_MM} mm): the label is not on the image's voxel grid",
        )


# -- items and source ---------------------------------------------------------------


@dataclass
class NiftiItem(VolumeItem):
    """One image file, optionally with its label file; loads lazily.

    Attributes:
        image_path: the image volume.
        label_path: its label map, or None.
        modality: "ct", "mr", or None to detect from the intensities.
        label_values: raw label values mapped to class ids 1..n in order.
    """

    image_path: Path
    label_path: Path | None = None
    modality: Modality | None = None
    label_values: tuple[int, ...] = ()

    def load(self) -> RawVolume:
        """Read, reorient to canonical RAS and map labels; raises InputFileError on bad input."""
        image, spacing, affine = load_image(self.image_path)
        check_finite(image, str(self.image_path))
        modality = self.modality or detect_modality(image)
        label = None
        if self.label_path is not None:
            values, label_affine = read_label_values(self.label_path)
            _check_same_grid(self.image_path, self.label_path, image.shape, values.shape, affine, label_affine)
            label = map_labels(values, self.label_values, self.label_path)
        return RawVolume(image=image, spacing=spacing, modality=modality, label=label, affine=affine)


def collect_label_values(label_paths: list[Path], read=None) -> tuple[int, ...]:
    """Sorted non-zero values over all label files (reads only the labels).

    ``read(path) -> (values, affine)`` reads one label file (default: NIfTI).
    """
    read = read or read_label_values
    found: set[int] = set()
    for path in label_paths:
        values, _ = read(path)
        found.update(int(v) for v in np.unique(values))
    found.discard(0)
    if len(found) > _MAX_CLASSES:
        raise InputFileError(
            label_paths[0].parent, f"{len(found)} distinct label values found; at most {_MAX_CLASSES} are supported"
        )
    return tuple(sorted(found))


def _class_names(config: NiftiConfig, label_values: tuple[int, ...]) -> dict[int, str]:
    """Class id -> name, background included; default names show the raw value."""
    if config.class_names is not None:
        try:
            _check_names_match(config.class_names, label_values)
        except ValueError as exc:
            raise ConfigError(str(exc), rows=[("class_names", str(exc))]) from exc
        names = list(config.class_names)
    else:
        names = [f"label_{value}" for value in label_values]
    return {0: "background", **{i: name for i, name in enumerate(names, start=1)}}


def build_source(config: NiftiConfig) -> VolumeSource:
    """List and pair the files; collect label values if needed. Volumes load lazily."""
    if config.images is None:
        message = "the nifti dataset needs an images directory (--images DIR)"
        raise ConfigError(message, rows=[("images", "required")])
    pairs = pair_files(config.images, config.labels)
    return source_from_pairs(config, pairs, _unique_subjects(pairs, config.images), NiftiItem, "NIfTI")


def source_from_pairs(config, pairs, subjects, item_class, kind: str, collect=collect_label_values) -> VolumeSource:
    """Items and class names for (image, label) file pairs; shared by the file-folder plugins."""
    label_paths = [label for _, label in pairs if label is not None]
    if label_paths:
        label_values = tuple(config.label_values) if config.label_values else collect(label_paths)
        class_names = _class_names(config, label_values)
    else:
        label_values, class_names = (), {}
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
    description = f"{len(items)} {kind} volumes from {config.images} ({len(label_paths)} labeled)"
    return VolumeSource(items=items, class_names=class_names, description=description)


@hookimpl
def ssmtl_register_datasets():
    return [
        DatasetSpec(
            name="nifti",
            config_model=NiftiConfig,
            factory=build_source,
            description="NIfTI volumes (.nii/.nii.gz) from a folder, with optional label maps",
        )
    ]
