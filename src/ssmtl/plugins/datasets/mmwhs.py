"""The ``mmwhs`` dataset: the MM-WHS 2017 whole-heart CT/MR layout, recognised by file name.

Layout (one folder, or nested folders such as ``ct_train/`` and ``mr_test/``)::

    ct_train_1001_image.nii.gz   ct_train_1001_label.nii.gz
    mr_train_1001_image.nii.gz   mr_train_1001_label.nii.gz
    ct_test_2001_image.nii.gz                                  (unlabeled: allowed)

The modality comes from the ``ct_`` / ``mr_`` prefix; the subject is the name
without ``_image`` (``ct_train_1001``). CT and MR volumes with the same number are
different patients, as in MM-WHS. Other files are ignored.

The MM-WHS label values become class ids 1..7, with the structure names kept:

=====  ====  ====================
value  id    name
=====  ====  ====================
205    1     ``lv_myocardium``
420    2     ``left_atrium``
500    3     ``left_ventricle``
550    4     ``right_atrium``
600    5     ``right_ventricle``
820    6     ``ascending_aorta``
850    7     ``pulmonary_artery``
=====  ====  ====================

Any other value in a label map is an error naming the file (``--skip-bad`` skips it).
Volumes are read by the ``nifti`` dataset's loader.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field

from ssmtl.api import (
    check_directory,
    ConfigError,
    DatasetConfig,
    DatasetSpec,
    hookimpl,
    InputFileError,
    VolumeItem,
    VolumeSource,
    walk_files,
)
from ssmtl.plugins.datasets.nifti import NiftiItem

#: MM-WHS label value -> (class id, structure name)
MMWHS_LABELS: dict[int, tuple[int, str]] = {
    205: (1, "lv_myocardium"),
    420: (2, "left_atrium"),
    500: (3, "left_ventricle"),
    550: (4, "right_atrium"),
    600: (5, "right_ventricle"),
    820: (6, "ascending_aorta"),
    850: (7, "pulmonary_artery"),
}
LABEL_VALUES = tuple(MMWHS_LABELS)
CLASS_NAMES = {0: "background", **{class_id: name for class_id, name in MMWHS_LABELS.values()}}
_NAME = re.compile(r"^(?P<subject>(?P<modality>ct|mr)_(?:train|test|val)_\d+)_(?P<kind>image|label)\.nii(?:\.gz)?$",
                   re.IGNORECASE)


class MmwhsConfig(DatasetConfig):
    """Options of the ``mmwhs`` dataset."""

    name: Literal["mmwhs"] = Field("mmwhs", description="Dataset plugin name.")
    path: Path | None = Field(None, description="Folder holding the MM-WHS files (searched recursively). Required.")
    modality: Literal["ct", "mr"] | None = Field(None, description="Keep only ct_ or mr_ volumes. None: both.")
    labeled_only: bool = Field(False, description="Leave out volumes without a label (the MM-WHS test sets).")


def find_files(root: Path) -> dict[str, dict[str, Path]]:
    """subject -> {"image": path, "label": path} for every MM-WHS-named file under ``root``."""
    found: dict[str, dict[str, Path]] = {}
    for path in walk_files(check_directory(root)):
        match = _NAME.match(path.name)
        if match is None or not path.is_file():
            continue
        subject, kind = match["subject"].lower(), match["kind"].lower()
        entry = found.setdefault(subject, {})
        if kind in entry:
            raise InputFileError(root, f"two {kind} files for {subject}: {entry[kind]} and {path}")
        entry[kind] = path
    return found


def build_source(config: MmwhsConfig) -> VolumeSource:
    """Find the MM-WHS files and pair image with label by name."""
    if config.path is None:
        raise ConfigError("the mmwhs dataset needs the MM-WHS folder (--path DIR)", rows=[("path", "required")])
    found = find_files(config.path)
    orphans = sorted(str(entry["label"]) for entry in found.values() if "image" not in entry)
    if orphans:
        raise InputFileError(orphans[0], "label without its image (expected the same name with _image)")
    items: list[VolumeItem] = []
    for subject, entry in sorted(found.items()):
        modality = subject[:2]
        if config.modality is not None and modality != config.modality:
            continue
        if config.labeled_only and "label" not in entry:
            continue
        items.append(
            NiftiItem(
                subject=subject,
                source=str(entry["image"]),
                image_path=entry["image"],
                label_path=entry.get("label"),
                modality=modality,
                label_values=LABEL_VALUES,
            )
        )
    if not items:
        prefix = f"{config.modality}_" if config.modality else "ct_/mr_"
        raise InputFileError(
            config.path,
            f"no {prefix} MM-WHS volumes found (expected names such as {config.modality or 'ct'}_train_1001_image.nii.gz)",
        )
    labeled = sum(item.label_path is not None for item in items)
    counts = {m: sum(item.modality == m for item in items) for m in ("ct", "mr")}
    description = (f"{len(items)} MM-WHS volumes from {config.path} ({counts['ct']} CT, {counts['mr']} MR, "
                   f"{labeled} labeled)")
    return VolumeSource(items=items, class_names=dict(CLASS_NAMES), description=description)


@hookimpl
def ssmtl_register_datasets():
    return [
        DatasetSpec(
            name="mmwhs",
            config_model=MmwhsConfig,
            factory=build_source,
            description="MM-WHS whole-heart CT/MR by file name (ct_train_1001_image.nii.gz + _label), labels 1..7",
        )
    ]
