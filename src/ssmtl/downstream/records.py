"""The JSON files of a fine-tuning run, read back with the shape their readers rely on.

``run.json`` (what rebuilds the model), ``split.json`` (the subjects of each split) and
``eval.json`` (the scores) are written by ssmtl, but a person may edit them, or copy a
file of another tool into the run. Each reader here checks the fields the code uses, so
a damaged or foreign file is one error naming the file and the field (exit 2), never a
``KeyError`` or ``TypeError`` deep inside evaluation, the report or the export.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ssmtl.api.errors import SsmtlError
from ssmtl.storage.files import check_shape, load_json_object

WEIGHTS = "model.safetensors"  # a fine-tuning run's kept weights (network.* and head.*)
NONE = type(None)
NUMBER = (int, float, NONE)

RUN_FIELDS = {
    "model": dict, "head": dict, "head.name": str, "num_classes": int, "class_names": dict, "data": dict,
    "data.path": (str, list), "data.fingerprint": (str, NONE), "data.modalities": (dict, list, NONE),
    "preprocess": (dict, NONE), "labeled_subjects": (list, NONE),
    "train_subjects": (list, NONE), "init": (str, NONE), "init_manifest": (dict, NONE),
    "init_manifest.tasks": (dict, NONE), "steps": (int, NONE), "labeled_volumes": (int, NONE),
    "init_saw_test_subjects": (list, NONE), "selected_step": (int, NONE),
}
RUN_REQUIRED = ("model", "head", "head.name", "num_classes", "class_names", "data", "data.path")

SPLIT_FIELDS = {"train": list, "val": (list, NONE), "test": list, "data_fingerprint": (str, NONE)}

EVAL_FIELDS = {
    "per_class": dict, "per_volume": (list, NONE), "class_names": (list, NONE), "mean_dice": NUMBER,
    "mean_hd95": NUMBER, "test_subjects": (list, NONE), "data": (str, list, NONE), "space": (str, NONE),
}


def _finished(path: Path, what: str) -> None:
    if not path.is_file():
        raise SsmtlError(f"{path}: not found; is {path.parent} a finished fine-tuning run ({what})?")


def read_run_json(run_dir: Path) -> dict[str, Any]:
    """``RUN_DIR/run.json``: the model, head, classes and data of a finished fine-tuning run."""
    path = Path(run_dir) / "run.json"
    _finished(path, "run.json is written when training ends")
    run = load_json_object(path, "run.json", RUN_FIELDS, RUN_REQUIRED)
    if run["num_classes"] < 1:
        raise SsmtlError(f"{path}: run.json: 'num_classes' should be at least 1, found {run['num_classes']} (edited or damaged?)")
    bad = [k for k, v in run["class_names"].items() if not k.lstrip("-").isdigit() or not isinstance(v, str)]
    if bad:
        raise SsmtlError(f"{path}: run.json: 'class_names' should map class ids to names; {bad[0]!r} does not (edited or damaged?)")
    run["data"]["modalities"] = modality_counts(run["data"].get("modalities"))
    return run


def modality_counts(value: Any) -> dict[str, int | None]:
    """``data.modalities`` in the one shape every reader uses: ``{modality: training volumes}``.

    Runs write that dict (as a cache summary counts volumes); runs from before it wrote a
    list of names, whose counts are unknown (None).
    """
    if isinstance(value, dict):
        return {str(m): n if isinstance(n, int) else None for m, n in value.items()}
    if isinstance(value, list):
        return {str(m): None for m in value}
    return {}


def read_split_json(run_dir: Path) -> dict[str, Any]:
    """``RUN_DIR/split.json``: the subjects of each split."""
    path = Path(run_dir) / "split.json"
    _finished(path, "split.json is written when training starts")
    split = load_json_object(path, "split.json", SPLIT_FIELDS, ("train", "test"))
    for name in ("train", "val", "test"):
        if any(not isinstance(s, str) for s in split.get(name) or []):
            raise SsmtlError(f"{path}: split.json: {name!r} should list subject names (edited or damaged?)")
    return split


def read_eval_json(path: Path) -> dict[str, Any]:
    """An ``eval.json`` written by ``ssmtl evaluate``."""
    results = load_json_object(path, "eval.json", EVAL_FIELDS, ("per_class",))
    for name, scores in results["per_class"].items():
        check_shape(scores, path, f"eval.json: per_class {name!r}", {"dice": NUMBER, "hd95": NUMBER})
    for row in results.get("per_volume") or []:
        check_shape(row, path, "eval.json: a per_volume row", {"volume": (str, NONE), "subject": (str, NONE),
                                                                "dice": dict, "hd95": (dict, NONE), "mean_dice": NUMBER})
    return results
