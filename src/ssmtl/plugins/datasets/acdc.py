"""The ``acdc`` dataset: the ACDC cardiac cine-MR layout, recognised by name.

Layout (the ``training/`` and ``testing/`` folders may both sit under the root)::

    patient001/Info.cfg                    ED: 1 / ES: 12 / Group: ... / NbFrame: ...
    patient001/patient001_frame01.nii.gz   patient001_frame01_gt.nii.gz
    patient001/patient001_frame12.nii.gz   patient001_frame12_gt.nii.gz
    patient001/patient001_4d.nii.gz        (ignored)

The end-diastolic (ED) and end-systolic (ES) frames named in ``Info.cfg`` are the
volumes, ``patient001_ED`` and ``patient001_ES`` in the cache. Both have the
subject ``patient001``, so a split never puts one frame in training and the other
in the test set. A frame without its ``_gt`` file is loaded unlabeled.

Labels: 1 ``right_ventricle``, 2 ``myocardium``, 3 ``left_ventricle`` (ACDC's own
values, already contiguous). Modality: MR. Volumes are read by the ``nifti``
dataset's loader.
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
)
from ssmtl.plugins.datasets.nifti import NiftiItem

CLASS_NAMES = {0: "background", 1: "right_ventricle", 2: "myocardium", 3: "left_ventricle"}
LABEL_VALUES = (1, 2, 3)
PHASES = ("ED", "ES")
_INFO_LINE = re.compile(r"^\s*(\w+)\s*:\s*(.*?)\s*$")


class AcdcConfig(DatasetConfig):
    """Options of the ``acdc`` dataset."""

    name: Literal["acdc"] = Field("acdc", description="Dataset plugin name.")
    path: Path | None = Field(
        None, description="Folder holding the patientNNN folders (searched recursively for Info.cfg). Required."
    )
    phases: list[Literal["ED", "ES"]] = Field(
        ["ED", "ES"], min_length=1, description="Cardiac phases to cache, from Info.cfg: ED, ES or both."
    )
    labeled_only: bool = Field(False, description="Leave out frames without a _gt label map.")


def read_info(path: Path) -> dict[str, str]:
    """``Info.cfg`` as a dict (``{"ED": "1", "ES": "12", ...}``)."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        raise InputFileError(path, f"cannot read ({exc.strerror or exc})") from exc
    info = {}
    for line in text.splitlines():
        match = _INFO_LINE.match(line)
        if match:
            info[match[1]] = match[2]
    return info


def _frame(info: dict[str, str], phase: str, path: Path) -> int:
    try:
        return int(float(info[phase]))
    except KeyError:
        raise InputFileError(path, f"no {phase} line (expected e.g. '{phase}: 1')") from None
    except ValueError:
        raise InputFileError(path, f"{phase}: {info[phase]!r} is not a frame number") from None


def _nifti(folder: Path, stem: str) -> Path | None:
    for ext in (".nii.gz", ".nii"):
        if (folder / f"{stem}{ext}").is_file():
            return folder / f"{stem}{ext}"
    return None


def patient_items(info_path: Path, phases: list[str]) -> list[NiftiItem]:
    """The items of one patient folder, from its Info.cfg; ``volume_id`` (patientNNN_ED) names each frame."""
    folder = info_path.parent
    patient = folder.name
    info = read_info(info_path)
    frames = {phase: _frame(info, phase, info_path) for phase in phases}
    items = []
    for phase, frame in frames.items():
        stem = f"{patient}_frame{frame:02d}"
        image = _nifti(folder, stem)
        if image is None:
            raise InputFileError(folder / f"{stem}.nii.gz", f"{phase} frame {frame} named in {info_path.name} not found")
        items.append(
            NiftiItem(
                subject=patient,
                source=str(image),
                image_path=image,
                label_path=_nifti(folder, f"{stem}_gt"),
                modality="mr",
                label_values=LABEL_VALUES,
                volume_id=f"{patient}_{phase}",
            )
        )
    if len(phases) == 2 and frames["ED"] == frames["ES"]:
        items = items[:1]  # one frame serves both phases; caching it twice would duplicate it
    return items


def build_source(config: AcdcConfig) -> VolumeSource:
    """Find the patient folders and their ED/ES frames."""
    if config.path is None:
        raise ConfigError("the acdc dataset needs the ACDC folder (--path DIR)", rows=[("path", "required")])
    check_directory(config.path)
    infos = sorted((p for p in config.path.rglob("Info.cfg") if not any(part.startswith(".") for part in p.parts)),
                   key=lambda p: (p.parent.name, p))  # by patient, wherever training/ and testing/ put them
    if not infos:
        raise InputFileError(config.path, "no ACDC patient folders found (patientNNN/Info.cfg)")
    seen: dict[str, Path] = {}
    items: list[VolumeItem] = []
    for info in infos:
        patient = info.parent.name
        if patient in seen:
            raise InputFileError(config.path, f"patient {patient} appears twice: {seen[patient]} and {info.parent}")
        seen[patient] = info.parent
        items += [i for i in patient_items(info, list(dict.fromkeys(config.phases)))
                  if i.label_path is not None or not config.labeled_only]
    if not items:
        raise InputFileError(config.path, "no labeled ACDC frames found (patientNNN_frameYY_gt.nii.gz)")
    labeled = sum(i.label_path is not None for i in items)
    description = f"{len(items)} ACDC frames of {len(seen)} patients from {config.path} ({labeled} labeled)"
    return VolumeSource(items=items, class_names=dict(CLASS_NAMES), description=description)


@hookimpl
def ssmtl_register_datasets():
    return [
        DatasetSpec(
            name="acdc",
            config_model=AcdcConfig,
            factory=build_source,
            description="ACDC cardiac MR by name (patientNNN/patientNNN_frameYY.nii.gz + _gt), ED/ES from Info.cfg",
        )
    ]
