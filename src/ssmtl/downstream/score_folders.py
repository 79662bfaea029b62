"""``ssmtl evaluate --predictions DIR --references DIR``: score any folder of predicted label maps.

Whoever made the predictions (``ssmtl predict``, nnU-Net, MONAI, a person), each is scored
against its reference with the metrics of ``ssmtl evaluate`` (:mod:`~ssmtl.downstream.metrics`):
3D Dice and HD95 per structure and per case, at the reference's own spacing, with the same
rules for a structure missed (Dice 0, HD95 the volume's diagonal), predicted where it is
absent (likewise) and absent from both (undefined, left out of the means).

**Cases** are matched by file name, case-insensitively: ``case.nii.gz`` in both folders (nnU-Net's
naming, and ``ssmtl predict``'s, which names outputs after the scan's case: ``case_0000.nii.gz``
gives ``case.nii.gz``). A reference may carry a label suffix (``case_seg``, ``case_label``,
``case_gt``...). ``ssmtl predict``'s probability maps (``case_probabilities.nii.gz``) are
not predictions. NIfTI, NRRD and MetaImage files are read, in any axis order.

**Structures** are the ``labels`` of ``--labels dataset.json`` (nnU-Net v2 or Decathlon) by
name; without it, every non-zero value found in the matched files, named ``label_<value>``.
nnU-Net's ``ignore`` label marks unannotated voxels: they are left out of both maps.

**What cannot be scored**, decided so a score is never computed on the wrong voxels and a
routine layout never fails:

* a prediction without a reference, and references without a prediction (a ``labelsTr``
  holds more cases than a test set): one ``warning:`` line each kind, listed in the JSON,
  not scored;
* a case whose files cannot be read, whose grids differ (shape, or a voxel position off by
  more than 1 % of a voxel), or that holds a value ``--labels`` does not declare: one
  ``error:`` line each, not scored; the others are, and ``failed`` counts them.

Results: ``scores.json`` (summary, per structure, per case, the unmatched files) and
``scores.csv`` (one row per case and structure) in the predictions folder, or in ``--out``.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from rich.table import Table

from ssmtl._version import __version__
from ssmtl.api.datasets.files import check_directory
from ssmtl.api.datasets.pairing import LABEL_SUFFIX
from ssmtl.api.errors import InputFileError, SsmtlError
from ssmtl.downstream.label_maps import dataset_json_labels, LABEL_MAP_FILES, read_label_map
from ssmtl.downstream.metrics import (ABSENT, count_failures, dice_per_class, FALSE_POSITIVE, hd95_per_class, MISSED,
                                      nanmean, presence_per_class, summarise)
from ssmtl.storage.files import json_safe, save_json, save_text
from ssmtl.storage.outputs import refuse_overlap

SCORES_JSON, SCORES_CSV = "scores.json", "scores.csv"
PROBABILITIES = "_probabilities"
#: Two grids agree when every voxel lies within this share of a voxel of its counterpart.
GRID_TOLERANCE_VOXELS = 0.01
#: Names listed in a warning line before "and N more".
LISTED = 5


@dataclass
class FolderScoreOptions:
    """``ssmtl evaluate --predictions --references [--labels] [--out]``."""

    predictions: Path
    references: Path
    labels: Path | None = None
    out: Path | None = None


def _files(folder: Path, flag: str) -> dict[str, Path]:
    """case name (lower case) -> label map file of ``folder``."""
    try:
        check_directory(folder)
    except InputFileError as exc:
        raise SsmtlError(f"{flag} {folder}: {exc.reason}") from None
    found = {LABEL_MAP_FILES.stem(p): p for p in sorted(folder.iterdir()) if LABEL_MAP_FILES.matches(p)}
    if not found:
        raise SsmtlError(f"{flag} {folder}: holds no {LABEL_MAP_FILES.describe()}")
    cases: dict[str, Path] = {}
    for stem, path in found.items():
        if flag == "--predictions" and stem.endswith(PROBABILITIES) and stem[: -len(PROBABILITIES)] in found:
            continue  # ssmtl predict's class probabilities beside the label map
        key = stem.lower()
        if key in cases:
            raise SsmtlError(f"{flag} {folder}: {cases[key].name} and {path.name} name the same case")
        cases[key] = path
    return cases


def match_cases(predictions: dict[str, Path], references: dict[str, Path]) -> tuple[list[tuple[str, Path, Path]], list[Path], list[Path]]:
    """(case, prediction, reference) pairs, the predictions without a reference, the references without a prediction.

    The case is the prediction's name; a reference answers to its own name, or to it without
    a label suffix (``case_seg`` -> ``case``) unless another reference is named so.
    """
    by_case = dict(references)
    for key, path in references.items():
        by_case.setdefault(LABEL_SUFFIX.sub("", key), path)
    pairs, used, extra = [], set(), []
    for key, path in predictions.items():
        reference = by_case.get(key)
        if reference is None or reference in used:
            extra.append(path)
            continue
        used.add(reference)
        pairs.append((LABEL_MAP_FILES.stem(path), path, reference))
    missing = [p for p in references.values() if p not in used]
    return pairs, extra, missing


def _listing(paths: list[Path]) -> str:
    names = [p.name for p in paths]
    return ", ".join(names[:LISTED]) + (f" and {len(names) - LISTED} more" if len(names) > LISTED else "")


def _same_grid(prediction, reference) -> bool:
    if prediction.values.shape != reference.values.shape:
        return False
    tolerance = GRID_TOLERANCE_VOXELS * min(reference.spacing)
    return float(np.max(np.abs(prediction.affine - reference.affine))) <= tolerance


def _describe_grid(label_map) -> str:
    return f"{' x '.join(map(str, label_map.values.shape))} voxels of {' x '.join(f'{s:.4g}' for s in label_map.spacing)} mm " \
           f"at ({', '.join(f'{v:.4g}' for v in label_map.affine[:3, 3])})"


def score_case(case: str, prediction_path: Path, reference_path: Path, structures: dict[int, str] | None,
               ignore: int | None) -> dict[str, Any]:
    """One case's Dice, HD95 and presence per structure (``structures``: value -> name; None: the
    values either file holds, named ``label_<value>``), at the reference's spacing.

    Raises:
        InputFileError: naming the file to blame: unreadable, another grid, an undeclared value.
    """
    reference = read_label_map(reference_path)
    prediction = read_label_map(prediction_path)
    if not _same_grid(prediction, reference):
        raise InputFileError(prediction_path, f"its grid ({_describe_grid(prediction)}) is not the reference "
                             f"{reference_path.name}'s ({_describe_grid(reference)}); not scored")
    pred, ref = prediction.values, reference.values
    if ignore is not None:  # unannotated voxels count for neither side
        unannotated = ref == ignore
        pred, ref = np.where(unannotated, 0, pred), np.where(unannotated, 0, ref)
    if structures is None:
        structures = {int(v): f"label_{int(v)}" for v in np.union1d(np.unique(pred), np.unique(ref)) if v != 0}
    else:
        for path, values in ((prediction_path, pred), (reference_path, ref)):
            undeclared = sorted({int(v) for v in np.unique(values) if v != 0} - set(structures))
            if undeclared:
                raise InputFileError(path, f"holds the label value {undeclared[0]}, which --labels does not declare; not scored")
    values = sorted(structures)
    pred_ids, ref_ids, classes = _class_ids(pred, values), _class_ids(ref, values), len(values) + 1
    dice, hd95 = dice_per_class(pred_ids, ref_ids, classes), hd95_per_class(pred_ids, ref_ids, classes, reference.spacing)
    presence = presence_per_class(pred_ids, ref_ids, classes)
    names = [structures[v] for v in values]
    return {"case": case, "prediction": prediction_path.name, "reference": reference_path.name,
            "dice": {names[c - 1]: dice[c] for c in dice}, "hd95": {names[c - 1]: hd95[c] for c in hd95},
            "mean_dice": nanmean(dice.values()), "presence": {names[c - 1]: presence[c] for c in presence},
            MISSED: [names[c - 1] for c, p in presence.items() if p == MISSED],
            FALSE_POSITIVE: [names[c - 1] for c, p in presence.items() if p == FALSE_POSITIVE],
            "shape": list(ref.shape), "spacing_mm": [round(float(s), 6) for s in reference.spacing]}


def _class_ids(labels: np.ndarray, values: list[int]) -> np.ndarray:
    """Structure values -> contiguous class ids 1..n (0 elsewhere), whatever the values (MM-WHS's 205..850)."""
    if not values:
        return np.zeros(labels.shape, dtype=np.uint16)
    table = np.asarray(values)
    index = np.minimum(np.searchsorted(table, labels), len(table) - 1)
    return np.where(table[index] == labels, index + 1, 0).astype(np.uint16)


def _complete(case: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """A case scored on the values it holds, with every other structure absent from both (undefined)."""
    for name in names:
        case["dice"].setdefault(name, math.nan)
        case["hd95"].setdefault(name, math.nan)
        case["presence"].setdefault(name, ABSENT)
    order = {name: i for i, name in enumerate(names)}
    for key in ("dice", "hd95", "presence"):
        case[key] = dict(sorted(case[key].items(), key=lambda item: order[item[0]]))
    return case


def score_folders(options: FolderScoreOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Score every matched case; write ``scores.json`` and ``scores.csv``; return the JSON record."""
    predictions_dir, references_dir = Path(options.predictions), Path(options.references)
    out = Path(options.out) if options.out is not None else predictions_dir
    if out.exists() and not out.is_dir():
        raise SsmtlError(f"--out {out}: exists and is not a folder")
    refuse_overlap(out, [("--references", references_dir)])
    declared, ignore = dataset_json_labels(options.labels) if options.labels is not None else (None, None)
    pairs, extra, missing = match_cases(_files(predictions_dir, "--predictions"), _files(references_dir, "--references"))
    if not pairs:
        raise SsmtlError(f"--predictions {predictions_dir}: no file matches a reference in {references_dir} by case name "
                         f"(e.g. {extra[0].name} and {missing[0].name}); name both case.nii.gz")
    if extra:
        log(f"warning: {len(extra)} prediction(s) without a reference, not scored: {_listing(extra)}")
    if missing:
        log(f"warning: {len(missing)} reference(s) without a prediction, not scored: {_listing(missing)}")
    per_case, failed = [], []
    for case, prediction, reference in pairs:
        try:
            per_case.append(score_case(case, prediction, reference, declared, ignore))
        except InputFileError as exc:
            log(f"error: {exc.path}: {exc.reason}")
            failed.append({"case": case, "file": Path(exc.path).name, "error": exc.reason})
    if not per_case:
        raise SsmtlError(f"no case could be scored ({len(failed)} failed; see the lines above)")
    if declared is not None:
        structures = declared
    else:
        found = {int(name.removeprefix("label_")) for case in per_case for name in case["dice"]}
        structures = {v: f"label_{v}" for v in sorted(found)}
    names = list(structures.values())
    per_case = [_complete(case, names) for case in per_case]
    summary = summarise([{k: c[k] for k in ("dice", "hd95")} for c in per_case])
    failures = count_failures(per_case, names)
    record = json_safe({
        "ssmtl_version": __version__, "space": "reference", "labels": {str(v): n for v, n in structures.items()},
        "mean_dice": summary.get("mean_dice", math.nan), "mean_hd95": summary.get("mean_hd95", math.nan),
        "per_class": {n: {**summary["per_class"].get(n, {"dice": math.nan, "hd95": math.nan}), **failures[n]} for n in names},
        "class_names": names, "cases": len(pairs), "scored": len(per_case), "failed": len(failed),
        "per_case": per_case, "errors": failed,
        "unmatched": {"predictions": [p.name for p in extra], "references": [p.name for p in missing]},
    })
    out.mkdir(parents=True, exist_ok=True)
    save_json(out / SCORES_JSON, record)
    save_text(out / SCORES_CSV, _csv(record))
    record["written"] = [str(out / SCORES_JSON), str(out / SCORES_CSV)]
    return record


def _csv(record: dict[str, Any]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["case", "structure", "value", "dice", "hd95_mm", "presence"])
    values = {name: value for value, name in record["labels"].items()}
    for case in record["per_case"]:
        for name in record["class_names"]:
            dice, hd95 = case["dice"].get(name), case["hd95"].get(name)
            writer.writerow([case["case"], name, values[name], "" if dice is None else f"{dice:.6f}",
                             "" if hd95 is None else f"{hd95:.4f}", case["presence"].get(name, "")])
    return buffer.getvalue()


def _fmt(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def render_score_tables(record: dict[str, Any]) -> list[Table]:
    """Per structure (Dice, HD95, missed, false positives, then the mean) and per case (mean Dice)."""
    structures = Table(title=f"{record['scored']} case(s) scored at each reference's own spacing")
    for column, justify in (("structure", "left"), ("Dice", "right"), ("HD95 (mm)", "right"), ("missed", "right"),
                            ("false pos.", "right")):
        structures.add_column(column, justify=justify)
    for name in record["class_names"]:
        scores = record["per_class"][name]
        structures.add_row(name, _fmt(scores.get("dice"), 3), _fmt(scores.get("hd95"), 2), str(scores[MISSED]),
                           str(scores[FALSE_POSITIVE]))
    structures.add_section()
    structures.add_row("[bold]mean", f"[bold]{_fmt(record['mean_dice'], 3)}", f"[bold]{_fmt(record['mean_hd95'], 2)}", "", "")
    structures.caption = "missed / false pos.: cases where a structure was not predicted / predicted but absent (Dice 0, HD95 = the diagonal)"
    cases = Table(title="per case")
    for column, justify in (("case", "left"), ("mean Dice", "right"), ("missed", "left"), ("false pos.", "left")):
        cases.add_column(column, justify=justify)
    for case in record["per_case"]:
        cases.add_row(case["case"], _fmt(case["mean_dice"], 3), ", ".join(case[MISSED]) or "–", ", ".join(case[FALSE_POSITIVE]) or "–")
    return [structures, cases]
