"""``dataset.json``: the metadata file of the nnU-Net raw and Medical Segmentation Decathlon layouts.

Both datasets (``nnunet``, ``msd``) read it through these functions, which check
each field they use and name the file and the field in every error:

* :func:`read_dataset_json`: the file, parsed, as a JSON object;
* :func:`channel_table`: nnU-Net's ``channel_names`` or the Decathlon's ``modality``
  (``{"0": "CT"}``), as ``{0: "CT"}``; :func:`choose_channel` picks the one channel a
  volume is made of, and :func:`channel_modality` says what a channel name means;
* :func:`label_table`: ``labels`` in either spelling, nnU-Net v2's name -> value
  (``{"background": 0, "left atrium": 1}``) or the Decathlon's / nnU-Net v1's value ->
  name (``{"0": "background", "1": "left atrium"}``), as label values and class names;
* :func:`count_field`: ``numTraining`` / ``numTest`` checked against the files found.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ssmtl.api import check_label_values, InputFileError, MANIFEST_LIMITS, Modality, read_document

FILE_NAME = "dataset.json"
#: Channel names that mean MR: nnU-Net and the Decathlon name MR channels by sequence.
MR_CHANNEL = re.compile(r"^(mri?|t1.*|t2.*|flair|adc|dwi|pd|swi|dixon|cine|bssfp|lge|perfusion)$", re.IGNORECASE)
#: nnU-Net v2's name of the label that marks unannotated voxels (sparse annotation).
IGNORE_LABEL = "ignore"


def read_dataset_json(path: Path) -> dict[str, Any]:
    """The parsed file, a JSON object.

    Raises:
        InputFileError: missing, not a regular file, unreadable, not JSON (or past the toolkit's
            bounds: :data:`~ssmtl.api.MANIFEST_LIMITS`), or not an object; naming ``path``.
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise InputFileError(path, "file not found")
    data = read_document(path, MANIFEST_LIMITS, fmt="json")  # bounded: size, nesting, digits, duplicate keys
    if not isinstance(data, dict):
        raise InputFileError(path, f"expected a JSON object with the dataset's fields, got a {type(data).__name__}")
    return data


def _index(key: Any, path: Path, field: str) -> int:
    try:
        value = int(str(key).strip())
    except ValueError:
        raise InputFileError(path, f"{field}: key {key!r} is not a number") from None
    if value < 0:
        raise InputFileError(path, f"{field}: key {key!r} is negative")
    return value


def channel_table(data: dict[str, Any], path: Path, field: str) -> dict[int, str]:
    """``data[field]`` (``{"0": "CT", "1": "T2"}``) as channel number -> name, numbered 0..n-1.

    Raises:
        InputFileError: the field is missing, empty, not an object of names, or its
            numbers are not 0..n-1.
    """
    table = data.get(field)
    if not isinstance(table, dict) or not table:
        raise InputFileError(path, f"{field}: expected an object of channel names such as {{\"0\": \"CT\"}}")
    channels = {_index(key, path, field): name for key, name in table.items()}
    if not all(isinstance(name, str) for name in channels.values()):
        raise InputFileError(path, f"{field}: channel names must be strings, got {table}")
    if sorted(channels) != list(range(len(channels))):
        raise InputFileError(path, f"{field}: channels must be numbered 0..{len(channels) - 1}, got {sorted(channels)}")
    return dict(sorted(channels.items()))


def describe_channels(channels: dict[int, str]) -> str:
    """``0 FLAIR, 1 T1w``, as messages list channels."""
    return ", ".join(f"{number} {name}" for number, name in channels.items())


def choose_channel(channels: dict[int, str], channel: int | None, path: Path, field: str) -> int:
    """The channel a volume is made of: ``channel`` (``--channel``), or the only one.

    Raises:
        InputFileError: several channels and none chosen (ssmtl's networks take one
            channel per volume), or a chosen channel that is not declared; naming ``path``.
    """
    if channel is None:
        if len(channels) == 1:
            return next(iter(channels))
        raise InputFileError(path, f"{field} declares {len(channels)} channels ({describe_channels(channels)}); "
                                   "ssmtl's networks take one channel per volume: choose one with --channel N")
    if channel not in channels:
        raise InputFileError(path, f"--channel {channel}: {field} declares channels {describe_channels(channels)}")
    return channel


def channel_modality(name: str) -> Modality | None:
    """``ct`` for a channel named CT, ``mr`` for MR names (MRI, T1*, T2*, FLAIR, ADC, DWI...), else None (detect)."""
    name = name.strip()
    if name.upper() == "CT":
        return "ct"
    return "mr" if MR_CHANNEL.match(name) else None


def _label_pairs(labels: dict[str, Any], path: Path) -> list[tuple[int, str]]:
    """(value, name) from either spelling of ``labels``."""
    if all(isinstance(name, str) for name in labels.values()):  # the Decathlon's / v1's value -> name
        return [(_index(key, path, "labels"), name) for key, name in labels.items()]
    pairs = []
    for name, value in labels.items():  # nnU-Net v2's name -> value
        if isinstance(value, (list, tuple)):
            raise InputFileError(path, f"labels: {name!r} is a region of values {list(value)} (nnU-Net's region-based "
                                       "training); ssmtl gives each voxel one class, so regions are not supported")
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputFileError(path, f"labels: the value of {name!r} is {value!r}; expected a whole number")
        if value < 0:
            raise InputFileError(path, f"labels: the value of {name!r} is negative ({value})")
        pairs.append((value, name))
    return pairs


def label_table(data: dict[str, Any], path: Path) -> tuple[tuple[int, ...], dict[int, str]]:
    """(label values, class names) from ``labels``: each non-zero value becomes a class, in ascending
    order, named as the file names it; value 0 is background (named as declared, else ``background``).

    nnU-Net's values are 0..n, so its class ids are its values.

    Raises:
        InputFileError: ``labels`` is missing or malformed, declares one value twice,
            maps a label to a region (a list of values), declares nnU-Net's ``ignore``
            label or ``regions_class_order``, or has more values than class ids fit.
    """
    labels = data.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise InputFileError(path, 'labels: expected an object such as {"background": 0, "left atrium": 1}')
    if "regions_class_order" in data:
        raise InputFileError(path, "regions_class_order: region-based labels are not supported; ssmtl gives each "
                                   "voxel one class")
    pairs = _label_pairs(labels, path)
    names: dict[int, str] = {}
    for value, name in pairs:
        if value in names:
            raise InputFileError(path, f"labels: value {value} is declared twice ({names[value]!r} and {name!r})")
        if name.strip().lower() == IGNORE_LABEL:
            raise InputFileError(path, f"labels: {name!r} (value {value}) marks unannotated voxels (nnU-Net's sparse "
                                       "annotation); ssmtl has no ignore label, every voxel of a label map is a class")
        names[value] = name
    values = tuple(sorted(v for v in names if v != 0))
    try:
        check_label_values(values)
    except ValueError as exc:
        raise InputFileError(path, f"labels: {exc}") from None
    class_names = {0: names.get(0, "background"), **{i: names[v] for i, v in enumerate(values, start=1)}}
    return values, class_names


def count_field(data: dict[str, Any], path: Path, field: str, found: int, where: str) -> None:
    """Check ``data[field]`` (``numTraining``), when present, against the ``found`` cases of ``where``.

    Raises:
        InputFileError: not a whole number, or not ``found``; naming ``path``.
    """
    if field not in data:
        return
    value = data[field]
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputFileError(path, f"{field}: expected a whole number, got {value!r}")
    if value != found:
        raise InputFileError(path, f"{field} is {value} but {where} holds {found}")
